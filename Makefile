# The two commands a newcomer needs: `make run` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
LOCK   := requirements/lock.txt
PYTEST_ARGS ?=

.PHONY: run test test-fast lint lock install clean

# The venv installs the lock file (exact versions, the same on every machine), then the project itself
# without resolving anything again.
$(STAMP): pyproject.toml $(LOCK)
	@echo "==> creating $(VENV) and installing the hub from $(LOCK) (first run takes a minute)"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r $(LOCK)
	$(BIN)/python -m pip install --quiet --no-deps -e .
	@touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/tickstock run

# Each run keeps its servers and temporary files under a root of its own: pytest's default root is
# shared by every run of one user, and a run beside this one would prune the folders our servers use.
PYTEST := root=$$(mktemp -d /tmp/tickstock-test.XXXXXX); \
	$(BIN)/python -m pytest --basetemp=$$root/t --cov --cov-report=term-missing:skip-covered

test: $(STAMP)
	@rm -f .coverage .coverage.*
	@$(PYTEST) $(PYTEST_ARGS); rc=$$?; rm -rf $$root; exit $$rc

# The same without the tests marked slow.
test-fast: $(STAMP)
	@rm -f .coverage .coverage.*
	@$(PYTEST) -m "not slow" $(PYTEST_ARGS); rc=$$?; rm -rf $$root; exit $$rc

# Lint, format check and types (strict on hub, api, store); CI runs it before the tests.
lint: $(STAMP)
	$(BIN)/ruff check hub api store tests ops
	$(BIN)/ruff format --check hub api store tests ops
	$(BIN)/mypy

# Refresh the lock file from pyproject.toml (newest versions its bounds admit), with the test and dev
# extras; commit the result. `make` then reinstalls the venv from it.
lock: $(STAMP)
	$(BIN)/pip-compile --quiet --strip-extras --extra test --extra dev --no-emit-index-url --upgrade \
		--output-file $(LOCK) pyproject.toml

clean:
	rm -rf $(VENV) .tickstock .coverage .coverage.* .pytest_cache
