# portwatch: `make run` shows the main job, `make test` runs every check.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
SYSTEM_PACKAGES := python3-venv tshark prometheus tcpreplay iproute2 netbase libcap2-bin \
	systemd-container debootstrap tmux zsh clang llvm libbpf1 libbpf-dev bpftool netsniff-ng \
	gcc libc6-dev python3-dev
SAMPLE := pcaps/sample.pcapng

.PHONY: run test system-deps venv lint typecheck pytest bench pcaps clean install uninstall bpf

run: system-deps venv
	$(BIN)/portwatch registry info
	$(BIN)/portwatch analyze --format table $(SAMPLE)

test: system-deps venv lint typecheck pytest

# The eBPF backend's program (docs/ebpf.md). The object is committed (it is
# small, and the same bytes load on any kernel with BTF maps), so an install
# needs no compiler; `make bpf` rebuilds it after the C changes. Debian's clang
# is used when present, else the clang inside the `ziglang` wheel
# (pip install ziglang: the `ebpf-build` extra).
BPF_SRC := src/portwatch/daemon/bpf/portwatch.bpf.c
BPF_OBJ := src/portwatch/daemon/bpf/portwatch.bpf.o
BPF_CFLAGS := -O2 -g -Wall -Werror -fno-asynchronous-unwind-tables -c
bpf: $(BPF_OBJ)

$(BPF_OBJ): $(BPF_SRC)
	@if command -v clang >/dev/null; then \
		echo "clang -target bpf $(BPF_SRC)"; clang -target bpf $(BPF_CFLAGS) $(BPF_SRC) -o $@; \
	elif $(BIN)/python -c 'import ziglang' 2>/dev/null; then \
		echo "zig cc -target bpfel-freestanding $(BPF_SRC)"; \
		$(BIN)/python -m ziglang cc -target bpfel-freestanding $(BPF_CFLAGS) $(BPF_SRC) -o $@; \
	else echo "make bpf: no clang (apt-get install clang, or pip install ziglang); keeping" \
		"the committed $(BPF_OBJ)" >&2; fi

venv: $(STAMP)

# The editable install also compiles the capture core (Cython, in place next to each
# .pyx); without a compiler it warns and portwatch uses its numpy engines.
$(STAMP): pyproject.toml setup.py $(wildcard src/portwatch/*/*.pyx src/portwatch/*/*/*.pyx)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

# Debian packages: python3-venv (Debian's python3 cannot make a venv without
# it), gcc, libc6-dev and python3-dev (to compile the capture framing), and
# what the tests drive for real: tshark/dumpcap, Prometheus and promtool,
# tcpreplay, ip(8), systemd-nspawn + debootstrap for the real-systemd test
# (tests/integration/test_nspawn.py), tmux and zsh for the `portwatch top` and
# completion tests, clang/libbpf/bpftool to build the eBPF program and
# netsniff-ng (trafgen) to drive it. Installed only when
# missing, and only as root.
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
	rm -f src/portwatch/capture/files/_core.c src/portwatch/capture/files/_core*.so

# ---------------------------------------------------------------- install
# `make install` (as root) deploys this checkout as a service; docs/install.md.
# The paths are fixed because the units name them (ExecStart=/usr/bin/portwatch);
# DESTDIR= stages the same tree elsewhere (for a package build), without
# touching systemd. `make uninstall` keeps /etc/portwatch and /var/lib/portwatch.
DESTDIR     ?=
OPT         := /opt/portwatch
BINDIR      := /usr/bin
UNITDIR     := /etc/systemd/system
CONFDIR     := /etc/portwatch
DOCDIR      := /usr/share/doc/portwatch
# Where bash-completion, zsh (Debian's vendor directory) and man look.
BASHCOMPDIR := /usr/share/bash-completion/completions
ZSHCOMPDIR  := /usr/share/zsh/vendor-completions
MAN1DIR     := /usr/share/man/man1
UNITS       := portwatch.service portwatch-registry-update.service portwatch-registry-update.timer
DROPIN      := portwatch.service.d/10-install.conf
DOCS        := README.md docs/install.md docs/operations.md docs/daemon.md docs/wireshark.md \
               docs/plugins.md docs/top.md docs/ebpf.md
EXAMPLES    := systemd/portwatch.toml pcaps/sample.pcapng prometheus/alerts.yml \
               prometheus/prometheus.yml grafana/dashboards/portwatch.json \
               systemd/portwatch-ebpf.conf
# Whether systemd manages this machine (sd_booted(3)); never for a DESTDIR stage.
SYSTEMD_UP   = [ -z "$(DESTDIR)" ] && [ -d /run/systemd/system ]

install:
	@if [ -z "$(DESTDIR)" ] && [ "$$(id -u)" != 0 ]; then \
		echo "make install: run it as root (or stage it with DESTDIR=DIR)" >&2; exit 1; fi
	@link="$(DESTDIR)$(BINDIR)/portwatch"; \
	if [ -e "$$link" ] && [ "$$(readlink "$$link")" != "$(OPT)/bin/portwatch" ]; then \
		echo "make install: $$link exists and is not ours; remove it first" >&2; exit 1; fi
	$(PYTHON) -m venv $(DESTDIR)$(OPT)
	$(DESTDIR)$(OPT)/bin/pip install --quiet --disable-pip-version-check --no-warn-script-location \
		'.[completion]'
	@# generated from the installed parser (before a DESTDIR venv is relocated and cannot run)
	install -d -m 0755 $(DESTDIR)$(BASHCOMPDIR) $(DESTDIR)$(ZSHCOMPDIR) $(DESTDIR)$(MAN1DIR)
	$(DESTDIR)$(OPT)/bin/python -m portwatch completion bash > $(DESTDIR)$(BASHCOMPDIR)/portwatch
	$(DESTDIR)$(OPT)/bin/python -m portwatch completion zsh > $(DESTDIR)$(ZSHCOMPDIR)/_portwatch
	$(DESTDIR)$(OPT)/bin/python -m portwatch manpage > $(DESTDIR)$(MAN1DIR)/portwatch.1
	gzip -9nf $(DESTDIR)$(MAN1DIR)/portwatch.1
	chmod 0644 $(DESTDIR)$(BASHCOMPDIR)/portwatch $(DESTDIR)$(ZSHCOMPDIR)/_portwatch \
		$(DESTDIR)$(MAN1DIR)/portwatch.1.gz
	@if [ -n "$(DESTDIR)" ]; then \
		echo "relocating $(DESTDIR)$(OPT) to $(OPT)"; \
		grep -rlIF "$(DESTDIR)$(OPT)" $(DESTDIR)$(OPT)/bin $(DESTDIR)$(OPT)/pyvenv.cfg \
			| xargs -r sed -i "s|$(DESTDIR)$(OPT)|$(OPT)|g"; \
		$(DESTDIR)$(OPT)/bin/python -m compileall -q -f -s "$(DESTDIR)" -p / \
			$(DESTDIR)$(OPT)/lib >/dev/null; \
	fi
	install -d -m 0755 $(DESTDIR)$(BINDIR)
	ln -sfn $(OPT)/bin/portwatch $(DESTDIR)$(BINDIR)/portwatch
	install -d -m 0755 $(DESTDIR)$(UNITDIR)/portwatch.service.d
	for u in $(UNITS); do install -m 0644 systemd/$$u $(DESTDIR)$(UNITDIR)/$$u; done
	install -m 0644 systemd/$(DROPIN) $(DESTDIR)$(UNITDIR)/$(DROPIN)
	install -d -m 0755 $(DESTDIR)$(CONFDIR)
	@if [ -e $(DESTDIR)$(CONFDIR)/portwatch.toml ]; then \
		echo "keeping $(CONFDIR)/portwatch.toml (the new example is in $(DOCDIR)/examples/)"; \
	else install -m 0644 systemd/portwatch.toml $(DESTDIR)$(CONFDIR)/portwatch.toml; fi
	install -d -m 0755 $(DESTDIR)$(DOCDIR)/examples
	install -m 0644 $(DOCS) $(DESTDIR)$(DOCDIR)/
	install -m 0644 systemd/README.md $(DESTDIR)$(DOCDIR)/systemd.md
	install -m 0644 $(EXAMPLES) $(DESTDIR)$(DOCDIR)/examples/
	@[ -x /bin/kill ] || echo "warning: /bin/kill is missing (apt-get install procps):" \
		"portwatch.service's ExecReload= runs it" >&2
	@if $(SYSTEMD_UP); then echo "systemctl daemon-reload"; systemctl daemon-reload; fi
	@echo "installed; next: systemctl enable --now portwatch.service portwatch-registry-update.timer"

uninstall:
	@if [ -z "$(DESTDIR)" ] && [ "$$(id -u)" != 0 ]; then \
		echo "make uninstall: run it as root (or with DESTDIR=DIR)" >&2; exit 1; fi
	@if $(SYSTEMD_UP); then \
		systemctl disable --now $(UNITS) 2>/dev/null || :; fi
	for u in $(UNITS); do rm -f $(DESTDIR)$(UNITDIR)/$$u; done
	rm -f $(DESTDIR)$(UNITDIR)/$(DROPIN)
	rmdir --ignore-fail-on-non-empty $(DESTDIR)$(UNITDIR)/portwatch.service.d 2>/dev/null || :
	@link="$(DESTDIR)$(BINDIR)/portwatch"; \
	if [ "$$(readlink "$$link")" = "$(OPT)/bin/portwatch" ]; then rm -f "$$link"; fi
	rm -rf $(DESTDIR)$(OPT) $(DESTDIR)$(DOCDIR)
	rm -f $(DESTDIR)$(BASHCOMPDIR)/portwatch $(DESTDIR)$(ZSHCOMPDIR)/_portwatch $(DESTDIR)$(MAN1DIR)/portwatch.1.gz
	@if $(SYSTEMD_UP); then echo "systemctl daemon-reload"; systemctl daemon-reload; fi
	@echo "uninstalled; kept $(CONFDIR) and /var/lib/portwatch (remove them by hand if unwanted)"
