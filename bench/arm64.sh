#!/bin/sh
# Cold build time of the same app as an amd64 and an arm64 image, side by side in one run:
# examples/hello compiled for each architecture (gcc -static, aarch64-linux-gnu-gcc -static),
# built N times each (default 3) with an empty download cache and image store (fully cold:
# archive index, packages and every unit), then N times with the packages cached but no
# unit cache (`fuse build` in a fresh app directory, the download cache's unit records
# removed). Prints each time and the arm64/amd64 ratio of the medians.
# usage: bench/arm64.sh [N]      (needs target/release/fuse or target/debug/fuse)
set -eu
cd "$(dirname "$0")/.."
n=${1:-3}
fuse=target/release/fuse
[ -x "$fuse" ] || fuse=target/debug/fuse
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for arch in amd64 arm64; do
    mkdir -p "$work/$arch"
    cc=gcc
    [ "$arch" = arm64 ] && cc=aarch64-linux-gnu-gcc
    $cc -static -Os -s -o "$work/$arch/hello" examples/hello/hello.c
    sed -e "s/^version = \"1.0.0\"/version = \"1.0.0\"\narch = \"$arch\"/" \
        -e '/^kernel = /d' examples/hello/fuse.toml >"$work/$arch/fuse.toml"
done
now() { date +%s.%N; }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
run() { # mode arch i -> seconds
    mode=$1 arch=$2 i=$3
    app="$work/run-$mode-$arch-$i"
    rm -rf "$app" && cp -r "$work/$arch" "$app"
    cache="$work/cache-$arch"
    if [ "$mode" = cold ]; then rm -rf "$cache"; fi
    # no unit records: only the downloaded packages and indices stay
    [ -d "$cache/named" ] && find "$cache/named" -type f ! -name 'inrelease-*' -delete
    t0=$(now)
    FUSE_CACHE_DIR="$cache" FUSE_DATA_DIR="$work/data-$arch-$i-$mode" \
        "$fuse" build "$app" >/dev/null 2>"$app.log" || { cat "$app.log" >&2; exit 1; }
    t1=$(now)
    echo "$t1 - $t0" | bc
}
for mode in cold warm-packages; do
    for arch in amd64 arm64; do
        : >"$work/t-$mode-$arch"
        for i in $(seq 1 "$n"); do
            t=$(run "$mode" "$arch" "$i")
            echo "$t" >>"$work/t-$mode-$arch"
            printf '%-14s %-6s run %d: %6.2f s\n' "$mode" "$arch" "$i" "$t"
        done
    done
    a=$(median <"$work/t-$mode-amd64")
    b=$(median <"$work/t-$mode-arm64")
    printf '%-14s median amd64 %.2f s, arm64 %.2f s, ratio arm64/amd64 %.2f\n' \
        "$mode" "$a" "$b" "$(echo "$b / $a" | bc -l)"
done
