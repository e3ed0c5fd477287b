# Every target installs what it needs, idempotently: a fresh Debian 12 root
# machine needs nothing but `make demo` or `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
APT_PACKAGES := libvirt-daemon-system libvirt-daemon-driver-qemu libvirt-clients \
	qemu-system-x86 qemu-utils libvirt-dev pkg-config busybox-static cpio \
	iproute2 procps util-linux
# Stamp files make re-runs instant; they depend on what they were made from.
APT_STAMP := $(VENV)/.apt-installed
VENV_STAMP := $(VENV)/.installed

.PHONY: all deps venv demo test test-unit test-integration test-lab bench bench-overhead bench-drain bench-convergence clean lab-down

all: venv

deps: $(APT_STAMP)
$(APT_STAMP): Makefile
	@mkdir -p $(VENV)
	@missing=$$(for p in $(APT_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:" $$missing; \
		if [ "$$(id -u)" != 0 ]; then echo "need root to apt-get install:" $$missing >&2; exit 1; fi; \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing; \
	fi
	@touch $@

venv: $(VENV_STAMP)
$(VENV_STAMP): $(APT_STAMP) pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
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

lab-down: venv
	$(BIN)/ferry-lab down

clean:
	rm -rf $(VENV) build *.egg-info
