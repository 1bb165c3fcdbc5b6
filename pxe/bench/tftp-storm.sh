#!/bin/bash
# Benchmark (not a test): a TFTP boot storm, N concurrent fetches (curl, blksize 1468 as iPXE uses) of a 1 MiB file,
# against kiln's TFTP server and against dnsmasq's (the TFTP server Metal3/Ironic ships), same files, same run, two
# private network namespaces joined by a veth pair, one client address per fetch. Prints wall time, MiB/s, server
# CPU and the ratios kiln/dnsmasq; fails when a fetch did not complete.
#
# usage: pxe/bench/tftp-storm.sh            knobs: N=200 PROFILE=release|dev KILN_PXE_LAB=path/to/kiln-pxe-lab
set -euo pipefail
N=${N:-200}; PROFILE=${PROFILE:-release}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
W=$(mktemp -d /tmp/kiln-pxe-storm.XXXXXX)
S=kiln-pxe-$$-storm-s; C=kiln-pxe-$$-storm-c
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  sleep 0.3
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  ip netns del $S 2>/dev/null || true; ip netns del $C 2>/dev/null || true
  rm -rf "$W"
}
trap cleanup EXIT INT TERM

if [ -n "${KILN_PXE_LAB:-}" ]; then
  BIN=$KILN_PXE_LAB  # a binary built elsewhere (to compare two builds)
elif [ "$PROFILE" = release ]; then
  (cd "$ROOT" && cargo build -q --release -p kiln-pxe --bin kiln-pxe-lab); DIR=release
else
  (cd "$ROOT" && cargo build -q -p kiln-pxe --bin kiln-pxe-lab); DIR=debug
fi
BIN=${BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/$DIR/kiln-pxe-lab}

ip netns add $S; ip netns add $C
ip -n $S link set lo up; ip -n $C link set lo up
ip link add s0 netns $S type veth peer name c0 netns $C
ip -n $S addr add 10.98.0.1/16 dev s0
# One address per client, as in a real boot storm (servers limit transfers per client address).
for i in $(seq "$N"); do echo "addr add 10.98.$((i / 250 + 1)).$((i % 250 + 1))/16 dev c0"; done | ip -n $C -batch -
ip -n $S link set s0 up; ip -n $C link set c0 up

mkdir -p "$W/root" "$W/out"
head -c $((1 << 20)) /dev/urandom > "$W/root/storm.bin"

storm() {  # $1 = label; prints seconds
  rm -f "$W/out/"*
  local t0 t1
  t0=$(date +%s.%N)
  for i in $(seq "$N"); do echo "$i 10.98.$((i / 250 + 1)).$((i % 250 + 1))"; done |
    ip netns exec $C xargs -P "$N" -n 2 sh -c 'curl -s --max-time 120 --tftp-blksize 1468 --interface "$2" \
      -o "$0/out/$1" tftp://10.98.0.1/storm.bin' "$W" || true
  t1=$(date +%s.%N)
  local ok=0
  for f in "$W/out/"*; do cmp -s "$f" "$W/root/storm.bin" && ok=$((ok + 1)); done
  echo "$1: $ok/$N complete" >&2
  [ "$ok" = "$N" ] || touch "$W/incomplete"
  awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f\n", b - a }'
}

cpu_seconds() {  # user + system CPU of a process so far
  awk -v hz="$(getconf CLK_TCK)" '{ printf "%.2f\n", ($14 + $15) / hz }' "/proc/$1/stat"
}

# --- kiln
cat > "$W/kiln.json" <<JSON
{"dhcp": {"mode": "off", "interface": "s0", "server_addr": "10.98.0.1"},
 "tftp": {"enabled": true},
 "boot": {"http_base": "http://10.98.0.1:8080", "files_dir": "$W/root"},
 "state_dir": "$W/kiln-state"}
JSON
echo '{}' > "$W/hosts.json"
RUST_LOG=warn ip netns exec $S "$BIN" "$W/kiln.json" "$W/hosts.json" > "$W/kiln.out" 2> "$W/kiln.log" &
PIDS+=($!)
for _ in $(seq 100); do grep -q READY "$W/kiln.out" && break; sleep 0.1; done
KILN=$(storm kiln)
KILN_CPU=$(cpu_seconds "${PIDS[-1]}")
kill "${PIDS[-1]}"; wait "${PIDS[-1]}" 2>/dev/null || true

# --- dnsmasq (TFTP only)
ip netns exec $S dnsmasq --keep-in-foreground --conf-file=/dev/null --port=0 --user=root --interface=s0 \
  --bind-interfaces --enable-tftp --tftp-root="$W/root" --tftp-max=1000 --log-facility="$W/dnsmasq.log" &
PIDS+=($!)
sleep 0.5
DNSMASQ=$(storm dnsmasq)
DNSMASQ_CPU=$(cpu_seconds "${PIDS[-1]}")

echo "storm: $N concurrent fetches of 1 MiB, blksize 1468 (kiln profile: $PROFILE)"
awk -v k="$KILN" -v d="$DNSMASQ" -v n="$N" -v kc="$KILN_CPU" -v dc="$DNSMASQ_CPU" 'BEGIN {
  printf "kiln:    %.2f s  %.1f MiB/s  CPU %.2f s\n", k, n / k, kc
  printf "dnsmasq: %.2f s  %.1f MiB/s  CPU %.2f s\n", d, n / d, dc
  printf "ratio kiln/dnsmasq (throughput): %.2f\n", d / k
  if (dc > 0) printf "ratio kiln/dnsmasq (CPU): %.2f\n", kc / dc }'
if [ -e "$W/incomplete" ]; then echo "storm: some fetches did not complete; the figures above are not comparable" >&2; exit 1; fi
