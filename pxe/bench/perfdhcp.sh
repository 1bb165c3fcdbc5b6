#!/bin/bash
# Benchmark (not a test): perfdhcp against kiln (full mode, discovery on) and against Kea 2.x (memfile, not persisted)
# in the same run, same /16 range, same load. Server and perfdhcp sit in two private network namespaces joined by a
# veth pair (with both ends in one namespace perfdhcp gets no answers). Prints 4-way exchanges per second for both and
# the ratio kiln/Kea.
#
# usage: pxe/bench/perfdhcp.sh            knobs: RATE=20000 SECS=15 CLIENTS=50000 PROFILE=release|dev
set -euo pipefail
RATE=${RATE:-20000}; SECS=${SECS:-15}; CLIENTS=${CLIENTS:-50000}; PROFILE=${PROFILE:-release}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
W=$(mktemp -d /tmp/kiln-pxe-bench.XXXXXX)
S=kiln-pxe-$$-bench-s; C=kiln-pxe-$$-bench-c
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  sleep 0.3
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  ip netns del $S 2>/dev/null || true; ip netns del $C 2>/dev/null || true
  rm -rf "$W"
}
trap cleanup EXIT INT TERM

if [ "$PROFILE" = release ]; then
  (cd "$ROOT" && cargo build -q --release -p kiln-pxe --bin kiln-pxe-lab); DIR=release
else
  (cd "$ROOT" && cargo build -q -p kiln-pxe --bin kiln-pxe-lab); DIR=debug
fi
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/$DIR/kiln-pxe-lab

ip netns add $S; ip netns add $C
ip -n $S link set lo up; ip -n $C link set lo up
ip link add s0 netns $S type veth peer name c0 netns $C
ip -n $S addr add 10.98.0.1/16 dev s0
# perfdhcp acts as a relay agent: giaddr = its own address, answers come back to it on port 67
ip -n $C addr add 10.98.0.2/16 dev c0
ip -n $S link set s0 up; ip -n $C link set c0 up

run_perfdhcp() {  # $1 = label
  ip netns exec $C perfdhcp -4 -l c0 -r "$RATE" -p "$SECS" -R "$CLIENTS" > "$W/$1.perf" 2>&1 || true
  awk '/^Rate:/ {print $2}' "$W/$1.perf" | head -1
}

# --- kiln
cat > "$W/kiln.json" <<JSON
{"dhcp": {"mode": "full", "interface": "s0", "discovery": true, "lease_secs": 3600,
          "subnets": [{"network": "10.98.0.0", "prefix_len": 16, "range_start": "10.98.1.0", "range_end": "10.98.255.254"}]},
 "tftp": {"enabled": false},
 "boot": {"http_base": "http://10.98.0.1:8080"},
 "state_dir": "$W/kiln-state"}
JSON
echo '{}' > "$W/hosts.json"
RUST_LOG=warn ip netns exec $S "$BIN" "$W/kiln.json" "$W/hosts.json" > "$W/kiln.out" 2> "$W/kiln.log" &
PIDS+=($!)
for _ in $(seq 100); do grep -q READY "$W/kiln.out" && break; sleep 0.1; done
KILN=$(run_perfdhcp kiln)
kill "${PIDS[-1]}"; wait "${PIDS[-1]}" 2>/dev/null || true

# --- Kea
cat > "$W/kea.json" <<JSON
{"Dhcp4": {"interfaces-config": {"interfaces": ["s0"]},
  "lease-database": {"type": "memfile", "persist": false, "lfc-interval": 0},
  "valid-lifetime": 3600,
  "subnet4": [{"id": 1, "subnet": "10.98.0.0/16", "pools": [{"pool": "10.98.1.0 - 10.98.255.254"}]}],
  "loggers": [{"name": "kea-dhcp4", "severity": "WARN", "output_options": [{"output": "$W/kea.log"}]}]}}
JSON
mkdir -p "$W/kea-run"
KEA_PIDFILE_DIR="$W/kea-run" KEA_LOCKFILE_DIR="$W/kea-run" ip netns exec $S kea-dhcp4 -c "$W/kea.json" > "$W/kea.out" 2>&1 &
PIDS+=($!)
sleep 1.5
KEA=$(run_perfdhcp kea)

echo "--- kiln perfdhcp:"; grep -E 'sent packets|received packets|drops ratio|Rate' "$W/kiln.perf" || cat "$W/kiln.perf"
echo "--- kea perfdhcp:";  grep -E 'sent packets|received packets|drops ratio|Rate' "$W/kea.perf" || cat "$W/kea.perf"
echo
echo "load: perfdhcp -r $RATE for ${SECS}s, $CLIENTS simulated clients, range 10.98.1.0-10.98.255.254 (kiln profile: $PROFILE)"
echo "kiln: ${KILN:-0} 4-way exchanges/s"
echo "kea:  ${KEA:-0} 4-way exchanges/s"
awk -v k="${KILN:-0}" -v e="${KEA:-0}" 'BEGIN { if (e > 0) printf "ratio kiln/kea: %.2f\n", k / e; else print "ratio: n/a (kea rate 0)" }'
