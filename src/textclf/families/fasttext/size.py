"""fastText's model size as a constraint (``search.max_model_mb``, default 20).

A supervised fastText ``.bin`` holds a dense input matrix of ``(words + bucket) x dim`` float32
rows: with the historical ``bucket`` of 2,000,000 that is 200-800 MB whatever the data. The budget
is met the way fastText's own ``-autotune-modelsize`` meets it, cheapest first:

1. **exact size, no change.** The ``.bin`` size follows from the header, the dictionary and the
   two matrices (fastText's ``Args::save``, ``Dictionary::save``, ``DenseMatrix::save``), and the
   dictionary follows from the training file (fastText's tokenizer on our one-space lines), so
   :func:`bin_bytes` is exact. ``bucket`` is set to 0 when no n-gram uses it (``wordNgrams`` 1
   and no character n-grams), as fastText's CLI does.
2. **a smaller dim, then fewer hash buckets.** When the model does not fit, ``dim`` is lowered
   first, not below :data:`DIM_FLOOR` (25), so that every hash bucket fits; then ``bucket`` is
   lowered to what fits (:func:`fit_params_to_budget`). Measured, collisions cost more than
   dimensions: on movie_review_sentences dim 100 with 25,000 buckets lost 0.02 macro-F1 to the
   2,000,000-bucket model, dim 25 with 179,000 buckets nothing (benchmarks/README.md, "Small
   fastText models"). This happens before training, so every search trial is scored at the
   size it would be saved at.
3. **fewer dimensions still.** When the vocabulary alone leaves fewer than :data:`MIN_BUCKETS`
   hash rows at dim 25, ``dim`` goes lower (not below :data:`MIN_DIM`) to keep them: a text
   classifier needs few dimensions (fastText's tutorials use 10).
4. **quantization.** When not even that fits, the final model is product-quantized with fastText's ``quantize``
   (``qnorm``, ``retrain``, and a ``cutoff`` on the number of input rows derived from the budget
   as fastText's ``Autotune::getCutoffForFileSize`` does) and saved as ``model.ftz``. The search
   scores such points unquantized (quantizing costs a minute or more a trial on a CPU at dim 100).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

#: bytes of a MiB: ``max_model_mb`` counts in MiB, as the leaderboard's size column does
MB = 2**20
#: fewer hash rows than this and the model is quantized instead (n-grams hashed into a few
#: thousand rows mostly collide)
MIN_BUCKETS = 10_000
#: to fit, ``dim`` is lowered to this first (the smallest ``dim`` of the default search space) ...
DIM_FLOOR = 25
#: ... and below it only to keep MIN_BUCKETS hash rows, not below this (fastText's tutorial uses 10 for sentiment)
MIN_DIM = 10
#: fastText's ``Autotune::kCutoffLimit``: quantization keeps at least this many input rows
MIN_CUTOFF = 256
_HEADER = 8 + 12 * 4 + 8  # magic, version; Args: 12 int32 and one double
_DICT_HEADER = 3 * 4 + 2 * 8  # size, nwords, nlabels (int32); ntokens, pruneidx_size (int64)
_MATRIX_HEADER = 1 + 2 * 8  # the quantized flag, then m and n (int64)


def budget_bytes(cfg: dict) -> int | None:
    """The budget of ``search.max_model_mb`` in bytes, or None when it is null or <= 0 (no limit)."""
    mb = (cfg.get("search") or {}).get("max_model_mb")
    return int(mb * MB) if mb and mb > 0 else None


def count_tokens(train_file: str | Path) -> Counter:
    """Token counts of a fastText training file as fastText's dictionary counts them (labels included).

    The file holds one-space-separated lines (``write_training_file``), so splitting on spaces is
    fastText's tokenizer; every line adds one end-of-sentence token ``</s>``.
    """
    counts: Counter = Counter()
    lines = 0
    with open(train_file, encoding="utf-8") as fh:
        for line in fh:
            counts.update(t for t in line.rstrip("\n").split(" ") if t)
            lines += 1
    counts["</s>"] += lines
    return counts


def dictionary(counts: Counter, min_count: int) -> tuple[int, int, int]:
    """``(words, labels, dictionary bytes)`` of the dictionary fastText builds from ``counts``."""
    words = [w for w, c in counts.items() if not w.startswith("__label__") and c >= min_count]
    labels = [w for w in counts if w.startswith("__label__")]
    entry_bytes = sum(len(w.encode("utf-8")) + 1 + 8 + 1 for w in (*words, *labels))  # word\0, int64 count, int8 type
    return len(words), len(labels), _DICT_HEADER + entry_bytes


def char_ngrams(params: dict) -> tuple[int, int]:
    """``(minn, maxn)`` as fastText is given them: none when ``minn`` is 0, else ``maxn`` at least ``minn``.

    The search draws ``minn`` and ``maxn`` independently, so ``minn 2, maxn 0`` means character
    2-grams (and ``minn 0, maxn 5`` none); :func:`textclf.families.fasttext.model.fit_params` and
    :func:`uses_buckets` both read them through here.
    """
    minn, maxn = int(params.get("minn") or 0), int(params.get("maxn") or 0)
    return (0, 0) if minn <= 0 else (minn, max(maxn, minn))


def uses_buckets(params: dict) -> bool:
    """Whether word or character n-grams are hashed into ``bucket`` rows."""
    return int(params.get("wordNgrams", 1)) > 1 or char_ngrams(params)[1] > 0


def bin_bytes(counts: Counter, params: dict) -> int:
    """The exact size of the ``.bin`` fastText saves for ``params`` trained on the file ``counts`` came from."""
    words, labels, dict_bytes = dictionary(counts, int(params.get("minCount", 1)))
    dim = int(params["dim"])
    rows = words + int(params.get("bucket", 0))
    return _HEADER + dict_bytes + 2 * _MATRIX_HEADER + 4 * dim * (rows + labels)


def fit_params_to_budget(counts: Counter, params: dict, budget: int | None) -> tuple[dict, dict]:
    """``params`` made to fit ``budget`` bytes unquantized, and a record of what was done.

    First ``dim`` is lowered, not below :data:`DIM_FLOOR`, so that every hash bucket fits; then
    ``bucket`` is lowered to what fits; when fewer than :data:`MIN_BUCKETS` would be left, ``dim``
    goes lower (not below :data:`MIN_DIM`) to keep them; when not even that fits, the final model
    is quantized. The record: ``max_model_mb``, ``estimated_bytes`` (of the ``.bin``) and
    ``action``: ``fits``, ``bucket`` (only ``bucket`` lowered), ``dim`` (``dim`` lowered, maybe
    ``bucket`` too) or ``quantize``; ``dim_from``/``bucket_from`` say from what.
    """
    out = dict(params)
    if not uses_buckets(out) and out.get("bucket"):
        out["bucket"] = 0  # no n-gram reads these rows (fastText's CLI zeroes it too)
    record: dict = {"max_model_mb": None if budget is None else round(budget / MB, 3)}
    size = bin_bytes(counts, out)
    if budget is None or size <= budget:
        return out, {**record, "estimated_bytes": size, "action": "fits"}
    words, labels, _ = dictionary(counts, int(out.get("minCount", 1)))
    floats = (budget - bin_bytes(counts, {**out, "dim": 0, "bucket": 0})) // 4  # what the matrices may hold
    dim0, bucket0 = int(out["dim"]), int(out["bucket"])
    dim = max(min(dim0, DIM_FLOOR), min(dim0, floats // (words + labels + bucket0)))
    bucket = min(bucket0, floats // dim - words - labels)
    if bucket < min(bucket0, MIN_BUCKETS):
        dim = floats // (words + labels + min(bucket0, MIN_BUCKETS))
        if dim < MIN_DIM:
            return out, {**record, "estimated_bytes": size, "action": "quantize"}
        bucket = min(bucket0, floats // dim - words - labels)
    record["action"] = "dim" if dim < dim0 else "bucket"
    if dim < dim0:
        record["dim_from"] = dim0
    if bucket < bucket0:
        record["bucket_from"] = bucket0
    out["dim"], out["bucket"] = int(dim), int(bucket)
    return out, {**record, "estimated_bytes": bin_bytes(counts, out)}


def entry_bytes(counts: Counter, min_count: int) -> int:
    """Mean bytes of one dictionary entry (word, count, type) of the dictionary built from ``counts``."""
    words, labels, dict_bytes = dictionary(counts, min_count)
    return -(-(dict_bytes - _DICT_HEADER) // max(1, words + labels))


def quantize_cutoff(budget: int, dim: int, n_labels: int, entry: int = 10, dsub: int = 2, qnorm: bool = True) -> int:
    """Input rows a quantized model keeps to fit ``budget`` bytes, output matrix unquantized.

    fastText's ``Autotune::getCutoffForFileSize``, with a row costing its codes, its norm byte,
    the pruning index's 8 bytes and one mean dictionary entry (``entry`` bytes; fastText assumes 10,
    which long words overrun).
    """
    out_bytes = 16 + 4 * n_labels * dim
    target = budget - 107 - 4 * 256 * dim - out_bytes
    per_row = (dim + dsub - 1) // dsub + (1 if qnorm else 0) + 8 + entry
    return max(target // per_row, MIN_CUTOFF)
