# The README's two commands: `make run` and `make test`. Everything else supports them.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CONFIG ?= supportd.toml

.PHONY: run test lint bench clean systemd-tools imap-server postfix-tools

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed pyproject.toml
	$(BIN)/pip install -q -e '.[test]'
	touch $@

run: $(VENV)/.installed
	$(BIN)/supportd --config $(CONFIG) run

lint: $(VENV)/.installed-test
	$(BIN)/ruff check daemon tests bench
	$(BIN)/mypy

test: lint systemd-tools imap-server postfix-tools
	$(BIN)/pytest -q

# systemd-analyze (and systemd-socket-activate) for the unit tests; apt only when missing.
systemd-tools:
	@command -v systemd-analyze >/dev/null || { apt-get update -q && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends systemd; }

# Dovecot for the IMAP intake tests and benchmark; apt only when missing.
imap-server:
	@command -v dovecot >/dev/null || { apt-get update -q && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q dovecot-imapd; }

# Postfix's tools: the relay in the crash test, smtp-source in the bench; apt only when missing.
postfix-tools:
	@command -v smtp-source >/dev/null || { apt-get update -q && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q postfix; }

# One table of ratios (bench/run.py runs every bench/bench_*.py); BENCH_SCALE=0.1 is quicker.
bench: $(VENV)/.installed-test imap-server postfix-tools
	$(BIN)/python bench/run.py
	SUPPORTD_CRASH_MAILS=2000 SUPPORTD_HOSTILE_EXAMPLES=2000 $(BIN)/pytest -q -s tests/reliability

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
