# The two commands of the README. Both install what is missing first (tests/setup.sh, idempotent, cached).
.PHONY: demo test setup build lint clean-lab fuzz

CARGO ?= cargo

setup:
	@bash tests/setup.sh

build: setup
	$(CARGO) build --workspace --bins

# kiln's main job on the embedded default: the lab (netns, VMs, BMC emulators) and `kiln serve`, until Ctrl-C.
demo: build
	$(CARGO) run -q -p kiln-tests --bin kiln-lab -- demo

# Every test CI runs: format, lint (warnings denied), then the whole workspace's tests in one cargo invocation.
test:
	@KILN_SETUP_KUBE=1 bash tests/setup.sh
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) test --workspace --no-fail-fast

# Tear down anything a killed lab left behind.
clean-lab: build
	$(CARGO) run -q -p kiln-tests --bin kiln-lab -- clean

# Every fuzz target for FUZZ_SECONDS (default 30) seconds each, on nightly (not part of `make test`: CI replays the
# corpora through the same checks in `cargo test` instead).
fuzz:
	@bash tests/fuzz.sh
