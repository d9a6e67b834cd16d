# segbench — `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
SEGBENCH := $(BIN)/segbench
SEEDS ?= 0 1 2
# Scale of the ablation sweeps: `cpu` (minutes on a laptop), or any NAME with a _scale_NAME.yaml
# beside the ablation's base.yaml: `long` (the CPU recipe trained 3x longer, to check that a
# reading is not about convergence speed), `paper` (GPU, paper-size models).
SCALE ?= cpu
# An ablation's variants to run (default: all), and TUNE=1 to tune each on val first (its tune:).
VARIANTS ?=
TUNE ?=
# Processes of make test (pytest-xdist): `auto` is one per core; 0 runs the tests in this process.
TEST_WORKERS ?= auto
export PYTHONUNBUFFERED := 1
# pip installs without compiling every module to bytecode (half of make venv's 2 minutes went to
# the thousands of files of torch and its CUDA libraries); Python compiles each module the first
# time it is imported and keeps it, also where the environment sets PYTHONDONTWRITEBYTECODE
# (without the kept bytecode every command would start in 12 s instead of 5).
unexport PYTHONDONTWRITEBYTECODE

.DEFAULT_GOAL := help
.PHONY: help venv demo test test-slow lint format docs bench bench-drn gpu-check gpu-wheels gpu-evidence clean

help:  ## list the targets and the ablations found (experiments/*/*/ablation.yaml)
	@grep -hE '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | sort -t: -k1,1 | \
	  awk 'BEGIN {FS = ":.*## "}; {printf "  \033[36m%-35s\033[0m %s\n", $$1, $$2}'
	@for f in experiments/*/*/ablation.yaml; do \
	  n=$$(sed -n 's/^name: *//p' $$f); d=$$(sed -n 's/^description: *//p' $$f | tr -d '"'); \
	  m=$$(sed -n 's/^minutes_per_seed: *//p' $$f); \
	  printf "  \033[36m%-35s\033[0m %s%s\n" "ablation-$$n" "$$d" "$${m:+ (CPU ~$$m min/seed)}"; done
	@echo "  variables: SEEDS='$(SEEDS)' SCALE=$(SCALE) (cpu|long|paper) VARIANTS='...' TUNE=1 VENV=$(VENV) TEST_WORKERS=$(TEST_WORKERS)"
	@echo "  an ablation is also found by its paper's folder: make ablation-drn"

$(BIN)/.installed: pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --no-compile -e '.[dev,export,slurm,docs,tune,loggers,notebooks]'
	@touch $@

venv: $(BIN)/.installed  ## create .venv and install segbench with its dev tools and extras (export, slurm, docs, tune, loggers, notebooks)

demo: venv  ## train FCN-8s on the embedded synthetic scenes (CPU, 2-7 min) and print the results
	$(SEGBENCH) fit --config experiments/quickstart.yaml --run.overwrite true

test: venv  ## lint, format check, type check and the test suite in parallel (no slow tests)
	$(BIN)/ruff check segbench tests benchmarks docs/hooks
	$(BIN)/ruff format --check segbench tests benchmarks docs/hooks
	$(BIN)/mypy
	$(BIN)/python -m pytest -q -m "not slow" -p no:cacheprovider -n $(TEST_WORKERS) --dist loadgroup

test-slow: venv  ## the slow tests: real data (SEGBENCH_CAMVID), training to a target
	$(BIN)/python -m pytest -q -m slow

lint: venv  ## ruff lint and format check
	$(BIN)/ruff check segbench tests benchmarks docs/hooks
	$(BIN)/ruff format --check segbench tests benchmarks docs/hooks

format: venv  ## ruff format + fix
	$(BIN)/ruff format segbench tests benchmarks docs/hooks
	$(BIN)/ruff check --fix segbench tests benchmarks docs/hooks

# The site reads this tree's code (PYTHONPATH), not an installed copy; a warning fails the build.
docs: venv  ## build the documentation site into site/ (mkdocs build --strict; open site/index.html)
	PYTHONPATH=$(CURDIR) NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

# Benchmarks measure speed on an idle machine: never while a sweep trains.
bench: venv  ## where the quickstart's training time goes: bare step, loop, loader, inference
	$(SEGBENCH) benchmark --config experiments/quickstart.yaml --out results/benchmark

bench-drn: venv  ## segbench's DRN-C-26 vs the official fyu/drn code, one process, alternating
	$(BIN)/python benchmarks/drn_official.py

gpu-check: venv  ## every architecture at paper scale on a GPU (bf16/fp16, channels_last, compile; < 8 min)
	$(BIN)/python benchmarks/gpu_check.py --out results/gpu-check.md

# The lent GPU machine runs its own Python 3.12 and packages, with no network: these pure-Python
# wheels (what it lacks of segbench's needs) travel in .whl/ with the working tree.
GPU_WHEELS := jsonargparse==4.53.0 docstring-parser==0.18.0 typeshed-client==2.15.0
GPU_PYTHON ?= python3
gpu-wheels:  ## download the wheels the GPU machine lacks (Python 3.12) into .whl/
	rm -rf .whl && $(PYTHON) -m pip download --quiet --no-deps --only-binary=:all: \
	  --python-version 3.12 --implementation cp --platform manylinux2014_x86_64 -d .whl $(GPU_WHEELS)
	@ls -l .whl

gpu-evidence:  ## ON THE GPU MACHINE (image's python3, no venv): install .whl/, time every architecture, ParseNet's context claims (< 9 min)
	$(GPU_PYTHON) -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir \
	  --upgrade --target /tmp/segbench-site .whl/*.whl
	PYTHONPATH=/tmp/segbench-site:$(CURDIR) $(GPU_PYTHON) benchmarks/gpu_evidence.py \
	  --out $${OUT:-results/gpu-evidence}

# Every ablation declared in experiments/<paper>/<set>/ablation.yaml: its variants x SEEDS, its
# steps before and after (e.g. gridding --record), then the report in results/GROUP[-SCALE].
# FIT_ARGS='--trainer.max_epochs 1' passes extra arguments to every fit (the report then goes
# beside the runs, runs/GROUP[-SCALE].md: they are not the recipe's).
ablation-%: venv
	$(SEGBENCH) sweep --ablation $* --seeds $(SEEDS) --scale $(SCALE) \
	  $(if $(VARIANTS),--variants $(VARIANTS)) $(if $(TUNE),--tune) $(if $(FIT_ARGS),-- $(FIT_ARGS))

clean:  ## remove caches (keeps .venv and runs/)
	rm -rf .pytest_cache .ruff_cache **/__pycache__
