#!/usr/bin/env bash
# Builds the real Kubernetes peers kiln's tests run against, from Go modules, cached by version:
#   $CACHE/kube/<k8s version>/kube-apiserver   (k8s.io/kubernetes/cmd/kube-apiserver)
#   $CACHE/kube/<k8s version>/etcd             (go.etcd.io/etcd/server/v3, the version kubernetes pins)
#   $CACHE/kube/<k8s version>/kube-controller-manager, kubelet, kubeadm (k8s.io/kubernetes/cmd/...; the kubelet and
#                                                 kubeadm go into the node OS image, tests/os-image/build.sh)
#   $CACHE/kube/cluster-api-<version>/crd/*.yaml (sigs.k8s.io/cluster-api config/crd/bases)
# The Go module and build caches live under $CACHE/kube too, so CI reuses them.
# Slow the first time (tens of minutes on 2 cores); a no-op when everything is present.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
CACHE=${KILN_CACHE:-$ROOT/.cache}
GO=${GO:-$(command -v go || echo /usr/local/go/bin/go)}
K8S_VERSION=$(awk '$1=="k8s.io/kubernetes" && $2 ~ /^v/ {print $2; exit}' "$HERE/go.mod")
CAPI_VERSION=v1.14.2
OUT=$CACHE/kube/$K8S_VERSION
export GOMODCACHE=$CACHE/kube/gomod GOCACHE=$CACHE/kube/gocache GOFLAGS=-mod=mod GOTOOLCHAIN=local CGO_ENABLED=0
log() { printf 'kube build: %s\n' "$*" >&2; }
mkdir -p "$OUT"
cd "$HERE"
MAJOR=${K8S_VERSION#v}; MAJOR=${MAJOR%%.*}; MINOR=${K8S_VERSION#v*.}; MINOR=${MINOR%%.*}
V=k8s.io/component-base/version
STAMP="-X $V.gitVersion=$K8S_VERSION -X $V.gitMajor=$MAJOR -X $V.gitMinor=$MINOR -X $V.gitTreeState=clean"
build() { # build <package> <output name>
  if [ -x "$OUT/$2" ]; then return; fi
  log "building $2 from $1 (slow the first time)"
  local t0=$SECONDS
  nice -n 10 "$GO" build -trimpath -ldflags="-s -w $STAMP" -o "$OUT/$2.tmp" "$1"
  mv "$OUT/$2.tmp" "$OUT/$2"
  log "built $OUT/$2 in $((SECONDS - t0)) s"
}
build k8s.io/kubernetes/cmd/kube-apiserver kube-apiserver
build go.etcd.io/etcd/server/v3 etcd
build k8s.io/kubernetes/cmd/kube-controller-manager kube-controller-manager
build k8s.io/kubernetes/cmd/kubelet kubelet
build k8s.io/kubernetes/cmd/kubeadm kubeadm
CRD=$CACHE/kube/cluster-api-$CAPI_VERSION/crd
if [ ! -e "$CRD/.done" ]; then
  log "fetching the Cluster API $CAPI_VERSION CRDs"
  dir=$(cd /tmp && GOFLAGS= "$GO" mod download -json "sigs.k8s.io/cluster-api@$CAPI_VERSION" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p')
  mkdir -p "$CRD"
  # core (cluster.x-k8s.io, ipam, runtime addons), kubeadm bootstrap and control plane
  for sub in core bootstrap/kubeadm controlplane/kubeadm; do
    cp "$dir/$sub"/config/crd/bases/*.yaml "$CRD/"
  done
  chmod -R u+w "$CRD"
  touch "$CRD/.done"
fi
log "ready: $OUT ($("$OUT/kube-apiserver" --version 2>/dev/null || echo '?'))"
