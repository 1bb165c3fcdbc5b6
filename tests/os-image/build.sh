#!/usr/bin/env bash
# Builds the end-to-end tests' OS image: Debian 12 (debootstrap) with cloud-init reading the OpenStack config drive,
# bootable by BIOS (extlinux + gptmbr.bin, legacy-bootable root) and by UEFI (a standalone GRUB at the removable-media
# path of an ESP). Outputs in $OUT (default $KILN_CACHE/os-image/<key>/), cached by this script's content:
#   debian.raw         1.5 GiB raw disk image (GPT: 1 = ESP 64 MiB, 2 = root ext4 labelled kilnroot)
#   debian.qcow2       compressed qcow2 of the same disk
#   debian.raw.zst     zstd of the raw image
#   SHA256SUMS         sha256sum-style digests of the three files
# Needs root (debootstrap, a loop mount for extlinux). Packages come only from Debian's archive.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
CACHE=${KILN_CACHE:-$ROOT/.cache}
KEY=$(sha256sum "$0" | cut -c1-12)
OUT=${OUT:-$CACHE/os-image/$KEY}
if [ -f "$OUT/SHA256SUMS" ]; then echo "$OUT"; exit 0; fi
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
log() { printf 'os-image: %s\n' "$*" >&2; }
WORK=$(mktemp -d /var/tmp/kiln-os-image.XXXXXX)
MNT=$WORK/mnt
cleanup() {
  mountpoint -q "$MNT" && umount -R "$MNT" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
mkdir -p "$OUT" "$WORK/rootfs" "$MNT"

# debootstrap is the slow part (downloads ~150 MiB): cache its tarball of packages.
INCLUDE=linux-image-cloud-amd64,python3-cffi-backend,systemd-sysv,udev,cloud-init,ifupdown,isc-dhcp-client,curl,ca-certificates,e2fsprogs,iproute2,netbase,openssh-server
TARBALL=$CACHE/os-image/debootstrap-bookworm-$(echo "$INCLUDE" | sha256sum | cut -c1-12).tgz
if [ ! -f "$TARBALL" ]; then
  log "downloading packages (debootstrap --make-tarball)"
  debootstrap --variant=minbase --include=$INCLUDE --make-tarball="$TARBALL.tmp" bookworm "$WORK/tb" "$MIRROR" >&2
  mv "$TARBALL.tmp" "$TARBALL"
  rm -rf "$WORK/tb"
fi
log "debootstrap from the cached tarball"
debootstrap --variant=minbase --include=$INCLUDE --unpack-tarball="$TARBALL" bookworm "$WORK/rootfs" "$MIRROR" >&2 || {
  cp "$WORK/rootfs/debootstrap/debootstrap.log" "$CACHE/os-image/debootstrap-failed.log" 2>/dev/null
  log "debootstrap failed; see $CACHE/os-image/debootstrap-failed.log"; exit 1; }

R=$WORK/rootfs
echo kiln-test > "$R/etc/hostname"
printf 'LABEL=kilnroot / ext4 defaults 0 1\n' > "$R/etc/fstab"
printf 'auto lo\niface lo inet loopback\nsource /etc/network/interfaces.d/*\n' > "$R/etc/network/interfaces"
mkdir -p "$R/etc/cloud/cloud.cfg.d"
cat > "$R/etc/cloud/cloud.cfg.d/90-kiln.cfg" <<'CFG'
# kiln test image: only the OpenStack config drive (label config-2) written by kiln-agent, then nothing.
datasource_list: [ ConfigDrive, None ]
CFG
# The console is the serial port (the tests read it); no password logins.
ln -sf /lib/systemd/system/serial-getty@.service "$R/etc/systemd/system/getty.target.wants/serial-getty@ttyS0.service" 2>/dev/null || true
chroot "$R" passwd -l root >/dev/null
KVER=$(ls "$R/boot" | sed -n 's/^vmlinuz-//p' | sort -V | tail -1)
log "kernel $KVER"
CMDLINE="root=LABEL=kilnroot ro console=ttyS0,115200 net.ifnames=0"

# Disk layout (GPT): 1 = ESP (64 MiB), 2 = root (legacy BIOS bootable, attribute bit 2).
DISK=$WORK/debian.raw
truncate -s 1536M "$DISK"
sgdisk -n1:2048:+64M -t1:ef00 -c1:ESP -n2:0:0 -t2:8300 -c2:root "$DISK" >/dev/null 2>&1
sgdisk -A2:set:2 "$DISK" >/dev/null 2>&1
P2_START=$(sgdisk -i2 "$DISK" | sed -n 's/^First sector: \([0-9]*\).*/\1/p')
P2_END=$(sgdisk -i2 "$DISK" | sed -n 's/^Last sector: \([0-9]*\).*/\1/p')
P2_SIZE=$(( (P2_END - P2_START + 1) * 512 ))

log "root filesystem"
# extlinux needs an ext4 without 64bit/metadata_csum_seed features.
truncate -s $P2_SIZE "$WORK/root.img"
mkfs.ext4 -q -F -L kilnroot -O ^64bit,^metadata_csum_seed -d "$R" "$WORK/root.img"
mount -o loop "$WORK/root.img" "$MNT"
mkdir -p "$MNT/boot/extlinux"
cat > "$MNT/boot/extlinux/extlinux.conf" <<CFG
DEFAULT debian
TIMEOUT 1
SERIAL 0 115200
LABEL debian
  KERNEL /boot/vmlinuz-$KVER
  INITRD /boot/initrd.img-$KVER
  APPEND $CMDLINE
CFG
extlinux --install "$MNT/boot/extlinux" >&2
umount "$MNT"
dd if="$WORK/root.img" of="$DISK" bs=1M seek=$(( P2_START * 512 / 1048576 )) conv=notrunc,sparse status=none
dd if=/usr/lib/syslinux/mbr/gptmbr.bin of="$DISK" bs=440 count=1 conv=notrunc status=none

log "ESP with a standalone GRUB (UEFI)"
cat > "$WORK/grub.cfg" <<CFG
set timeout=1
serial --unit=0 --speed=115200
terminal_input serial console
terminal_output serial console
search --no-floppy --label --set=root kilnroot
linux /boot/vmlinuz-$KVER $CMDLINE
initrd /boot/initrd.img-$KVER
boot
CFG
grub-mkstandalone -O x86_64-efi -o "$WORK/BOOTX64.EFI" --modules="part_gpt ext2 search search_label linux serial" \
  "boot/grub/grub.cfg=$WORK/grub.cfg"
truncate -s 64M "$WORK/esp.img"
mkfs.fat -F 32 -n ESP "$WORK/esp.img" >/dev/null
mmd -i "$WORK/esp.img" ::/EFI ::/EFI/BOOT
mcopy -i "$WORK/esp.img" "$WORK/BOOTX64.EFI" ::/EFI/BOOT/BOOTX64.EFI
dd if="$WORK/esp.img" of="$DISK" bs=1M seek=1 conv=notrunc status=none

log "formats"
qemu-img convert -c -f raw -O qcow2 "$DISK" "$WORK/debian.qcow2"
zstd -q -T0 -3 "$DISK" -o "$WORK/debian.raw.zst"
mv "$DISK" "$WORK/debian.qcow2" "$WORK/debian.raw.zst" "$OUT/"
(cd "$OUT" && sha256sum debian.raw debian.qcow2 debian.raw.zst > SHA256SUMS)
log "done: $OUT ($(du -sh "$OUT" | cut -f1))"
echo "$OUT"
