"""Saving and loading scikit-learn objects with skops (no pickle), and the legacy joblib files.

joblib (scikit-learn's usual format) is a pickle: loading a crafted file runs any code, and the
SHA-256 in meta.json does not help, since whoever can write the file can edit meta.json too.
skops (``skops.io``, maintained by scikit-learn developers) stores the objects' state and rebuilds
only the types it is told to trust. textclf trusts skops' own defaults (scikit-learn's public
estimators, numpy, scipy) plus :data:`TRUSTED_TYPES`, the internal types the objects textclf
writes contain; anything else in a file is refused with one line naming the file and the type.

Files written by older textclf versions (``*.joblib``) still load, but only with the user's
consent (:mod:`textclf.core.trust`), and a note names the file being unpickled.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from textclf.core.errors import ModelError
from textclf.core.model_checks import check_loaded_object

SUFFIX = ".skops"
LEGACY_SUFFIX = ".joblib"

#: Types skops does not trust by default that the objects textclf saves contain (found with
#: ``skops.io.get_untrusted_types`` on every classifier, head, stacker and pipeline textclf writes;
#: tests/test_safety_loading.py checks the list still covers them).
TRUSTED_TYPES: frozenset[str] = frozenset({
    "sklearn.calibration._CalibratedClassifier",  # embeddings linear_svm (CalibratedClassifierCV)
    "sklearn.calibration._SigmoidCalibration",
    "sklearn.multiclass._ConstantPredictor",  # one-vs-rest on label sets: a label on every (or no) training row
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",  # embeddings hgb
    "sklearn.neural_network._stochastic_optimizers.AdamOptimizer",  # embeddings mlp
    "sklearn.neural_network._stochastic_optimizers.SGDOptimizer",
})


def save_sklearn(obj, path: str | Path) -> Path:
    """Write ``obj`` (a scikit-learn estimator or pipeline) to ``path`` with skops, atomically."""
    import skops.io as sio

    from textclf.core.atomic import atomic_replace_file

    path = Path(path)
    atomic_replace_file(lambda tmp: sio.dump(obj, tmp), path)
    return path


def untrusted_types(path: str | Path, also: Iterable[str] = ()) -> tuple[list[str], list[str]]:
    """``(types to pass as trusted, types refused)`` of a skops file, against :data:`TRUSTED_TYPES` and ``also``."""
    import skops.io as sio

    try:
        found = sio.get_untrusted_types(file=Path(path))
    except Exception as exc:  # noqa: BLE001 - a damaged zip raises BadZipFile, KeyError, JSONDecodeError, ...
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        raise ModelError(f"{path}: not a readable skops file ({type(exc).__name__}: {first}); the model directory "
                         "is damaged") from None
    allowed = TRUSTED_TYPES | set(also)
    return list(found), sorted(t for t in found if t not in allowed)


def load_sklearn(path: str | Path, also: Iterable[str] = (), needs: Iterable[str] = ("predict_proba",),
                 what: str = "classifier", attributes: Iterable[str] = ()):
    """Load a scikit-learn object saved by :func:`save_sklearn`, or a legacy joblib pickle with consent.

    ``also``: more type names the caller trusts (a family's own estimator class). ``needs``:
    methods the object must have and ``attributes`` the attributes (a "classifier" without
    ``predict_proba`` is refused when loading, not at predict time; :func:`textclf.core.model_checks.check_loaded_object`,
    ``what`` names what the file should hold). Every failure is a one-line ModelError naming ``path``.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: file not found")
    if path.suffix == SUFFIX:
        obj = _load_skops(path, also)
    else:
        obj = load_legacy_pickle(path)
    return check_loaded_object(obj, path, tuple(needs), what, tuple(attributes))


def _load_skops(path: Path, also: Iterable[str]):
    import skops.io as sio

    trusted, refused = untrusted_types(path, also)
    if refused:
        shown = ", ".join(refused[:3]) + (f" (+{len(refused) - 3} more)" if len(refused) > 3 else "")
        raise ModelError(f"{path}: refusing to load type(s) textclf does not write: {shown}; the file was not "
                         "written by textclf or was edited")
    try:
        return sio.load(path, trusted=trusted)
    except Exception as exc:  # noqa: BLE001 - skops and the estimators' __setstate__ raise many types
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        raise ModelError(f"{path}: cannot load ({type(exc).__name__}: {first}); the model directory is damaged") from None


def load_legacy_pickle(path: str | Path):
    """Unpickle a joblib file written by an older textclf: only with consent (``--trust-code``), announced."""
    from textclf.core.integrity import announce_pickle
    from textclf.core.trust import require_trust

    path = Path(path)
    require_trust(path, "unpickle this file (saved with joblib by an older textclf)")
    announce_pickle(path)
    import joblib

    try:
        return joblib.load(path)
    except Exception as exc:  # noqa: BLE001 - a damaged pickle raises anything
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        raise ModelError(f"{path}: cannot unpickle ({type(exc).__name__}: {first}); the file is damaged") from None


def saved_file(model_dir: str | Path, stem: str) -> Path:
    """``model_dir/<stem>.skops``, else the legacy ``<stem>.joblib`` when only that exists (loading it needs consent)."""
    model_dir = Path(model_dir)
    new, old = model_dir / f"{stem}{SUFFIX}", model_dir / f"{stem}{LEGACY_SUFFIX}"
    return old if old.is_file() and not new.is_file() else new
