# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast models sample-models bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/edgeopt run recipes/demo.yaml

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m 'not slow'

# ImageNet-shape models with random weights (not committed): build/models/*.onnx
models: $(STAMP)
	$(BIN)/python -m edgeopt.zoo --out build/models

# Retrain the committed sample models (needs PyTorch in a separate venv; see sample_models/README.md)
sample-models:
	$(PYTHON) -m venv .venv-train
	.venv-train/bin/pip install --quiet -r tools/requirements-train.txt
	.venv-train/bin/python tools/train_sample_models.py

bench: $(STAMP) models
	$(BIN)/pip install --quiet -r bench/requirements.txt
	$(BIN)/python bench/run_all.py

clean:
	rm -rf $(VENV) build .pytest_cache
