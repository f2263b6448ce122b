#!/bin/sh
# Nothing to compile: the app directory is the artifact. Checks that it parses.
set -eu
cd "$(dirname "$0")"
if command -v python3 >/dev/null; then python3 -m py_compile app/hello/__main__.py && rm -rf app/hello/__pycache__; fi
echo "examples/python-hello/app"
