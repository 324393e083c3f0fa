"""Per-class weights from a config value, the one rule every family's loss uses (``loss.alpha``, ``train.class_weights``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from textclf.core.errors import ConfigError


def class_alpha(alpha: None | str | Sequence[float] | Mapping[str, float], labels: Sequence[str],
                train_labels: Sequence[str] = (), key: str = "loss.alpha") -> list[float] | None:
    """Per-class weights in ``labels`` order from a config value.

    ``None``: no weighting. ``"balanced"``: ``n / (k * count_c)`` from ``train_labels``
    (scikit-learn's rule). A list: one weight per label in sorted label order. A dict:
    ``{label: weight}``, labels left out get 1.
    """
    if alpha in (None, "", "none", False):
        return None
    k = len(labels)
    if isinstance(alpha, str):
        if alpha != "balanced":
            raise ConfigError(f"{key}: expected null, \"balanced\", a list of {k} weights or a {{label: weight}} dict; got {alpha!r}")
        counts = {label: 0 for label in labels}
        for label in train_labels:
            counts[label] += 1
        n = sum(counts.values())
        return [n / (k * counts[label]) if counts[label] else 1.0 for label in labels]
    if isinstance(alpha, Mapping):
        unknown = sorted(set(alpha) - set(labels))
        if unknown:
            raise ConfigError(f"{key}: unknown label(s) {', '.join(unknown)}; labels: {', '.join(labels)}")
        return [float(alpha.get(label, 1.0)) for label in labels]
    weights = [float(a) for a in alpha]
    if len(weights) != k:
        raise ConfigError(f"{key}: {len(weights)} weights given for {k} classes ({', '.join(labels)})")
    return weights
