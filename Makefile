# Every target installs what it needs, idempotently: a fresh Debian 12 or 13 root
# machine needs nothing but `make demo` or `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Stamp files make re-runs instant; they depend on what they were made from.
APT_STAMP := $(VENV)/.apt-installed
VENV_STAMP := $(VENV)/.installed
# The libvirt version libvirt-python was last built against (rebuilt when it changes).
LIBVIRT_PY_STAMP := $(VENV)/.libvirt-python-built-for

.PHONY: all deps venv demo test test-unit test-integration test-lab bench bench-overhead bench-drain bench-convergence bench-lost-writes bench-history bench-scale chaos clean lab-down

all: venv

deps: $(APT_STAMP)
$(APT_STAMP): Makefile lab/debian-packages.sh
	@mkdir -p $(VENV)
	sh lab/debian-packages.sh
	@touch $@

venv: $(VENV_STAMP)
$(VENV_STAMP): $(APT_STAMP) pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	@# pip reuses a wheel it built before, whatever libvirt it was built against.
	@built=$$(cat $(LIBVIRT_PY_STAMP) 2>/dev/null); now=$$(pkg-config --modversion libvirt); \
	if [ "$$built" != "$$now" ]; then \
		echo "building libvirt-python against libvirt $$now"; \
		$(BIN)/pip install -q --force-reinstall --no-cache-dir --no-deps libvirt-python && echo "$$now" > $(LIBVIRT_PY_STAMP); \
	fi
	@touch $@

demo: venv
	$(BIN)/python -m ferry.lab.demo

test: venv
	$(BIN)/pytest -ra

test-unit: venv
	$(BIN)/pytest -ra tests/unit

test-integration: venv
	$(BIN)/pytest -ra tests/integration

test-lab: venv
	$(BIN)/pytest -ra tests/lab

# The three benchmarks, one after the other, even under -j: each starts and
# stops a lab of its own in the same folder (the results of the others stay).
bench: venv
	$(BIN)/python -m bench.overhead
	$(BIN)/python -m bench.drain
	$(BIN)/python -m bench.convergence

bench-overhead: venv
	$(BIN)/python -m bench.overhead

bench-drain: venv
	$(BIN)/python -m bench.drain

bench-convergence: venv
	$(BIN)/python -m bench.convergence

bench-lost-writes: venv
	$(BIN)/python -m bench.lost_writes

# ferry sessions --limit 50 with 20,000 finished sessions, hot against archived
# (a nats-server and a coordinator of its own; no lab). ARGS="--sessions 5000".
bench-history: venv
	$(BIN)/python -m bench.sessions_history $(ARGS)

# A leader and a standby against 500, 2,000 and 5,000 hosts (simulated: a
# heartbeat generator and a fleet of simulated agents; no lab). ARGS="--hosts 1000".
bench-scale: venv
	$(BIN)/python -m bench.scale $(ARGS)

# kill -9 the coordinator, agents and nats-server while guests move (20 rounds
# each; `make test` runs a sample of 3). ARGS="--rounds 5 --seed 7" to vary.
chaos: venv
	$(BIN)/python -m bench.chaos $(ARGS)

lab-down: venv
	$(BIN)/ferry-lab down

clean:
	rm -rf $(VENV) build *.egg-info
