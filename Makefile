# make            run every notebook through papermill (PROFILE=quick; PROFILE=full = the paper's settings)
# make test       lint (ruff), unit tests of the core + every notebook executed (nbval) at the "test" profile
# make unit       lint and the unit tests only (a few minutes)
# make bench      time one training step of each paper network (benchmarks/bench_step.py)
PYTHON  ?= python3
VENV    := .venv
PY      := $(VENV)/bin/python
PROFILE ?= quick
# absolute, so that a relative MTSNN_DATA=../shared/data still holds in notebooks/, where the notebooks run
export MTSNN_DATA := $(abspath $(or $(MTSNN_DATA),$(CURDIR)/data))

NOTEBOOKS := $(sort $(filter-out notebooks/90_summary.ipynb,$(wildcard notebooks/*.ipynb)))

.PHONY: all notebooks test unit lint bench venv $(NOTEBOOKS) notebooks/90_summary.ipynb
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
# The full profile checkpoints every run under runs/: the same command again resumes where it stopped.
CHECKPOINTS := $(if $(filter full,$(PROFILE)),-p CHECKPOINT_DIR ../runs)
$(NOTEBOOKS) notebooks/90_summary.ipynb: venv
	$(PY) tools/run_notebook.py --profile $(PROFILE) $(CHECKPOINTS) $@

lint: venv
	$(PY) -m ruff check .

unit: lint
	$(PY) -m pytest -v tests/test_core.py tests/test_convert.py

test: lint
	$(PY) -m pytest -v tests

bench: venv $(VENV)/.bench-installed
	$(PY) benchmarks/bench_step.py

$(VENV)/.bench-installed: requirements-bench.txt $(VENV)/.installed
	$(PY) -m pip install -q -r requirements-bench.txt
	touch $@
