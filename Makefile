# `make quickstart` and `make test` each create .venv when missing and install requirements.txt.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv test test-fast quickstart bench clean

venv: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest

test-fast: $(STAMP)
	$(PY) -m pytest -m "not slow"

quickstart: $(STAMP)
	bash tools/quickstart.sh

bench: $(STAMP)
	$(PY) tools/bench.py --reference --output_dir=bench_out

clean:
	rm -rf $(VENV) quickstart_out bench_out
