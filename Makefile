# make setup: .venv with estarter and its test tools (quick when nothing changed)
# make demo:  setup, then run the hello-native sample on an embedded local Ray
# make test:  setup, then lint, type check and the test suite
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.setup-stamp
SYSTEM_PACKAGES := bubblewrap slirp4netns clang lld wasi-libc libclang-rt-dev-wasm32 \
	chromium chromium-driver
# systemd-analyze: tests verify the unit `estarter service install` writes.
SYSTEM_PACKAGES += systemd

.PHONY: setup bytecode system-packages demo test lint typecheck pytest bench clean

setup: $(STAMP) samples/hello-c/app bytecode

$(STAMP): pyproject.toml
	@$(MAKE) --no-print-directory system-packages
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# compat mode: a plain path entry instead of an import hook, which every app
	# start would pay for (about 6 ms of interpreter start-up here).
	$(BIN)/python -m pip install -q -e ".[test]" --config-settings editable_mode=compat
	$(BIN)/python -m estarter.hosting.spawn  # build the C launcher (else: built on first use)
	touch $(STAMP)

# Bytecode of our own packages, written here (quick when up to date): with
# PYTHONDONTWRITEBYTECODE set, as on these machines and in many container images,
# nothing else writes it for an editable install, and every Ray worker (one
# supervisor per app) compiled estarter's sources again: 0.1-0.3 s of CPU each,
# a quarter of the 100-app launch. pip writes it for a regular install.
bytecode: $(STAMP)
	$(BIN)/python -m compileall -q estarter actors sdk benchmarks

# The C sample's native binary (this machine's code, not committed).
samples/hello-c/app: samples/hello-c/app.c sdk/c/estarter_native.c sdk/c/estarter_native.h
	sh samples/hello-c/build.sh

# Debian packages the sandbox, the wasm samples and the console's browser test need;
# installed only when missing.
system-packages:
	@missing=""; for p in $(SYSTEM_PACKAGES); do \
	  dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else echo "warning: missing system packages:$$missing (install them as root)"; fi; \
	fi

demo: setup
	$(BIN)/estarter run samples/hello-native

lint: setup
	$(BIN)/ruff check estarter actors sdk tests benchmarks samples

typecheck: setup
	$(BIN)/mypy

# The slowest tests are listed at the end of every run: where a loaded machine's
# minutes go (beside stress-ng the suite takes about four times as long).
pytest: setup
	$(BIN)/pytest -q --durations=30

test: lint typecheck pytest

bench: setup
	$(BIN)/python -m benchmarks

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
