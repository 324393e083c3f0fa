"""Loading a model directory: ``load_predictor(model_dir)`` reads ``meta.json`` and asks the family registry.

The registry (:mod:`textclf.core.registry`) gives the Predictor of the ``kind`` in meta.json;
callers never import a family's module themselves. A model trained by a plug-in family carries
the plug-in's code (``meta.json`` names it). It runs only with the user's consent
(:mod:`textclf.core.trust`: ``--trust-code``, ``TEXTCLF_TRUST_CODE=1`` or ``trust_code=True``),
and only when the family is not registered already (by an installed package's entry point or
``--code``: code the user chose to run).
"""

from __future__ import annotations

from pathlib import Path

from textclf.core.errors import ModelError
from textclf.core.meta import META_FILE, read_meta
from textclf.core.predictor import Predictor


def _resolve(model_path: str | Path) -> tuple[Path, Path | None]:
    path = Path(model_path)
    if path.is_file():
        # meta.json names the directory, not a model file
        return path.parent, None if path.name == META_FILE else path
    return path, None


#: resolved paths of the model directories' plug-in files this process imported (not an entry point or ``--code``):
#: a family whose ``code_file`` is one of them came from a model directory; one registered again later from
#: ``--code`` (another file) is the user's again
_FROM_MODEL_DIRS: set[str] = set()


def load_plugin_code(model_dir: Path, meta: dict) -> None:
    """Import the plug-in file a model directory carries (named in meta.json), only with the user's consent.

    Nothing runs when the model's family is registered already (an installed entry point or
    ``--code``); a family this process registered from another model directory's file still needs
    consent for each model that uses it (that code may read files, such as pickles, from this one).
    Otherwise, without consent this is a one-line ModelError naming the file and how to allow it;
    with it, a warning line names the file before it is imported.
    """
    from textclf.core.integrity import inside_path
    from textclf.core.registry import PLUGIN_META_KEY, all_families, load_code
    from textclf.core.trust import require_trust

    relative = meta.get(PLUGIN_META_KEY)
    if not relative:
        return
    path = inside_path(model_dir, relative, PLUGIN_META_KEY, meta)
    family = all_families().get(meta.get("kind"))
    if family is not None:
        if getattr(family, "code_file", None) in _FROM_MODEL_DIRS:  # another directory's code: this model needs consent too
            require_trust(path, "run plug-in code (its family came from a model directory's code, not an installed package)")
        return  # the family's code is installed or came with --code: the directory's copy is not needed
    require_trust(path, "import the plug-in code in this file")
    import click

    click.echo(f"warning: model {model_dir} runs plug-in code from its directory: {path}", err=True)
    load_code(path)
    _FROM_MODEL_DIRS.add(str(path.resolve()))


def load_predictor(model_path: str | Path, thresholds: bool = True, backend: str | None = None,
                   announce: bool = True, trust_code: bool | None = None) -> Predictor:
    """Load any textclf model directory (or a model file inside one) by the ``kind`` in its meta.json.

    The kind is a family's name, or a kind built by a command rather than trained (``ensemble``;
    :func:`textclf.core.registry.all_kinds`). ``thresholds=False`` makes ``predict`` ignore tuned offsets.
    ``backend``: ``torch`` (the family's own Predictor), ``onnx`` (the exported ONNX model,
    :mod:`textclf.core.onnx_runtime`) or None: ONNX when the directory holds an export (or
    ``model_path`` names a ``.onnx`` file), else the family's own. Files recorded in meta.json
    (``files``) are checked first (:mod:`textclf.core.integrity`); a library failure while loading is
    a one-line ModelError. ``announce=False`` skips the note naming a legacy pickle as it is unpickled
    (for a caller that already unpickled more than it, like an unpickled ``TextClassifier``).
    ``trust_code=True`` allows code the directory carries (plug-in file, legacy pickles), False
    refuses it, None (default) leaves it to ``--trust-code``/``TEXTCLF_TRUST_CODE``
    (:mod:`textclf.core.trust`); it holds for nested loads too (an ensemble's members).
    """
    from textclf.core.trust import trusting

    with trusting(trust_code):
        return _load_predictor(model_path, thresholds, backend, announce)


def _load_predictor(model_path: str | Path, thresholds: bool, backend: str | None, announce: bool) -> Predictor:
    """:func:`load_predictor` under the consent already set."""
    from textclf.core.calibration import load_calibrator
    from textclf.core.integrity import check_links, check_meta, check_meta_paths, guarded_load, quiet_pickles, verify_recorded_files
    from textclf.core.onnx_runtime import load_onnx_predictor, use_onnx
    from textclf.core.registry import all_families, all_kinds, kind_predictor

    model_dir, model_file = _resolve(model_path)
    meta = read_meta(model_dir)
    check_meta(model_dir, meta)
    kind = meta.get("kind")
    check_links(model_dir)  # no file read below may be a symlink out of the directory
    verify_recorded_files(model_dir, meta)  # before any plug-in code from the directory runs
    check_meta_paths(model_dir, meta)  # model_file, plugin_code, ...: inside the directory and listed in files
    load_plugin_code(model_dir, meta)
    calibrator = load_calibrator(model_dir, meta)
    if use_onnx(model_dir, meta, model_file, backend):
        predictor = load_onnx_predictor(model_dir, meta, model_file)
        predictor.use_thresholds = thresholds
        predictor.calibration = calibrator
        return predictor
    known = all_families()
    if kind in known:
        cls = known[kind].predictor_class()
    else:
        cls = kind_predictor(kind) if isinstance(kind, str) else None
        if cls is None:
            names = sorted({*known, *all_kinds()})
            raise ModelError(f"{model_dir}/{META_FILE}: unknown model kind {kind!r}; known: {', '.join(names)}")
    with quiet_pickles(not announce):
        predictor = guarded_load(cls, model_dir, meta, model_file)
    predictor.use_thresholds = thresholds
    predictor.calibration = calibrator  # predict_proba applies it (textclf.core.calibration)
    return predictor
