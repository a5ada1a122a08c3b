#!/usr/bin/env bash
# Supply-chain checks with cargo-deny (deny.toml): licenses, bans (duplicate
# versions, wildcards), sources, and the RustSec advisories.
#
# cargo-deny is installed at a pinned version when missing (a cargo install,
# a few minutes once per machine). The advisory database is a git repository
# on github.com: where that cannot be reached the advisories check cannot
# run, and this says so loudly instead of passing it silently
# (DENY_ADVISORIES=require makes that a failure).
set -euo pipefail
cd "$(dirname "$0")/.."

VERSION=0.20.2
if ! cargo deny --version 2>/dev/null | grep -qF "$VERSION"; then
  echo "deny: installing cargo-deny $VERSION"
  cargo install --locked --quiet cargo-deny --version "$VERSION"
fi

cargo deny --log-level error check bans licenses sources

if timeout 20 git ls-remote -q https://github.com/rustsec/advisory-db HEAD >/dev/null 2>&1; then
  cargo deny --log-level error check advisories
elif [ "${DENY_ADVISORIES:-}" = require ]; then
  echo "deny: the RustSec advisory database (github.com/rustsec/advisory-db) is unreachable" >&2
  exit 1
else
  echo "deny: WARNING: advisories NOT checked: the RustSec advisory database" \
    "(github.com/rustsec/advisory-db) is unreachable from this machine"
fi
echo "deny: ok"
