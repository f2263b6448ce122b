#!/bin/sh
# Build hello.jar (executable: Main-Class hello.Main) with the JDK's javac and jar.
set -eu
cd "$(dirname "$0")"
rm -rf classes && mkdir classes
javac --release 17 -d classes src/hello/Main.java
jar --create --file hello.jar --main-class hello.Main -C classes .
rm -rf classes
echo "examples/jar-hello/hello.jar"
