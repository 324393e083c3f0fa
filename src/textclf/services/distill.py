"""``textclf distill``: train a student of any family on a teacher model's labels, through the one run service.

The flow (:func:`distill`):

1. the student's family, config and gold splits come from :func:`textclf.services.runs.prepare`
   (the same checks as ``textclf train``);
2. the teacher (any model directory: BERT, embeddings, an ensemble, a cascade) predicts
   probabilities on the training texts plus any unlabelled text (``--unlabeled_path``) plus
   ``--augment N`` synthetic variants of each training text (:mod:`textclf.core.augment`: token
   deletion and n-gram sampling), softened by the ``temperature`` ``T``
   (``q ∝ p^(1/T)``, i.e. the logits divided by ``T``);
3. the training set the student sees is the gold rows plus the teacher's argmax label of every
   unlabelled text, repeated by the teacher's confidence (:func:`copies`): a text the teacher is
   sure of counts up to ``1 + repeats`` times, one it hesitates on (confidence near ``1/K``)
   is left out; then each class's copies are rescaled so the teacher rows keep the gold class
   shares (:func:`balance_copies`; ``--no-balance`` skips it). This is how a student that learns
   only from hard labels (fastText, the BiLSTM, BERT, SetFit) still gets the teacher's confidence.
   A family that honours per-row weights (``Family.weights``: the embeddings family) learns the
   soft labels instead (:func:`soft_splits`: one row per (text, class) weighted by the teacher's
   probability, so a weighted log-loss is the cross-entropy to the teacher); ``--soft/--hard``
   overrides the choice;
4. :func:`textclf.services.runs.execute` runs the core flow (search when the config asks, refit,
   evaluate on the gold valid/test splits, meta.json) inside the experiment store; meta.json and
   the store's tags record the teacher (path and the SHA-256 of its meta.json, which lists its
   files' hashes), the temperature and the data (``distill`` block).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from textclf.core.augment import MAX_NGRAM, P_DROP, P_NGRAM, augment_texts
from textclf.core.data import Dataset, batched, iter_texts
from textclf.core.errors import ConfigError, DataError
from textclf.core.integrity import sha256_file
from textclf.core.meta import META_FILE
from textclf.core.training import Splits
from textclf.services import runs
from textclf.services.runs import RunResult, RunSpec

#: ``--repeats`` default: a row the teacher is certain of is added this many times (on top of any gold row)
DEFAULT_REPEATS = 3
#: texts a cached slice of teacher probabilities holds (:func:`teacher_proba`)
TEACHER_SLICE = 4096
#: meta.json key of the distillation record
META_KEY = "distill"
#: the store's tag prefix (the run service's own: ``textclf.``)
TAG_PREFIX = "textclf.distill."


@dataclass
class DistillSpec:
    """What :func:`distill` needs besides the run itself (``run``: the student's family, data and output)."""

    run: RunSpec
    teacher: str
    unlabeled_path: str | None = None
    unlabeled_format: str | None = None
    text_column: str = "text"
    temperature: float = 1.0
    repeats: int = DEFAULT_REPEATS
    batch_size: int = 256
    balance: bool = True
    #: learn the teacher's soft labels as per-row weights (None: when the student's family takes weights)
    soft: bool | None = None
    #: variants of each training text added to the teacher's texts (:mod:`textclf.core.augment`; 0: none)
    augment: int = 0
    #: keep the teacher's probabilities in the embedding cache (:func:`teacher_proba`)
    cache: bool = True


def soften(proba: np.ndarray, temperature: float) -> np.ndarray:
    """``proba`` at ``temperature``: rows ``∝ p^(1/T)`` (logits divided by ``T``); ``T=1`` returns the probabilities."""
    p = np.clip(np.asarray(proba, dtype=np.float64), 1e-12, None)
    if temperature == 1.0:
        return p / p.sum(axis=1, keepdims=True)
    logits = np.log(p) / temperature
    logits -= logits.max(axis=1, keepdims=True)
    q = np.exp(logits)
    return q / q.sum(axis=1, keepdims=True)


def copies(confidence: np.ndarray, n_classes: int, repeats: int) -> np.ndarray:
    """How often each teacher-labelled row enters the student's training set: ``round(repeats * (c - 1/K) / (1 - 1/K))``.

    0 at chance confidence ``1/K`` (the row is left out), ``repeats`` at certainty.
    """
    floor = 1.0 / n_classes
    scaled = (np.asarray(confidence, dtype=np.float64) - floor) / (1.0 - floor)
    return np.rint(np.clip(scaled, 0.0, 1.0) * repeats).astype(np.int64)


def balance_copies(n: np.ndarray, argmax: np.ndarray, gold_labels: Sequence[str], labels: Sequence[str]) -> np.ndarray:
    """``n`` rescaled per teacher label so the teacher rows keep the gold class shares (and about their total).

    A confident teacher is usually most confident on the majority class, so confidence-weighted
    copies alone over-represent it (on tweets: 85 % positive rows against 69 % in the gold labels),
    and a hard-label student learns that prior. Each class's copies are multiplied by
    ``gold share / teacher-row share``, rounded along the cumulative sum of each class's rows (so a
    class's total is kept to one row although most rows have 1-3 copies); a class the teacher never
    predicts keeps none.
    """
    n = np.asarray(n, dtype=np.float64)
    total = n.sum()
    if not total:
        return n.astype(np.int64)
    gold = np.array([sum(1 for g in gold_labels if g == label) for label in labels], dtype=np.float64) / len(gold_labels)
    rows = np.array([n[argmax == j].sum() for j in range(len(labels))]) / total
    factor = np.divide(gold, rows, out=np.zeros_like(gold), where=rows > 0)
    out = np.zeros(len(n), dtype=np.int64)
    for j in range(len(labels)):
        idx = np.flatnonzero(argmax == j)
        if len(idx):
            out[idx] = np.diff(np.rint(np.cumsum(n[idx] * factor[j])), prepend=0.0).astype(np.int64)
    return out


def teacher_proba(teacher, texts: Sequence[str], labels: Sequence[str], batch_size: int,
                  teacher_sha256: str | None = None, cache: bool = True) -> np.ndarray:
    """The teacher's probabilities on ``texts`` with columns in ``labels`` order (the student's label set).

    With ``teacher_sha256`` (its meta.json's hash, which lists every file it loads) and ``cache``, each
    slice of :data:`TEACHER_SLICE` texts goes to the embedding cache (:class:`EmbeddingCache`, keyed
    by the teacher, its backend, its label order and the slice's texts). Another distill from the
    same teacher (another student, temperature or ``--repeats``) then predicts nothing again, and
    one that was interrupted resumes after its last finished slice. The probabilities go through
    float32 either way, so a cached run and a fresh one give the student the same data.
    """
    from textclf.families.common.cache import EmbeddingCache, sha256_texts
    from textclf.services.compare.ensemble import align_columns

    texts = list(texts)
    store = EmbeddingCache() if cache and teacher_sha256 else None

    def predict(part: list[str]) -> np.ndarray:
        chunks = [teacher.predict_proba(list(b)) for b in batched(part, batch_size)]
        return np.vstack(chunks) if chunks else np.zeros((0, len(teacher.labels)))

    parts = []
    for start in range(0, len(texts), TEACHER_SLICE):
        part = texts[start:start + TEACHER_SLICE]
        if store is None:
            parts.append(np.asarray(predict(part), dtype=np.float32))
            continue
        doc = {"teacher_proba": teacher_sha256, "backend": getattr(teacher, "backend", None),
               "labels": list(teacher.labels), "texts": sha256_texts(part)}
        key = hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()
        info = {"encoder": f"teacher:{teacher.kind} probabilities", "teacher_meta_sha256": teacher_sha256,
                "backend": doc["backend"], "labels": doc["labels"]}
        proba, _ = store.get_or_compute(key, lambda part=part: predict(part), info)
        parts.append(proba)
    proba = np.vstack(parts).astype(np.float64) if parts else np.zeros((0, len(teacher.labels)))
    return align_columns(proba, teacher.labels, labels)


def read_unlabeled(path: str, fmt: str | None, text_column: str) -> list[str]:
    """The non-empty texts of ``path`` (any format ``predict`` reads); an empty file is a one-line DataError."""
    texts = [t for t in iter_texts(path, fmt, text_column) if t.strip()]
    if not texts:
        raise DataError(path, "no text to distill on (the file holds no non-empty record)")
    return texts


def distilled_splits(splits: Splits, texts: Sequence[str], proba: np.ndarray, temperature: float, repeats: int,
                     teacher_hash: str, balance: bool = True) -> tuple[Splits, dict]:
    """``splits`` whose train part is the gold rows plus the teacher-labelled rows (:func:`copies` each, then
    :func:`balance_copies` unless ``balance`` is false); and the counts."""
    labels = list(splits.labels)
    q = soften(proba, temperature)
    conf = q.max(axis=1) if len(q) else np.zeros(0)
    argmax = q.argmax(axis=1) if len(q) else np.zeros(0, dtype=np.int64)
    n = copies(conf, len(labels), repeats)
    if balance:
        n = balance_copies(n, argmax, splits.train.labels, labels)
    rows = np.repeat(np.arange(len(texts)), n)
    gold = splits.train
    train = Dataset([*gold.texts, *(texts[i] for i in rows)], [*gold.labels, *(labels[argmax[i]] for i in rows)],
                    gold.path, [], gold.task)
    digest = hashlib.sha256(json.dumps([splits.data_sha256, teacher_hash, temperature, repeats, balance,
                                        hashlib.sha256("\n".join(texts).encode()).hexdigest()]).encode()).hexdigest()
    counts = {"gold_rows": len(gold), "teacher_texts": len(texts), "teacher_rows": int(n.sum()),
              "texts_left_out": int((n == 0).sum()), "mean_confidence": round(float(conf.mean()) if len(conf) else 0.0, 4),
              "teacher_label_counts": {label: int(((argmax == j) * n).sum()) for j, label in enumerate(labels)}}
    return replace(splits, train=train, data_sha256=digest, train_sources=[]), counts


#: a teacher probability below this adds no (text, class) row to a soft-label student's training set
SOFT_MIN_PROBA = 1e-3


def soft_splits(splits: Splits, texts: Sequence[str], proba: np.ndarray, temperature: float,
                teacher_hash: str) -> tuple[Splits, dict]:
    """``splits`` whose train part is the gold rows (weight 1) plus one row per (teacher text, class) weighted by the
    teacher's softened probability of the class; and the counts.

    With these weights a classifier that minimises a weighted log-loss (logistic regression, an
    MLP, boosting) minimises the cross-entropy to the teacher's soft labels plus the gold log-loss:
    every teacher text weighs 1 in total, the same as a gold row. Probabilities below
    :data:`SOFT_MIN_PROBA` are dropped (the rest keep their value).
    """
    labels = list(splits.labels)
    q = soften(proba, temperature)
    keep = q >= SOFT_MIN_PROBA
    row, col = np.nonzero(keep)
    gold = splits.train
    train = Dataset([*gold.texts, *(texts[i] for i in row)], [*gold.labels, *(labels[j] for j in col)], gold.path, [],
                    gold.task, [1.0] * len(gold) + [float(w) for w in q[row, col]])
    digest = hashlib.sha256(json.dumps([splits.data_sha256, teacher_hash, temperature, "soft",
                                        hashlib.sha256("\n".join(texts).encode()).hexdigest()]).encode()).hexdigest()
    counts = {"gold_rows": len(gold), "teacher_texts": len(texts), "teacher_rows": int(len(row)),
              "mean_confidence": round(float(q.max(axis=1).mean()) if len(q) else 0.0, 4),
              "teacher_label_mass": {label: round(float(q[:, j].sum()), 3) for j, label in enumerate(labels)}}
    return replace(splits, train=train, data_sha256=digest, train_sources=[]), counts


def distill(spec: DistillSpec) -> RunResult:
    """Train ``spec.run.family`` on the gold rows plus ``spec.teacher``'s labels; see the module docstring."""
    from textclf.core.loading import _resolve, load_predictor

    if spec.temperature <= 0:
        raise ConfigError(f"--temperature must be > 0, got {spec.temperature:g}")
    if spec.repeats < 1:
        raise ConfigError(f"--repeats must be >= 1, got {spec.repeats}")
    if spec.augment < 0:
        raise ConfigError(f"--augment must be >= 0, got {spec.augment}")
    teacher_dir = _resolve(spec.teacher)[0]
    out = Path(spec.run.output_dir)
    if out.resolve() == teacher_dir.resolve() or teacher_dir.resolve() in out.resolve().parents:
        raise ConfigError(f"--output_dir {out} must not be the teacher ({teacher_dir}) or lie inside it")
    family, cfg, splits = runs.prepare(spec.run)
    if splits.multilabel:
        raise ConfigError("textclf distill trains multi-class students only (the data holds label sets)")
    teacher = load_predictor(spec.teacher, thresholds=False)
    if teacher.multilabel or set(teacher.labels) != set(splits.labels):
        raise ConfigError(f"teacher {teacher_dir} predicts [{', '.join(teacher.labels)}] but the training data holds "
                          f"[{', '.join(splits.labels)}]; teacher and student need one label set")
    texts = list(splits.train.texts)
    if spec.unlabeled_path:
        texts += read_unlabeled(spec.unlabeled_path, spec.unlabeled_format, spec.text_column)
    augmented = augment_texts(splits.train.texts, spec.augment, seed=int(cfg.get("seed") or 0)) if spec.augment else []
    texts += augmented
    teacher_hash = sha256_file(teacher_dir / META_FILE)  # meta.json lists the hash of every file the model loads
    proba = teacher_proba(teacher, texts, splits.labels, spec.batch_size, teacher_hash, spec.cache)
    soft = bool(family.weights) if spec.soft is None else spec.soft
    if soft and not family.weights:
        raise ConfigError(f"family {family.name!r} does not take per-row weights, so it cannot learn soft labels; "
                          "leave out --soft (it then learns the teacher's hard labels with confidence-weighted copies)")
    if soft:
        new_splits, counts = soft_splits(splits, texts, proba, spec.temperature, teacher_hash)
        method = "soft labels: one row per (text, class) weighted by the teacher's probability, plus the gold rows"
    else:
        new_splits, counts = distilled_splits(splits, texts, proba, spec.temperature, spec.repeats, teacher_hash,
                                              spec.balance)
        method = "hard labels, confidence-weighted copies" + (", balanced to the gold class shares" if spec.balance else "")
    record = {"teacher": {"path": str(teacher_dir), "kind": teacher.kind, "meta_sha256": teacher_hash},
              "temperature": spec.temperature, "soft": soft, **({} if soft else {"repeats": spec.repeats, "balance": spec.balance}),
              "method": method, "data": {"train": splits.paths.get("train"), "unlabeled": spec.unlabeled_path,
                                         "augmented_texts": len(augmented), **counts}}
    if spec.augment:
        record["augment"] = {"per_text": spec.augment, "p_drop": P_DROP, "p_ngram": P_NGRAM, "max_ngram": MAX_NGRAM,
                             "seed": int(cfg.get("seed") or 0), "rules": "Tang et al. 2019: token deletion, n-gram sampling"}
    tags = {f"{TAG_PREFIX}teacher": str(teacher_dir), f"{TAG_PREFIX}teacher_sha256": teacher_hash,
            f"{TAG_PREFIX}temperature": str(spec.temperature), f"{TAG_PREFIX}unlabeled": str(spec.unlabeled_path or "")}
    run = replace(spec.run, meta_extra={**(spec.run.meta_extra or {}), META_KEY: record},
                  tags={**spec.run.tags, **tags}, command="distill")
    return runs.execute(family, cfg, new_splits, run)
