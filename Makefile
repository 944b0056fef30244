# `make test` builds .venv from the repo's own files when it is missing, then runs the tests.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

# The CIFAR-10 copy that the demo and the real-data tests read; override with DNM_DATA_ROOT=...
DNM_DATA_ROOT ?= $(if $(wildcard ../shared/datasets/cifar10-jpeg),$(abspath ../shared/datasets/cifar10-jpeg),datasets/cifar10)
export DNM_DATA_ROOT
export DNM_CIFAR10_ROOT ?= $(DNM_DATA_ROOT)

.PHONY: test venv demo bench clean

test: $(STAMP)
	$(PY) -m pytest -q

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e ".[test]"
	touch $(STAMP)

# The main job: a small real sweep on a CIFAR-10 subset, ending with its heatmaps. Everything it writes
# goes under outputs/ (git-ignored): results/ holds curated results only (results/README.md says how
# each was made; its smoke files are this demo's output, copied there on purpose).
demo: $(STAMP)
	$(PY) -m experiments.train -m experiment=smoke
	$(PY) scripts/collect.py outputs/sweeps/smoke -o outputs/demo/smoke.csv
	$(PY) scripts/figures.py outputs/demo/smoke.csv -o outputs/demo/figures/

bench: $(STAMP)
	$(PY) scripts/bench_optimizers.py
	$(PY) scripts/benchmark.py

clean:
	rm -rf $(VENV) outputs multirun .pytest_cache
