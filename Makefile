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
# The suffix of a non-default scale's group (runs/GROUP-SCALE, results/GROUP-SCALE).
SCALE_SUFFIX = $(if $(filter-out cpu,$(SCALE)),-$(SCALE))
export PYTHONUNBUFFERED := 1

.DEFAULT_GOAL := help
.PHONY: help venv demo test test-slow lint format clean ablation-fcn ablation-parsenet
.PHONY: ablation-degridding ablation-upsampler ablation-gald

# $(call sweep,GROUP,DIR,EXTRA): the variants of DIR/variants/ x SEEDS on DIR/base.yaml (plus
# DIR/_scale_$(SCALE).yaml unless SCALE=cpu), then the report in results/GROUP[-SCALE].{md,csv,png}.
define sweep
$(SEGBENCH) sweep --group $(1)$(SCALE_SUFFIX) \
  --base $(2)/base.yaml $(if $(SCALE_SUFFIX),$(2)/_scale_$(SCALE).yaml) \
  --variants $(sort $(wildcard $(2)/variants/*.yaml)) --seeds $(SEEDS) $(3)
endef

help:  ## list the targets
	@grep -hE '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | sort | \
	  awk 'BEGIN {FS = ":.*## "}; {printf "  \033[36m%-26s\033[0m %s\n", $$1, $$2}'
	@echo "  variables: SEEDS='$(SEEDS)' SCALE=$(SCALE) (cpu|long|paper) VENV=$(VENV)"

$(BIN)/.installed: pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $@

venv: $(BIN)/.installed  ## create .venv and install segbench with its dev tools

demo: venv  ## train FCN-8s on the embedded synthetic scenes (CPU, ~5 min) and print the results
	$(SEGBENCH) fit --config experiments/quickstart.yaml --run.overwrite true

test: venv  ## lint, format check and the test suite (no slow tests)
	$(BIN)/ruff check segbench tests
	$(BIN)/ruff format --check segbench tests
	$(BIN)/python -m pytest -q -m "not slow" -p no:cacheprovider

test-slow: venv  ## the slow tests: real data (SEGBENCH_CAMVID), training to a target
	$(BIN)/python -m pytest -q -m slow

lint: venv  ## ruff lint and format check
	$(BIN)/ruff check segbench tests
	$(BIN)/ruff format --check segbench tests

format: venv  ## ruff format + fix
	$(BIN)/ruff format segbench tests
	$(BIN)/ruff check --fix segbench tests

ablation-fcn: venv  ## FCN-32s/16s/8s skips x SEEDS on the synthetic scenes (CPU ~15 min/seed)
	$(call sweep,fcn-skips,experiments/fcn/synthetic,--paper experiments/fcn/paper.yaml \
	  --metrics test/mIoU test/pixel_acc test/mean_acc test/fwIoU test/IoU/pole test/IoU/bird)

ablation-parsenet: venv  ## ParseNet context, early/late fusion, L2 norm x SEEDS, synthetic (CPU ~25 min/seed)
	$(call sweep,parsenet-context,experiments/parsenet/synthetic,--paper experiments/parsenet/paper.yaml \
	  --metrics test/mIoU test/IoU/boat test/IoU/car test/pixel_acc test/mean_acc)

# DRN degridding: the sweep, then each run's gridding score into its metrics.json, then the report
# with that column. FIT_ARGS='--trainer.max_epochs 1' passes extra arguments to every fit.
DRN_GROUP = drn-degridding$(SCALE_SUFFIX)
DRN_VARIANTS = $(basename $(notdir $(sort $(wildcard experiments/drn/synthetic/variants/*.yaml))))
DRN_RUNS = $(foreach v,$(DRN_VARIANTS),$(foreach s,$(SEEDS),runs/$(DRN_GROUP)/$(v)-s$(s)))
DRN_METRICS = test/mIoU test/IoU/pole test/IoU/bird test/IoU/building test/IoU/water gridding/impulse

ablation-degridding: venv  ## DRN-A, degridding steps 1-3 (B, C), DRN-D x SEEDS + gridding score (CPU ~25 min/seed)
	$(call sweep,drn-degridding,experiments/drn/synthetic,--paper experiments/drn/paper.yaml \
	  --metrics $(DRN_METRICS) $(if $(FIT_ARGS),-- $(FIT_ARGS)))
	$(SEGBENCH) gridding --record --runs $(DRN_RUNS) --out results/$(DRN_GROUP)-gridding
	$(SEGBENCH) report $(DRN_RUNS) --out results/$(DRN_GROUP) --title $(DRN_GROUP) \
	  --paper experiments/drn/paper.yaml --metrics $(DRN_METRICS)

ablation-upsampler: venv  ## DUpsampling: upper bound (synthetic, + CamVid if SEGBENCH_CAMVID) and DUpsample vs bilinear x SEEDS (CPU ~25 min/seed)
	$(SEGBENCH) upper-bound --config experiments/dupsampling/synthetic/base.yaml \
	  --num_workers 2 --title "synthetic val" --out results/upper-bound-synthetic
	$(if $(SEGBENCH_CAMVID),$(SEGBENCH) upper-bound \
	  --config experiments/dupsampling/synthetic/base.yaml --data segbench.data.CamVid \
	  --title "CamVid val" --out results/upper-bound-camvid)
	$(call sweep,dupsampling-upsampler,experiments/dupsampling/synthetic,\
	  --metrics test/mIoU test/IoU/pole test/IoU/bird)

# GALD: the sweep, then each LD run's masks and mask ablation (does M's spatial variation matter?)
# recorded in its metrics.json, once per checkpoint, then the report with that column.
GALD_GROUP = gald$(SCALE_SUFFIX)
GALD_VARIANTS = $(basename $(notdir $(sort $(wildcard experiments/gald/synthetic/variants/*.yaml))))
GALD_RUNS = $(foreach v,$(GALD_VARIANTS),$(foreach s,$(SEEDS),runs/$(GALD_GROUP)/$(v)-s$(s)))
GALD_LD_MASKS = $(foreach v,$(filter %_ld,$(GALD_VARIANTS)),$(foreach s,$(SEEDS),\
  results/$(GALD_GROUP)-ld-masks/$(v)-s$(s)/ld_mask_stats.json))
GALD_METRICS = test/mIoU test/IoU/bird test/IoU/pole ld_mask/spatial_mIoU_gain

ablation-gald: venv  ## GALD: GA (none/CGNL/non-local/PSP/GAP) x LD x SEEDS + LD mask ablation, synthetic (CPU ~35 min/seed)
	$(call sweep,gald,experiments/gald/synthetic,--metrics $(GALD_METRICS))
	$(MAKE) --no-print-directory $(GALD_LD_MASKS)
	$(SEGBENCH) report $(GALD_RUNS) --out results/$(GALD_GROUP) --title $(GALD_GROUP) \
	  --metrics $(GALD_METRICS)

results/$(GALD_GROUP)-ld-masks/%/ld_mask_stats.json: runs/$(GALD_GROUP)/%/checkpoints/best.ckpt
	$(SEGBENCH) ld-masks --run runs/$(GALD_GROUP)/$* --record --out $(@D)

clean:  ## remove caches (keeps .venv and runs/)
	rm -rf .pytest_cache .ruff_cache **/__pycache__
