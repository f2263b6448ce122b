#!/bin/sh
# Build the example app as a static binary (needs gcc and the glibc static library, libc6-dev).
set -eu
cd "$(dirname "$0")"
gcc -static -Os -s -o hello hello.c
