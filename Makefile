# ugclu_jax: `make run` and `make test` set up everything they need on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
WORKDIR ?= runs/default
TEST_WORKERS ?= 2
CONFIG  ?= default

.PHONY: setup test data run smoke bench stress experiments format clean

$(STAMP): requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $(STAMP)

setup: $(STAMP)

# Two workers may share one GPU: no preallocation of its memory.
test: $(STAMP)
	XLA_PYTHON_CLIENT_PREALLOCATE=false $(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --durations=10 tests

data: $(STAMP)
	@bash scripts/get_data.sh

# `make run` continues an interrupted run (and only re-renders a finished one);
# remove $(WORKDIR) to start over.
run: $(STAMP)
	@bash scripts/get_data.sh
	$(PY) -m ugclu_jax run --config $(CONFIG) --workdir $(WORKDIR) --resume

smoke: $(STAMP)
	$(PY) -m ugclu_jax run --config smoke --workdir runs/smoke --resume

# The PyTorch reference of `make bench` (on CPU the CPU-only wheel; BENCH_TORCH= skips it).
BENCH_TORCH ?= torch==2.13.0+cpu
bench: $(STAMP)
	@if [ -n "$(BENCH_TORCH)" ]; then $(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet "$(BENCH_TORCH)"; fi
	$(PY) benchmarks/bench.py --readme benchmarks/README.md

# Random streams x seeds with every method of the default config; resumable, skips
# finished runs (python experiments/stress.py --help). E.g. a quick look:
# make stress STRESS_ARGS="--streams 2 --seeds 1 --max-train-per-class 50" STRESS_TABLE=runs/stress.md
STRESS_ARGS ?= --streams 20 --seeds 3
STRESS_TABLE ?= experiments/stress.md
stress: $(STAMP)
	@bash scripts/get_data.sh
	$(PY) experiments/stress.py --out runs/stress --table $(STRESS_TABLE) $(STRESS_ARGS)

# Every scenario of experiments/README.md, 5 seeds each, and its tables (resumable;
# python experiments/run_all.py --help), e.g. make experiments EXPERIMENTS_ARGS="--only fmnist_mlp_mixed".
EXPERIMENTS_ARGS ?=
experiments: $(STAMP)
	@bash scripts/get_data.sh
	$(PY) experiments/run_all.py $(EXPERIMENTS_ARGS)

# The one style (pyproject.toml's [tool.ruff]); tests/test_style.py checks it.
format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf $(VENV) runs .pytest_cache
