"""The ``onnx`` Predictor backend: a model exported by ``textclf export --format onnx`` run by ONNX Runtime.

``textclf export`` (:mod:`textclf.services.export`) writes into the model directory ``model.onnx``
(float32), ``model.int8.onnx`` with ``--quantize int8`` (dynamic int8 quantization of the
weights) and ``onnx.json`` (which files, their sizes and SHA-256, the opset, which file the
backend loads by default: the int8 one when there is one, and the check against PyTorch).
:func:`textclf.core.loading.load_predictor` picks this backend when ``onnx.json`` is there (or
``--backend onnx``, or ``--model_path M/model.onnx``); ``--backend torch`` keeps the family's own.

Prediction needs neither torch nor the family's training code: BERT models tokenize with the
saved Hugging Face tokenizer (``encoder/``), BiLSTM models with their own tokenizer and
``vocab.json`` (each family's ``onnx.py`` holds its ONNX Predictor and exporter).
Inputs are batched like the PyTorch Predictors (BERT: length-sorted batches
padded to their longest text with an attention mask; BiLSTM: batches of texts of exactly the
same token count, since the exported LSTM runs unpacked) and results come back in input order.

An int8 model from ``--quantize int8`` quantizes its activations on the fly with one scale per
tensor, computed over the whole batch: texts sharing a batch would change each other's
probabilities (about 1% of labels flipped between batch sizes in a test), so such a model runs one
text at a time and a text gets the same answer in any batch (the serving tests compare the server
with in-process predictions). On a CPU that costs little: ONNX Runtime gains hardly anything from
batching short texts. ``TEXTCLF_THREADS`` sets ONNX Runtime's intra-op threads (default: all
usable cores).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np

from textclf.core.errors import ConfigError, ModelError
from textclf.core.predictor import Predictor
from textclf.core.registry import all_families

INFO_FILE = "onnx.json"
FP32_FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"
BACKENDS = ("torch", "onnx")
#: ONNX metadata key that ``textclf export`` sets on int8 files, and its value for dynamic per-tensor activations
ACTIVATION_KEY = "textclf.activation_quantization"
DYNAMIC_ACTIVATIONS = "dynamic-per-tensor"
THREADS_ENV = "TEXTCLF_THREADS"

log = logging.getLogger(__name__)


def read_info(model_dir: str | Path) -> dict | None:
    """``onnx.json`` of a model directory, or None when it holds no ONNX export."""
    path = Path(model_dir) / INFO_FILE
    if not path.is_file():
        return None
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelError(f"{path}: unreadable ONNX export record: {exc}") from None
    if not isinstance(info, dict) or not isinstance(info.get("files"), dict):
        raise ModelError(f"{path}: not an ONNX export record (no 'files')")
    return info


def onnx_kinds() -> tuple[str, ...]:
    """The families with an ONNX hook (``Family.onnx``: an exporter and a loader in the family's folder)."""
    return tuple(name for name, fam in all_families().items() if fam.onnx)


#: ``onnx.json`` key: the model files (sizes and SHA-256, from meta.json's ``files``) the export was made from
SOURCE_KEY = "source_files"
#: every file ``textclf export`` writes; training a new model into the directory removes them (:func:`remove_export`)
EXPORT_FILES = (INFO_FILE, FP32_FILE, INT8_FILE)


def source_files(meta: dict) -> dict:
    """The records of meta.json's ``files`` an export is made from: all but the calibration file.

    ``textclf calibrate`` adds or replaces that file after an export, and the ONNX Predictor applies
    it as the family's own does, so it does not make an export stale.
    """
    from textclf.core.calibration import FILE_PREFIX

    return {name: rec for name, rec in (meta.get("files") or {}).items() if not name.startswith(FILE_PREFIX)}


def stale_export(model_dir: str | Path, meta: dict) -> bool:
    """Whether ``onnx.json`` exports another model than the one meta.json describes (retrained since the export).

    An export records :func:`source_files` of the meta.json it was made from (:data:`SOURCE_KEY`); an
    export older than that record cannot be checked and counts as current.
    """
    info = read_info(model_dir)
    return bool(info) and SOURCE_KEY in info and info[SOURCE_KEY] != source_files(meta)


def remove_export(model_dir: str | Path) -> list[str]:
    """Delete the ONNX export of ``model_dir`` (``onnx.json`` first, so no half export is ever picked); the names removed."""
    removed = []
    for name in EXPORT_FILES:
        path = Path(model_dir) / name
        if path.is_file() and not path.is_symlink():
            path.unlink()
            removed.append(name)
    return removed


def use_onnx(model_dir: str | Path, meta: dict, model_file: str | Path | None, backend: str | None) -> bool:
    """Whether ``load_predictor`` should load the ONNX export (see the module docstring).

    A stale export (:func:`stale_export`) is never used: asked for (``--backend onnx`` or an
    ``.onnx`` file) it is a one-line ModelError, by default the family's own Predictor loads, with a warning.
    """
    if backend not in (None, "auto", *BACKENDS):
        raise ConfigError(f"--backend {backend!r}: choose torch or onnx")
    names_onnx = model_file is not None and Path(model_file).suffix == ".onnx"
    if backend == "torch":
        if names_onnx:
            raise ConfigError(f"--backend torch, but --model_path names an ONNX file ({model_file})")
        return False
    exported = (Path(model_dir) / INFO_FILE).is_file()
    stale = exported and stale_export(model_dir, meta)
    command = f"textclf export --model_path {model_dir} --format onnx"
    if stale and (names_onnx or backend == "onnx"):
        raise ModelError(f"{model_dir}/{INFO_FILE}: the ONNX export is of an earlier model (the weights in meta.json "
                         f"changed since); run again: {command}")
    if names_onnx:
        return True
    kinds = onnx_kinds()
    if backend == "onnx":
        if meta.get("kind") not in kinds:
            raise ModelError(f"{model_dir}: --backend onnx: {meta.get('kind')} models have no ONNX export "
                             f"(families with one: {', '.join(kinds)})")
        if not exported:
            raise ModelError(f"{model_dir}: --backend onnx, but there is no ONNX export ({INFO_FILE}); run: {command}")
        return True
    if stale:
        log.warning("%s: the ONNX export is of an earlier model (the weights changed since): using the %s Predictor; %s",
                    model_dir, meta.get("kind"), f"run again: {command}")
        return False
    return exported and model_file is None and meta.get("kind") in kinds


def usable_cores() -> int:
    """CPU cores this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def threads_from_env() -> int | None:
    """``$TEXTCLF_THREADS`` (``serve --threads``) as a positive thread count, or None when unset or not one."""
    value = os.environ.get(THREADS_ENV, "")
    return int(value) if value.isdigit() and int(value) > 0 else None


def default_threads() -> int:
    """Intra-op threads: ``$TEXTCLF_THREADS`` when set, else every usable core."""
    return threads_from_env() or usable_cores()


def make_session(path: str | Path, threads: int | None = None):
    """An ONNX Runtime CPU session with every graph optimisation and ``threads`` intra-op threads (default: all cores)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads or default_threads()
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - ONNX Runtime raises its own exception types
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        raise ModelError(f"{path}: cannot load the ONNX model ({type(exc).__name__}: {first})") from None


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64."""
    z = logits.astype(np.float64)
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def sigmoid(logits: np.ndarray) -> np.ndarray:
    """Elementwise logistic sigmoid in float64 (``scipy.special.expit``: no overflow warning for large logits)."""
    from scipy.special import expit

    return expit(logits.astype(np.float64))


class OnnxPredictor(Predictor):
    """Base of the ONNX Predictors: the session, the file it came from, and loading with checks."""

    backend = "onnx"

    def __init__(self, model_dir: str | Path, meta: dict, session, onnx_file: Path, batch_size: int):
        super().__init__(model_dir, meta)
        self.kind = meta["kind"]
        self.session = session
        self.onnx_file = onnx_file
        self.input_names = [i.name for i in session.get_inputs()]
        props = session.get_modelmeta().custom_metadata_map
        #: dynamic int8 activations make a text's result depend on its batch: run one text per session call
        self.one_at_a_time = props.get(ACTIVATION_KEY) == DYNAMIC_ACTIVATIONS
        self.batch_size = 1 if self.one_at_a_time else max(1, batch_size)

    @classmethod
    def load(cls, model_dir: str | Path, meta: dict | None = None, model_file: str | Path | None = None) -> OnnxPredictor:
        """Load the default ONNX file of ``onnx.json`` (or ``model_file``) with its family's preprocessing."""
        from textclf.core.meta import read_meta

        meta = meta or read_meta(model_dir)
        return load_onnx_predictor(model_dir, meta, model_file)

    def run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """The first output of one session run."""
        return self.session.run(None, feeds)[0]

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        """The exported graph's logits as probabilities: a sigmoid per label (multi-label model), else a softmax per row."""
        return sigmoid(logits) if self.multilabel else softmax(logits)


def onnx_file_of(model_dir: Path, info: dict | None, model_file: str | Path | None) -> Path:
    """The ONNX file to load: ``model_file``, else ``onnx.json``'s default (int8 when exported, else float32)."""
    if model_file is not None:
        return Path(model_file)
    if info is None:
        raise ModelError(f"{model_dir}: no ONNX export ({INFO_FILE}); run: textclf export --model_path {model_dir} --format onnx")
    from textclf.core.integrity import listed_path

    name = info.get("default") or (INT8_FILE if INT8_FILE in info["files"] else FP32_FILE)
    return listed_path(model_dir, name, "default", info["files"], model_dir / INFO_FILE)


def load_onnx_predictor(model_dir: str | Path, meta: dict, model_file: str | Path | None = None) -> OnnxPredictor:
    """The ONNX Predictor of a model directory (its family must have an ONNX hook: ``bert``, ``lstm``)."""
    from textclf.core.integrity import verify_file

    model_dir = Path(model_dir)
    kind = meta.get("kind")
    kinds = onnx_kinds()
    if kind not in kinds:
        raise ModelError(f"{model_dir}: {kind} models have no ONNX backend (kinds with one: {', '.join(kinds)})")
    info = read_info(model_dir)
    path = onnx_file_of(model_dir, info, model_file)
    try:
        relative = path.resolve().relative_to(model_dir.resolve()).as_posix()
    except ValueError:
        relative = None
    record = (info or {}).get("files", {}).get(relative) if relative else None
    if record is not None and not isinstance(record, dict):
        raise ModelError(f"{model_dir / INFO_FILE}: bad 'files' entry {relative!r} (expected an object with bytes and sha256)")
    if record:
        verify_file(path, record)
    elif not path.is_file():
        raise ModelError(f"{path}: ONNX model file not found")
    session = make_session(path)
    return all_families()[kind].onnx_hook("load")(model_dir, meta, session, path)
