"""Out-of-fold probabilities of each family: K stratified folds, each fitted through the core's fit flow.

Each fold's model is fitted by :func:`textclf.core.fit_flow.fit_family` (the same check -> prepare
-> fit -> evaluate flow as ``textclf train``) into a temporary directory, scored on its held-out
part and thrown away; only the held-out probabilities are kept. By default the folds run in this
process: a fold of fastText or of the embeddings family trains in seconds, and a queue job would
pay a model directory on disk for each. ``textclf audit --queue STORAGE`` runs them as tasks of
the run queue instead, so workers elsewhere share them (:mod:`.queued`; docs/audit.md). The
result is memoised in ``<audit dir>/oof/<family>.npz`` under a key of the data, the effective
config, the folds and the seed, so a repeated audit refits nothing; the embeddings family encodes
the whole file once and its folds read their rows from the embedding cache. The memo is written
after every fold with the folds done, so an interrupted audit refits only the folds that were not.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from textclf.core.config import load_config
from textclf.core.data import Dataset
from textclf.core.errors import ConfigError
from textclf.core.fit_flow import fit_family
from textclf.core.registry import Family, all_families, get_family
from textclf.core.tempfiles import owned_temp_dir
from textclf.core.training import Splits

log = logging.getLogger(__name__)

#: audit's own defaults per family (before the user's --set): no search per fold, a smaller fastText hash table
FAMILY_DEFAULTS: dict[str, tuple[str, ...]] = {
    "fasttext": ("search.n_trials=null", "model.bucket=200000"),
    "embeddings": ("search.n_trials=null",),
    "lstm": ("search.n_trials=null",),
}
OOF_DIR = "oof"


def family_overrides(name: str, overrides: Sequence[str]) -> list[str]:
    """The ``--set`` assignments for family ``name``: audit's defaults, then ``KEY=V`` and ``name:KEY=V`` ones."""
    out = list(FAMILY_DEFAULTS.get(name, ()))
    for item in overrides:
        head, sep, rest = item.partition(":")
        if sep and "=" not in head:
            if head == name:
                out.append(rest)
        else:
            out.append(item)
    return out


def audit_family(name: str) -> Family:
    """Family ``name`` when it follows contract v2 (``fit``), else a one-line ConfigError naming those that do."""
    family = get_family(name)
    if family.fit is None:
        able = sorted(n for n, f in all_families().items() if f.fit is not None)
        raise ConfigError(f"family {name!r} cannot be audited (it has no contract-v2 fit); families that can: {', '.join(able)}")
    family.check_installed()
    return family


def fold_indices(ds: Dataset, folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """``folds`` (train, held-out) index pairs: scikit-learn's StratifiedKFold (multi-label: KFold), shuffled with ``seed``."""
    from sklearn.model_selection import KFold, StratifiedKFold

    if folds < 2:
        raise ConfigError(f"--folds must be at least 2, got {folds}")
    if len(ds) < folds:
        raise ConfigError(f"--folds {folds}: the data has only {len(ds)} rows")
    x = np.zeros(len(ds))
    if ds.multilabel:
        return list(KFold(folds, shuffle=True, random_state=seed).split(x))
    counts = {label: ds.labels.count(label) for label in set(ds.labels)}
    if max(counts.values()) < folds:
        raise ConfigError(f"--folds {folds}: no class has {folds} rows; use fewer folds")
    import warnings

    with warnings.catch_warnings():  # a class with fewer rows than folds: scikit-learn warns, its held-out rows still count
        warnings.simplefilter("ignore", UserWarning)
        return list(StratifiedKFold(folds, shuffle=True, random_state=seed).split(x, ds.labels))


def oof_key(name: str, cfg: dict, data_sha256: str, folds: int, seed: int) -> str:
    """The memo key of one family's out-of-fold probabilities."""
    blob = json.dumps({"family": name, "config": cfg, "data": data_sha256, "folds": folds, "seed": seed},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def prime_embedding_cache(cfg: dict, ds: Dataset, parts: Sequence[np.ndarray]) -> None:
    """Encode all of ``ds`` once and store each fold part's rows under its own embedding-cache key.

    The embeddings family looks its train/valid matrices up by the texts they hold, so every fold
    then loads instead of encoding (a sentence encoder with ``encoder.cache`` on; otherwise nothing).
    """
    from textclf.families.common.cache import EmbeddingCache
    from textclf.families.common.encoders import TFIDF_SVD, make_encoder

    name = (cfg.get("encoder") or {}).get("name")
    if name == TFIDF_SVD or not (cfg.get("encoder") or {}).get("cache", True) or (cfg.get("encoder") or {}).get("long_text") == "chunk":
        return
    enc = make_encoder(name, cfg)
    cache = EmbeddingCache()
    full, _, _ = enc.encode_cached(ds.texts, cache, desc="audit")
    info = {**enc.spec(), "model_dir": str(enc.model_dir)}
    for idx in parts:
        cache.get_or_compute(enc.key([ds.texts[i] for i in idx]), lambda idx=idx: full[idx], info)


def fold_splits(ds: Dataset, train_idx: np.ndarray, held_idx: np.ndarray, data_sha256: str, number: int) -> Splits:
    """The Splits of one fold: train on ``train_idx``, the held-out part as valid (scored, never trained on)."""
    train, held = ds.subset(train_idx), ds.subset(held_idx)
    return Splits(train, held, None, train.label_set, data_sha256,
                  {"train": ds.path, "valid": f"{ds.path} (fold {number} held out)", "test": None}, [train])


def family_oof(name: str, ds: Dataset, labels: list[str], folds: list[tuple[np.ndarray, np.ndarray]], data_sha256: str,
               seed: int, overrides: Sequence[str], memo_dir: Path | None) -> np.ndarray:
    """Family ``name``'s out-of-fold probabilities (rows of ``ds``, columns in ``labels`` order), memoised in ``memo_dir``.

    The memo is written after every fold, with the folds done so far: an audit interrupted after
    fold k (Ctrl-C, a killed job) refits only the folds after k when it is run again.
    """
    family = audit_family(name)
    family.check_task(ds.task)
    cfg = family_config(name, seed, overrides)
    memo = memo_path(memo_dir, name, cfg, data_sha256, len(folds), seed)
    proba, done = read_partial_memo(memo, (len(ds), len(labels)), len(folds))
    if done.all():
        log.info("audit: %s out-of-fold probabilities from %s", name, memo[0])
        return proba
    if done.any():
        log.info("audit: %s resumes after %d of %d folds (%s)", name, int(done.sum()), len(folds), memo[0])
    if name == "embeddings":
        prime_embedding_cache(cfg, ds, [part for i, pair in enumerate(folds) if not done[i] for part in pair])
    for number, (train_idx, held_idx) in enumerate(folds, 1):
        if done[number - 1]:
            continue
        splits = fold_splits(ds, train_idx, held_idx, data_sha256, number)
        with owned_temp_dir("textclf-audit-") as tmp:
            result = fit_family(family, cfg, splits, tmp, echo=False, plots=False)
            fill_held_out(proba, labels, result.predictor, ds, held_idx)
        done[number - 1] = True
        write_memo(memo, proba, done)
        log.info("audit: %s fold %d/%d done", name, number, len(folds))
    return proba


def fill_held_out(proba: np.ndarray, labels: list[str], predictor, ds: Dataset, held_idx: np.ndarray) -> None:
    """Write ``predictor``'s probabilities of the held-out rows ``held_idx`` of ``ds`` into ``proba`` (columns: ``labels``)."""
    column = {label: j for j, label in enumerate(labels)}
    got = np.asarray(predictor.predict_proba([ds.texts[i] for i in held_idx]), dtype=np.float64)
    proba[np.ix_(held_idx, [column[label] for label in predictor.labels])] = got


def family_config(name: str, seed: int, overrides: Sequence[str]) -> dict:
    """The effective config of family ``name`` in an audit (its memo key's config)."""
    return load_config(name, None, [f"seed={seed}", *family_overrides(name, overrides)])


def memo_path(memo_dir: Path | None, name: str, cfg: dict, data_sha256: str, folds: int, seed: int) -> tuple[Path, str] | None:
    """``(file, key)`` of family ``name``'s memoised out-of-fold probabilities, or None without a memo folder."""
    if memo_dir is None:
        return None
    return memo_dir / f"{name}.npz", oof_key(name, cfg, data_sha256, folds, seed)


def read_memo(memo: tuple[Path, str] | None, shape: tuple[int, int]) -> np.ndarray | None:
    """The memoised probabilities when the file holds ``memo``'s key and ``shape`` and every fold is done, else None."""
    proba, done = read_partial_memo(memo, shape, None)
    return proba if done.size and done.all() else None


def read_partial_memo(memo: tuple[Path, str] | None, shape: tuple[int, int],
                      folds: int | None) -> tuple[np.ndarray, np.ndarray]:
    """``(probabilities, done)``: what the memo holds for ``memo``'s key and ``shape`` (zeros and no fold done otherwise).

    ``done[k]`` says whether fold k+1's held-out rows are filled in. A memo written before folds were
    recorded holds a finished audit. ``folds`` None: take the memo's own fold count.
    """
    empty = np.zeros(shape, dtype=np.float64), np.zeros(folds or 0, dtype=bool)
    if memo is None or not memo[0].is_file():
        return empty
    with np.load(memo[0], allow_pickle=False) as stored:
        if str(stored["key"]) != memo[1] or stored["proba"].shape != shape:
            return empty
        n = folds if folds is not None else (len(stored["done"]) if "done" in stored.files else 1)
        done = stored["done"].astype(bool) if "done" in stored.files else np.ones(n, dtype=bool)
        if len(done) != n:
            return empty
        return np.array(stored["proba"], dtype=np.float64), done


def write_memo(memo: tuple[Path, str] | None, proba: np.ndarray, done: np.ndarray) -> None:
    """Store ``proba`` and which folds are ``done`` under ``memo``'s key (atomically); nothing without a memo."""
    if memo is None:
        return
    from textclf.core.atomic import atomic_replace_file

    path, key = memo
    path.parent.mkdir(parents=True, exist_ok=True)
    done = np.asarray(done, dtype=bool)

    def save(target: str) -> None:
        with open(target, "wb") as fh:
            np.savez(fh, key=np.array(key), proba=proba, done=done)

    atomic_replace_file(save, path)
