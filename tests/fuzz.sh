#!/usr/bin/env bash
# Runs every fuzz target of fuzz/ for FUZZ_SECONDS (default 30) seconds each, one after the other, from its seeds
# under fuzz/corpus/<target>/ (new inputs go to /var/cache/kiln/fuzz-corpus/<target>/, crashes to
# fuzz/artifacts/<target>/).
#   FUZZ_SECONDS=60 bash tests/fuzz.sh              all targets
#   FUZZ_SECONDS=60 bash tests/fuzz.sh dhcp_packet  only the named ones
# Needs rustup's nightly toolchain (libFuzzer's sanitizer flags); cargo-fuzz is installed once, from crates.io, into
# /var/cache/kiln/cargo-fuzz, and the fuzz build is kept in /var/cache/kiln/fuzz-target between runs.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
CACHE=${KILN_FUZZ_CACHE:-/var/cache/kiln}
SECONDS_EACH=${FUZZ_SECONDS:-30}
log() { printf 'fuzz: %s\n' "$*" >&2; }

# rustup cannot download a toolchain on this network: nightly must already be there (it is on the project's machines).
if ! rustup toolchain list | grep -q '^nightly'; then
  log "no nightly toolchain (rustup toolchain list): cargo fuzz needs one; the stable corpus replay is cargo test"
  exit 1
fi
FUZZ_BIN=$CACHE/cargo-fuzz/bin
if [ ! -x "$FUZZ_BIN/cargo-fuzz" ]; then
  log "installing cargo-fuzz into $CACHE/cargo-fuzz"
  mkdir -p "$CACHE/cargo-fuzz"
  cargo +nightly install cargo-fuzz --locked --root "$CACHE/cargo-fuzz"
fi
export PATH=$FUZZ_BIN:$PATH
export CARGO_TARGET_DIR=$CACHE/fuzz-target

cd "$ROOT/fuzz"
if [ $# -gt 0 ]; then
  targets=("$@")
else
  mapfile -t targets < <(cargo +nightly fuzz list)
fi
for t in "${targets[@]}"; do
  # libFuzzer adds what it finds to the first directory: the cache, so that the committed seeds under corpus/<t>
  # (read as the second) stay a small reviewed set; crashes found are added there by hand as regression inputs.
  mkdir -p "$CACHE/fuzz-corpus/$t" "corpus/$t"
  log "$t: ${SECONDS_EACH}s"
  # Debug assertions and overflow checks on: an arithmetic overflow on hostile input is a bug even where a release
  # build would wrap silently.
  cargo +nightly fuzz run --debug-assertions "$t" "$CACHE/fuzz-corpus/$t" "corpus/$t" -- \
    -max_total_time="$SECONDS_EACH"
done
