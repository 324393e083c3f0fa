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


def label_indicator(label_sets: Sequence[Sequence[str]], labels: Sequence[str]):
    """The ``(n, len(labels))`` 0/1 float32 matrix of label sets (scikit-learn's ``MultiLabelBinarizer``), columns in ``labels`` order."""
    import numpy as np
    from sklearn.preprocessing import MultiLabelBinarizer

    if not label_sets:
        return np.zeros((0, len(labels)), dtype=np.float32)
    return MultiLabelBinarizer(classes=list(labels)).fit_transform([list(row) for row in label_sets]).astype(np.float32)


def pos_weight(spec: None | str | Sequence[float] | Mapping[str, float], labels: Sequence[str],
               label_sets: Sequence[Sequence[str]] = (), key: str = "train.pos_weight") -> list[float] | None:
    """Per-label positive-example weights of a multi-label BCE loss (``BCEWithLogitsLoss(pos_weight=...)``), ``labels`` order.

    ``None``: no weighting. ``"balanced"``: ``negatives / positives`` of each label in the training
    ``label_sets`` (PyTorch's documented choice: the positives then weigh as much as the negatives;
    a label with no positive gets 1). A list or a ``{label: weight}`` dict: as :func:`class_alpha`.
    """
    if isinstance(spec, str) and spec == "balanced":
        y = label_indicator(label_sets, labels)
        positives = y.sum(axis=0)
        negatives = len(y) - positives
        return [float(neg / pos) if pos else 1.0 for pos, neg in zip(positives.tolist(), negatives.tolist(), strict=True)]
    return class_alpha(spec, labels, (), key=key)
