#!/bin/bash
# Benchmark (not a test): a TFTP boot storm, N concurrent fetches (curl, blksize 1468 as iPXE uses) of a 1 MiB file,
# against kiln's TFTP server and against dnsmasq's (the TFTP server Metal3/Ironic ships), same files, same run, two
# private network namespaces joined by a veth pair, one client address per fetch. Both servers run side by side for
# ROUNDS rounds, a storm against each per round in alternating order, so that load from other processes falls on
# both; prints each round, then the medians of wall time, MiB/s and server CPU per storm and of the per-round
# ratios kiln/dnsmasq, with their spread. Fails when a fetch did not complete.
#
# usage: pxe/bench/tftp-storm.sh     knobs: N=200 ROUNDS=5 PROFILE=release|dev KILN_PXE_LAB=path/to/kiln-pxe-lab
set -euo pipefail
N=${N:-200}; ROUNDS=${ROUNDS:-5}; PROFILE=${PROFILE:-release}
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

storm() {  # $1 = label, $2 = server address; prints seconds
  rm -f "$W/out/"*
  local t0 t1
  t0=$(date +%s.%N)
  for i in $(seq "$N"); do echo "$i 10.98.$((i / 250 + 1)).$((i % 250 + 1))"; done |
    ip netns exec $C xargs -P "$N" -n 2 sh -c 'curl -s --max-time 120 --tftp-blksize 1468 --interface "$3" \
      -o "$0/out/$2" "tftp://$1/storm.bin"' "$W" "$2" || true
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
KILN_PID=$!; PIDS+=($KILN_PID)
for _ in $(seq 100); do grep -q READY "$W/kiln.out" && break; sleep 0.1; done

# --- dnsmasq (TFTP only), on another address of the server side so that both listen on port 69 at once
ip -n $S addr add 10.98.0.2/16 dev s0
ip netns exec $S dnsmasq --keep-in-foreground --conf-file=/dev/null --port=0 --user=root --listen-address=10.98.0.2 \
  --bind-interfaces --enable-tftp --tftp-root="$W/root" --tftp-max=1000 --log-facility="$W/dnsmasq.log" &
DNSMASQ_PID=$!; PIDS+=($DNSMASQ_PID)
sleep 0.5

one() {  # $1 = label, $2 = server address, $3 = pid: prints "seconds cpu-seconds" of one storm
  local c0 c1 t
  c0=$(cpu_seconds "$3")
  t=$(storm "$1" "$2")
  c1=$(cpu_seconds "$3")
  echo "$t $(awk -v a="$c0" -v b="$c1" 'BEGIN { printf "%.2f", b - a }')"
}

: > "$W/rounds"
for r in $(seq "$ROUNDS"); do
  if [ $((r % 2)) = 1 ]; then
    K=$(one kiln 10.98.0.1 $KILN_PID); D=$(one dnsmasq 10.98.0.2 $DNSMASQ_PID)
  else
    D=$(one dnsmasq 10.98.0.2 $DNSMASQ_PID); K=$(one kiln 10.98.0.1 $KILN_PID)
  fi
  echo "$K $D" | tee -a "$W/rounds" | awk -v r="$r" -v n="$N" '{
    printf "round %d: kiln %.2f s (%.1f MiB/s, CPU %.2f s)  dnsmasq %.2f s (%.1f MiB/s, CPU %.2f s)\n",
      r, $1, n / $1, $2, $3, n / $3, $4 }'
done

echo "storm: $N concurrent fetches of 1 MiB, blksize 1468, $ROUNDS rounds (kiln profile: $PROFILE); median [min-max]"
awk -v n="$N" '
  function med(a, k,   i, j, t) { for (i = 1; i <= k; i++) for (j = i + 1; j <= k; j++) if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t }
    return k % 2 ? a[(k + 1) / 2] : (a[k / 2] + a[k / 2 + 1]) / 2 }
  function show(label, a, k, fmt,   lo, hi, m) { m = med(a, k); lo = a[1]; hi = a[k]
    printf "%-34s " fmt " [" fmt "-" fmt "]\n", label, m, lo, hi }
  { k++; ks[k] = $1; kc[k] = $2; ds[k] = $3; dc[k] = $4; km[k] = n / $1; dm[k] = n / $3
    tr[k] = $3 / $1; cr[k] = ($4 > 0) ? $2 / $4 : 0 }
  END {
    show("kiln wall (s)", ks, k, "%.2f"); show("kiln MiB/s", km, k, "%.1f"); show("kiln CPU (s)", kc, k, "%.2f")
    show("dnsmasq wall (s)", ds, k, "%.2f"); show("dnsmasq MiB/s", dm, k, "%.1f"); show("dnsmasq CPU (s)", dc, k, "%.2f")
    show("ratio kiln/dnsmasq (throughput)", tr, k, "%.2f"); show("ratio kiln/dnsmasq (CPU)", cr, k, "%.2f") }' "$W/rounds"
if [ -e "$W/incomplete" ]; then echo "storm: some fetches did not complete; the figures above are not comparable" >&2; exit 1; fi
