"""Issue #16: the images `make images` builds, end to end against a real
registry on loopback (Debian's docker-registry, the CNCF distribution
server): pushed with skopeo over the registry protocol, pulled back, the
digest verified, the layer unpacked, and each binary run from it.

The images come from $IMAGES_DIR (built by scripts/images.sh; `make test`
builds them with IMAGES_PROFILE=dev first)."""
import json
import os
import pathlib
import socket
import subprocess
import time
import urllib.request

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
IMAGES_DIR = pathlib.Path(os.environ.get("IMAGES_DIR", pathlib.Path.home() / ".cache/ecsmesh/target/images"))
BINARIES = {"agent": "ecsmesh-agent", "controller": "ecsmesh-controller", "helloworld": "helloworld"}
# The target, for the agent image compressed.
AGENT_MAX_BYTES = 15 * 1000 * 1000


def run(*args, **kw):
    return subprocess.run(args, check=True, capture_output=True, text=True, timeout=300, **kw)


def sha256(text):
    import hashlib
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def built():
    listing = IMAGES_DIR / "images.txt"
    assert listing.exists(), f"{listing} is missing: run `IMAGES_PROFILE=dev make images` first"
    rows = [line.split() for line in listing.read_text().splitlines() if line.strip()]
    return {name: {"tag": tag, "digest": digest, "size": int(size)} for name, tag, digest, size in rows}


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """docker-registry on a loopback port with a throwaway filesystem store."""
    base = tmp_path_factory.mktemp("registry")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = base / "config.yml"
    config.write_text(
        "version: 0.1\n"
        "log: {level: warn}\n"
        f"storage: {{filesystem: {{rootdirectory: {base / 'data'}}}, delete: {{enabled: true}}}}\n"
        f"http: {{addr: 127.0.0.1:{port}}}\n")
    log = open(base / "registry.log", "wb")
    proc = subprocess.Popen(["docker-registry", "serve", str(config)], stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert proc.poll() is None, (base / "registry.log").read_text()
            assert time.monotonic() < deadline, "the registry did not start"
            time.sleep(0.1)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()


def test_images_are_small_static_and_labelled():
    images = built()
    assert set(images) == set(BINARIES)
    assert images["agent"]["size"] <= AGENT_MAX_BYTES, images["agent"]
    for name, image in images.items():
        ref = f"oci:{IMAGES_DIR / 'oci'}:{name}-{image['tag']}"
        config = json.loads(run("skopeo", "inspect", "--config", ref).stdout)
        assert (config["os"], config["architecture"]) == ("linux", "amd64")
        assert config["config"]["User"] == "65532:65532", config
        assert config["config"]["Entrypoint"] == [f"/{BINARIES[name]}"]
        labels = config["config"]["Labels"]
        assert labels["org.opencontainers.image.title"] == f"ecsmesh-{name}"
        assert labels["org.opencontainers.image.version"] == image["tag"]
        manifest = json.loads(run("skopeo", "inspect", "--raw", ref).stdout)
        assert len(manifest["layers"]) == 1, "one FROM-scratch layer"


def test_push_pull_verify_and_run(registry, tmp_path):
    images = built()
    run("bash", str(ROOT / "scripts/images.sh"), "push", registry, "--insecure",
        env={**os.environ, "IMAGES_DIR": str(IMAGES_DIR)})
    for name, image in images.items():
        remote = f"docker://{registry}/ecsmesh-{name}:{image['tag']}"
        raw = run("skopeo", "inspect", "--tls-verify=false", "--raw", remote).stdout
        digest = sha256(raw)
        assert digest == image["digest"], f"{name}: the registry serves {digest}"
        # Pull it back by digest, unpack it, run the binary from the layer.
        by_digest = f"docker://{registry}/ecsmesh-{name}@{digest}"
        layout = tmp_path / "pulled"
        run("skopeo", "copy", "-q", "--src-tls-verify=false", by_digest, f"oci:{layout}:{name}")
        bundle = tmp_path / f"bundle-{name}"
        run("umoci", "unpack", "--rootless", "--image", f"{layout}:{name}", str(bundle))
        rootfs = bundle / "rootfs"
        assert (rootfs / "etc/ssl/certs/ca-certificates.crt").stat().st_size > 1000
        assert "nonroot:x:65532:65532" in (rootfs / "etc/passwd").read_text()
        binary = rootfs / BINARIES[name]
        out = run(str(binary), "--version").stdout
        assert out.strip() == f"{BINARIES[name]} {image['tag']}", out
        # Static: no interpreter, nothing to load from the host.
        linked = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, timeout=30)
        assert "statically linked" in linked.stdout + linked.stderr, linked


def test_the_dockerfiles_build_the_same_binaries():
    """Users who build with Docker get the same programs: each Dockerfile's
    entrypoint is the binary scripts/images.sh puts in that image."""
    dockerfiles = {"agent": "agent.Dockerfile", "controller": "controller.Dockerfile",
                   "helloworld": "hello-world.Dockerfile"}
    script = (ROOT / "scripts/images.sh").read_text()
    for name, binary in BINARIES.items():
        text = (ROOT / "deploy/docker" / dockerfiles[name]).read_text()
        entry = [line for line in text.splitlines() if line.startswith("ENTRYPOINT")]
        assert len(entry) == 1 and json.loads(entry[0].split(" ", 1)[1])[0].endswith(f"/{binary}"), entry
        assert f'"{name}|{binary}|' in script, f"scripts/images.sh does not build {binary} as {name}"
