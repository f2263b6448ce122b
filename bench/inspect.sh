#!/bin/sh
# Benchmark of `fuse inspect` (release build) on an image of about 80 MB: the example app
# padded with 68 MB of incompressible bytes (squashfs stores such blocks raw, so the app
# layer is ~69 MB, the disk ~81 MB). Prints the image size and the wall time of each
# inspect mode: best and median of 5 runs with the page cache warm, and one run with the
# image's pages dropped from the cache first (cold). Acceptance: the summary under 2 s.
# Needs what the tests need (gcc, the archive in the host's apt sources or FUSE_MIRROR).
set -eu
cd "$(dirname "$0")/.."
cargo build --release -q
FUSE="$PWD/target/release/fuse"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT INT TERM
mkdir -p "$work/app"
cp examples/hello/fuse.toml "$work/app/"
gcc -static -Os -s -o "$work/app/hello" examples/hello/hello.c
head -c 68000000 /dev/urandom >>"$work/app/hello"
echo "building the padded example..." >&2
"$FUSE" build "$work/app" >/dev/null 2>"$work/build.log" || { cat "$work/build.log" >&2; exit 1; }
img="$work/app/fuse-out/hello-1.0.0.img"
cp "$img" "$work/other.img"
size=$(stat -c %s "$img")
echo "image: $size bytes ($(awk "BEGIN{printf \"%.1f\", $size/1048576}") MiB), app layer $(
    "$FUSE" inspect "$img" --json | python3 -c 'import json,sys; print([l["size"] for l in json.load(sys.stdin)["metadata"]["layers"] if l["name"]=="app"][0])') bytes"

# time CMD...: best and median wall seconds of 5 runs (exit codes 0 and 1 are results).
time_it() {
    for i in 1 2 3 4 5; do
        s=$(date +%s.%N)
        "$@" >/dev/null || [ $? -eq 1 ]
        e=$(date +%s.%N)
        awk "BEGIN{printf \"%.3f\n\", $e-$s}"
    done | sort -n | awk '{a[NR]=$1} END{printf "best %.3f s, median %.3f s\n", a[1], a[3]}'
}
printf '%-36s %s\n' "inspect IMAGE" "$(time_it "$FUSE" inspect "$img")"
printf '%-36s %s\n' "inspect IMAGE --json" "$(time_it "$FUSE" inspect "$img" --json)"
printf '%-36s %s\n' "inspect OLD NEW (two 80 MB images)" "$(time_it "$FUSE" inspect "$img" "$work/other.img")"
printf '%-36s %s\n' "inspect IMAGE --sbom spdx" "$(time_it "$FUSE" inspect "$img" --sbom spdx)"

# Cold: drop this file's pages from the page cache (posix_fadvise DONTNEED), run once.
drop() { python3 -c 'import os,sys; fd=os.open(sys.argv[1], os.O_RDONLY); os.fsync(fd); os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)' "$1"; }
drop "$img"
s=$(date +%s.%N); "$FUSE" inspect "$img" >/dev/null; e=$(date +%s.%N)
printf '%-36s %s\n' "inspect IMAGE, cold page cache" "$(awk "BEGIN{printf \"%.3f s\", $e-$s}")"
