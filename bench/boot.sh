#!/bin/sh
# Boot time per phase under QEMU TCG + OVMF, this tree against another commit in one run
# (interleaved, so both see the same machine load): for every example (default: hello
# jar-hello war-hello flask), RUNS rounds (default 1) of `fuse test --json --accel tcg`
# with each binary. Prints the wall time of `fuse test`, the time to healthy and its phases
# (firmware, kernel, init and its steps, app to healthy; a tree older than the phases
# prints only the totals), and the load average at each boot.
#   BASE     the commit to compare with (default HEAD~1; e.g. BASE=main)
#   FUSE_BIN / BASE_BIN  use these binaries instead of building them
#   flask    a pseudo-example: Flask + numpy 2.x from PyPI in a virtualenv
#   flask-trixie  the same on Debian 13 (Python 3.13; the wheels in app/vendor)
#   EXAMPLE-cloud  a pseudo-example: EXAMPLE (hello-cloud, jar-hello-cloud, ...) with
#            linux-image-cloud-amd64
#   EXAMPLE-trixie  a pseudo-example: EXAMPLE on Debian 13 (distribution = "debian/trixie",
#            with the runtime versions it has: Java 21, Python 3.13, Node.js 20)
# A tree that cannot build an example (an older fuse and trixie) is reported and skipped.
set -eu
cd "$(dirname "$0")/.."
root=$PWD
work=$(mktemp -d)
cleanup() {
    if [ -d "$work/base-src" ]; then git -C "$root" worktree remove --force "$work/base-src" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT
export FUSE_CACHE_DIR="${FUSE_CACHE_DIR:-$root/target/tmp/fuse-cache}"
export FUSE_DATA_DIR="$work/data"
if [ -z "${BASE_BIN:-}" ]; then
    base=${BASE:-HEAD~1}
    git worktree add --detach -q "$work/base-src" "$base"
    # Its own target directory: cargo names a workspace crate's build-script output by
    # package, not by path, so a shared one would leave the other tree's init embedded in
    # whichever binary was built second (the build script looks fresh to it).
    (cd "$work/base-src" && CARGO_TARGET_DIR="$root/target/bench-base" cargo build -q)
    cp "$root/target/bench-base/debug/fuse" "$work/fuse-base"
    BASE_BIN=$work/fuse-base
fi
if [ -z "${FUSE_BIN:-}" ]; then
    cargo build -q
    cp "$root/target/debug/fuse" "$work/fuse-new"
    FUSE_BIN=$work/fuse-new
fi
set_system() { # FILE KEY VALUE: KEY = "VALUE" in the manifest's [system] table
    if grep -q "^$2 = " "$1"; then
        sed -i "s|^$2 = .*|$2 = \"$3\"|" "$1"
    elif grep -q '^\[system\]' "$1"; then
        sed -i "/^\[system\]/a $2 = \"$3\"" "$1"
    else
        printf '\n[system]\n%s = "%s"\n' "$2" "$3" >>"$1"
    fi
    grep -q "^$2 = \"$3\"" "$1"
}
app() { # example name -> app directory in $work/src/$1
    mkdir -p "$work/src"
    if [ "$1" = flask ] || [ "$1" = flask-trixie ]; then
        d=$work/src/$1
        mkdir -p "$d/app"
        cat >"$d/app/server.py" <<'PY'
import sys
sys.path.insert(0, "/app/vendor")
import numpy as np
from flask import Flask
app = Flask(__name__)
@app.get("/")
def root():
    return f"numpy {np.__version__} sum={np.arange(12.0).sum():.0f}\n"
if __name__ == "__main__":
    app.run(host="0.0.0.0", port=8080)
PY
        printf '[image]\nname = "flasknp"\nversion = "1.0.0"\n\n[app]\nkind = "python"\npath = "app"\nargs = ["server.py"]\nport = 8080\n\n[runtime]\npython = "3.11"\n\n[health]\nhttp = "/"\n' >"$d/fuse.toml"
        if [ "$1" = flask-trixie ]; then
            # Python 3.13's wheels, for Debian 13's interpreter, beside the code
            sed -i 's/^python = "3.11"/python = "3.13"/' "$d/fuse.toml"
            set_system "$d/fuse.toml" distribution debian/trixie
            python3 -m pip install -q --disable-pip-version-check --target "$d/app/vendor" --only-binary :all: \
                --python-version 3.13 --implementation cp --platform manylinux_2_28_x86_64 flask 'numpy>=2,<3'
        else
            /usr/bin/python3.11 -m venv "$d/app/.venv"
            "$d/app/.venv/bin/pip" install -q --disable-pip-version-check --only-binary :all: flask 'numpy>=2,<3'
        fi
    elif [ "${1%-cloud}" != "$1" ] || [ "${1%-trixie}" != "$1" ]; then
        base_ex=${1%-cloud}; base_ex=${base_ex%-trixie}
        cp -r "examples/$base_ex" "$work/src/$1"
        rm -rf "$work/src/$1/fuse-out" "$work/src/$1/fuse.lock"
        m=$work/src/$1/fuse.toml
        case $1 in
            # Debian's cloud kernel (LZ4; docs/manifest.md)
            *-cloud) set_system "$m" kernel linux-image-cloud-amd64 ;;
            # Debian 13, with the runtime versions it has
            *-trixie)
                set_system "$m" distribution debian/trixie
                sed -i 's/^java = "17"/java = "21"/; s/^python = "3.11"/python = "3.13"/; s/^node = "18"/node = "20"/' "$m" ;;
        esac
        "$work/src/$1/build.sh" >/dev/null
    else
        cp -r "examples/$1" "$work/src/$1"
        rm -rf "$work/src/$1/fuse-out"
        "$work/src/$1/build.sh" >/dev/null
    fi
}
summary() { # fuse test --json -> one line
    python3 -c '
import json, sys
v = json.load(open(sys.argv[1]))
s = lambda ms: "%5.1f" % (ms / 1000) if isinstance(ms, int) else "    ?"
p = v.get("phases") or {}
steps = " ".join("%s %s" % (k, s(x).strip()) for k, x in sorted((p.get("init_steps") or {}).items()))
print("%-4s healthy %s | firmware %s kernel %s init %s app %s | %s" % (
    v["result"], s(v.get("time_to_healthy_ms")), s(p.get("firmware_ms")), s(p.get("kernel_ms")),
    s(p.get("init_ms")), s(p.get("app_ms")), steps))' "$1" 2>/dev/null || echo "(no JSON: $(head -c 200 "$1"))"
}
now() { date +%s.%N; }
echo "base: ${BASE:-HEAD~1} ($BASE_BIN), this tree: $FUSE_BIN"
for ex in ${*:-hello jar-hello war-hello flask}; do
    app "$ex"
    trees=
    for tree in base new; do
        bin=$BASE_BIN; [ $tree = new ] && bin=$FUSE_BIN
        rm -rf "$work/src/$ex/fuse-out" "$work/src/$ex/fuse.lock"
        if "$bin" build "$work/src/$ex" --out "$work/out-$tree-$ex" >"$work/build.out" 2>"$work/build.log"; then
            trees="$trees $tree"
        else
            printf '%-10s %-4s cannot build it: %s\n' "$ex" "$tree" "$(grep -m1 '^error' "$work/build.log")"
            [ $tree = new ] && { cat "$work/build.log"; exit 1; }
        fi
    done
    for run in $(seq "${RUNS:-1}"); do
        for tree in $trees; do
            bin=$BASE_BIN; [ $tree = new ] && bin=$FUSE_BIN
            img=$(ls "$work/out-$tree-$ex"/*.img)
            load=$(cut -d' ' -f1-3 /proc/loadavg)
            t0=$(now)
            "$bin" test "$img" --json --accel "${ACCEL:-tcg}" --timeout 600 --boot-budget 3600s >"$work/test.json" 2>"$work/test.log" || true
            t1=$(now)
            printf '%-10s %-4s run %s  fuse test %5.1fs  %s  (load %s)\n' "$ex" "$tree" "$run" \
                "$(echo "$t1 - $t0" | bc)" "$(summary "$work/test.json")" "$load"
        done
    done
done
