"""Sentence embeddings + scikit-learn: a frozen encoder (cached vectors) and a classifier, Optuna-tunable."""

from textclf.core.registry import Family, Option, package_config, register_family

FAMILY = register_family(Family(
    name="embeddings",
    max_length_key="encoder.max_length",  # the token limit `textclf stats` measures the data against
    config=package_config(__name__),  # this folder's config.json; a user's config/<name>.json is merged over it
    description="frozen sentence embeddings (MiniLM, any sentence-transformers model, TF-IDF+SVD) + scikit-learn classifier",
    kind="embeddings",
    fit="textclf.families.embeddings.train:fit",
    space="textclf.families.embeddings.search:space",
    check="textclf.families.embeddings.search:check",
    prepare="textclf.families.embeddings.search:prepare",
    packages=("sentence-transformers", "scikit-learn", "torch", "transformers"),
    predictor="textclf.families.embeddings.model:EmbeddingsPredictor",
    requires=("torch", "sentence_transformers", "sklearn"),
    extra="embeddings",
    multilabel=True,
    weights=True,  # per-row sample weights (distillation's soft labels): logreg, linear_svm, mlp and hgb take them
    env={"N_TRIALS": "search.n_trials", "MODEL_NAME": "encoder.name"},
    commands={"embed": "textclf.families.embeddings.cli:embed", "sweep": "textclf.families.embeddings.sweep_cli:sweep"},
    options=(
        Option("--model_name", "encoder.name", str, "Encoder: minilm (default, shipped), a sentence-transformers/HF id or "
               "local path, or tfidf_svd."),
        Option("--classifier", "classifier", ["logreg", "linear_svm", "knn", "mlp", "hgb"], "Classifier over the embeddings."),
        Option("--batch_size", "encoder.batch_size", int, "Encoding batch size."),
        Option("--max_length", "encoder.max_length", int, "Maximum tokens per text (default: the encoder's)."),
        Option("--long_text", "encoder.long_text", ["truncate", "chunk"], "Texts longer than max_length: truncate "
               "(default) or chunk into windows pooled per text (encoder.stride, max_chunks, chunk_pooling)."),
        Option("--device", "device", str, "auto (default), cpu, cuda, cuda:N or mps."),
        Option("--balance", "balance", bool, "Downsample train to the smallest class before fitting.", is_flag=True,
               secondary="--no-balance"),
        Option("--n_jobs", "search.n_jobs", int, "Parallel trials in this process."),
        Option("--metric", "search.metric", str, "Validation metric to maximise: macro_f1 (default; label sets: micro_f1), ..."),
    ),
))
