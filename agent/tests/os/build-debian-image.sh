#!/bin/bash
# Build a small Debian bookworm disk image with cloud-init for the agent's end-to-end test, cached in OUTDIR:
#   OUTDIR/debian.qcow2 2 GiB disk, MBR, one ext4 partition (root, label kiln-root), no bootloader
#   OUTDIR/vmlinuz, OUTDIR/initrd.img   the image's own kernel + initramfs (the test boots them with root=/dev/vda1)
# cloud-init only looks for the ConfigDrive datasource, so it finds the config-2 partition kiln-agent adds.
# Needs: debootstrap, mke2fs (-d), sfdisk. Network: deb.debian.org only.
set -euo pipefail
OUT=$(realpath -m "${1:?outdir}")
[ -s "$OUT/debian.qcow2" ] && [ -s "$OUT/vmlinuz" ] && [ -s "$OUT/initrd.img" ] && exit 0
mkdir -p "$OUT"
W=$(mktemp -d "$OUT/build.XXXXXX")
cleanup() {
  awk -v w="$W/" 'index($2, w) == 1 {print $2}' /proc/mounts | sort -r | xargs -r umount -l || true
  rm -rf "$W"
}
trap cleanup EXIT
R=$W/root
LOG=$OUT/build.log
debootstrap --variant=minbase --include=systemd-sysv,udev,initramfs-tools,ifupdown,isc-dhcp-client,iproute2,netbase \
  bookworm "$R" http://deb.debian.org/debian >"$LOG" 2>&1 || { tail -30 "$LOG" "$R/debootstrap/debootstrap.log"; exit 1; }
# The kernel and cloud-init through apt, which orders the configuration of cloud-init's python stack correctly.
mount -t proc proc "$R/proc"
chroot "$R" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
  linux-image-amd64 cloud-init >>"$LOG" 2>&1 || { tail -30 "$LOG"; exit 1; }
umount "$R/proc"
echo kiln-debian > "$R/etc/hostname"
echo "LABEL=kiln-root / ext4 defaults 0 1" > "$R/etc/fstab"
cat > "$R/etc/cloud/cloud.cfg.d/99-kiln.cfg" <<'CFG'
datasource_list: [ ConfigDrive, None ]
CFG
# No password anywhere; the serial console shows boot and cloud-init output.
chroot "$R" systemctl enable serial-getty@ttyS0.service >/dev/null 2>&1 || true
rm -rf "$R/var/cache/apt/archives"/*.deb "$R/var/lib/apt/lists"/*
cp "$R"/boot/vmlinuz-* "$W/vmlinuz"
cp "$R"/boot/initrd.img-* "$W/initrd.img"
# root filesystem image (populated without mounting), then the disk: 1 MiB gap + partition 1.
truncate -s 2047M "$W/root.ext4"
mke2fs -q -t ext4 -L kiln-root -d "$R" "$W/root.ext4"
truncate -s 2G "$W/debian.raw"
echo 'start=2048, type=83' | sfdisk -q "$W/debian.raw"
dd if="$W/root.ext4" of="$W/debian.raw" bs=1M seek=1 conv=notrunc,sparse status=none
mv "$W/vmlinuz" "$W/initrd.img" "$OUT/"
qemu-img convert -q -f raw -O qcow2 "$W/debian.raw" "$W/debian.qcow2"
mv "$W/debian.qcow2" "$OUT/debian.qcow2"
echo "debian image ready in $OUT"
