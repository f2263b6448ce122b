#!/bin/sh
# Size figures of the example images, part by part, against the targets:
#   static app image (kernel included) <= 16 MB; libraries layer of the dynamic C app <= 4 MB;
#   runtimes (raw disk): jar <= 32 MB, war + Tomcat <= 50 MB (trimmed JREs), node <= 70 MB,
#   python <= 50 MB. Java examples also list the JDK modules of their runtime layer, and are
#   built a second time with the full JRE (`[runtime] modules = "all"`): before and after
#   trimming. Start time to HTTP under TCG, trimmed vs full: bench/boot.sh, JRE=all bench/boot.sh.
set -eu
cd "$(dirname "$0")/.."
cargo build --release -q
examples/hello/build.sh
examples/zhello/build.sh
fail=0
for ex in hello zhello; do
    echo "== $ex"
    ./target/release/fuse build "examples/$ex" 2>"/tmp/fuse-size-$ex.log" >/dev/null
    grep -E " (layer [a-z]+|kernel|initramfs|esp|gpt and alignment) +[0-9]+ bytes" "/tmp/fuse-size-$ex.log" | sed 's/^.*INFO *//' || true
    img="examples/$ex/fuse-out/$ex-1.0.0.img"
    size=$(stat -c %s "$img")
    echo "disk: $size bytes"
    case $ex in
        hello) [ "$size" -le 16000000 ] && echo "target <= 16 MB: ok" || { echo "target <= 16 MB: FAILED"; fail=1; } ;;
        zhello)
            base=$(python3 -c "import json,sys; print(json.load(open('examples/zhello/fuse-out/zhello-1.0.0.json'))['layers'][0]['size'])")
            echo "libraries layer: $base bytes"
            [ "$base" -le 4000000 ] && echo "target <= 4 MB: ok" || { echo "target <= 4 MB: FAILED"; fail=1; } ;;
    esac
done
for ex in python-hello node-hello jar-hello war-hello; do
    echo "== $ex"
    "examples/$ex/build.sh" >/dev/null
    ./target/release/fuse build "examples/$ex" 2>"/tmp/fuse-size-$ex.log" >/dev/null
    python3 - "examples/$ex/fuse-out/$ex-1.0.0.json" <<'PY'
import json, sys
m = json.load(open(sys.argv[1]))
for l in m["layers"]:
    print("layer %-8s %10d bytes (%5.1f MiB), %d packages" % (l["name"], l["size"], l["size"] / 1048576, len(l["packages"])))
    if l.get("java_modules"):
        print("  JDK modules (%d): %s" % (len(l["java_modules"]), " ".join(l["java_modules"])))
PY
    size=$(stat -c %s "examples/$ex/fuse-out/$ex-1.0.0.img")
    case $ex in python-hello) t=50;; node-hello) t=70;; jar-hello) t=32;; war-hello) t=50;; esac
    echo "disk: $size bytes ($(awk -v s="$size" 'BEGIN{printf "%.1f", s/1e6}') MB)"
    [ "$size" -le $((t * 1000000)) ] && echo "target <= $t MB: ok" || { echo "target <= $t MB: FAILED"; fail=1; }
    case $ex in
    jar-hello|war-hello)
        full=$(mktemp -d)
        cp -r "examples/$ex/." "$full/"
        rm -rf "$full/fuse-out" "$full/fuse.lock"
        sed -i 's/^java *=.*/&\nmodules = "all"/' "$full/fuse.toml"
        ./target/release/fuse build "$full" 2>"/tmp/fuse-size-$ex-full.log" >/dev/null
        python3 - "$full/fuse-out/$ex-1.0.0.json" <<'PY'
import json, sys
m = json.load(open(sys.argv[1]))
for l in m["layers"]:
    if l["name"] == "runtime":
        print("before trimming: layer runtime %10d bytes (%5.1f MiB), full JRE" % (l["size"], l["size"] / 1048576))
PY
        fsize=$(stat -c %s "$full/fuse-out/$ex-1.0.0.img")
        echo "before trimming: disk: $fsize bytes ($(awk -v s="$fsize" 'BEGIN{printf "%.1f", s/1e6}') MB)"
        rm -rf "$full"
        ;;
    esac
done
exit $fail
