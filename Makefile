# Set-up is part of each target: the first run creates .venv and installs everything.
STAMP := .venv/.installed
# machines of this project keep the CPU torch wheel in /opt/wheels; elsewhere pip uses the index
FIND_LINKS := $(if $(wildcard /opt/wheels),--find-links /opt/wheels,)

.PHONY: demo lint test test-fast setup system-deps

$(STAMP): pyproject.toml
	python3 -m venv .venv
	.venv/bin/pip install -q --upgrade pip
	.venv/bin/pip install -q $(FIND_LINKS) -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)

# Debian packages the tests need (PostgreSQL server, Chromium for the browser tests).
system-deps:
	@if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || ! command -v chromium >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql chromium; fi

demo: $(STAMP)
	.venv/bin/dreamdpo demo

# ruff over the repository (rules and the files still left out: [tool.ruff] in pyproject.toml), then mypy
# over the packages listed in [tool.mypy] (files = ...)
lint: $(STAMP)
	.venv/bin/ruff check .
	.venv/bin/mypy

# everything (CI): lint first, then unit, integration, slow, browser and PostgreSQL tests
test: lint $(STAMP) system-deps
	.venv/bin/python -m pytest -q --durations=25

# the quick tier while working: every module on SQLite, without the slow, browser and PostgreSQL tests
test-fast: $(STAMP)
	.venv/bin/python -m pytest -q -m "not slow and not browser and not postgres"
