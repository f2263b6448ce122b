#!/bin/sh
# Install what fuse needs to build, boot and test images (Debian/Ubuntu; run as root or with sudo).
set -eu
SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"
PKGS="qemu-system-x86 ovmf debian-archive-keyring gcc libc6-dev zlib1g-dev libssl-dev gnupg squashfs-tools mtools dosfstools fdisk gdisk cpio binutils curl docker-registry openjdk-17-jdk-headless libtomcat10-java"
missing=""
for p in $PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
    echo "setup: installing$missing" >&2
    $SUDO apt-get update -q
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q $missing
fi
command -v cargo >/dev/null || { echo "setup: cargo (Rust stable) is required" >&2; exit 1; }
