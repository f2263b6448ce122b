#!/bin/sh
# App layers by rate of change (issue 26): cold, no-op and one-line-code-change build times
# with the layers' sizes, and the bytes `fuse push` sends for the code change, for
#   flask: a Flask app vendoring numpy, pandas and scipy (`pip install --target vendor`, PyPI)
#   node:  an express app with its node_modules (npm registry)
#   jar:   the jar example with a Class-Path library
#   war:   the war example with the same library in WEB-INF/lib (laid out exploded)
#   boot:  a Spring Boot-style jar (fixtures/bootjar) with the library nested in BOOT-INF/lib
# Goals: code change <= 0.1x cold, no-op <= 0.02x cold; push of a code change <= 5 MB.
#
# "Cold": packages downloaded, runtime units cached (a first build ran), the app's layers,
# the UKI and the image not cached. Needs pip, npm, javac/jar, docker-registry. Prints
# figures only. FUSE_BIN: the fuse binary to measure (default: a release build).
# Wall times on a shared machine grow with its load: the CPU time (user + system) of each
# build is printed too. BENCH_LOGS=DIR keeps each build's log and report there.
# Usage: bench/layers.sh [flask] [node] [jar] [war] [boot]
set -eu
cd "$(dirname "$0")/.."
if [ -n "${FUSE_BIN:-}" ]; then FUSE=$FUSE_BIN; else cargo build --release -q; FUSE=$PWD/target/release/fuse; fi
export FUSE_CACHE_DIR="${FUSE_CACHE_DIR:-$PWD/target/bench-cache}"
export FUSE_DATA_DIR="${FUSE_DATA_DIR:-$PWD/target/bench-data}"
work=$(mktemp -d)
reg_pid=
cleanup() { [ -n "$reg_pid" ] && kill "$reg_pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
# timed NAME DIR: `fuse build --json DIR` into $work/NAME.json, its log in $work/NAME.log;
# sets t_NAME (wall seconds) and c_NAME (CPU seconds, user + system: what a loaded machine
# does not inflate)
timed() {
    /usr/bin/time -f '%e %U %S' -o "$work/$1.time" "$FUSE" build --json "$2" >"$work/$1.json" 2>"$work/$1.log"
    read -r wall user sys < "$work/$1.time"
    eval "t_$1=$wall; c_$1=$(awk -v u="$user" -v s="$sys" 'BEGIN { printf "%.2f", u + s }')"
}
echo "# $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg), $(date -u +%H:%M) UTC"

# A local registry for the push figures.
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat > "$work/registry.yml" <<EOF
version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $work/registry
http:
  addr: 127.0.0.1:$port
EOF
/usr/bin/docker-registry serve "$work/registry.yml" >"$work/registry.log" 2>&1 &
reg_pid=$!
sleep 2

make_flask() {
    d=$work/flask; mkdir -p "$d"
    python3 -m pip install -q --target "$d/vendor" --only-binary=:all: --python-version 3.11 \
        --platform manylinux2014_x86_64 --implementation cp flask numpy pandas scipy >/dev/null 2>&1
    cat > "$d/main.py" <<'EOF'
import sys
sys.path.insert(0, "/app/vendor")
import numpy, pandas, scipy
from flask import Flask
app = Flask(__name__)

@app.route("/")
def hello():
    return f"numpy {numpy.__version__} pandas {pandas.__version__}\n"

app.run(host="0.0.0.0", port=8080)
EOF
    printf '[image]\nname = "flask"\nversion = "1.0.0"\n[app]\nkind = "python"\npath = "."\nargs = ["main.py"]\nport = 8080\n[runtime]\npython = "3.11"\n' > "$d/fuse.toml"
}
make_node() {
    d=$work/node; mkdir -p "$d"
    echo '{"name":"bench","version":"1.0.0","main":"server.js","dependencies":{"express":"^4.19.2"}}' > "$d/package.json"
    (cd "$d" && npm install -q --no-audit --no-fund >/dev/null 2>&1)
    printf 'const express = require("express");\nconst app = express();\napp.get("/", (q, r) => r.send("hi"));\napp.listen(8080);\n' > "$d/server.js"
    printf '[image]\nname = "node"\nversion = "1.0.0"\n[app]\nkind = "node"\npath = "."\nport = 8080\n[runtime]\nnode = "18"\n' > "$d/fuse.toml"
}
make_jar() {
    d=$work/jar; mkdir -p "$d/lib" "$d/src/lib" "$d/src/hello"
    cp examples/jar-hello/src/hello/Main.java "$d/src/hello/"
    # a library of some weight: 4000 classes
    python3 - "$d/src/lib" <<'EOF'
import sys, os
for i in range(4000):
    open(os.path.join(sys.argv[1], f"C{i}.java"), "w").write(f"package lib; public class C{i} {{ public static int f() {{ return {i}; }} }}\n")
EOF
    javac --release 17 -d "$d/libclasses" "$d"/src/lib/*.java
    jar --create --file "$d/lib/big.jar" -C "$d/libclasses" .
    build_main_jar "$d"
    printf '[image]\nname = "jar"\nversion = "1.0.0"\n[app]\nkind = "jar"\npath = "hello.jar"\nport = 8080\n[runtime]\njava = "17"\n' > "$d/fuse.toml"
}
# a library of some weight: 4000 classes, in $1/big.jar
make_big_jar() {
    mkdir -p "$1/src/lib"
    python3 - "$1/src/lib" <<'EOF2'
import sys, os
for i in range(4000):
    open(os.path.join(sys.argv[1], f"C{i}.java"), "w").write(f"package lib; public class C{i} {{ public static int f() {{ return {i}; }} }}\n")
EOF2
    javac --release 17 -d "$1/libclasses" "$1"/src/lib/*.java
    jar --create --file "$1/big.jar" -C "$1/libclasses" .
}
make_war() {
    d=$work/war; mkdir -p "$d/lib/WEB-INF/lib"
    cp -r examples/war-hello/. "$d/"
    rm -rf "$d/fuse-out" "$d/fuse.lock"
    make_big_jar "$d/libsrc"
    cp "$d/libsrc/big.jar" "$d/lib/WEB-INF/lib/big.jar"
    build_war "$d"
    sed -i 's/^name = "war-hello"/name = "war"/' "$d/fuse.toml"
}
build_war() {
    "$1/build.sh" >/dev/null
    jar --update --file "$1/hello.war" -C "$1/lib" WEB-INF/lib/big.jar
}
make_boot() {
    d=$work/boot; mkdir -p "$d"
    make_big_jar "$d/libsrc"
    build_boot "$d"
    printf '[image]\nname = "boot"\nversion = "1.0.0"\n[app]\nkind = "jar"\npath = "boot.jar"\nport = 8080\n[runtime]\njava = "17"\n' > "$d/fuse.toml"
}
build_boot() {
    fixtures/bootjar/build.sh "$1"
    mkdir -p "$1/nest/BOOT-INF/lib"; cp "$1/libsrc/big.jar" "$1/nest/BOOT-INF/lib/big.jar"
    jar --update --no-compress --file "$1/boot.jar" -C "$1/nest" BOOT-INF/lib/big.jar
}
build_main_jar() {
    rm -rf "$1/classes"; javac --release 17 -d "$1/classes" "$1/src/hello/Main.java"
    printf 'Class-Path: lib/big.jar\n' > "$1/mf.txt"
    jar --create --file "$1/hello.jar" --main-class hello.Main --manifest "$1/mf.txt" -C "$1/classes" .
}
change() {
    case $1 in
        flask) echo "# one more line" >> "$work/flask/main.py" ;;
        node) echo "// one more line" >> "$work/node/server.js" ;;
        jar) sed -i 's/"greeting", "hello"/"greeting", "howdy"/' "$work/jar/src/hello/Main.java"; build_main_jar "$work/jar" ;;
        war) sed -i 's/hello from a war/hello again from a war/' "$work/war/src/hello/HelloServlet.java"; build_war "$work/war" ;;
        boot) export GREETING=howdy; build_boot "$work/boot"; unset GREETING ;;
    esac
}
layer_sizes() {
    python3 -c '
import json, sys
r = json.load(open(sys.argv[1]))
print(" ".join("%s %.1fM%s" % (l["name"], l["size"] / 1048576, "*" if l["source"] == "built" else "") for l in r["layers"]))' "$1"
}

for ex in ${*:-flask node jar}; do
    "make_$ex"
    d=$work/$ex
    "$FUSE" build "$d" >/dev/null 2>&1                   # downloads, lock, runtime units
    rm -rf "$d/fuse-out"
    # what the image takes of it (the jar's sources and classes are not part of the app)
    case $ex in jar) app="$d/hello.jar $d/lib" ;; war) app=$d/hello.war ;; boot) app=$d/boot.jar ;; *) app=$d ;; esac
    # shellcheck disable=SC2086
    files=$(find $app -type f | wc -l); mb=$(du -scm $app | tail -1 | cut -f1)
    # forget the app's units and images: every layer but base/runtime/server, the UKI and
    # the initramfs (the kernel, the stub and the initramfs' init+modules do not depend on
    # the app and stay cached)
    for rec in "$FUSE_CACHE_DIR"/named/unit-* "$FUSE_CACHE_DIR"/named/image-* "$FUSE_CACHE_DIR"/named/appstat-* "$FUSE_CACHE_DIR"/named/appscan-*; do
        [ -e "$rec" ] || continue
        case $(head -c 4000 "$rec") in *'"kind":"layer"'*'"name":"base"'*|*'"kind":"layer"'*'"name":"runtime"'*|*'"kind":"layer"'*'"name":"server"'*|*'"kind":"kernel"'*|*'"kind":"stub"'*|*'"kind":"initramfs-core"'*) ;; *) rm -f "$rec" ;; esac
    done
    timed cold "$d"
    sleep 2   # the stat cache trusts stats older than itself
    "$FUSE" build "$d" >/dev/null 2>&1
    timed noop "$d"
    "$FUSE" push "$d/fuse-out/$ex-1.0.0.img" "127.0.0.1:$port/bench/$ex:v1" --insecure >/dev/null 2>"$work/push1.log"
    change "$ex"
    timed code "$d"
    cold=$t_cold noop=$t_noop code=$t_code
    "$FUSE" push "$d/fuse-out/$ex-1.0.0.img" "127.0.0.1:$port/bench/$ex:v2" --insecure >/dev/null 2>"$work/push2.log"
    p1=$(sed -n 's/.*push: \([0-9]*\) bytes.*/\1/p' "$work/push1.log" | tail -1)
    p2=$(sed -n 's/.*push: \([0-9]*\) bytes.*/\1/p' "$work/push2.log" | tail -1)
    img=$(stat -c %s "$d/fuse-out/$ex-1.0.0.img")
    printf '%-6s app %d files %d MB; image %.1f MB\n' "$ex" "$files" "$mb" "$(echo "$img / 1048576" | bc -l)"
    printf '       cold %6.2fs   no-op %5.2fs (%.3fx, goal 0.02)   code change %5.2fs (%.3fx, goal 0.1)\n' \
        "$cold" "$noop" "$(echo "$noop / $cold" | bc -l)" "$code" "$(echo "$code / $cold" | bc -l)"
    printf '       cpu  %6.2fs   no-op %5.2fs (%.3fx)                code change %5.2fs (%.3fx)\n' \
        "$c_cold" "$c_noop" "$(echo "$c_noop / $c_cold" | bc -l)" "$c_code" "$(echo "$c_code / $c_cold" | bc -l)"
    if [ -n "${BENCH_LOGS:-}" ]; then mkdir -p "$BENCH_LOGS/$ex"; cp "$work"/*.log "$work"/*.json "$BENCH_LOGS/$ex/"; fi
    echo "       layers (cold; * = built): $(layer_sizes "$work/cold.json")"
    echo "       layers (code change):     $(layer_sizes "$work/code.json")"
    printf '       push: first %.1f MB, code change %.2f MB (goal 5)\n' "$(echo "${p1:-0} / 1000000" | bc -l)" "$(echo "${p2:-0} / 1000000" | bc -l)"
done
