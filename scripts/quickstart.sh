#!/usr/bin/env bash
# The main job: install Debian's stock cloud kernel and busybox, build
# Tsubame, and boot Linux to a shell on this terminal's serial console.
# Extra arguments go to `tsubame run` (e.g. --cpus 1 --stats).
set -euo pipefail
cd "$(dirname "$0")/.."
sudo=""
[ "$(id -u)" -eq 0 ] || sudo=sudo
if ! ls /boot/vmlinuz-*-cloud-amd64 >/dev/null 2>&1 || [ ! -x /bin/busybox ]; then
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq linux-image-cloud-amd64 busybox-static
fi
cargo build --release
scripts/mkinitramfs.sh target/initramfs.cpio
kernel=$(ls /boot/vmlinuz-*-cloud-amd64 | sort -V | tail -n 1)
exec target/x86_64-unknown-linux-gnu/release/tsubame run --kernel "$kernel" --initrd target/initramfs.cpio \
    --cpus 2 --memory 256 "$@"
