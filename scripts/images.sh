#!/usr/bin/env bash
# make images: the agent, controller and helloworld images (OCI, linux/amd64)
# from the project's own files, with no Docker engine: static binaries
# (glibc, -C target-feature=+crt-static), one FROM-scratch layer each with
# the binary, CA certificates and a non-root user, assembled by umoci into
# an OCI image layout. skopeo pushes them to a registry (scripts/images.sh
# push REGISTRY) with the registry protocol; ecsmeshctl deploy can point
# task definitions at the pushed digests.
#
#   bash scripts/images.sh                       # build (profile dist) into $IMAGES_DIR
#   IMAGES_PROFILE=dev bash scripts/images.sh    # a debug build (the tests)
#   bash scripts/images.sh push 127.0.0.1:5000 [--insecure]
#
# Output: $IMAGES_DIR/oci (the layout, tags agent-$TAG, controller-$TAG,
# helloworld-$TAG) and $IMAGES_DIR/images.txt (name, tag, manifest digest,
# compressed size in bytes).
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/ecsmesh/target}"
PROFILE="${IMAGES_PROFILE:-dist}"
OUT="${IMAGES_DIR:-$CARGO_TARGET_DIR/images}"
TAG="${IMAGES_TAG:-$(sed -nE 's/^version = "(.*)"/\1/p' Cargo.toml | head -1)}"
TARGET=x86_64-unknown-linux-gnu
LAYOUT="$OUT/oci"
# name | binary | what it is
IMAGES=(
  "agent|ecsmesh-agent|The ecsmesh per-host proxy"
  "controller|ecsmesh-controller|The ecsmesh control plane"
  "helloworld|helloworld|The ecsmesh demo's hello/world service"
)

die() { echo "images: $*" >&2; exit 1; }
for tool in umoci skopeo; do
  command -v "$tool" >/dev/null || die "$tool is missing: run make deps"
done

push() {
  local registry=$1 tls=true
  [ "${2:-}" = --insecure ] && tls=false
  [ -f "$OUT/images.txt" ] || die "nothing built: run make images first"
  while read -r name tag _; do
    skopeo copy -q --dest-tls-verify="$tls" "oci:$LAYOUT:$name-$tag" "docker://$registry/ecsmesh-$name:$tag"
    echo "pushed $registry/ecsmesh-$name:$tag"
  done < "$OUT/images.txt"
}

if [ "${1:-}" = push ]; then
  [ -n "${2:-}" ] || die "usage: images.sh push REGISTRY [--insecure]"
  push "$2" "${3:-}"
  exit 0
fi

# Static binaries: the RUSTFLAGS apply to the target only (--target), so
# build scripts and proc-macros are shared with the normal build.
dir=$PROFILE; [ "$PROFILE" = dev ] && dir=debug
RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" \
  cargo build --profile "$PROFILE" --target "$TARGET" \
  -p ecsmesh-agent -p ecsmesh-controller -p ecsmesh-hello-world
BIN="$CARGO_TARGET_DIR/$TARGET/$dir"

CA=/etc/ssl/certs/ca-certificates.crt
[ -f "$CA" ] || die "$CA is missing (Debian package ca-certificates)"
REVISION=$(git rev-parse HEAD 2>/dev/null || echo unknown)
CREATED=$(date -u +%Y-%m-%dT%H:%M:%SZ)

rm -rf "$LAYOUT" "$OUT/work"
mkdir -p "$OUT/work"
umoci init --layout "$LAYOUT"
: > "$OUT/images.txt.new"
for spec in "${IMAGES[@]}"; do
  IFS='|' read -r name binary title <<<"$spec"
  ref="$LAYOUT:$name-$TAG"
  bundle="$OUT/work/$name"
  umoci new --image "$ref"
  umoci unpack --rootless --image "$ref" "$bundle"
  root="$bundle/rootfs"
  mkdir -p "$root/etc/ssl/certs" "$root/tmp"
  chmod 1777 "$root/tmp"
  cp "$BIN/$binary" "$root/$binary"
  strip "$root/$binary"
  cp "$CA" "$root/etc/ssl/certs/ca-certificates.crt"
  # The non-root user the process runs as (distroless' "nonroot").
  printf 'root:x:0:0:root:/:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/:/sbin/nologin\n' > "$root/etc/passwd"
  printf 'root:x:0:\nnonroot:x:65532:\n' > "$root/etc/group"
  umoci repack --image "$ref" "$bundle"
  umoci config --image "$ref" \
    --os linux --architecture amd64 \
    --config.user 65532:65532 \
    --config.entrypoint "/$binary" \
    --config.env SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
    --config.label "org.opencontainers.image.title=ecsmesh-$name" \
    --config.label "org.opencontainers.image.description=$title" \
    --config.label "org.opencontainers.image.version=$TAG" \
    --config.label "org.opencontainers.image.revision=$REVISION" \
    --config.label "org.opencontainers.image.created=$CREATED" \
    --config.label "org.opencontainers.image.licenses=Apache-2.0" \
    --config.label "org.opencontainers.image.source=https://github.com/ecsmesh/ecsmesh"
  umoci gc --layout "$LAYOUT"
  # The manifest's digest, and what a pull transfers: config + layers.
  digest=$(skopeo inspect --raw "oci:$ref" | sha256sum | cut -d' ' -f1)
  size=$(skopeo inspect --raw "oci:$ref" | python3 -c \
    'import json,sys; m=json.load(sys.stdin); print(m["config"]["size"]+sum(l["size"] for l in m["layers"]))')
  echo "$name $TAG sha256:$digest $size" >> "$OUT/images.txt.new"
done
rm -rf "$OUT/work"
mv "$OUT/images.txt.new" "$OUT/images.txt"
echo "images ($PROFILE build) in $LAYOUT:"
awk '{ printf "  ecsmesh-%-11s %s  %s  %.1f MB compressed\n", $1, $2, $3, $4 / 1e6 }' "$OUT/images.txt"
