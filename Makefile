# The two quick-start commands: `make demo` and `make test`.
# Both create a local virtual environment (.venv) on first use and install into it.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test install install-test clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# constraints.txt pins the versions the suite was tested with (pyproject.toml keeps ranges)
install: $(BIN)/python
	$(BIN)/python -m pip install -q -c constraints.txt -e .

install-test: $(BIN)/python
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[test]"

# The main job on the built-in data (no files needed): the tune-then-evaluate check.
demo: install
	$(BIN)/hundred check incremental

test: install-test
	$(BIN)/python -m pytest --durations=10

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
