#!/bin/sh
# Install what fuse needs to build, boot and test images (Debian/Ubuntu; run as root or with sudo).
set -eu
SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"
# Runtime: QEMU + OVMF to boot images, the archive keyring, gcc for the examples.
# Tests: the reference tools each cross-check uses (a test whose tool is missing fails when
# CI is set), the JDK and Tomcat for the Java examples, a loopback OCI registry, umoci and
# skopeo (container images made and copied for `[app] kind = "oci"`), mmdebstrap (the root
# file system of the container image the oci tests build). arm64 images (docs/arm64.md):
# Debian's rustc-web with the aarch64 standard library (multiarch) and the aarch64 cross gcc
# build the arm64 init; qemu-system-arm and AAVMF boot arm64 images.
PKGS="qemu-system-x86 qemu-utils ovmf debian-archive-keyring gcc libc6-dev zlib1g-dev libssl-dev gnupg \
squashfs-tools mtools dosfstools fdisk gdisk cpio binutils curl openssl docker-registry \
openjdk-17-jdk-headless libtomcat10-java systemd-boot-efi sbsigntool cryptsetup-bin \
g++ python3-dev python3-venv node-gyp libnode-dev \
libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients haproxy umoci skopeo mmdebstrap \
rustc-web libstd-rust-web-dev:arm64 gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-system-arm qemu-efi-aarch64"
# node-gyp and libnode-dev (the Node addon test) conflict with a nodejs from NodeSource,
# which ships both itself (npm's node-gyp, /usr/include/node): keep that nodejs then.
if dpkg-query -W -f='${Version}' nodejs 2>/dev/null | grep -q nodesource; then
    echo "setup: nodejs from NodeSource installed: not installing node-gyp libnode-dev" >&2
    PKGS=$(echo "$PKGS" | sed 's/ node-gyp libnode-dev//')
fi
update=""
if ! dpkg --print-foreign-architectures | grep -qx arm64; then
    $SUDO dpkg --add-architecture arm64
    update=1
fi
missing=""
for p in $PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ] || [ -n "$update" ]; then
    echo "setup: installing$missing" >&2
    $SUDO apt-get update -q
    # qemu-utils must match qemu-system-x86's version (a newer qemu-utils from backports
    # Breaks the distribution's qemu-system-common): ask for the same version.
    case "$missing" in
    *qemu-system-x86*)
        v=$(apt-cache policy qemu-system-x86 | awk '/Candidate:/ {print $2}')
        missing=$(echo "$missing" | sed 's/ qemu-utils\b//')
        missing="$missing qemu-utils=$v"
        ;;
    esac
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --allow-downgrades $missing
fi
# libvirt without a service manager (fuse deploy's tests start `virtlogd -d` and
# `libvirtd -d` themselves): what the packages' own scripts would create.
if command -v libvirtd >/dev/null; then
    getent group kvm >/dev/null || $SUDO groupadd -r kvm
    getent group libvirt-qemu >/dev/null || $SUDO groupadd -r libvirt-qemu
    id libvirt-qemu >/dev/null 2>&1 || $SUDO useradd -r -g kvm -d /var/lib/libvirt \
        -s /usr/sbin/nologin libvirt-qemu
    $SUDO mkdir -p /var/log/libvirt
    # /dev/kvm as udev's rule would leave it (root:kvm 0660). Without it libvirt finds the
    # KVM it probed as root unusable by libvirt-qemu, calls its capability cache outdated and
    # probes QEMU again on every `virsh create`: 65 s per server instead of 1 s.
    if [ -c /dev/kvm ]; then
        $SUDO chgrp kvm /dev/kvm && $SUDO chmod 0660 /dev/kvm
    fi
fi
command -v cargo >/dev/null || { echo "setup: cargo (Rust stable) is required" >&2; exit 1; }
# The AWS deploy tests talk to a local AWS API emulator, moto's server (PyPI), pinned, in
# its own venv (Debian's python3 is externally managed), on PATH as moto_server.
MOTO_VERSION=5.2.1
if ! command -v moto_server >/dev/null 2>&1; then
    echo "setup: installing moto[server]==$MOTO_VERSION into /opt/fuse-moto" >&2
    $SUDO python3 -m venv /opt/fuse-moto
    $SUDO /opt/fuse-moto/bin/pip install -q "moto[server]==$MOTO_VERSION"
    $SUDO ln -sf /opt/fuse-moto/bin/moto_server /usr/local/bin/moto_server
fi
