#!/bin/sh
# The main job, end to end: set up, build fuse, build the example image, boot it, talk to it.
set -eu
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release
examples/hello/build.sh
./target/release/fuse build examples/hello
IMG=examples/hello/fuse-out/hello-1.0.0.img
PORT=18080
./target/release/fuse run "$IMG" -p "$PORT:8080" &
RUN=$!
trap 'kill $RUN 2>/dev/null || true' EXIT
i=0
until curl -fsS "http://127.0.0.1:$PORT/"; do
    i=$((i + 1))
    [ "$i" -lt 240 ] || { echo "demo: no answer from the image" >&2; exit 1; }
    sleep 1
done
echo "demo: the image answered; asking the app to exit (the VM powers off)" >&2
curl -fsS "http://127.0.0.1:$PORT/exit?code=0" || true
wait $RUN
trap - EXIT
