"""Summarises `perf script -F comm,tid,ip,sym,dso` (stdin) for bench/profile.sh:

- self time by area: the kernel (split by the system call it serves), the
  allocator, hyper, tokio, http, the agent's own code...; and the same for
  user space alone;
- self time charged to the nearest agent function on the stack, so a hot
  library or kernel leaf is billed to the agent code that called it;
- inclusive time of the agent's and hyper's functions.

A frame's owner is the path of the function, not of its generic arguments:
`poll_flush<hyper::...::Server<ServiceFn<ecsmesh_agent::...>>>` is hyper's,
`poll<ecsmesh_agent::proxy::...::attempts::{async_fn_env#0}>` (an async fn
body) is the agent's."""

import collections
import re
import sys

HASH = re.compile(r"::h[0-9a-f]{16}$")
FRAME = re.compile(r"^\s*[0-9a-f]+\s+(.*?)\s+\((.*)\)\s*$")
SHORT = ("poll", "poll_", "{closure", "call_once", "with", "set", "run", "try_with", "catch_unwind", "do_call")
ALLOC = ("malloc", "free", "realloc", "calloc", "_int_", "__libc_malloc", "__libc_free", "cfree", "tcache",
         "malloc_consolidate", "unlink_chunk", "__rust_alloc", "__rust_dealloc", "__rust_realloc")
MEM = ("__memmove", "__memcpy", "__memset", "memcpy", "memmove", "memset", "__memcmp", "memcmp", "bcmp", "__strlen")


def owner(sym):
    """The path of the function a demangled frame belongs to."""
    sym = HASH.sub("", sym).replace(" (inlined)", "")
    if sym.startswith("<"):
        return sym[1:].split(" as ")[0].split("<")[0]
    name, _, rest = sym.partition("<")
    if "::" in name or not rest or not name.startswith(SHORT):
        return name
    return rest.split("<")[0].split(",")[0]


def samples(lines):
    stack = []
    for line in lines:
        if not line.strip():
            if stack:
                yield stack
            stack = []
            continue
        m = FRAME.match(line)
        if m:
            # Inlined frames end in "(inlined)" where others name their object.
            sym, dso = m.group(1), m.group(2)
            stack.append((HASH.sub("", sym), "" if dso == "inlined" else dso))
    if stack:
        yield stack


def syscall_of(stack):
    """The libc wrapper (or std function) the kernel time was entered from."""
    for sym, dso in stack:
        if "kernel" not in dso:
            name = sym.replace("__GI___", "").replace("__libc_", "").lstrip("_")
            return name.split("<")[0]
    return "?"


def area(stack):
    sym, dso = stack[0]
    if "kernel" in dso:
        return f"kernel (under {syscall_of(stack)})"
    name = sym.replace("__GI___", "__")
    if name.startswith(ALLOC):
        return "allocator (glibc malloc/free)"
    if name.startswith(MEM):
        return "memcpy/memmove"
    if "libc" in dso:
        return f"libc {sym.split('<')[0]}"
    if "vdso" in dso:
        return "clock_gettime (vdso)"
    path = owner(sym)
    for prefix, name in (("ecsmesh_agent", "agent"), ("ecsmesh_", "ecsmesh libraries"), ("hyper", "hyper"),
                         ("http::", "http"), ("httparse", "httparse"), ("tokio", "tokio"), ("mio", "tokio"),
                         ("bytes", "bytes"), ("prometheus_client", "metrics"), ("alloc::", "allocator (Rust side)"),
                         ("core::", "core"), ("std::", "std"), ("hashbrown", "hash maps"), ("tracing", "tracing")):
        if path.startswith(prefix):
            return name
    return f"other ({path[:50]})"


def agent_frame(stack):
    for sym, dso in stack:
        if "kernel" not in dso and owner(sym).startswith("ecsmesh_agent"):
            return owner(sym) if "::{impl" not in owner(sym) else sym.split("<")[0] + " " + owner(sym)
    return "(no agent frame: hyper's connection tasks, tokio, the kernel)"


def main():
    stacks = list(samples(sys.stdin))
    n = len(stacks)
    if not n:
        print("no samples")
        return
    by_area, charged, leaf_in, inclusive = (collections.Counter() for _ in range(4))
    for st in stacks:
        a = area(st)
        by_area[a] += 1
        who = agent_frame(st)
        charged[who] += 1
        leaf_in[(who, a)] += 1
        for path in {owner(s) for s, d in st if "kernel" not in d}:
            if path.startswith(("ecsmesh_agent", "hyper::proto", "hyper::client", "hyper_util")):
                inclusive[path] += 1
    pc = lambda c: f"{100 * c / n:5.1f}%"
    print(f"## Samples: {n} (cpu-clock, one thread)\n")
    print("## Self time by area (the sampled frame)")
    for a, c in by_area.most_common(25):
        print(f"{pc(c)}  {a}")
    user = collections.Counter({a: c for a, c in by_area.items() if not a.startswith("kernel")})
    nu = sum(user.values()) or 1
    print(f"\n## User-space self time by area ({100 * nu / n:.0f}% of samples; shares of user time)")
    for a, c in user.most_common(15):
        print(f"{100 * c / nu:5.1f}%  {a}")
    print("\n## Self time charged to the nearest agent function on the stack (top 20)")
    for who, c in charged.most_common(20):
        parts = sorted(((k[1], v) for k, v in leaf_in.items() if k[0] == who), key=lambda kv: -kv[1])[:4]
        print(f"{pc(c)}  {who[:110]}\n        " + ", ".join(f"{a} {pc(v).strip()}" for a, v in parts))
    print("\n## Inclusive time of the agent's and hyper's functions (top 30)")
    for path, c in inclusive.most_common(30):
        print(f"{pc(c)}  {path[:120]}")


if __name__ == "__main__":
    main()
