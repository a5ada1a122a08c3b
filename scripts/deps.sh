#!/usr/bin/env bash
# Installs what the tests need, from the lists in deps/: Debian packages
# (deps/demo-apt.txt, deps/apt.txt) and Python packages into a venv
# (deps/python.txt, which includes deps/demo-python.txt).
# Idempotent: installs only what is missing.
#
#   scripts/deps.sh [APT_LIST...]   Debian packages from these lists instead
#                                   (the benchmarks pass bench/deps-apt.txt)
#   DEPS_APT=0 / DEPS_PYTHON=0      skip the Debian packages / the Python venv
#   DEPS_PYTHON_LIST=FILE           Python packages from FILE instead (the
#                                   demo passes deps/demo-python.txt)
set -euo pipefail
cd "$(dirname "$0")/.."

packages() { grep -v '^\s*#' "$1" | grep -v '^\s*$' || true; }

lists=("$@")
[ ${#lists[@]} -gt 0 ] || lists=(deps/demo-apt.txt deps/apt.txt)
apt=()
for list in "${lists[@]}"; do
  mapfile -t -O "${#apt[@]}" apt < <(packages "$list")
done
missing=()
[ "${DEPS_APT:-1}" != 0 ] || apt=()
for p in "${apt[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "deps: installing Debian packages: ${missing[*]}"
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

python_list="${DEPS_PYTHON_LIST:-deps/python.txt}"
mapfile -t py < <(packages "$python_list")
if [ "${DEPS_PYTHON:-1}" != 0 ] && [ ${#py[@]} -gt 0 ]; then
  venv="${ECSMESH_VENV:-$HOME/.cache/ecsmesh/venv}"
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
  if ! "$venv/bin/python" -m pip install -q --disable-pip-version-check -r "$python_list"; then
    echo "deps: pip install failed" >&2
    exit 1
  fi
fi
echo "deps: ok"
