#!/bin/sh
# Boot time to the first HTTP answer under QEMU TCG + OVMF, per example (default: hello
# jar-hello), RUNS boots each (default 1). Prints seconds from QEMU's start to HTTP 200 and
# the init's own verity read times from the console.
# FUSE_BIN: the fuse binary to measure (default: a release build of this tree).
# JRE=all: Java examples keep the full JRE (`[runtime] modules = "all"`, with the shipped
# CDS archive) instead of the trimmed one, to measure what trimming costs at start.
set -eu
cd "$(dirname "$0")/.."
if [ -n "${FUSE_BIN:-}" ]; then FUSE=$FUSE_BIN; else cargo build --release -q; FUSE=$PWD/target/release/fuse; fi
export FUSE_CACHE_DIR="${FUSE_CACHE_DIR:-$PWD/target/tmp/fuse-cache}"
export FUSE_DATA_DIR="${FUSE_DATA_DIR:-$(mktemp -d)}"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
now() { date +%s.%N; }
for ex in ${*:-hello jar-hello}; do
    cp -r "examples/$ex" "$work/$ex"
    rm -rf "$work/$ex/fuse-out"
    if [ "${JRE:-}" = all ] && grep -q '^java *=' "$work/$ex/fuse.toml"; then
        sed -i 's/^java *=.*/&\nmodules = "all"/' "$work/$ex/fuse.toml"
    fi
    "$work/$ex/build.sh" >/dev/null
    "$FUSE" build "$work/$ex" >"$work/build.out" 2>"$work/build.log" || { cat "$work/build.log"; exit 1; }
    img=$(grep '\.img$' "$work/build.out" | tail -1)
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    guest=$(sed -n 's/^port *= *\([0-9]*\).*/\1/p' "$work/$ex/fuse.toml")
    for run in $(seq "${RUNS:-1}"); do
        cp /usr/share/OVMF/OVMF_VARS_4M.fd "$work/vars.fd"
        t0=$(now)
        qemu-system-x86_64 -machine q35 -accel tcg -m 1024 -smp 1 -display none -nodefaults -no-reboot \
            -serial file:"$work/console.log" \
            -drive if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd \
            -drive if=pflash,format=raw,unit=1,file="$work/vars.fd" \
            -drive if=virtio,format=raw,readonly=on,file="$img" \
            -netdev user,id=n0,hostfwd=tcp:127.0.0.1:$port-:$guest -device virtio-net-pci,netdev=n0 &
        qpid=$!
        ok=no
        for i in $(seq 1200); do
            if curl -sf -m 2 "http://127.0.0.1:$port/" >/dev/null 2>&1; then ok=yes; break; fi
            kill -0 $qpid 2>/dev/null || break
            sleep 0.2
        done
        t1=$(now)
        kill $qpid 2>/dev/null || true; wait $qpid 2>/dev/null || true
        awk -v e="$ex" -v jre="${JRE:+JRE=$JRE}" -v a="$t0" -v b="$t1" -v ok="$ok" 'BEGIN { printf "%-10s %s boot to HTTP %6.1fs (%s)\n", e, jre, b - a, ok == "yes" ? "answered" : "NO ANSWER" }'
        grep -a "verified .* bytes" "$work/console.log" | sed 's/^/    /' || true
        [ $ok = yes ] || { tail -25 "$work/console.log"; cp "$work/console.log" "${KEEP_CONSOLE:-/dev/null}"; }
    done
done
