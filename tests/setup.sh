#!/usr/bin/env bash
# Installs everything kiln's demo and tests need, idempotently; fast (a few seconds) when all is present.
#   apt packages (QEMU, iPXE, OVMF, BMC emulators, DHCP/TFTP clients, PostgreSQL, libvirt, ...)
#   a Python venv under .cache/venv with sushy-tools and virtualbmc (pinned)
# Nothing is downloaded from anywhere but Debian's and PyPI's package registries.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
CACHE=${KILN_CACHE:-$ROOT/.cache}
mkdir -p "$CACHE"
# The physical path: a clone's .cache is a symlink into a cache shared by clones (.ci/run), and what is built there
# (the venv's scripts name their interpreter by absolute path) must not depend on the clone that built it.
CACHE=$(cd "$CACHE" && pwd -P)
log() { printf 'setup: %s\n' "$*" >&2; }

APT_PACKAGES=(
  qemu-system-x86 qemu-utils ipxe-qemu ipxe ovmf seabios
  busybox-static cpio kmod
  openipmi ipmitool
  iproute2 tftp-hpa udhcpc isc-dhcp-client dnsmasq-base
  kea-dhcp4-server kea-admin
  postgresql
  libvirt-daemon-system libvirt-dev pkg-config
  debootstrap dosfstools mtools xorriso fdisk gdisk e2fsprogs zstd xz-utils bzip2
  extlinux syslinux-common grub-efi-amd64-bin grub-pc-bin grub-common
  curl socat python3-venv python3-dev gcc openssl
  chromium
  gzip
  etcd-server
  docker-registry apache2-utils
)
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing apt packages: ${missing[*]}"
  SUDO=; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Python venv with the BMC emulators (pinned). Rebuilt when the pin list or its own path changes, or when its
# scripts' interpreter is gone (a venv built through another path).
PY_PINS="sushy-tools==2.2.0 virtualbmc==3.3.0 libvirt-python==9.0.0"
VENV=$CACHE/venv
STAMP="$PY_PINS @ $VENV"
if [ "$(cat "$VENV/.pins" 2>/dev/null)" != "$STAMP" ] || [ "$(head -1 "$VENV/bin/sushy-emulator" 2>/dev/null)" != "#!$VENV/bin/python3" ]; then
  log "building Python venv $VENV ($PY_PINS)"
  rm -rf "$VENV"
  /usr/bin/python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check $PY_PINS
  echo "$STAMP" > "$VENV/.pins"
fi

# /dev/kvm as Debian's udev rule would leave it, or libvirt re-probes QEMU on every call (TESTBED.md).
if [ -c /dev/kvm ]; then chgrp kvm /dev/kvm 2>/dev/null && chmod 0660 /dev/kvm 2>/dev/null || true; fi
# Debian's SeaBIOS ships no firmware descriptor; libvirt's firmware autoselection (firmware='bios') needs one.
if [ ! -e /etc/qemu/firmware/50-seabios-kiln.json ]; then
  mkdir -p /etc/qemu/firmware
  cat > /etc/qemu/firmware/50-seabios-kiln.json <<'JSON'
{
    "description": "SeaBIOS (kiln lab: lets libvirt firmware autoselection satisfy firmware='bios')",
    "interface-types": ["bios"],
    "mapping": {"device": "memory", "filename": "/usr/share/seabios/bios-256k.bin"},
    "targets": [{"architecture": "x86_64", "machines": ["pc-i440fx-*", "pc-q35-*"]}],
    "features": [],
    "tags": []
}
JSON
fi
# Real kube-apiserver + etcd + Cluster API CRDs for the Kubernetes tests (built from Go modules, cached by version).
KUBE_BIN=$CACHE/kube/$(awk '$1=="k8s.io/kubernetes" {print $2; exit}' "$ROOT/tests/kube/go.mod")
# Only the tests need them (`make test` sets KILN_SETUP_KUBE=1), so `make demo` does not wait for this build.
if [ "${KILN_SETUP_KUBE:-0}" = 1 ]; then
  [ -x "$KUBE_BIN/kube-apiserver" ] && [ -x "$KUBE_BIN/etcd" ] && [ -x "$KUBE_BIN/kube-controller-manager" ] \
    && [ -x "$KUBE_BIN/kubelet" ] && [ -x "$KUBE_BIN/kubeadm" ] && [ -e "$CACHE/kube/cluster-api-v1.14.2/crd/.done" ] \
    || bash "$ROOT/tests/kube/build.sh"
  [ -x "$CACHE/kube/cluster-api-v1.14.2/bin/capi-core" ] && [ -x "$CACHE/kube/cluster-api-v1.14.2/bin/capi-kubeadm-bootstrap" ] \
    && [ -x "$CACHE/kube/cluster-api-v1.14.2/bin/clusterctl" ] && [ -e "$CACHE/kube/cluster-api-v1.14.2/clusterctl-api.yaml" ] \
    && [ -e "$CACHE/kube/caprke2-v0.21.0/crd/.done" ] \
    || bash "$ROOT/tests/capi/build.sh"
fi
log "ready (venv: $VENV)"
