#!/usr/bin/env bash
# Builds the real Cluster API managers kiln's Kubernetes tests run beside kiln, from the pinned Go module
# sigs.k8s.io/cluster-api (see go.mod; the api submodule is replaced with its published tag of the same version):
#   $CACHE/kube/cluster-api-<version>/bin/capi-core        (core/main.go: Cluster, Machine, MachineSet, MachineDeployment)
#   $CACHE/kube/cluster-api-<version>/bin/capi-kubeadm-bootstrap (bootstrap/kubeadm/main.go: KubeadmConfig)
#   $CACHE/kube/cluster-api-<version>/bin/clusterctl             (cmd/clusterctl: generate, move)
#   $CACHE/kube/cluster-api-<version>/clusterctl-api.yaml        (clusterctl's inventory CRD)
# Slow the first time (about 15 minutes on 2 cores); a no-op when present. Shares Go caches with ../kube/build.sh.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
CACHE=${KILN_CACHE:-$ROOT/.cache}
GO=${GO:-$(command -v go || echo /usr/local/go/bin/go)}
CAPI_VERSION=$(awk '$1=="sigs.k8s.io/cluster-api" && $2 ~ /^v/ {print $2; exit}' "$HERE/go.mod")
OUT=$CACHE/kube/cluster-api-$CAPI_VERSION/bin
export GOMODCACHE=$CACHE/kube/gomod GOCACHE=$CACHE/kube/gocache GOFLAGS=-mod=mod GOTOOLCHAIN=local CGO_ENABLED=0
log() { printf 'capi build: %s\n' "$*" >&2; }
mkdir -p "$OUT"
cd "$HERE"
V=sigs.k8s.io/cluster-api/version
STAMP="-X $V.gitVersion=$CAPI_VERSION -X $V.gitTreeState=clean"
build() { # build <package> <output name>
  if [ -x "$OUT/$2" ]; then return; fi
  log "building $2 from $1 (slow the first time)"
  local t0=$SECONDS
  nice -n 10 "$GO" build -trimpath -ldflags="-s -w $STAMP" -o "$OUT/$2.tmp" "$1"
  mv "$OUT/$2.tmp" "$OUT/$2"
  log "built $OUT/$2 in $((SECONDS - t0)) s"
}
build sigs.k8s.io/cluster-api/core capi-core
build sigs.k8s.io/cluster-api/bootstrap/kubeadm capi-kubeadm-bootstrap
build sigs.k8s.io/cluster-api/cmd/clusterctl clusterctl
# clusterctl's inventory CRD (Provider), which `clusterctl init` installs, for the tests that record an init.
INVENTORY=$CACHE/kube/cluster-api-$CAPI_VERSION/clusterctl-api.yaml
if [ ! -e "$INVENTORY" ]; then
  dir=$("$GO" list -m -f '{{.Dir}}' sigs.k8s.io/cluster-api)
  cp "$dir/cmd/clusterctl/config/manifest/clusterctl-api.yaml" "$INVENTORY.tmp"
  chmod u+w "$INVENTORY.tmp"
  mv "$INVENTORY.tmp" "$INVENTORY"
fi
# The RKE2 bootstrap and control plane providers' CRDs, to validate deploy/clusterctl/templates/cluster-template-rke2.yaml.
RKE2_VERSION=v0.21.0
RKE2_CRD=$CACHE/kube/caprke2-$RKE2_VERSION/crd
if [ ! -e "$RKE2_CRD/.done" ]; then
  log "fetching the Cluster API RKE2 provider $RKE2_VERSION CRDs"
  dir=$(cd /tmp && GOFLAGS= "$GO" mod download -json "github.com/rancher/cluster-api-provider-rke2@$RKE2_VERSION" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p')
  mkdir -p "$RKE2_CRD"
  cp "$dir"/bootstrap/config/crd/bases/*.yaml "$dir"/controlplane/config/crd/bases/*.yaml "$RKE2_CRD/"
  chmod -R u+w "$RKE2_CRD"
  touch "$RKE2_CRD/.done"
fi
log "ready: $OUT"
