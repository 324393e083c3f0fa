"""Loading a model directory: ``load_predictor(model_dir)`` reads ``meta.json`` and asks the family registry.

The registry (:mod:`textclf.core.registry`) gives the Predictor of the ``kind`` in meta.json;
callers never import a family's module themselves. A model trained by a plug-in family carries
the plug-in's code (``meta.json`` names it), which is imported first, with a one-line warning.
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


def load_plugin_code(model_dir: Path, meta: dict) -> None:
    """Import the plug-in file a model directory carries (named in meta.json), warning that it runs code."""
    from textclf.core.registry import PLUGIN_META_KEY, load_code

    relative = meta.get(PLUGIN_META_KEY)
    if not relative:
        return
    path = (model_dir / relative).resolve()
    if not path.is_relative_to(model_dir.resolve()) or not path.is_file():
        raise ModelError(f"{model_dir / META_FILE}: {PLUGIN_META_KEY} {relative!r} is not a file inside the model directory")
    import click

    click.echo(f"warning: model {model_dir} runs plug-in code from its directory: {path}", err=True)
    load_code(path)


def load_predictor(model_path: str | Path, thresholds: bool = True, backend: str | None = None,
                   announce: bool = True) -> Predictor:
    """Load any textclf model directory (or a model file inside one) by the ``kind`` in its meta.json.

    The kind is a family's name, or a kind built by a command rather than trained (``ensemble``;
    :func:`textclf.core.registry.all_kinds`). ``thresholds=False`` makes ``predict`` ignore tuned offsets.
    ``backend``: ``torch`` (the family's own Predictor), ``onnx`` (the exported ONNX model,
    :mod:`textclf.core.onnx_runtime`) or None: ONNX when the directory holds an export (or
    ``model_path`` names a ``.onnx`` file), else the family's own. Files recorded in meta.json
    (``files``) are checked first (:mod:`textclf.core.integrity`); a library failure while loading is
    a one-line ModelError. ``announce=False`` skips the note that loading unpickles files (for a caller that
    wrote the directory itself or already unpickled more than it, like an unpickled ``TextClassifier``).
    """
    from textclf.core.integrity import announce_pickles, check_meta, guarded_load, verify_recorded_files
    from textclf.core.onnx_runtime import load_onnx_predictor, use_onnx
    from textclf.core.registry import all_families, all_kinds, kind_predictor

    model_dir, model_file = _resolve(model_path)
    meta = read_meta(model_dir)
    check_meta(model_dir, meta)
    kind = meta.get("kind")
    verify_recorded_files(model_dir, meta)  # before any plug-in code from the directory runs
    load_plugin_code(model_dir, meta)
    if use_onnx(model_dir, meta, model_file, backend):
        predictor = load_onnx_predictor(model_dir, meta, model_file)
        predictor.use_thresholds = thresholds
        return predictor
    known = all_families()
    if kind in known:
        cls = known[kind].predictor_class()
    else:
        cls = kind_predictor(kind) if isinstance(kind, str) else None
        if cls is None:
            names = sorted({*known, *all_kinds()})
            raise ModelError(f"{model_dir}/{META_FILE}: unknown model kind {kind!r}; known: {', '.join(names)}")
    if announce:
        announce_pickles(model_dir)
    predictor = guarded_load(cls, model_dir, meta, model_file)
    predictor.use_thresholds = thresholds
    return predictor
