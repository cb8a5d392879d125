# portwatch: `make run` shows the main job, `make test` runs every check.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
SYSTEM_PACKAGES := python3-venv tshark prometheus tcpreplay iproute2 netbase libcap2-bin
SAMPLE := pcaps/sample.pcapng

.PHONY: run test system-deps venv lint typecheck pytest bench pcaps clean

run: system-deps venv
	$(BIN)/portwatch registry info
	$(BIN)/portwatch analyze --format table $(SAMPLE)

test: system-deps venv lint typecheck pytest

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

# Debian packages: python3-venv (Debian's python3 cannot make a venv without
# it), and what the tests drive for real: tshark/dumpcap, Prometheus and
# promtool, tcpreplay, ip(8). Installed only when missing, and only as root.
system-deps:
	@missing=""; for p in $(SYSTEM_PACKAGES); do \
		dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" = 0 ]; then \
			echo "installing:$$missing"; \
			echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections; \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
		else \
			echo "not root: cannot install$$missing; tests that need them will skip"; \
		fi; \
	fi

lint: venv
	$(BIN)/ruff check src tests benchmarks pcaps tools

typecheck: venv
	$(BIN)/mypy --strict src

pytest: venv
	$(BIN)/pytest -q

# Benchmarks are not part of `make test`; results go in docs/benchmarks.md.
# The daemon throughput benchmark needs root (network namespace, veth).
bench: venv
	PYTHONPATH=src $(BIN)/python benchmarks/bench_registry.py
	PYTHONPATH=src $(BIN)/python benchmarks/bench_decode.py
	PYTHONPATH=src $(BIN)/python benchmarks/bench_analyze.py
	PYTHONPATH=src $(BIN)/python benchmarks/bench_wireshark_plugin.py
	PYTHONPATH=src $(BIN)/python benchmarks/bench_engines.py
	PYTHONPATH=src $(BIN)/python benchmarks/bench_flow_flood.py
	PYTHONPATH=src $(BIN)/python benchmarks/bench_core_batches.py
	@if [ "$$(id -u)" = 0 ]; then \
		PYTHONPATH=src $(BIN)/python benchmarks/bench_daemon_throughput.py; \
	else echo "bench_daemon_throughput.py skipped: needs root"; fi

pcaps: venv
	unshare -n $(BIN)/python pcaps/generate.py || $(BIN)/python pcaps/generate.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build src/*.egg-info
