#!/bin/sh
# Size figures of the example images, part by part, against the targets:
#   static app image (kernel included) <= 16 MB; libraries layer of the dynamic C app <= 4 MB.
set -eu
cd "$(dirname "$0")/.."
cargo build --release -q
examples/hello/build.sh
examples/zhello/build.sh
fail=0
for ex in hello zhello; do
    echo "== $ex"
    ./target/release/fuse build "examples/$ex" 2>"/tmp/fuse-size-$ex.log" >/dev/null
    grep -E "^\S*\s+(layer|kernel|initramfs|esp|gpt)" "/tmp/fuse-size-$ex.log" | sed 's/^[^ ]* *//' || true
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
exit $fail
