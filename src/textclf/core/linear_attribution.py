"""Exact token attributions of a linear model over word n-gram counts (a ``Family.explainer``).

For a scikit-learn pipeline ``[word vectorizer (TF-IDF or counts), linear classifier]`` the logit
of a class is ``sum_j x_j w_j + b``: each n-gram feature ``j`` contributes exactly
``x_j * w_j`` (feature value times coefficient). A word gets the contributions of the features
it takes part in: a unigram's whole, an n-gram's share ``1/n``, a feature seen several times in the
text split over its occurrences. The scores sum to the logit minus the intercept (in logit units,
where occlusion gives probability drops). Toward a class of a multinomial model the coefficients
are taken relative to their mean over the classes (softmax ignores a shift common to all); a
binary model's single row counts toward the second class and against the first; a one-vs-rest
model (multi-label) uses that label's own classifier.

Any other pipeline (character n-grams, a calibrated or non-linear classifier) gets None, and
the caller falls back to occlusion.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np

from textclf.core.explanation import Attribution, words

METHOD = "linear (coefficient x feature value)"


def _parts(pipeline):
    """``(vectorizer, classifier)`` when the pipeline is a word vectorizer then a linear model, else None."""
    steps = getattr(pipeline, "steps", None)
    if not steps or len(steps) != 2:
        return None
    vec, clf = steps[0][1], steps[1][1]
    if getattr(vec, "analyzer", None) != "word" or not hasattr(vec, "vocabulary_") or callable(getattr(vec, "tokenizer", None)):
        return None
    if not (hasattr(clf, "coef_") or all(hasattr(e, "coef_") for e in getattr(clf, "estimators_", [None]))):
        return None
    return vec, clf


def class_weights(clf, column: int) -> np.ndarray:
    """The coefficient row that scores toward class ``column`` of the classifier's output."""
    if hasattr(clf, "estimators_") and not hasattr(clf, "coef_"):  # one-vs-rest: the label's own classifier
        return np.asarray(clf.estimators_[column].coef_, dtype=np.float64)[0]
    coef = np.asarray(clf.coef_, dtype=np.float64)
    if coef.shape[0] == 1:  # binary: one row, toward classes_[1]
        return coef[0] if column == 1 else -coef[0]
    return coef[column] - coef.mean(axis=0)


def word_grams(vec, tokens: Sequence[str]) -> dict[str, list[list[int]]]:
    """Every n-gram the vectorizer makes of ``tokens`` -> the word positions of each occurrence."""
    pre, tok = vec.build_preprocessor(), vec.build_tokenizer()
    stop = vec.get_stop_words() or ()
    seq = [(t, wi) for wi, w in enumerate(tokens) for t in tok(pre(w)) if t not in stop]
    lo, hi = vec.ngram_range
    grams: dict[str, list[list[int]]] = defaultdict(list)
    for n in range(lo, hi + 1):
        for i in range(len(seq) - n + 1):
            part = seq[i:i + n]
            grams[" ".join(t for t, _ in part)].append([wi for _, wi in part])
    return grams


def explain_pipeline(predictor, texts: Sequence[str], targets: Sequence[int]) -> list[Attribution] | None:
    """Exact attributions of a :class:`textclf.core.sklearn_model.SklearnPredictor` over a word vectorizer + linear model."""
    parts = _parts(getattr(predictor, "pipeline", None))
    if parts is None:
        return None
    vec, clf = parts
    names = vec.get_feature_names_out()
    x = vec.transform(list(texts)).tocsr()
    out = []
    for row, (text, target) in enumerate(zip(texts, targets, strict=True)):
        column = predictor.columns[target]
        tokens = words(text)
        scores = np.zeros(len(tokens))
        if column >= 0:
            w = class_weights(clf, column)
            grams = word_grams(vec, tokens)
            start, stop = x.indptr[row], x.indptr[row + 1]
            for j, value in zip(x.indices[start:stop], x.data[start:stop], strict=True):
                occurrences = grams.get(names[j]) or []
                for positions in occurrences:
                    share = value * w[j] / len(occurrences) / len(positions)
                    for wi in positions:
                        scores[wi] += share
        out.append(Attribution(tokens, scores.tolist(), METHOD))
    return out
