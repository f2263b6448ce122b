#!/bin/sh
# Boot images under QEMU + OVMF (TCG, virtio disk and NIC) and print, per image, the
# initramfs size from its image.json (beside the .img) and the init's time from its first
# console line to the app's start (host clock, console lines stamped as they arrive; the
# new init also prints its own figure, "N ms after fuse-init started"), and the modules
# it loaded.  usage: bench/boot-drivers.sh IMAGE.img [IMAGE.img...]
set -eu
for img in "$@"; do
    json="${img%.img}.json"
    dir=$(mktemp -d)
    cp /usr/share/OVMF/OVMF_VARS_4M.fd "$dir/vars.fd"
    mkfifo "$dir/out"
    qemu-system-x86_64 -machine q35 -accel tcg -m 512 -display none \
        -nodefaults -no-reboot -serial stdio \
        -drive if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd \
        -drive "if=pflash,format=raw,unit=1,file=$dir/vars.fd" \
        -drive "if=virtio,format=raw,readonly=on,file=$img" \
        -netdev user,id=n0 -device virtio-net-pci,netdev=n0 </dev/null >"$dir/out" 2>/dev/null &
    qemu=$!
    while IFS= read -r line; do
        printf '%s %s\n' "$(date +%s.%N)" "$line"
        case "$line" in *"fuse-init: starting /"*) break ;; esac
    done <"$dir/out" >"$dir/console"
    kill "$qemu" 2>/dev/null || true
    wait "$qemu" 2>/dev/null || true
    awk -v img="$img" -v initrd="$(grep -o '"initramfs_size": [0-9]*' "$json" | grep -o '[0-9]*$')" '
        /fuse-init: starting \(fuse-init/ { t0 = $1 }
        /fuse-init: starting \// { t1 = $1; sub(/^[^ ]* /, ""); app = $0 }
        /fuse-init: loaded/ { sub(/^[^ ]* /, ""); print "  " $0 }
        END { printf "%s: initramfs %d bytes, init start to app %.2f s (host clock)\n  %s\n", img, initrd, t1 - t0, app }
    ' "$dir/console"
    rm -rf "$dir"
done
