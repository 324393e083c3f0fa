"""SetFit-style: a sentence encoder fine-tuned contrastively on label pairs, then a small head on its embeddings.

Family contract v2: ``fit`` (:mod:`.train`) trains once; ``space`` and ``check`` (:mod:`.search`) are the
search hooks; the core searches (``search.n_trials``, 0 by default), refits, evaluates and writes meta.json.
"""

from textclf.core.registry import Family, Option, package_config, register_family

FAMILY = register_family(Family(
    name="setfit",
    max_length_key="encoder.max_length",  # the token limit `textclf stats` measures the data against
    config=package_config(__name__),  # this folder's config.json; a user's config/<name>.json is merged over it
    description="SetFit-style: sentence encoder (default: shipped all-MiniLM-L6-v2) tuned contrastively on label pairs "
                "+ small head, few-shot ready",
    kind="setfit",
    fit="textclf.families.setfit.train:fit",
    space="textclf.families.setfit.search:space",
    check="textclf.families.setfit.search:check",
    prepare="textclf.families.setfit.search:prepare",
    explainer="textclf.families.setfit.explain:explain",
    multilabel=True,  # label sets: pairs by shared/disjoint labels, sigmoid or one-vs-rest head (docs/multilabel.md)
    packages=("sentence-transformers", "scikit-learn", "torch", "transformers"),
    predictor="textclf.families.setfit.model:SetFitPredictor",
    requires=("torch", "sentence_transformers", "sklearn"),
    extra="embeddings",
    env={"EPOCHS": "train.epochs", "MODEL_NAME": "encoder.name", "PER_CLASS": "data.per_class"},
    options=(
        Option("--model_name", "encoder.name", str, "Encoder: minilm (default, shipped), a sentence-transformers/HF id "
               "in the local cache, or a local path."),
        Option("--epochs", "train.epochs", int, "Contrastive epochs over the sampled pairs (train.epochs, default 1)."),
        Option("--per_class", "data.per_class", int, "Few-shot: train on N seeded examples per class (label sets: per "
               "label; default: all rows)."),
        Option("--pairs_per_text", "pairs.per_text", int, "Positive and negative pairs drawn per text (SetFit's "
               "num_iterations; 2·R·N pairs)."),
        Option("--loss", "loss", ["cosine", "mnr", "batch_all_triplet"], "Contrastive loss (default cosine)."),
        Option("--head", "head.type", ["torch", "logreg"], "Head on the tuned embeddings (default torch)."),
        Option("--head_hidden", "head.hidden", int, "Hidden units of the torch head (0: no hidden layer)."),
        Option("--head_dropout", "head.dropout", float, "Dropout of the torch head."),
        Option("--label_smoothing", "head.label_smoothing", float, "Label smoothing of the head's cross-entropy."),
        Option("--max_length", "encoder.max_length", int, "Maximum tokens per text (encoder.max_length)."),
        Option("--long_text", "encoder.long_text", ["truncate", "chunk"], "Texts longer than max_length: truncate "
               "(default) or chunk into windows pooled per text (encoder.stride, max_chunks, chunk_pooling: auto, the "
               "pooling whose head scores best on valid)."),
        Option("--batch_size", "train.batch_size", int, "Contrastive batch size (pairs per step)."),
        Option("--device", "device", str, "auto (default), cpu, cuda, cuda:N or mps."),
    ),
))
