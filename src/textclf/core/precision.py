"""Mixed precision, gradient checkpointing and per-device batch sizes for the torch families: one place decides.

Every decision takes a :class:`DeviceInfo`, the facts about the device that matter here (type,
compute capability, free memory). :meth:`DeviceInfo.of` queries the real device; tests build one
by hand to simulate a GPU on a machine without one, so the decisions are tested per device.

* :func:`resolve_precision` - ``train.precision`` (``auto | fp32 | bf16 | fp16``). ``auto`` is
  bf16 autocast without a loss scaler on GPUs that support bf16 (compute capability >= 8.0:
  Ampere, Hopper, ...), fp16 autocast with a GradScaler on older GPUs, and fp32 on the CPU.
  The old boolean ``train.fp16`` still works as a deprecated alias (:func:`precision_setting`).
* :func:`resolve_checkpointing` - ``model.gradient_checkpointing`` (``auto | true | false``).
  ``auto`` turns checkpointing on only on a GPU, and only when the training memory estimate of
  :class:`MemoryEstimate` (weights, gradients and AdamW state, plus the activations of one
  batch at ``max_length``) exceeds 80 % of the free GPU memory (``torch.cuda.mem_get_info``).
  Checkpointing trades about a third more compute for memory: measured on an H200 it slowed
  MiniLM-L6 fine-tuning down (together with fp16) by 4x where memory was never short.
* :func:`predict_batch_size` - a prediction batch size per device type (``batch_size_cpu``,
  ``batch_size_gpu``; ``"auto"`` on a GPU sizes it from the free memory).
"""

from __future__ import annotations

import contextlib
import logging
import math
import warnings
from dataclasses import asdict, dataclass

import torch

from textclf.core.config import auto_bool
from textclf.core.errors import ConfigError

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
#: first compute capability with native bf16 tensor cores (Ampere)
BF16_CAPABILITY = (8, 0)
#: ``auto`` checkpointing turns on when the estimate needs more than this share of the free GPU memory
MEMORY_HEADROOM = 0.8
#: ``predict.batch_size_gpu: auto`` uses at most this share of the free GPU memory, and batches of at most this many rows
PREDICT_MEMORY_SHARE = 0.25
PREDICT_MAX_BATCH = 1024

_WARNED: set[str] = set()


def warn_once(key: str, message: str) -> None:
    """A FutureWarning (and a log line) the first time ``key`` comes up in this process."""
    if key in _WARNED:
        return
    _WARNED.add(key)
    log.warning(message)
    warnings.warn(message, FutureWarning, stacklevel=3)


# --------------------------------------------------------------------------- the device


@dataclass(frozen=True)
class DeviceInfo:
    """What the resolvers need to know about a device (build one by hand to simulate a GPU)."""

    type: str
    name: str = ""
    capability: tuple[int, int] | None = None
    free_memory: int | None = None
    total_memory: int | None = None

    @classmethod
    def of(cls, device: torch.device | str) -> DeviceInfo:
        """Query ``device``: name, compute capability and ``torch.cuda.mem_get_info`` on CUDA; just the type elsewhere."""
        device = torch.device(device)
        if device.type != "cuda":
            return cls(device.type, device.type)
        index = device.index if device.index is not None else torch.cuda.current_device()
        props = torch.cuda.get_device_properties(index)
        free, total = torch.cuda.mem_get_info(index)
        return cls("cuda", props.name, (props.major, props.minor), int(free), int(total))

    @property
    def is_gpu(self) -> bool:
        """A CUDA device (the only kind these rules treat as a GPU)."""
        return self.type == "cuda"

    @property
    def supports_bf16(self) -> bool:
        """bf16 tensor cores: a CUDA GPU of compute capability 8.0 or newer."""
        return self.is_gpu and self.capability is not None and tuple(self.capability) >= BF16_CAPABILITY

    def describe(self) -> str:
        if not self.is_gpu:
            return self.type
        cap = ".".join(map(str, self.capability)) if self.capability else "?"
        return f"{self.name or 'cuda'} (compute capability {cap})"


# --------------------------------------------------------------------------- precision


@dataclass(frozen=True)
class Precision:
    """A resolved precision: ``name`` is fp32, bf16 or fp16; ``setting`` what was asked; ``reason`` why."""

    name: str
    setting: str
    reason: str

    @property
    def dtype(self) -> torch.dtype | None:
        """The autocast dtype, None for fp32."""
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.name)

    @property
    def uses_scaler(self) -> bool:
        """fp16 needs a GradScaler against gradient underflow; bf16 has fp32's exponent range and does not."""
        return self.name == "fp16"

    @property
    def accelerate(self) -> str:
        """``mixed_precision`` for accelerate (the Catalyst engine)."""
        return {"fp32": "no"}.get(self.name, self.name)

    @property
    def lightning(self) -> str:
        """``precision`` for a Lightning Trainer."""
        return {"fp32": "32-true", "bf16": "bf16-mixed", "fp16": "16-mixed"}[self.name]

    @property
    def activation_bytes(self) -> int:
        """Bytes per activation value under this precision."""
        return 4 if self.name == "fp32" else 2

    def autocast(self, device_type: str):
        """``torch.autocast`` for inference under this precision (a no-op context for fp32)."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type, dtype=self.dtype)

    def as_dict(self) -> dict:
        return {**asdict(self), "loss_scaler": self.uses_scaler}


def precision_setting(train_cfg: dict) -> str:
    """``train.precision``, with the deprecated ``train.fp16`` (true/false) mapped onto it when set.

    ``fp16: true`` means ``precision: fp16`` (fp16 on a GPU, fp32 on the CPU, as before), ``fp16:
    false`` means ``fp32``. An explicit ``precision`` other than ``auto`` wins over the alias.
    """
    setting = str(train_cfg.get("precision") or "auto").lower()
    legacy = train_cfg.get("fp16")
    if legacy is None:
        return setting
    if isinstance(legacy, str):
        legacy = legacy.strip().lower() in ("1", "true", "yes", "on")
    if setting != "auto":
        warn_once("train.fp16", f"train.fp16 is deprecated and ignored here: train.precision={setting} is set")
        return setting
    mapped = "fp16" if legacy else "fp32"
    warn_once("train.fp16", f"train.fp16 is deprecated; use train.precision (fp16={str(bool(legacy)).lower()} "
                            f"-> precision={mapped}; the default, auto, picks bf16/fp16/fp32 for the device)")
    return mapped


def resolve_precision(setting: str | None, device: DeviceInfo) -> Precision:
    """The precision a run uses on ``device`` for ``setting`` (``auto | fp32 | bf16 | fp16``)."""
    setting = str(setting or "auto").lower()
    if setting not in PRECISIONS:
        raise ConfigError(f"train.precision {setting!r}: choose one of {', '.join(PRECISIONS)}")
    where = device.describe()
    if setting == "auto":
        if not device.is_gpu:
            return Precision("fp32", setting, f"auto: fp32 on {where}")
        if device.supports_bf16:
            return Precision("bf16", setting, f"auto: bf16 autocast, no loss scaler, on {where}")
        return Precision("fp16", setting, f"auto: fp16 autocast with a loss scaler on {where} (no bf16 before 8.0)")
    if setting == "fp32":
        return Precision("fp32", setting, "asked for fp32")
    if setting == "fp16":
        if not device.is_gpu:  # accelerate and GradScaler want a GPU; the old fp16 flag was ignored on the CPU too
            log.warning("train.precision fp16 needs a CUDA GPU; training in fp32 on %s", where)
            return Precision("fp32", setting, f"fp16 asked, but fp16 needs a CUDA GPU: fp32 on {where}")
        return Precision("fp16", setting, f"asked for fp16: autocast with a loss scaler on {where}")
    # bf16
    if device.is_gpu and not device.supports_bf16:
        raise ConfigError(f"train.precision bf16: {where} has no bf16 (needs compute capability 8.0+); "
                          "use auto, fp16 or fp32")
    return Precision("bf16", setting, f"asked for bf16: autocast, no loss scaler, on {where}")


# --------------------------------------------------------------------------- gradient checkpointing


@dataclass(frozen=True)
class MemoryEstimate:
    """Training memory of a transformer encoder + one batch, in bytes (a documented, deliberately rough estimate).

    * Weights, gradients and AdamW's two moments in fp32: 16 bytes per parameter, plus a 2-byte
      low-precision copy per parameter under autocast.
    * Activations kept for backward, per layer: ``s*b*h*(34 + 5*a*s/h)`` bytes with 16-bit
      activations (Korthikanti et al. 2022, "Reducing Activation Recomputation in Large Transformer
      Models", eq. 1), doubled for fp32. ``s`` = max_length (the worst case of a padded batch),
      ``b`` = batch size, ``h`` = hidden size, ``a`` = attention heads. With checkpointing only
      each layer's input (``s*b*h`` values) stays, plus one layer's full activations at a time.
    """

    n_params: int
    batch_size: int
    seq_len: int
    hidden_size: int
    num_layers: int
    num_heads: int
    activation_bytes: int = 4

    @classmethod
    def for_encoder(cls, encoder: torch.nn.Module, batch_size: int, seq_len: int, activation_bytes: int = 4) -> MemoryEstimate:
        """Read sizes from a Hugging Face encoder's config (BERT-style attribute names, with fallbacks)."""
        cfg = encoder.config
        hidden = int(getattr(cfg, "hidden_size", None) or getattr(cfg, "d_model", 768))
        layers = int(getattr(cfg, "num_hidden_layers", None) or getattr(cfg, "num_layers", 12))
        heads = int(getattr(cfg, "num_attention_heads", None) or getattr(cfg, "num_heads", max(1, hidden // 64)))
        n_params = sum(p.numel() for p in encoder.parameters())
        return cls(n_params, batch_size, seq_len, hidden, layers, heads, activation_bytes)

    def layer_activation_bytes(self) -> float:
        s, b, h, a = self.seq_len, self.batch_size, self.hidden_size, self.num_heads
        return s * b * h * (34 + 5 * a * s / h) * self.activation_bytes / 2

    def state_bytes(self) -> float:
        return self.n_params * (16 + (2 if self.activation_bytes < 4 else 0))

    def training_bytes(self, checkpointing: bool = False) -> int:
        """Estimated peak bytes of a training step, with or without gradient checkpointing."""
        layer = self.layer_activation_bytes()
        if checkpointing:
            acts = self.num_layers * self.seq_len * self.batch_size * self.hidden_size * self.activation_bytes + layer
        else:
            acts = self.num_layers * layer
        return int(self.state_bytes() + acts)


@dataclass(frozen=True)
class Checkpointing:
    """A resolved gradient-checkpointing choice and why; the estimate's numbers when ``auto`` measured."""

    enabled: bool
    setting: str
    reason: str
    need_bytes: int | None = None
    free_bytes: int | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def resolve_checkpointing(setting, device: DeviceInfo, estimate: MemoryEstimate | None = None,
                          headroom: float = MEMORY_HEADROOM) -> Checkpointing:
    """Gradient checkpointing on or off for ``setting`` (``auto | true | false``) on ``device``.

    ``true``/``false`` are obeyed on every device. ``auto`` is off on the CPU (no memory to save
    that is worth a third more compute) and, on a GPU, on only when ``estimate.training_bytes()``
    exceeds ``headroom`` x the free memory (:attr:`DeviceInfo.free_memory`).
    """
    setting = auto_bool("model.gradient_checkpointing", setting)
    if setting == "true":
        return Checkpointing(True, setting, "asked for")
    if setting == "false":
        return Checkpointing(False, setting, "asked off")
    if not device.is_gpu:
        return Checkpointing(False, setting, f"auto: off on {device.describe()}")
    if estimate is None or device.free_memory is None:
        return Checkpointing(False, setting, "auto: off (no memory estimate)")
    need, free = estimate.training_bytes(), int(device.free_memory)
    gib = 2**30
    if need > headroom * free:
        return Checkpointing(True, setting, f"auto: on, encoder + batch need ~{need / gib:.1f} GiB > "
                                            f"{headroom:.0%} of {free / gib:.1f} GiB free", need, free)
    return Checkpointing(False, setting, f"auto: off, encoder + batch need ~{need / gib:.1f} GiB, "
                                         f"{free / gib:.1f} GiB free", need, free)


# --------------------------------------------------------------------------- prediction batches


def predict_batch_size(cpu, gpu, device: DeviceInfo, bytes_per_row: float | None = None,
                       share: float = PREDICT_MEMORY_SHARE, cap: int = PREDICT_MAX_BATCH) -> int:
    """The prediction batch size for ``device``: ``cpu`` off a GPU; ``gpu`` on one (``"auto"``: from free memory).

    ``auto`` is the largest power of two whose batch, at ``bytes_per_row`` each, fits in ``share``
    of the free GPU memory, between 64 and ``cap``; 256 when nothing is known about the memory.
    """
    value = gpu if device.is_gpu else cpu
    if value in (None, "", "auto"):
        if not device.is_gpu:
            return 64
        if not bytes_per_row or device.free_memory is None:
            return 256
        rows = share * device.free_memory / bytes_per_row
        return int(min(cap, max(64, 2 ** int(math.floor(math.log2(max(rows, 1)))))))
    try:
        size = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"prediction batch size {value!r}: expected a positive integer or auto") from None
    if size < 1:
        raise ConfigError(f"prediction batch size must be at least 1, got {size}")
    return size
