#!/usr/bin/env bash
# A fleet of simulated hosts driven only through the kiln CLI, as a user trying kiln without hardware would:
# `kiln serve --simulate` (release build), N BareMetalHosts with fake:// BMCs enrolled with one `kiln import`, then
# each provisioned with `kiln host provision`. Prints the time of each phase, the rates, and kiln's peak RSS.
#
#   N=1000 controller/bench/sim-fleet.sh        (JOBS=, the appliance's max_concurrent_jobs; default kiln's own)
#
# kiln's defaults apply otherwise, including the per-host BMC budget (12 calls a minute) and 5-second heartbeats:
# the figures are what a real fleet of this size would see from kiln's side, with BMCs and agents that answer at once.
set -euo pipefail

N=${N:-1000}
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
cargo build -q --release -p kiln --bin kiln
target=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
kiln="$target/release/kiln"

work=$(mktemp -d)
pid=
cleanup() {
    if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
{
    echo 'heartbeat_secs = 5'
    if [ -n "${JOBS:-}" ]; then echo "max_concurrent_jobs = $JOBS"; fi
} > "$work/kiln.toml"
"$kiln" serve --simulate --listen "127.0.0.1:$port" --config "$work/kiln.toml" --data-dir "$work/data" \
    2> "$work/kiln.log" &
pid=$!
for _ in $(seq 100); do [ -f "$work/data/admin.token" ] && break; sleep 0.1; done
export KILN_SERVER="https://127.0.0.1:$port" KILN_TOKEN_FILE="$work/data/admin.token" RUST_LOG=off
for _ in $(seq 100); do "$kiln" host list -o json > /dev/null 2>&1 && break; sleep 0.1; done

python3 - "$N" > "$work/fleet.yaml" <<'EOF'
import sys
n = int(sys.argv[1])
print("apiVersion: v1\nkind: Secret\nmetadata:\n  name: bmc\nstringData:\n  username: admin\n  password: simulated")
for i in range(n):
    print(f"---\napiVersion: metal3.io/v1alpha1\nkind: BareMetalHost\nmetadata:\n  name: sim-{i}\nspec:\n"
          f"  online: false\n  bootMACAddress: 52:54:03:{i >> 16 & 255:02x}:{i >> 8 & 255:02x}:{i & 255:02x}\n"
          f"  bmc:\n    address: fake://sim-{i}\n    credentialsName: bmc")
EOF

# Waits until every host is in state $1; prints the seconds it took since $2 (epoch seconds, fractional).
wait_all() {
    while :; do
        n=$("$kiln" host list -o json | python3 -c "import json,sys; print(sum(h['state'] == '$1' for h in json.load(sys.stdin)))")
        errors=$("$kiln" host list -o json | python3 -c "import json,sys; print(sum(h['state'] == 'error' for h in json.load(sys.stdin)))")
        [ "$errors" = 0 ] || { echo "hosts in error; see $work/kiln.log" >&2; exit 1; }
        [ "$n" = "$N" ] && break
        sleep 1
    done
    python3 -c "import time; print(f'{time.time() - $2:.1f}')"
}

t0=$(date +%s.%N)
"$kiln" import "$work/fleet.yaml" > /dev/null
t_import=$(python3 -c "import time; print(f'{time.time() - $t0:.1f}')")
t_avail=$(wait_all available "$t0")
t1=$(date +%s.%N)
sum="sha256:$(printf 'ab%.0s' $(seq 32))"
for i in $(seq 0 $((N - 1))); do
    "$kiln" host provision "sim-$i" --image http://images.invalid/os.qcow2 --checksum "$sum" > /dev/null
done
t_requests=$(python3 -c "import time; print(f'{time.time() - $t1:.1f}')")
t_prov=$(wait_all provisioned "$t1")
rss=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status")
load=$(cut -d' ' -f1-3 /proc/loadavg)
cat <<EOF
simulated fleet of $N hosts, kiln defaults${JOBS:+ but max_concurrent_jobs=$JOBS} (load average at the end: $load)
  kiln import of $N BareMetalHosts      ${t_import} s  ($(python3 -c "print(f'{$N / max($t_import, 0.1):.0f}')") hosts/s)
  enrolled -> all available (inspected)  ${t_avail} s  ($(python3 -c "print(f'{$N / $t_avail:.1f}')") hosts/s)
  $N x kiln host provision (CLI)        ${t_requests} s
  provision requests -> all provisioned  ${t_prov} s  ($(python3 -c "print(f'{$N / $t_prov:.1f}')") hosts/s)
  kiln peak RSS                          $((rss / 1024)) MiB
EOF
