"""BiLSTM (the ``allennlp/`` subproject): packed sequences, selection on macro F0.5, Optuna with pruning."""

from textclf.core.registry import Family, Option, package_config, register_family


def beta_selects_metric(flags: dict) -> dict:
    """``--beta 0.3`` alone also selects on macro F0.3 (``train.metric``)."""
    beta = flags.get("train.beta")
    if beta is not None and flags.get("train.metric") is None:
        from textclf.core.metrics import beta_name

        flags["train.metric"] = f"macro_{beta_name(beta)}"
    return flags


FAMILY = register_family(Family(
    name="lstm",
    max_length_key="train.max_length",  # the token limit `textclf stats` measures the data against
    config=package_config(__name__),  # this folder's config.json; a user's config/<name>.json is merged over it
    description="BiLSTM over packed sequences (Lightning), best epoch by macro F0.5 (multi-label: sigmoid outputs, "
                "micro F1), Optuna with pruning",
    kind="neural",
    fit="textclf.families.lstm.train:fit",
    space="textclf.families.lstm.search:space",
    pruner="textclf.families.lstm.search:pruner",
    check="textclf.families.lstm.search:check",
    prepare="textclf.families.lstm.search:prepare",
    multilabel=True,
    packages=("torch", "lightning", "tensorboard"),
    predictor="textclf.families.lstm.model:LSTMPredictor",
    onnx="textclf.families.lstm.onnx",
    explainer="textclf.families.lstm.explain:explain",
    requires=("torch", "lightning"),
    extra="lstm",
    subproject="allennlp",
    env={"BATCH_SIZE": "train.batch_size", "EPOCHS": "train.epochs", "N_TRIALS": "search.n_trials"},
    options=(
        Option("--device", "device", str, "auto (default; also $TEXTCLF_DEVICE), cpu, cuda, cuda:N."),
        Option("--epochs", "train.epochs", int, "Maximum epochs (train.epochs)."),
        Option("--batch_size", "train.batch_size", int, "Training batch size (train.batch_size)."),
        Option("--precision", "train.precision", ["auto", "fp32", "bf16", "fp16"],
               "auto (default): bf16-mixed on Ampere+ GPUs, 16-mixed on older GPUs, 32-true on the CPU."),
        Option("--lr", "train.lr", float, "Learning rate (train.lr)."),
        Option("--patience", "train.patience", int, "Epochs without a better validation score before stopping."),
        Option("--beta", "train.beta", float, "F-beta to report; alone it also selects on macro_f<beta> (train.beta)."),
        Option("--metric", "train.metric", str, "Validation metric selecting the best epoch (train.metric, default macro_f0.5)."),
        Option("--pretrained_vectors", "model.pretrained_vectors", str,
               "fastText .vec/.bin or word2vec text file (model.pretrained_vectors)."),
        Option("--pruner", "search.pruner", ["median", "hyperband", "none"], "Optuna pruner."),
    ),
    flag_hook=beta_selects_metric,
))
