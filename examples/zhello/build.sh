#!/bin/sh
# Build the dynamic example app (needs gcc, zlib1g-dev and libssl-dev).
set -eu
cd "$(dirname "$0")"
gcc -O2 -o zhello zhello.c -lz -lssl -lcrypto
