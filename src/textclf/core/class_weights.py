"""Per-class weights from a config value, the one rule every family's loss uses (``loss.alpha``, ``train.class_weights``).

``"balanced"`` is scikit-learn's ``compute_class_weight`` (the maintained definition, not a copy of it).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from textclf.core.errors import ConfigError


def class_alpha(alpha: None | str | Sequence[float] | Mapping[str, float], labels: Sequence[str],
                train_labels: Sequence[str] = (), key: str = "loss.alpha") -> list[float] | None:
    """Per-class weights in ``labels`` order from a config value.

    ``None``: no weighting. ``"balanced"``: ``n / (k * count_c)`` from ``train_labels``
    (``sklearn.utils.class_weight.compute_class_weight``; see :func:`_balanced`). A list: one
    weight per label in sorted label order. A dict: ``{label: weight}``, labels left out get 1.
    """
    if alpha in (None, "", "none", False):
        return None
    k = len(labels)
    if isinstance(alpha, str):
        if alpha != "balanced":
            raise ConfigError(f"{key}: expected null, \"balanced\", a list of {k} weights or a {{label: weight}} dict; got {alpha!r}")
        return _balanced(labels, train_labels, key)
    if isinstance(alpha, Mapping):
        unknown = sorted(set(alpha) - set(labels))
        if unknown:
            raise ConfigError(f"{key}: unknown label(s) {', '.join(unknown)}; labels: {', '.join(labels)}")
        return [float(alpha.get(label, 1.0)) for label in labels]
    weights = [float(a) for a in alpha]
    if len(weights) != k:
        raise ConfigError(f"{key}: {len(weights)} weights given for {k} classes ({', '.join(labels)})")
    return weights


def _balanced(labels: Sequence[str], train_labels: Sequence[str], key: str) -> list[float]:
    """scikit-learn's ``"balanced"`` weights in ``labels`` order, computed by ``compute_class_weight``.

    The classes are those of ``labels`` that occur in ``train_labels`` (scikit-learn refuses a
    class with no example), so ``k`` counts the classes present (earlier versions counted every
    label); a label with no example gets 1, and no training labels at all give all 1s. The labels
    are taken from the training data, so every one occurs there in practice and the weights are
    those of earlier versions.
    """
    import numpy as np
    from sklearn.utils.class_weight import compute_class_weight

    seen = set(train_labels)
    present = [label for label in labels if label in seen]
    unknown = sorted(seen - set(labels))
    if unknown:
        raise ConfigError(f"{key}: \"balanced\": training label(s) {', '.join(map(repr, unknown))} "
                          f"not among the labels ({', '.join(labels)})")
    if not present:
        return [1.0] * len(labels)
    weights = compute_class_weight("balanced", classes=np.asarray(present), y=np.asarray(list(train_labels)))
    by_label = dict(zip(present, weights.tolist(), strict=True))
    return [float(by_label.get(label, 1.0)) for label in labels]
