# `make help` lists the targets. Each creates .venv on first use (and again when pyproject.toml changes).
PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
ARGS ?=
CKPT ?=

.PHONY: help train cpu-hour smoke evaluate visualize tensorboard test test-unit lint venv clean-venv

help:  ## this list
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'
	@echo "  Overrides go in ARGS, e.g. make smoke ARGS=\"data.root=/path/to/cifar10-jpeg.tar.gz\"."
	@echo "  evaluate and visualize need CKPT=<run>/checkpoints/last.ckpt."

venv: $(STAMP)  ## create .venv and install the project (with the dev tools)

# Re-install when the dependency list changes.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

train: $(STAMP)  ## train the seed recipe (a GPU if there is one): make train ARGS="experiment=seed trainer=gpu"
	$(BIN)/python -m vit_cifar.train $(ARGS)

cpu-hour: $(STAMP)  ## the best ViT in one hour on a CPU (experiment=cpu_hour)
	$(BIN)/python -m vit_cifar.train experiment=cpu_hour $(ARGS)

smoke: $(STAMP)  ## a few minutes on a CPU that visibly learn (experiment=smoke)
	$(BIN)/python -m vit_cifar.train experiment=smoke $(ARGS)

evaluate: $(STAMP)  ## figures, tables and calibration of a checkpoint: make evaluate CKPT=<file>
	$(BIN)/python -m vit_cifar.evaluate ckpt_path=$(CKPT) $(ARGS)

visualize: $(STAMP)  ## attention maps and rollout of a checkpoint: make visualize CKPT=<file>
	$(BIN)/python -m vit_cifar.visualize ckpt_path=$(CKPT) $(ARGS)

tensorboard: $(STAMP)  ## TensorBoard over every run in outputs/ (then open http://localhost:6006)
	$(BIN)/tensorboard --logdir outputs/ $(ARGS)

test: $(STAMP)  ## the whole test suite (what CI runs)
	$(BIN)/python -m pytest $(ARGS)

test-unit: $(STAMP)  ## the fast tier: everything that neither trains nor runs a command (about a minute)
	$(BIN)/python -m pytest -m "not slow and not e2e" $(ARGS)

lint: $(STAMP)  ## ruff
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean-venv:  ## remove .venv
	rm -rf $(VENV)
