#!/usr/bin/env bash
# Builds the Kubernetes node variant of the end-to-end tests' OS image from the base image (tests/os-image/build.sh,
# built first if missing): the same Debian 12 plus Debian's containerd and runc, and the real kubelet and kubeadm from
# $KUBE_BIN (built from Go modules at the tests' Kubernetes version by tests/kube/build.sh), with the systemd unit and
# kubeadm drop-in that Kubernetes' own packages install, the kernel settings kubeadm's preflight checks ask for, and
# containerd on the systemd cgroup driver (kubeadm's default for the kubelet), and net-tools (cloud-init's ifupdown
# configuration adds static routes with `route`). Output in $OUT (default
# $KILN_CACHE/os-image/node-<key>/): debian.qcow2 and SHA256SUMS, cached by both scripts' content and the binaries'
# versions. Needs root (a loop mount, chroot). Packages come only from Debian's archive.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
CACHE=${KILN_CACHE:-$ROOT/.cache}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
log() { printf 'node-image: %s\n' "$*" >&2; }
for b in kubelet kubeadm; do
  [ -x "${KUBE_BIN:-}/$b" ] || { log "no $b in KUBE_BIN=${KUBE_BIN:-} (run tests/kube/build.sh)"; exit 1; }
done
KEY=node-$({ cat "$0" "$HERE/build.sh"; "$KUBE_BIN/kubelet" --version; "$KUBE_BIN/kubeadm" version -o short; } \
  | sha256sum | cut -c1-12)
OUT=${OUT:-$CACHE/os-image/$KEY}
if [ -f "$OUT/SHA256SUMS" ]; then echo "$OUT"; exit 0; fi
BASE=$(KILN_CACHE=$CACHE bash "$HERE/build.sh" | tail -1)

WORK=$(mktemp -d /var/tmp/kiln-node-image.XXXXXX)
MNT=$WORK/mnt
LOOP=
cleanup() {
  for m in dev/pts dev sys proc ""; do
    mountpoint -q "$MNT/$m" 2>/dev/null && umount "$MNT/$m" 2>/dev/null || true
  done
  [ -n "$LOOP" ] && losetup -d "$LOOP" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
mkdir -p "$OUT" "$MNT"

log "from $BASE"
DISK=$WORK/debian.raw
cp --sparse=always "$BASE/debian.raw" "$DISK"
P2_START=$(sgdisk -i2 "$DISK" | sed -n 's/^First sector: \([0-9]*\).*/\1/p')
LOOP=$(losetup -f --show -o $((P2_START * 512)) "$DISK")
mount "$LOOP" "$MNT"
mount -t proc proc "$MNT/proc"
mount -t sysfs sys "$MNT/sys"
mount --bind /dev "$MNT/dev"
mount --bind /dev/pts "$MNT/dev/pts"
R=$MNT

log "containerd and runc from Debian"
cp "$R/etc/resolv.conf" "$WORK/resolv.conf" 2>/dev/null || : > "$WORK/resolv.conf"
cp -L /etc/resolv.conf "$R/etc/resolv.conf"
printf '#!/bin/sh\nexit 101\n' > "$R/usr/sbin/policy-rc.d"
chmod 0755 "$R/usr/sbin/policy-rc.d"
printf 'deb %s bookworm main\n' "$MIRROR" > "$R/etc/apt/sources.list"
chroot "$R" apt-get -q update >&2
DEBIAN_FRONTEND=noninteractive chroot "$R" apt-get -q install -y --no-install-recommends \
  containerd runc iptables conntrack kmod net-tools >&2
chroot "$R" apt-get clean
rm -rf "$R"/var/lib/apt/lists/* "$R/usr/sbin/policy-rc.d"
cp "$WORK/resolv.conf" "$R/etc/resolv.conf"

log "kubelet and kubeadm ($("$KUBE_BIN/kubelet" --version))"
for b in kubelet kubeadm; do
  install -m 0755 "$KUBE_BIN/$b" "$R/usr/bin/$b"
  cmp "$KUBE_BIN/$b" "$R/usr/bin/$b"
done
cat > "$R/lib/systemd/system/kubelet.service" <<'UNIT'
[Unit]
Description=kubelet: The Kubernetes Node Agent
Documentation=https://kubernetes.io/docs/
Wants=network-online.target
After=network-online.target

[Service]
ExecStart=/usr/bin/kubelet
Restart=always
StartLimitInterval=0
RestartSec=10

[Install]
WantedBy=multi-user.target
UNIT
mkdir -p "$R/etc/systemd/system/kubelet.service.d" "$R/etc/systemd/system/multi-user.target.wants" \
  "$R/etc/containerd" "$R/etc/kubernetes/manifests" "$R/etc/modules-load.d" "$R/etc/sysctl.d"
cat > "$R/etc/systemd/system/kubelet.service.d/10-kubeadm.conf" <<'UNIT'
[Service]
Environment="KUBELET_KUBECONFIG_ARGS=--bootstrap-kubeconfig=/etc/kubernetes/bootstrap-kubelet.conf --kubeconfig=/etc/kubernetes/kubelet.conf"
Environment="KUBELET_CONFIG_ARGS=--config=/var/lib/kubelet/config.yaml"
EnvironmentFile=-/var/lib/kubelet/kubeadm-flags.env
EnvironmentFile=-/etc/default/kubelet
ExecStart=
ExecStart=/usr/bin/kubelet $KUBELET_KUBECONFIG_ARGS $KUBELET_CONFIG_ARGS $KUBELET_KUBEADM_ARGS $KUBELET_EXTRA_ARGS
UNIT
ln -sf /lib/systemd/system/kubelet.service "$R/etc/systemd/system/multi-user.target.wants/kubelet.service"
cat > "$R/etc/containerd/config.toml" <<'TOML'
version = 2
[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"
[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
  SystemdCgroup = true
TOML
printf 'overlay\nbr_netfilter\n' > "$R/etc/modules-load.d/kubernetes.conf"
printf 'net.ipv4.ip_forward = 1\nnet.bridge.bridge-nf-call-iptables = 1\nnet.bridge.bridge-nf-call-ip6tables = 1\n' \
  > "$R/etc/sysctl.d/90-kubernetes.conf"

sync -f "$R/usr/bin/kubelet"
for m in dev/pts dev sys proc ""; do umount "$MNT/$m"; done
losetup -d "$LOOP"
LOOP=
# The written filesystem, checked from the image file itself: consistent, with the binaries in full.
LOOP=$(losetup -f --show -r -o $((P2_START * 512)) "$DISK")
e2fsck -fn "$LOOP" >&2 || { log "the node root filesystem is damaged"; exit 1; }
for b in kubelet kubeadm; do
  size=$(debugfs -R "stat /usr/bin/$b" "$LOOP" 2>/dev/null | sed -n 's/.*Size: \([0-9]*\).*/\1/p' | head -1)
  [ "$size" = "$(stat -c %s "$KUBE_BIN/$b")" ] || { log "/usr/bin/$b in the image has $size bytes"; exit 1; }
done
losetup -d "$LOOP"
LOOP=
log "qcow2"
qemu-img convert -c -f raw -O qcow2 "$DISK" "$WORK/debian.qcow2"
mv "$WORK/debian.qcow2" "$OUT/"
(cd "$OUT" && sha256sum debian.qcow2 > SHA256SUMS)
log "done: $OUT ($(du -sh "$OUT" | cut -f1))"
echo "$OUT"
