# Two commands cover everything: `make repro` (set up, run the pipeline) and `make test`.
# Both create .venv when missing and install the pinned packages only when the lock changed.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
STAMP := $(VENV)/.installed
# Stages run `python -m stages.<name>`: put the venv first on PATH so dvc finds its python.
RUN := PATH="$(BIN):$$PATH" VIRTUAL_ENV="$(CURDIR)/$(VENV)"

.PHONY: setup repro test test-fast lint bench bench-tta bench-scale bench-loop

setup: $(STAMP)

$(STAMP): requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.lock
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $(STAMP)

repro: setup
	$(RUN) dvc repro

test: setup
	$(RUN) python -m pytest

# Before every commit: the in-process tests, no stage, DVC or git process (tests/in_process_only.py).
test-fast: setup
	$(RUN) python -m pytest -m "not slow" --in-process-only -q -rfE

lint: setup
	$(RUN) ruff check .

bench: setup
	$(RUN) python benchmarks/train_speed.py

# Each stage at 60,000 and 600,000 images (minutes); rewrites the output block of docs/data-scale.md.
bench-scale: setup
	$(RUN) python benchmarks/data_scale.py --doc docs/data-scale.md

# Test accuracy after each epoch against training seconds: mlp, cnn, cnn-fast (minutes); rewrites
# docs/time_to_accuracy.txt and docs/time_to_accuracy.png.
bench-tta: setup
	$(RUN) python benchmarks/time_to_accuracy.py

# The daily loop (edit train.epochs, dvc repro) and mnist-predict against the tutorial script and TensorFlow's
# import, as ratios measured in one run (minutes); rewrites docs/daily_loop.txt.
bench-loop: setup
	$(RUN) python benchmarks/daily_loop.py
