# make            run every notebook through papermill (PROFILE=quick; PROFILE=full = the paper's settings)
# make test       unit tests of the core + every notebook executed (nbval) on a temporary copy
# make bench      time one training step of each paper network (benchmarks/bench_step.py)
PYTHON  ?= python3
VENV    := .venv
PY      := $(VENV)/bin/python
PROFILE ?= quick
export MTSNN_DATA ?= $(CURDIR)/data

NOTEBOOKS := $(sort $(filter-out notebooks/90_summary.ipynb,$(wildcard notebooks/*.ipynb)))

.PHONY: all notebooks test bench venv $(NOTEBOOKS) notebooks/90_summary.ipynb
all: notebooks

venv: $(VENV)/.installed
$(VENV)/.installed: requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $@

# Independent notebooks run in parallel with make -j; the summary reads their JSON last.
notebooks: notebooks/90_summary.ipynb
notebooks/90_summary.ipynb: $(NOTEBOOKS)
$(NOTEBOOKS) notebooks/90_summary.ipynb: venv
	$(PY) tools/run_notebook.py --profile $(PROFILE) $@

test: venv
	$(PY) -m pytest -v tests

bench: venv $(VENV)/.bench-installed
	$(PY) benchmarks/bench_step.py

$(VENV)/.bench-installed: requirements-bench.txt $(VENV)/.installed
	$(PY) -m pip install -q -r requirements-bench.txt
	touch $@
