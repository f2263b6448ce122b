#!/bin/sh
# First build vs warm rebuild after an app-only change, per runtime example.
# "First build": packages already downloaded (warm download cache), no layer cached.
# "Rebuild": only the app changed; every other layer comes from the layer cache.
set -eu
cd "$(dirname "$0")/.."
# FUSE_BIN: a fuse binary to measure (default: a release build).
if [ -n "${FUSE_BIN:-}" ]; then FUSE=$FUSE_BIN; else cargo build --release -q; FUSE=$PWD/target/release/fuse; fi
export FUSE_CACHE_DIR="${FUSE_CACHE_DIR:-$PWD/target/bench-cache}"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
now() { date +%s.%N; }
for ex in ${*:-python-hello node-hello jar-hello war-hello}; do
    cp -r "examples/$ex" "$work/$ex"
    rm -rf "$work/$ex/fuse-out" "$work/$ex/fuse.lock"
    "$work/$ex/build.sh" >/dev/null
    "$FUSE" build "$work/$ex" >/dev/null 2>&1          # downloads, lock
    rm -f "$FUSE_CACHE_DIR"/named/unit-*   # forget every built unit (layers, kernel, initramfs, UKI)
    t0=$(now); "$FUSE" build "$work/$ex" >/dev/null 2>"$work/first.log"; t1=$(now)
    case $ex in
        python-hello) echo "# changed" >> "$work/$ex/app/hello/__init__.py" ;;
        node-hello) echo "// changed" >> "$work/$ex/app/server.js" ;;
        jar-hello|war-hello) sed -i 's/hello/howdy/' "$work/$ex"/src/hello/*.java; "$work/$ex/build.sh" >/dev/null ;;
    esac
    t2=$(now); "$FUSE" build "$work/$ex" >/dev/null 2>"$work/re.log"; t3=$(now)
    reused=$(grep -c ": local-cache (" "$work/re.log" || true)
    awk -v e="$ex" -v a="$t0" -v b="$t1" -v c="$t2" -v d="$t3" -v r="$reused" 'BEGIN {
        f = b - a; w = d - c;
        printf "%-13s first build %6.1fs   app-only rebuild %5.1fs   %4.1fx   (%d units from the cache)\n", e, f, w, f / w, r }'
done
