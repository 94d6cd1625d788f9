#!/usr/bin/env bash
# Builds the three quintet binaries as static executables and the Docker
# image quintet:latest (FROM scratch) that holds them. Works from any cwd.
#
#   deploy/build.sh                 cargo build + docker build
#   QUINTET_IMAGE=quintet:dev deploy/build.sh    another tag
#   QUINTET_SKIP_CARGO=1 deploy/build.sh         reuse binaries already built
#
# The binaries land in $CARGO_TARGET_DIR (default target/)
# x86_64-unknown-linux-gnu/release/. The --target flag is what keeps
# RUSTFLAGS=+crt-static off build scripts and proc-macros, which must stay
# dynamic to be loaded by the host compiler.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
image=${QUINTET_IMAGE:-quintet:latest}
triple=x86_64-unknown-linux-gnu
target_dir=${CARGO_TARGET_DIR:-$root/target}
case $target_dir in /*) ;; *) target_dir=$root/$target_dir ;; esac
bin_dir=$target_dir/$triple/release
bins=(quintet quintet-coordinator quintet-participant)

die() { echo "build.sh: $*" >&2; exit 1; }

command -v docker >/dev/null || die "docker is not installed"
docker info >/dev/null 2>&1 || die "cannot talk to the Docker daemon (is it running? are you in the docker group?)"

if [[ ${QUINTET_SKIP_CARGO:-0} != 1 ]]; then
    echo "==> cargo build --release --target $triple (static)"
    (cd "$root" && RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" \
        cargo build --release --locked --target "$triple" \
        -p quintet-client --bin quintet \
        -p quintet-coordinator --bin quintet-coordinator \
        -p quintet-participant --bin quintet-participant)
fi

ctx=$(mktemp -d "${TMPDIR:-/tmp}/quintet-image.XXXXXX")
trap 'rm -rf "$ctx"' EXIT

for b in "${bins[@]}"; do
    f=$bin_dir/$b
    [[ -x $f ]] || die "$f is missing; run without QUINTET_SKIP_CARGO=1"
    # FROM scratch has no loader and no libc: refuse anything dynamic.
    # (grep reads to the end, not -q: under pipefail an early exit would
    # kill readelf with SIGPIPE and read as "not found".)
    if readelf -lW "$f" | grep 'INTERP' >/dev/null || readelf -dW "$f" | grep '(NEEDED)' >/dev/null; then
        die "$f is dynamically linked; build it with RUSTFLAGS='-C target-feature=+crt-static' and --target $triple"
    fi
    # Keep symbols (names in panics) but drop the line tables: about a third of the size.
    objcopy --strip-debug "$f" "$ctx/$b"
done
mkdir "$ctx/data"
cp "$root/deploy/Dockerfile" "$ctx/Dockerfile"

echo "==> docker build -t $image"
old_id=$(docker image inspect -f '{{.Id}}' "$image" 2>/dev/null || true)
DOCKER_BUILDKIT=0 docker build --quiet -t "$image" "$ctx" >/dev/null 2>"$ctx.log" \
    || { cat "$ctx.log" >&2; rm -f "$ctx.log"; die "docker build failed"; }
rm -f "$ctx.log"
# The image this tag named before is left untagged by the rebuild: drop it
# (quietly; it may still be used by a container, then it stays).
new_id=$(docker image inspect -f '{{.Id}}' "$image")
if [[ -n $old_id && $old_id != "$new_id" ]] \
    && [[ $(docker image inspect -f '{{len .RepoTags}}' "$old_id" 2>/dev/null) == 0 ]]; then
    docker rmi "$old_id" >/dev/null 2>&1 || true
fi
size=$(docker image inspect -f '{{.Size}}' "$image")
echo "==> built $image ($((size / 1024 / 1024)) MiB; $size bytes)"
