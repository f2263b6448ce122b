#!/bin/sh
# Nothing to compile: the app directory (with node_modules, when it has dependencies, as
# `npm ci --omit=dev` leaves it) is the artifact.
set -eu
cd "$(dirname "$0")"
echo "examples/node-hello/app"
