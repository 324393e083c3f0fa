"""Cascades: a fast student answers the texts it is sure of, a strong teacher answers the rest.

``textclf cascade --student S --teacher T --valid_path V --output_dir C`` builds one with
:func:`build_cascade`; the result is a model directory of kind ``cascade`` (registered in
:mod:`textclf.core.registry`) that ``load_predictor``, ``predict``/``evaluate``/``serve``/
``leaderboard``/``report`` use like any other.

* **Routing** (:meth:`CascadePredictor.predict_proba`): the student predicts every text of the
  batch; the texts whose student confidence (its top probability) is below ``tau`` go to the
  teacher in one batch, and their rows are the teacher's probabilities. ``serve`` calls
  ``predict_proba`` on each micro-batch, so the same routing runs there.
* **Choosing tau** (:func:`choose_tau`) on valid: every distinct student confidence is a
  candidate (plus "everything to the teacher"); each gives a share of texts sent to the teacher
  and a valid macro-F1. ``--max_f1_loss L`` (default 0.005) takes the smallest share whose
  macro-F1 is >= the teacher's - L; ``--min_docs_per_s N`` takes the best macro-F1 whose
  estimated speed ``1 / (1/s_student + share/s_teacher)`` is >= N (both speeds measured on valid:
  the student's repeated, the teacher's from its one pass over valid). ``--confidence C`` (with
  ``--max_f1_loss``) asks more: the one-sided ``C`` lower bound of a paired bootstrap of the valid
  macro-F1 difference cascade - teacher must be >= -L (:func:`choose_tau_with_confidence`), so a
  tau chosen on a small valid split keeps the target on new texts more often, at the price of more
  texts to the teacher.
* **Members** are copied into ``C/members/student`` and ``C/members/teacher``: the directory
  moves as one, and every path it names stays inside it (:func:`textclf.core.integrity.inside_path`;
  each member is loaded with all of ``load_predictor``'s checks). meta.json records the members,
  ``tau``, the target and, on valid, the share of texts that reached the teacher
  (``share_to_teacher``); ``CascadePredictor.routed`` counts it in a running process.

The student's probabilities are used as its confidence as they are; a calibrated student (better
ordered confidences) gives a better trade-off, but any monotone calibration leaves the choice on
valid the same.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from textclf.core.errors import ModelError, TextclfError
from textclf.core.meta import META_FILE
from textclf.core.predictor import Predictor

KIND = "cascade"
MEMBERS_DIR = "members"
ROLES = ("student", "teacher")
#: ``--max_f1_loss`` default: the cascade may lose this much valid macro-F1 against the teacher
DEFAULT_MAX_F1_LOSS = 0.005
#: the tau that sends every text to the teacher (no probability reaches it; JSON has no infinity)
ALL_TO_TEACHER = 2.0


class CascadeError(TextclfError):
    """Members or targets that do not make a cascade."""


class CascadePredictor(Predictor):
    """Student first; texts with student confidence < ``tau`` are answered by the teacher (one batch per call)."""

    kind = KIND

    def __init__(self, model_dir: str | Path, meta: dict, student: Predictor, teacher: Predictor, tau: float):
        super().__init__(model_dir, meta)
        self.student, self.teacher, self.tau = student, teacher, float(tau)
        #: texts seen and texts sent to the teacher since loading (``share_to_teacher``)
        self.routed = {"texts": 0, "to_teacher": 0}

    @classmethod
    def load(cls, model_dir: str | Path, meta: dict | None = None, model_file: str | Path | None = None) -> CascadePredictor:
        """Load both members from ``members/`` (paths inside the directory only) with ``load_predictor``."""
        from textclf.core.integrity import inside_path
        from textclf.core.loading import load_predictor
        from textclf.core.meta import read_meta

        model_dir = Path(model_dir)
        meta = meta or read_meta(model_dir)
        where = model_dir / META_FILE
        records = {r.get("role"): r for r in meta.get("members") or [] if isinstance(r, dict)}
        if set(records) != set(ROLES):
            raise ModelError(f"{where}: a cascade needs one student and one teacher member, found {sorted(map(str, records))}")
        tau = meta.get("tau")
        if not isinstance(tau, int | float) or isinstance(tau, bool):
            raise ModelError(f"{where}: 'tau' must be a number, got {tau!r}")
        members = {}
        for role in ROLES:
            path = inside_path(model_dir, records[role].get("path"), f"members.{role}.path", where)
            if not (path / META_FILE).is_file():
                raise ModelError(f"{where}: {role} member {records[role].get('path')!r} not found (no {path / META_FILE})")
            members[role] = load_predictor(path, thresholds=False)
        check_members(members["student"], members["teacher"], str(where))
        if set(meta["labels"]) != set(members["student"].labels):
            raise ModelError(f"{where}: labels differ from the members' labels")
        return cls(model_dir, meta, members["student"], members["teacher"], tau)

    @property
    def share_to_teacher(self) -> float | None:
        """Share of the texts predicted since loading that reached the teacher (None before the first)."""
        return self.routed["to_teacher"] / self.routed["texts"] if self.routed["texts"] else None

    def route(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """``(probabilities, mask)``: rows from the student, or from the teacher where ``mask`` (student confidence < tau)."""
        from textclf.services.compare.ensemble import align_columns

        texts = list(texts)
        proba = align_columns(np.asarray(self.student.predict_proba(texts), dtype=np.float64), self.student.labels,
                              self.labels)
        mask = proba.max(axis=1) < self.tau if len(proba) else np.zeros(0, dtype=bool)
        if mask.any():
            sent = [texts[i] for i in np.flatnonzero(mask)]
            proba[mask] = align_columns(np.asarray(self.teacher.predict_proba(sent), dtype=np.float64),
                                        self.teacher.labels, self.labels)
        self.routed["texts"] += len(texts)
        self.routed["to_teacher"] += int(mask.sum())
        return proba, mask

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        """The student's probabilities, the teacher's for the texts the student is not sure of."""
        if len(texts) == 0:
            return np.zeros((0, len(self.labels)), dtype=np.float64)
        return self.route(texts)[0]


def check_members(student: Predictor, teacher: Predictor, where: str) -> None:
    """One label set, both multi-class; else a one-line error naming ``where``."""
    for role, p in (("student", student), ("teacher", teacher)):
        if p.multilabel:
            raise CascadeError(f"{where}: the {role} {p.model_dir} is multi-label; a cascade routes multi-class models only")
    if set(student.labels) != set(teacher.labels):
        raise CascadeError(f"{where}: student and teacher must share one label set: student [{', '.join(student.labels)}], "
                           f"teacher [{', '.join(teacher.labels)}]")


# --------------------------------------------------------------------------- choosing tau
def tau_curve(y: np.ndarray, student_proba: np.ndarray, teacher_proba: np.ndarray) -> list[dict]:
    """Every candidate tau on valid: ``{"tau", "share_to_teacher", "macro_f1"}``, from all-student to all-teacher.

    A text goes to the teacher when its student confidence is < tau; the candidates are the
    distinct confidences (the smallest sends none) and :data:`ALL_TO_TEACHER` (all: above any probability).
    """
    from textclf.core.metrics import class_counts, fbeta_from_counts

    n, k = student_proba.shape
    conf = student_proba.max(axis=1)
    s_pred, t_pred = student_proba.argmax(axis=1), teacher_proba.argmax(axis=1)
    out = []
    for tau in [*np.unique(conf), ALL_TO_TEACHER]:
        mask = conf < tau
        pred = np.where(mask, t_pred, s_pred)
        f1 = float(fbeta_from_counts(*class_counts(y, pred, k), 1.0)) if n else 0.0
        out.append({"tau": float(tau), "share_to_teacher": float(mask.mean()) if n else 0.0, "macro_f1": f1})
    return out


def estimated_docs_per_s(share: float, student_docs_per_s: float, teacher_docs_per_s: float) -> float:
    """The cascade's speed when ``share`` of the texts also go to the teacher: ``1 / (1/s + share/t)``."""
    return 1.0 / (1.0 / student_docs_per_s + share / teacher_docs_per_s)


def within_loss(curve: list[dict], teacher_f1: float, max_f1_loss: float) -> list[dict]:
    """The points of ``curve`` whose macro-F1 is >= ``teacher_f1 - max_f1_loss``, fewest texts to the teacher first
    (ties: the higher macro-F1). "All to the teacher" is always among them."""
    ok = [p for p in curve if p["macro_f1"] >= teacher_f1 - max_f1_loss - 1e-12]
    return sorted(ok, key=lambda p: (p["share_to_teacher"], -p["macro_f1"]))


#: ``--confidence``: at most this many candidate taus get a bootstrap each (every k-th of those meeting the point target)
MAX_BOOTSTRAPPED = 100


def choose_tau_with_confidence(curve: list[dict], y: np.ndarray, student_proba: np.ndarray, teacher_proba: np.ndarray,
                               max_f1_loss: float, confidence: float) -> dict:
    """``--max_f1_loss`` with ``--confidence C``: the smallest share whose loss against the teacher is within
    ``max_f1_loss`` at the one-sided ``C`` lower bound, not only on the point estimate.

    Each candidate (from the fewest texts to the teacher up, among those meeting the point target, at most
    :data:`MAX_BOOTSTRAPPED` of them evenly spaced) gets a paired bootstrap of the valid macro-F1 difference
    cascade - teacher (:func:`textclf.services.compare.ensemble.paired_gain`, the test ``ensemble --method auto``
    uses); the first whose lower bound is >= -``max_f1_loss`` is taken. "All to the teacher" always passes (no
    difference). The bound widens as valid shrinks, so a small valid sends more texts to the teacher.
    Returns the point with its ``ci_low`` and ``se``.
    """
    from textclf.services.compare.ensemble import paired_gain

    conf = student_proba.max(axis=1)
    s_pred, t_pred = student_proba.argmax(axis=1), teacher_proba.argmax(axis=1)
    ok = within_loss(curve, curve[-1]["macro_f1"], max_f1_loss)
    step = max(1, -(-len(ok) // MAX_BOOTSTRAPPED))
    for p in [*ok[::step], curve[-1]]:
        pred = np.where(conf < p["tau"], t_pred, s_pred)
        check = paired_gain(y, pred, t_pred, student_proba.shape[1], 1.0, confidence)
        if check["ci_low"] >= -max_f1_loss - 1e-12:
            return {**p, "ci_low": check["ci_low"], "se": check["se"]}
    raise AssertionError("unreachable: all to the teacher has no difference")


def choose_tau(curve: list[dict], teacher_f1: float, max_f1_loss: float | None = None, min_docs_per_s: float | None = None,
               speeds: dict | None = None) -> dict:
    """The point of ``curve`` meeting the target (see the module docstring); a one-line error when none does."""
    if min_docs_per_s is not None:
        ok = [p for p in curve if estimated_docs_per_s(p["share_to_teacher"], speeds["student"], speeds["teacher"])
              >= min_docs_per_s]
        if not ok:
            raise CascadeError(f"--min_docs_per_s {min_docs_per_s:g}: not reachable; the student alone measured "
                               f"{speeds['student']:,.0f} docs/s on valid")
        return max(ok, key=lambda p: (p["macro_f1"], -p["share_to_teacher"]))
    loss = DEFAULT_MAX_F1_LOSS if max_f1_loss is None else max_f1_loss
    return within_loss(curve, teacher_f1, loss)[0]


def docs_per_s(predictor: Predictor, texts: Sequence[str], batch_size: int, min_seconds: float = 0.3) -> float:
    """``predict_proba`` docs/s over ``texts`` in batches, repeated until ``min_seconds`` were timed (after a warm-up)."""
    from textclf.core.data import batched

    texts = list(texts)
    predictor.predict_proba(texts[:32])
    done, timed = 0, 0.0
    while timed < min_seconds and done < 20 * len(texts):
        start = time.perf_counter()
        for b in batched(texts, batch_size):
            predictor.predict_proba(list(b))
        timed += time.perf_counter() - start
        done += len(texts)
    return done / timed if timed > 0 else float("inf")


# --------------------------------------------------------------------------- building
def member_sizes(dirs: dict[str, Path], max_model_mb: float | None) -> dict:
    """The members' sizes in MiB (:func:`textclf.services.compare.ensemble.member_bytes`) and their sum, checked
    against ``max_model_mb`` (None: no bound)."""
    from textclf.core.meta import read_meta
    from textclf.services.compare.ensemble import member_bytes

    mb = {role: member_bytes(d, read_meta(d)) / 2**20 for role, d in dirs.items()}
    total = sum(mb.values())
    if max_model_mb is not None:
        if not max_model_mb > 0:
            raise CascadeError(f"--max_model_mb must be > 0, got {max_model_mb:g}")
        if total > max_model_mb:
            raise CascadeError(f"--max_model_mb {max_model_mb:g}: the student ({mb['student']:.1f} MB) and the teacher "
                               f"({mb['teacher']:.1f} MB) take {total:.1f} MB; a cascade needs both")
    return {"max_model_mb": max_model_mb, "members_mb": {k: round(v, 3) for k, v in mb.items()}, "total_mb": round(total, 3)}


def _copy_member(source: Path, target: Path) -> None:
    """Copy a member directory into the cascade (through a temporary sibling, then a rename)."""
    import os
    import tempfile

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.copy-", dir=target.parent))
    try:
        shutil.copytree(source, tmp / "m", symlinks=False)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp / "m", target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def build_cascade(student_path: str | Path, teacher_path: str | Path, valid_path: str | Path, output_dir: str | Path,
                  max_f1_loss: float | None = None, min_docs_per_s: float | None = None,
                  test_path: str | Path | None = None, data_format: str | None = None, text_column: str = "text",
                  label_column: str = "label", batch_size: int = 256, echo: bool = False,
                  max_model_mb: float | None = None, confidence: float | None = None) -> dict:
    """Build a cascade of ``student_path`` and ``teacher_path`` on ``valid_path`` into ``output_dir``; return its meta.

    ``max_model_mb`` bounds the sum of the two members' sizes, as for ensembles; a cascade needs both, so a pair
    over the budget is a one-line CascadeError before anything is loaded. ``confidence`` (with the
    ``max_f1_loss`` target): tau must keep the loss within the target at that one-sided bootstrap lower bound
    (:func:`choose_tau_with_confidence`), not only on valid's point estimate.
    """
    from textclf.core.data import batched, read_labelled
    from textclf.core.loading import _resolve, load_predictor
    from textclf.core.meta import build_meta, read_meta, write_meta
    from textclf.core.metrics import classification_metrics, format_report
    from textclf.core.predictor import evaluate_predictor
    from textclf.services.compare.ensemble import align_columns
    from textclf.services.compare.thresholds import label_indices

    if max_f1_loss is not None and min_docs_per_s is not None:
        raise CascadeError("give --max_f1_loss or --min_docs_per_s, not both")
    if max_f1_loss is not None and not 0 <= max_f1_loss < 1:
        raise CascadeError(f"--max_f1_loss must be in [0, 1), got {max_f1_loss:g}")
    if min_docs_per_s is not None and min_docs_per_s <= 0:
        raise CascadeError(f"--min_docs_per_s must be > 0, got {min_docs_per_s:g}")
    if confidence is not None and min_docs_per_s is not None:
        raise CascadeError("--confidence goes with --max_f1_loss, not --min_docs_per_s")
    if confidence is not None and not 0.5 <= confidence < 1:
        raise CascadeError(f"--confidence must be in [0.5, 1), got {confidence:g}")
    output_dir = Path(output_dir)
    dirs = {"student": _resolve(student_path)[0], "teacher": _resolve(teacher_path)[0]}
    if dirs["student"].resolve() == dirs["teacher"].resolve():
        raise CascadeError("--student and --teacher are the same model directory")
    for d in dirs.values():
        if output_dir.resolve() == d.resolve() or d.resolve() in output_dir.resolve().parents:
            raise CascadeError(f"--output_dir {output_dir} must not be a member ({d}) or lie inside one")
    if (output_dir / META_FILE).exists() and read_meta(output_dir).get("kind") != KIND:
        raise CascadeError(f"--output_dir {output_dir} holds a {read_meta(output_dir).get('kind')} model; choose a new directory")
    size = member_sizes(dirs, max_model_mb)
    student, teacher = (load_predictor(dirs[r], thresholds=False) for r in ROLES)
    check_members(student, teacher, "textclf cascade")
    labels = list(student.labels)
    valid = read_labelled(valid_path, data_format, text_column, label_column, min_classes=0)
    y = label_indices(valid.labels, labels, valid_path, valid.line_numbers)

    def proba_of(p: Predictor) -> tuple[np.ndarray, float]:
        start = time.perf_counter()
        chunks = [p.predict_proba(list(b)) for b in batched(valid.texts, batch_size)]
        rate = len(valid) / max(time.perf_counter() - start, 1e-9)
        return align_columns(np.vstack(chunks) if chunks else np.zeros((0, len(labels))), p.labels, labels), rate

    sp, _ = proba_of(student)
    tp, teacher_rate = proba_of(teacher)  # one timed pass: a slow teacher is not run twice
    curve = tau_curve(y, sp, tp)
    teacher_f1, student_f1 = curve[-1]["macro_f1"], curve[0]["macro_f1"]
    speeds = {"student": docs_per_s(student, valid.texts, batch_size), "teacher": teacher_rate}
    target = ({"min_docs_per_s": min_docs_per_s} if min_docs_per_s is not None
              else {"max_f1_loss": DEFAULT_MAX_F1_LOSS if max_f1_loss is None else max_f1_loss})
    if confidence is None:
        point = choose_tau(curve, teacher_f1, max_f1_loss, min_docs_per_s, speeds)
    else:
        point = choose_tau_with_confidence(curve, y, sp, tp, target["max_f1_loss"], confidence)
        target["confidence"] = confidence

    output_dir.mkdir(parents=True, exist_ok=True)
    records = []
    for role in ROLES:
        _copy_member(dirs[role], output_dir / MEMBERS_DIR / role)
        meta_m = read_meta(dirs[role])
        records.append({"role": role, "path": f"{MEMBERS_DIR}/{role}", "kind": meta_m.get("kind"),
                        "source": str(dirs[role].resolve()), "data_sha256": meta_m.get("data_sha256")})
    cascade_block = {"target": target, "tau": point["tau"], "valid_path": str(valid_path),
                     "valid": {"share_to_teacher": point["share_to_teacher"], "macro_f1": point["macro_f1"],
                               "teacher_macro_f1": teacher_f1, "student_macro_f1": student_f1,
                               **({"loss_ci_low": point["ci_low"], "loss_se": point["se"]} if "ci_low" in point else {})},
                     "docs_per_s_on_valid": {**{k: round(v, 1) for k, v in speeds.items()},
                                             "cascade_estimate": round(estimated_docs_per_s(point["share_to_teacher"],
                                                                                            speeds["student"], speeds["teacher"]), 1)},
                     "curve": _thin(curve)}
    tmp_meta = {"kind": KIND, "labels": labels, "tau": point["tau"], "members": records}
    predictor = CascadePredictor(output_dir, tmp_meta, student, teacher, point["tau"])
    proba, _ = predictor.route(valid.texts)
    metrics = {"valid": classification_metrics(valid.labels, [labels[i] for i in proba.argmax(axis=1)], labels)}
    if test_path is not None:
        ds = read_labelled(test_path, data_format, text_column, label_column, min_classes=0)
        predictor.routed = {"texts": 0, "to_teacher": 0}
        metrics["test"] = evaluate_predictor(predictor, ds.texts, ds.labels, batch_size)
        cascade_block["test"] = {"share_to_teacher": predictor.share_to_teacher}
    from textclf.core.atomic import atomic_write_text

    report = "\n\n".join(format_report(m, title=f"== {name} ({valid_path if name == 'valid' else test_path})")
                         for name, m in metrics.items())
    atomic_write_text(output_dir / "metrics.txt", report + "\n")
    config = {"student": str(student_path), "teacher": str(teacher_path), **target, "valid_path": str(valid_path),
              "test_path": None if test_path is None else str(test_path), "batch_size": batch_size}
    metas = [read_meta(dirs[r]) for r in ROLES]
    data = metas[0].get("data") or {}
    meta = build_meta(KIND, labels, config, metrics, metas[0].get("data_sha256"), (), tau=point["tau"],
                      share_to_teacher=point["share_to_teacher"], members=records, cascade=cascade_block,
                      model_mb=size["total_mb"], size=size,
                      task="multiclass", data={"train": data.get("train"), "valid": str(valid_path),
                                               "test": str(test_path) if test_path else data.get("test")})
    write_meta(output_dir, meta)
    if echo:
        import click

        click.echo(report)
        click.echo(f"\ntau {point['tau']:.4f}: {point['share_to_teacher']:.1%} of valid reaches the teacher; valid macro-F1 "
                   f"{point['macro_f1']:.4f} (teacher {teacher_f1:.4f}, student {student_f1:.4f}); estimated "
                   f"{cascade_block['docs_per_s_on_valid']['cascade_estimate']:,.0f} docs/s (teacher "
                   f"{speeds['teacher']:,.0f}, student {speeds['student']:,.0f})")
        if "ci_low" in point:
            click.echo(f"--confidence {confidence:g}: the valid macro-F1 difference to the teacher is >= {point['ci_low']:+.4f} "
                       f"at that one-sided bound (SE {point['se']:.4f}; target >= {-target['max_f1_loss']:+.4f})")
        click.echo(f"cascade written to {output_dir}")
    return meta


def _thin(curve: list[dict], points: int = 41) -> list[dict]:
    """At most ``points`` of the tau curve (evenly spaced, both ends kept), rounded, for meta.json."""
    idx = sorted({int(round(i)) for i in np.linspace(0, len(curve) - 1, min(points, len(curve)))})
    return [{k: round(v, 5) for k, v in curve[i].items()} for i in idx]
