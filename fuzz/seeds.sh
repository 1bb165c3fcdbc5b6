#!/usr/bin/env bash
# Writes the seed corpora under fuzz/corpus/<target>/ (idempotent: the same files each run; other files, such as
# crash inputs kept as regressions, are left alone). Run from anywhere; needs cargo, and qemu-img for the qcow2
# images QEMU itself lays out (skipped with a note when it is missing).
set -euo pipefail
FUZZ=$(cd "$(dirname "$0")" && pwd)
CORPUS=$FUZZ/corpus

cargo run -q --manifest-path "$FUZZ/seedgen/Cargo.toml" -- "$CORPUS"

# qcow2 images as qemu-img writes them, with 512-byte clusters so that they stay a few KiB: empty, data with tables
# first, and compressed (deflate and zstd), where qemu-img puts the last L2 table after the data it maps.
if command -v qemu-img >/dev/null; then
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  python3 - "$tmp/raw" <<'PY'
import sys
# 24 KiB: a text cluster, a zero run, a pattern run, then zeros to the end.
data = bytearray(24 * 1024)
data[0:512] = (b"kiln fuzz seed " * 40)[:512]
data[4096:8192] = bytes(i % 251 for i in range(4096))
open(sys.argv[1], "wb").write(data)
PY
  out=$CORPUS/qcow2_image
  mkdir -p "$out"
  qemu-img create -q -f qcow2 -o cluster_size=512 "$out/qemu-img-empty" 16K
  qemu-img convert -q -O qcow2 -o cluster_size=512 "$tmp/raw" "$out/qemu-img-data"
  qemu-img convert -q -c -O qcow2 -o cluster_size=512 "$tmp/raw" "$out/qemu-img-compressed-deflate"
  qemu-img convert -q -c -O qcow2 -o cluster_size=512,compression_type=zstd "$tmp/raw" "$out/qemu-img-compressed-zstd"
  qemu-img convert -q -O qcow2 -o cluster_size=512,compat=0.10 "$tmp/raw" "$out/qemu-img-v2"
else
  echo "seeds.sh: qemu-img not found: the qemu-img qcow2 seeds were not rewritten" >&2
fi
echo "seeds: $(find "$CORPUS" -type f | wc -l) files, $(du -sh "$CORPUS" | cut -f1)"
