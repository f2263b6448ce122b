#!/bin/sh
# Builds in $1: fat.jar, a Spring Boot-style executable jar (launcher at the root,
# BOOT-INF/classes, BOOT-INF/lib/greet.jar with JNI code linking zlib), and lib/extra.jar
# beside it, named by fat.jar's Class-Path. No network.
set -eu
src=$(cd "$(dirname "$0")" && pwd)
out=$1
w=$(mktemp -d)
mkdir -p "$w/lib/native" "$w/root/BOOT-INF/classes" "$w/root/BOOT-INF/lib" "$w/launcher" "$w/extra" "$out/lib"
jh=$(dirname "$(dirname "$(readlink -f "$(command -v javac)")")")
gcc -shared -fPIC -O2 -I"$jh/include" -I"$jh/include/linux" -o "$w/lib/native/libgreet.so" "$src/lib/greet.c" -lz
javac --release 17 -d "$w/lib" "$src/lib/greet/Greeter.java"
(cd "$w/lib" && jar --create --file "$w/root/BOOT-INF/lib/greet.jar" greet native)
javac --release 17 -d "$w/extra" "$src/extra/extra/Dates.java"
(cd "$w/extra" && jar --create --file "$out/lib/extra.jar" extra)
javac --release 17 -cp "$w/lib:$w/extra" -d "$w/root/BOOT-INF/classes" "$src/app/demo/App.java"
javac --release 17 -d "$w/root" "$src/launcher/org/fusetest/loader/JarLauncher.java"
printf 'Main-Class: org.fusetest.loader.JarLauncher\nStart-Class: demo.App\nClass-Path: lib/extra.jar\n' > "$w/manifest.txt"
(cd "$w/root" && jar --create --no-compress --file "$out/fat.jar" --manifest "$w/manifest.txt" .)
rm -rf "$w"
