#!/bin/sh
# Builds a busybox initramfs (newc cpio) for booting a stock kernel.
# Usage: scripts/mkinitramfs.sh OUT [INIT]
#   OUT   the archive to write
#   INIT  a script to use as /init (default: a login-free busybox shell that
#         powers the machine off when the shell exits)
set -eu
out=$1
init=${2:-}
busybox=${BUSYBOX:-/bin/busybox}
[ -x "$busybox" ] || { echo "mkinitramfs: $busybox not found (apt-get install busybox-static)" >&2; exit 1; }
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
mkdir -p "$dir/bin" "$dir/dev" "$dir/proc" "$dir/sys" "$dir/tmp"
cp "$busybox" "$dir/bin/busybox"
if [ -n "$init" ]; then
    cp "$init" "$dir/init"
else
    cat > "$dir/init" <<'INIT'
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
echo "Tsubame: busybox is up ($(nproc) CPUs, $(grep MemTotal /proc/meminfo | tr -s ' '))."
echo "Type 'poweroff -f' (or exit the shell) to stop the VM."
setsid cttyhack sh
poweroff -f
INIT
fi
chmod 755 "$dir/init"
(cd "$dir" && find . | "$busybox" cpio -o -H newc 2>/dev/null) > "$out"
