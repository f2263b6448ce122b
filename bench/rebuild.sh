#!/bin/sh
# Cold, no-op and app-only-change build times per example (default: the jar and static
# examples), and, for a Java example, the cold build next to `mksquashfs -comp xz -b 1M`
# of the same runtime tree in the same run (issue 9: no-op <= 0.5 s, app-only <= 1.0 s).
#
# "Cold": packages already downloaded (warm download cache), no unit and no image cached.
# "No-op": nothing changed, the output is in place (the image key's record is enough).
# "App-only": the app changed; every other unit comes from the cache (with dm-verity the
# initramfs and the UKI, which hold the layers' root hashes, are rebuilt too: cheap, their
# compressed core is cached).
set -eu
cd "$(dirname "$0")/.."
# FUSE_BIN: a fuse binary to measure (default: a release build).
if [ -n "${FUSE_BIN:-}" ]; then FUSE=$FUSE_BIN; else cargo build --release -q; FUSE=$PWD/target/release/fuse; fi
export FUSE_CACHE_DIR="${FUSE_CACHE_DIR:-$PWD/target/bench-cache}"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }
echo "# $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg), $(date -u +%H:%M) UTC"
for ex in ${*:-jar-hello hello}; do
    cp -r "examples/$ex" "$work/$ex"
    rm -rf "$work/$ex/fuse-out" "$work/$ex/fuse.lock"
    "$work/$ex/build.sh" >/dev/null
    "$FUSE" build "$work/$ex" >/dev/null 2>&1          # downloads, lock
    rm -f "$FUSE_CACHE_DIR"/named/unit-* "$FUSE_CACHE_DIR"/named/image-*   # forget every built unit and image
    rm -rf "$work/$ex/fuse-out"
    t0=$(now); "$FUSE" build "$work/$ex" >/dev/null 2>"$work/cold.log"; t1=$(now)
    cold=$(secs "$t0" "$t1")
    t0=$(now); "$FUSE" build "$work/$ex" >/dev/null 2>"$work/noop.log"; t1=$(now)
    noop=$(secs "$t0" "$t1")
    grep -q "image: up to date" "$work/noop.log" || echo "  warning: the no-op build did work" >&2
    case $ex in
        python-hello) echo "# changed" >> "$work/$ex/app/hello/__init__.py" ;;
        node-hello) echo "// changed" >> "$work/$ex/app/server.js" ;;
        jar-hello|war-hello) sed -i 's/hello/howdy/' "$work/$ex"/src/hello/*.java; "$work/$ex/build.sh" >/dev/null ;;
        *) sed -i 's/world/there/' "$work/$ex/$ex.c"; "$work/$ex/build.sh" >/dev/null ;;
    esac
    t0=$(now); "$FUSE" build "$work/$ex" >/dev/null 2>"$work/app.log"; t1=$(now)
    app=$(secs "$t0" "$t1")
    built=$(grep -E ": built \(" "$work/app.log" | sed 's/.*INFO //; s/: built.*//' | tr '\n' ',' | sed 's/,$//')
    printf '%-10s cold %6.2fs   no-op %5.2fs (goal 0.5)   app-only %5.2fs (goal 1.0; rebuilt: %s)\n' \
        "$ex" "$cold" "$noop" "$app" "$built"
    # The runtime layer of a Java example, written by mksquashfs from the same tree.
    key=$("$FUSE" build --plan "$work/$ex" 2>/dev/null | python3 -c '
import json, sys
p = json.load(sys.stdin)
print(next((l["key"] for l in p["layers"] if l["name"] == "runtime" and l["inputs"].get("jre")), ""))')
    if [ -n "$key" ] && command -v mksquashfs >/dev/null && command -v unsquashfs >/dev/null; then
        blob=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["sha256"])' "$FUSE_CACHE_DIR/named/unit-$key")
        unsquashfs -q -n -d "$work/rt" "$FUSE_CACHE_DIR/sha256/$blob" >/dev/null
        t0=$(now); mksquashfs "$work/rt" "$work/rt.sqfs" -comp xz -b 1M -noappend -quiet -no-progress >/dev/null; t1=$(now)
        mk=$(secs "$t0" "$t1")
        layer=$(sed -n 's/.*layer runtime ([0-9]* entries) written in \([0-9.]*\)s.*/\1/p' "$work/cold.log")
        awk -v c="$cold" -v m="$mk" -v l="${layer:-0}" -v fs="$(stat -c %s "$work/rt.sqfs")" 'BEGIN {
            printf "%-10s mksquashfs -comp xz -b 1M of the runtime tree %.2fs (%.1f MiB); cold build / mksquashfs = %.1fx; fuse'"'"'s runtime layer alone %.2fs = %.1fx\n",
                "", m, fs / 1048576, c / m, l, l / m }'
        rm -rf "$work/rt" "$work/rt.sqfs"
    fi
done
