"""BERT: any Hugging Face encoder fine-tuned in Catalyst with focal loss and two-stage training.

Contract v2: :func:`.fit.fit` trains and returns the Predictor, :func:`.fit.check` refuses bad settings;
the core searches ``search.space`` (config/bert.json; ``search.n_trials`` 0 by default), refits and writes meta.json.
"""

from textclf.core.registry import Family, Option, package_config, register_family

FAMILY = register_family(Family(
    name="bert",
    max_length_key="model.max_length",  # the token limit `textclf stats` measures the data against
    config=package_config(__name__),  # this folder's config.json; a user's config/<name>.json is merged over it
    description="Hugging Face encoder (default: shipped all-MiniLM-L6-v2) fine-tuned in Catalyst, focal loss, one or two stages",
    kind="neural",
    fit="textclf.families.bert.fit:fit",
    check="textclf.families.bert.fit:check",
    multilabel=True,
    packages=("torch", "transformers", "catalyst", "accelerate", "tokenizers"),
    predictor="textclf.families.bert.model:BertPredictor",
    onnx="textclf.families.bert.onnx",
    explainer="textclf.families.bert.explain:explain",
    requires=("torch", "transformers", "catalyst"),
    extra="bert",
    subproject="bert_classification",
    env={"BATCH_SIZE": "train.batch_size", "EPOCHS": "stage2.epochs", "N_TRIALS": "search.n_trials"},
    options=(
        Option("--model_name", "model.model_name", str,
               "Hugging Face id or local path of the encoder (e.g. DeepPavlov/rubert-base-cased); "
               "'auto' (default): the shipped all-MiniLM-L6-v2."),
        Option("--two_stage", "two_stage", bool,
               "Stage 1 on a class-balanced downsample, stage 2 on the full train set from stage 1's best weights; "
               "--one_stage: one stage on all of train. Default (config two_stage auto): two stages only when the "
               "downsample leaves out >= stage1.auto_min_dropped (0.5) of train, else one stage of "
               "stage1 + stage2 epochs.", is_flag=True, secondary="--one_stage"),
        Option("--device", "device", str, "auto | cpu | cuda | cuda:N (default: config device, or $TEXTCLF_DEVICE)."),
        Option("--devices", "devices", int,
               "Processes for DistributedDataParallel training (one GPU each on CUDA, gloo on the CPU). Default 1."),
        Option("--max_length", "model.max_length", int, "Maximum tokens per text (model.max_length)."),
        Option("--batch_size", "train.batch_size", int,
               "Training batch size per process (train.batch_size); the lr follows train.lr_scaling (sqrt) from batch 32."),
        Option("--precision", "train.precision", ["auto", "fp32", "bf16", "fp16"],
               "auto (default): bf16 on Ampere+ GPUs, fp16 + loss scaler on older GPUs, fp32 on the CPU."),
        Option("--metric", "train.metric", str,
               "Validation metric for best checkpoint / early stopping: macro_f1 (default), macro_f0.5, accuracy, loss, ..."),
        Option("--progress", "train.progress", bool, "Per-batch progress bars (default: on a terminal).", is_flag=True,
               secondary="--no-progress"),
    ),
))
