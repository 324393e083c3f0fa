"""Temperature scaling of an ensemble's members before they are combined: one scale of confidence for all.

Members of different families speak in different confidences: fastText's probabilities are
often close to 0 or 1 where a TF-IDF logistic regression says 0.7 for the same evidence, so a
plain average follows the loudest member rather than the best. ``textclf ensemble`` therefore
fits one temperature per member (per label for multi-label members) on the valid split, the
method of :mod:`textclf.core.calibration` (``softmax(log p / T)``, ``T`` minimising the valid
log-loss with scipy's bounded scalar minimiser), and combines the scaled probabilities. A
temperature never changes a member's own argmax (nor its 0.5 decisions for label sets), so a
"single member" ensemble decides exactly like that member. Stacking reads the members' probabilities
as they are: its logistic regression learns a weight for each member's columns, which is its own
scale (measured: stacking on temperature-scaled probabilities scored 0.008 lower on tweets_sentiment's
small valid splits, within noise elsewhere), so a stacking ensemble records no temperatures.

``auto`` fits the temperatures inside each cross-validation fold on the training part only
(:func:`textclf.services.compare.ensemble.select_method`), so the out-of-fold comparison does not
see its held-out rows twice; the saved ensemble keeps the temperatures fitted on all of valid,
one list per member in ``meta.json`` (``members[i].temperature``).

Measured on the four shared datasets (benchmarks/README.md, "Ensembles on a small valid split"): +0.0126
mean gain over the best member against +0.0118 unscaled, 15/20 cases within 0.002 either way.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

#: ``textclf ensemble --member_calibration``: scale each member's probabilities, or combine them as they are
MODES = ("temperature", "none")


def _task(multilabel: bool) -> str:
    return "multilabel" if multilabel else "multiclass"


def fit_temperatures(probas: Sequence[np.ndarray], y: np.ndarray) -> list[list[float]]:
    """One temperature per member (multi-class ``y``: class indices) or per member and label (``y`` 2-D indicators)."""
    from textclf.core.calibration import fit_method

    multilabel = np.ndim(y) == 2
    out = []
    for p in probas:
        labels = [str(i) for i in range(np.shape(p)[1])]
        out.append([round(float(t), 6) for t in fit_method("temperature", p, y, labels, _task(multilabel)).temperatures])
    return out


def apply_temperatures(probas: Sequence[np.ndarray], temperatures: Sequence[Sequence[float] | None] | None,
                       multilabel: bool) -> list[np.ndarray]:
    """``probas`` with each member's temperatures applied (None, or a None entry: that member as it is)."""
    from textclf.core.calibration import Calibrator

    if not temperatures:
        return [np.asarray(p, dtype=np.float64) for p in probas]
    out = []
    for p, temps in zip(probas, temperatures, strict=True):
        p = np.asarray(p, dtype=np.float64)
        if temps is None or len(p) == 0 or all(abs(t - 1.0) < 1e-12 for t in temps):
            out.append(p)
            continue
        labels = [str(i) for i in range(p.shape[1])]
        out.append(Calibrator("temperature", _task(multilabel), labels, temperatures=list(temps)).apply(p))
    return out

