"""One stage or two: the ``two_stage: auto | true | false`` choice of the BERT family.

Stage 1 trains on a class-balanced downsample of train (:func:`textclf.core.data.balanced_downsample`)
so that the head first sees every class equally often; stage 2 trains on all of train from stage
1's best weights. On balanced labels the downsample is nearly all of train, and the second stage
only restarts the warm-up/decay schedule, which cost macro-F1 in the five-seed CPU benchmark
(README, "Speed and quality on the CPU"). So ``auto`` runs two stages only when the downsample
leaves out at least ``stage1.auto_min_dropped`` (default 0.5: a 3:1 imbalance or worse) of the training
rows, and otherwise one stage of ``stage1.epochs + stage2.epochs`` epochs at ``stage2.lr``.
``true``/``false`` are obeyed. The 0.5 comes from the four-dataset, five-seed recipe benchmark
(README, "The BERT recipe across four datasets"): at 38-40 % left out (tweets_sentiment, spamassassin)
two stages lost on one and won on the other, and one stage everywhere had the best mean.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from textclf.core.config import auto_bool
from textclf.core.data import balanced_downsample
from textclf.core.errors import ConfigError
from textclf.core.long_text import long_text_settings
from textclf.core.torch_common import LR_SCALING


@dataclass(frozen=True)
class StagePlan:
    """The resolved stage choice: whether stage 1 runs, the balanced downsample's size, stage 2's epochs, and why."""

    two_stage: bool
    setting: str
    reason: str
    balanced_rows: int
    train_rows: int
    stage2_epochs: int

    @property
    def dropped_share(self) -> float:
        """Share of the training rows that the class-balanced downsample (stage 1's data) leaves out."""
        return 1.0 - self.balanced_rows / self.train_rows if self.train_rows else 0.0

    def as_dict(self) -> dict:
        """The plan for ``meta.json`` (``training.stage_plan``)."""
        return {**asdict(self), "dropped_share": round(self.dropped_share, 4)}


def stage1_indices(cfg: dict, train_labels: Sequence[str]) -> list[int]:
    """Rows of train that stage 1 trains on (the class-balanced downsample for the run's seed)."""
    return balanced_downsample(train_labels, cfg["seed"], cfg["stage1"]["per_class"])


def plan_stages(cfg: dict, train_labels: Sequence, multilabel: bool = False) -> StagePlan:
    """Resolve ``two_stage`` for these training labels (see the module docstring for the rule).

    Multi-label data (label sets) trains in one stage: a class-balanced downsample needs one class a
    text, so ``two_stage: true`` is a one-line ConfigError and ``auto`` picks one stage.
    """
    setting = auto_bool("two_stage", cfg["two_stage"])
    s1, s2 = cfg["stage1"], cfg["stage2"]
    if multilabel:
        if setting == "true":
            raise ConfigError("two_stage true: stage 1's class-balanced downsample needs one class a text, and this is "
                              "multi-label data; set two_stage auto or false (one stage)")
        n = len(train_labels)
        epochs = s2["epochs"] if setting == "false" else s1["epochs"] + s2["epochs"]
        return StagePlan(False, setting, f"multi-label data: one stage of {epochs} epochs (no class-balanced downsample)",
                         n, n, epochs)
    min_dropped = float(s1["auto_min_dropped"])
    if not 0.0 <= min_dropped <= 1.0:
        raise ConfigError(f"stage1.auto_min_dropped must be between 0 and 1, got {min_dropped}")
    n = len(train_labels)
    kept = len(stage1_indices(cfg, train_labels))
    dropped = 1.0 - kept / n if n else 0.0
    share = f"the balanced downsample keeps {kept} of {n} rows ({dropped:.1%} left out)"
    if setting == "true":
        return StagePlan(True, setting, f"asked for; {share}", kept, n, s2["epochs"])
    if setting == "false":
        return StagePlan(False, setting, f"asked off; {share}", kept, n, s2["epochs"])
    if dropped >= min_dropped:
        return StagePlan(True, setting, f"auto: two stages, {share} >= stage1.auto_min_dropped {min_dropped:g}",
                         kept, n, s2["epochs"])
    epochs = s1["epochs"] + s2["epochs"]
    return StagePlan(False, setting, f"auto: one stage of {epochs} epochs (stage1 + stage2), {share} < "
                                     f"stage1.auto_min_dropped {min_dropped:g}", kept, n, epochs)


def staged_config(cfg: dict, plan: StagePlan) -> dict:
    """The config the stages train with: ``two_stage`` as a boolean and stage 2's epochs from ``plan``."""
    out = copy.deepcopy(cfg)
    out["two_stage"] = plan.two_stage
    out["stage2"]["epochs"] = plan.stage2_epochs
    return out


def check_config(cfg: dict) -> None:
    """Refuse settings that cannot train with a one-line ConfigError (``two_stage`` as given, or resolved to a bool)."""
    m, t = cfg["model"], cfg["train"]
    if m["max_length"] < 8:
        raise ConfigError(f"model.max_length must be at least 8, got {m['max_length']}")
    stages = ("stage1", "stage2") if auto_bool("two_stage", cfg["two_stage"]) == "true" else ("stage2",)
    for stage in stages:
        if cfg[stage]["epochs"] < 1 or cfg[stage]["lr"] <= 0:
            raise ConfigError(f"{stage}.epochs must be >= 1 and {stage}.lr > 0 (got {cfg[stage]['epochs']}, {cfg[stage]['lr']})")
    if t["accumulation_steps"] < 1 or t["batch_size"] < 1 or t["base_batch_size"] < 1:
        raise ConfigError("train.batch_size, train.base_batch_size and train.accumulation_steps must be >= 1")
    long_text_settings(m)  # long_text, stride, max_chunks, chunk_pooling
    if str(t["lr_scaling"]).lower() not in LR_SCALING:
        raise ConfigError(f"train.lr_scaling {t['lr_scaling']!r}: choose one of {', '.join(LR_SCALING)}")
    if not 0.0 <= float(m["dropout"]) < 1.0 or float(cfg["loss"]["gamma"]) < 0:
        raise ConfigError(f"model.dropout must be in [0, 1) and loss.gamma >= 0 (got {m['dropout']}, {cfg['loss']['gamma']})")
