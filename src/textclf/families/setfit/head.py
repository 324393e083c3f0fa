"""The classifier head on the tuned (frozen, L2-normalised) sentence embeddings.

``head.type``:

* ``torch`` (default): optional hidden layer (``head.hidden`` units, ReLU; 0 = none), dropout,
  linear to the classes; cross-entropy with ``head.label_smoothing``, Adam, mini-batches. The epoch
  with the best valid macro-F1 is kept. Saved as a state dict (``head.pt``).
* ``logreg``: scikit-learn LogisticRegression (SetFit's default head). Saved with skops (``head.skops``;
  a ``head.joblib`` pickle of an older version loads only with ``--trust-code``).

Both give ``predict_proba(x)`` with columns in class-index order (the model's ``labels`` order).

Multi-label (``multilabel``, fitted on a ``(N, L)`` label indicator matrix): the torch head puts
one sigmoid a label on its logits and trains with ``BCEWithLogitsLoss`` (``head.pos_weight``:
:func:`textclf.core.class_weights.pos_weight`; ``head.label_smoothing`` ε moves the 0/1 targets to
ε/2 and 1-ε/2), its best epoch chosen on valid micro-F1 at ``threshold`` (the config's
``decision.threshold``); the logreg head is scikit-learn's ``OneVsRestClassifier`` of it
(:func:`textclf.core.sklearn_model.one_vs_rest`). Both give independent per-label probabilities.
"""

from __future__ import annotations

import copy
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from textclf.core.errors import ConfigError, ModelError
from textclf.core.torch_common import torch_threads

log = logging.getLogger(__name__)

HEAD_TYPES = ("torch", "logreg")
TORCH_FILE = "head.pt"
LOGREG_FILE = "head.skops"


def build_head_module(dim: int, n_classes: int, hidden: int = 0, dropout: float = 0.0) -> nn.Sequential:
    """``[Linear(dim, hidden), ReLU] + Dropout + Linear(-, n_classes)`` (no hidden layer when ``hidden`` is 0)."""
    if hidden < 0 or not 0.0 <= dropout < 1.0:
        raise ConfigError(f"head: hidden must be >= 0 and dropout in [0, 1); got hidden={hidden}, dropout={dropout}")
    layers: list[nn.Module] = []
    width = dim
    if hidden:
        layers += [nn.Linear(dim, hidden), nn.ReLU()]
        width = hidden
    if dropout > 0:
        layers.append(nn.Dropout(dropout))
    layers.append(nn.Linear(width, n_classes))
    return nn.Sequential(*layers)


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> float:
    """Macro-averaged F1 over the classes present in ``y_true`` or ``y_pred``."""
    from sklearn.metrics import f1_score

    return float(f1_score(y_true, y_pred, labels=np.arange(n_classes), average="macro", zero_division=0))


def micro_f1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Micro-averaged F1 of two label indicator matrices."""
    from sklearn.metrics import f1_score

    return float(f1_score(np.asarray(y_true, dtype=int), np.asarray(y_pred, dtype=int), average="micro", zero_division=0))


class TorchHead:
    """A small torch MLP/linear head (see :func:`build_head_module`) on embedding vectors."""

    type = "torch"
    file = TORCH_FILE

    def __init__(self, dim: int, n_classes: int, hidden: int = 0, dropout: float = 0.0, label_smoothing: float = 0.0,
                 epochs: int = 50, lr: float = 1e-2, batch_size: int = 32, weight_decay: float = 0.0, seed: int = 13,
                 multilabel: bool = False, pos_weight: list[float] | None = None, threshold: float = 0.5):
        self.params = {"dim": int(dim), "n_classes": int(n_classes), "hidden": int(hidden), "dropout": float(dropout),
                       "label_smoothing": float(label_smoothing), "epochs": int(epochs), "lr": float(lr),
                       "batch_size": int(batch_size), "weight_decay": float(weight_decay), "seed": int(seed)}
        if multilabel:  # recorded only on label sets, so a multi-class head's meta.json block is as before
            self.params.update(multilabel=True, pos_weight=pos_weight, threshold=float(threshold))
        torch.manual_seed(seed)
        self.module = build_head_module(dim, n_classes, int(hidden), float(dropout))
        self.history: list[dict] = []
        self.best_epoch: int | None = None
        self.best_state: dict | None = None

    @property
    def multilabel(self) -> bool:
        """Whether the head gives one sigmoid a label (fitted on a label indicator matrix)."""
        return bool(self.params.get("multilabel"))

    @property
    def metric(self) -> str:
        """The valid metric the best epoch is chosen on (:func:`valid_metric`)."""
        return valid_metric(self)

    def fit(self, x: np.ndarray, y: np.ndarray, x_valid: np.ndarray | None = None, y_valid: np.ndarray | None = None) -> TorchHead:
        """Train for ``epochs``; keep the epoch with the best valid macro-F1 (label sets: micro-F1; the last without valid data)."""
        p = self.params
        if p["epochs"] < 1:
            raise ConfigError(f"head.epochs: expected at least 1, got {p['epochs']}")
        gen = torch.Generator().manual_seed(p["seed"])
        xt = torch.as_tensor(x, dtype=torch.float32)
        opt = torch.optim.Adam(self.module.parameters(), lr=p["lr"], weight_decay=p["weight_decay"])
        if self.multilabel:
            eps = p["label_smoothing"]
            yt = torch.as_tensor(y, dtype=torch.float32) * (1.0 - eps) + eps / 2
            weight = None if p.get("pos_weight") is None else torch.tensor(p["pos_weight"], dtype=torch.float32)
            loss_fn = nn.BCEWithLogitsLoss(pos_weight=weight)
        else:
            yt = torch.as_tensor(y, dtype=torch.long)
            loss_fn = nn.CrossEntropyLoss(label_smoothing=p["label_smoothing"])
        start = time.monotonic()
        with torch_threads(1):  # a head this small only loses to thread hand-offs
            self._train_epochs(xt, yt, x_valid, y_valid, opt, loss_fn, gen)
        if self.best_state is not None:
            self.module.load_state_dict(self.best_state)
        else:
            self.best_epoch = p["epochs"]
        self.module.eval()
        best = max((r.get(self.metric, -1.0) for r in self.history), default=-1.0)
        log.info("head: %s, %d epochs in %.1fs, best epoch %s (%s %s)", self.describe_layers(), p["epochs"],
                 time.monotonic() - start, self.best_epoch, self.metric, best if best >= 0 else "n/a")
        return self

    def _train_epochs(self, xt, yt, x_valid, y_valid, opt, loss_fn, gen) -> None:
        """The epoch loop of :meth:`fit`; leaves the best epoch's weights in ``best_state``."""
        p = self.params
        best = -1.0
        self.best_state, self.history = None, []
        for epoch in range(1, p["epochs"] + 1):
            self.module.train()
            perm = torch.randperm(len(yt), generator=gen)
            total = 0.0
            for b in range(0, len(perm), max(1, p["batch_size"])):
                idx = perm[b:b + p["batch_size"]]
                loss = loss_fn(self.module(xt[idx]), yt[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(idx)
            row = {"epoch": epoch, "train_loss": round(total / max(1, len(yt)), 5)}
            if x_valid is not None and y_valid is not None and len(y_valid):
                row[self.metric] = round(valid_score(self, x_valid, y_valid), 5)
                if row[self.metric] > best:
                    best, self.best_state, self.best_epoch = row[self.metric], copy.deepcopy(self.module.state_dict()), epoch
            self.history.append(row)

    def describe_layers(self) -> str:
        """The layers as one short string, e.g. ``384-25-relu-dropout0.5-2``."""
        p = self.params
        parts = [str(p["dim"])] + ([str(p["hidden"]), "relu"] if p["hidden"] else [])
        parts += [f"dropout{p['dropout']:g}"] if p["dropout"] else []
        return "-".join([*parts, str(p["n_classes"])])

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """Softmax probabilities (float64), one column per class index (label sets: one sigmoid a label)."""
        self.module.eval()
        with torch.inference_mode(), torch_threads(1):
            logits = self.module(torch.as_tensor(np.asarray(x), dtype=torch.float32))
        if self.multilabel:
            return torch.sigmoid(logits.double()).numpy()
        return torch.softmax(logits.double(), dim=1).numpy()

    def save(self, model_dir: str | Path) -> Path:
        """Write the state dict to ``model_dir/head.pt`` atomically."""
        from textclf.core.atomic import atomic_replace_file

        path = Path(model_dir) / self.file
        atomic_replace_file(lambda tmp: torch.save(self.module.state_dict(), tmp), path)
        return path

    def describe(self) -> dict:
        """The meta.json ``head`` block: type, file, every parameter, best epoch and per-epoch history."""
        return {"type": self.type, "file": self.file, **self.params, "best_epoch": self.best_epoch, "history": self.history}

    @classmethod
    def load(cls, path: str | Path, record: dict) -> TorchHead:
        """The head saved at ``path`` with the parameters its meta.json ``record`` gives."""
        keys = ("dim", "n_classes", "hidden", "dropout", "label_smoothing", "epochs", "lr", "batch_size", "weight_decay", "seed",
                "multilabel", "pos_weight", "threshold")
        head = cls(**{k: record[k] for k in keys if k in record})
        try:
            head.module.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        except (RuntimeError, TypeError, AttributeError) as exc:
            raise ModelError(f"{path}: the head's weights do not fit its meta.json record ({str(exc).splitlines()[0]})") from None
        head.module.eval()
        head.best_epoch = record.get("best_epoch")
        head.history = list(record.get("history", []))
        return head


class LogregHead:
    """scikit-learn LogisticRegression on the embeddings (SetFit's default head)."""

    type = "logreg"
    file = LOGREG_FILE

    def __init__(self, n_classes: int, C: float = 1.0, max_iter: int = 2000, seed: int = 13, clf: Any = None,  # noqa: N803
                 multilabel: bool = False):
        self.params = {"n_classes": int(n_classes), "C": float(C), "max_iter": int(max_iter), "seed": int(seed)}
        if multilabel:
            self.params["multilabel"] = True
        self.clf = clf

    @property
    def multilabel(self) -> bool:
        """Whether the head is one-vs-rest on a label indicator matrix."""
        return bool(self.params.get("multilabel"))

    def fit(self, x: np.ndarray, y: np.ndarray, x_valid: np.ndarray | None = None, y_valid: np.ndarray | None = None) -> LogregHead:
        """Fit on ``(x, y)`` (valid data is not used); ``y`` a label indicator matrix: one-vs-rest."""
        from sklearn.linear_model import LogisticRegression

        from textclf.core.sklearn_model import one_vs_rest

        start = time.monotonic()
        self.clf = one_vs_rest(LogisticRegression(C=self.params["C"], max_iter=self.params["max_iter"],
                                                  random_state=self.params["seed"]), self.multilabel)
        self.clf.fit(x, y)
        log.info("head: logreg C=%g in %.1fs", self.params["C"], time.monotonic() - start)
        return self

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """Probabilities (float64), one column per class index (a class absent from train gets 0)."""
        from textclf.families.common.sklearn_proba import proba_in_label_order

        return np.asarray(proba_in_label_order(self.clf, np.asarray(x), self.params["n_classes"], self.multilabel),
                          dtype=np.float64)

    def save(self, model_dir: str | Path) -> Path:
        """Write the fitted classifier to ``model_dir/head.skops`` atomically."""
        from textclf.core.skops_io import save_sklearn

        return save_sklearn(self.clf, Path(model_dir) / self.file)

    def describe(self) -> dict:
        """The meta.json ``head`` block."""
        return {"type": self.type, "file": self.file, **self.params}

    @classmethod
    def load(cls, path: str | Path, record: dict) -> LogregHead:
        """The classifier saved at ``path`` (skops; a legacy joblib pickle needs ``--trust-code``)."""
        from textclf.core.model_checks import check_label_indices
        from textclf.core.skops_io import load_sklearn

        clf = load_sklearn(path, attributes=("classes_",))
        check_label_indices(clf, path, list(range(int(record["n_classes"]))))
        return cls(record["n_classes"], record.get("C", 1.0), record.get("max_iter", 2000), record.get("seed", 13), clf=clf,
                   multilabel=bool(record.get("multilabel")))


def valid_metric(head: TorchHead | LogregHead) -> str:
    """The name of what :func:`valid_score` measures: ``valid_micro_f1`` (label sets) or ``valid_macro_f1``."""
    return "valid_micro_f1" if head.multilabel else "valid_macro_f1"


def valid_score(head: TorchHead | LogregHead, x: np.ndarray, y: np.ndarray) -> float:
    """What a head's fit is judged by on valid: macro-F1 of the argmax, or for label sets micro-F1 at the head's
    ``threshold`` (0.5 for the logreg head)."""
    proba = head.predict_proba(x)
    if head.multilabel:
        return micro_f1(y, proba >= float(head.params.get("threshold", 0.5)))
    return macro_f1(y, proba.argmax(1), int(head.params["n_classes"]))


def make_head(cfg: dict, dim: int, n_classes: int, seed: int, multilabel: bool = False,
              pos_weight: list[float] | None = None) -> TorchHead | LogregHead:
    """The untrained head the config's ``head`` block describes (``multilabel``: for a label indicator matrix;
    ``pos_weight``: the torch head's per-label BCE weights, from ``head.pos_weight``)."""
    h = cfg["head"]
    kind = h.get("type", "torch")
    if kind == "logreg":
        return LogregHead(n_classes, C=h.get("C", 1.0), seed=seed, multilabel=multilabel)
    if kind != "torch":
        raise ConfigError(f"head.type: unknown head {kind!r}; known: {', '.join(HEAD_TYPES)}")
    threshold = float((cfg.get("decision") or {}).get("threshold", 0.5))
    return TorchHead(dim, n_classes, hidden=h["hidden"], dropout=h["dropout"], label_smoothing=h["label_smoothing"],
                     epochs=h["epochs"], lr=h["lr"], batch_size=h.get("batch_size", 32),
                     weight_decay=h.get("weight_decay", 0.0), seed=seed, multilabel=multilabel, pos_weight=pos_weight,
                     threshold=threshold)


def load_head(model_dir: str | Path, record: dict, path: str | Path | None = None) -> TorchHead | LogregHead:
    """The head a model directory records (meta.json ``head`` block); ``path`` overrides its file."""
    cls = {"torch": TorchHead, "logreg": LogregHead}.get(record.get("type", ""))
    if cls is None:
        raise ModelError(f"{model_dir}: unknown head type {record.get('type')!r} in meta.json")
    from textclf.core.integrity import inside_path

    path = Path(path) if path else inside_path(model_dir, record.get("file", cls.file), "head.file")
    if not path.exists():
        raise ModelError(f"{path}: setfit head file not found")
    return cls.load(path, record)
