"""fastText + Optuna: a linear bag-of-n-grams classifier with a resumable hyper-parameter search."""

from textclf.core.registry import Family, Option, package_config, register_family

FAMILY = register_family(Family(
    name="fasttext",
    config=package_config(__name__),  # this folder's config.json; a user's config/<name>.json is merged over it
    description="fastText bag of word/char n-grams, Optuna-tuned (seconds on a CPU)",
    kind="linear",
    fit="textclf.families.fasttext.model:fit",
    check="textclf.families.fasttext.model:check_settings",
    predictor="textclf.families.fasttext.model:FastTextPredictor",
    packages=("fasttext-community",),
    fork_trials=True,
    multilabel=True,
    requires=("fasttext",),
    extra=None,
    subproject="fasttext",
    env={"N_TRIALS": "search.n_trials"},
    options=(
        Option("--n_jobs", "search.n_jobs", int, "Parallel trials in this process."),
        Option("--metric", "search.metric", str,
               "Validation metric to maximise: macro_f1 (default; micro_f1 on multi-label data), macro_f0.5, accuracy, ..."),
        Option("--quantize", "output.quantize", bool, "Also save a compressed model.ftz and use it.", is_flag=True,
               secondary="--no-quantize"),
    ),
))
