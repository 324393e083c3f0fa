"""Catalyst 22.4 callbacks for textclf's torch runs.

* :class:`FBetaCallback` - accuracy and macro/micro/weighted F-beta (F1 and F0.5 by default)
  from :func:`textclf.core.metrics.classification_metrics`, computed on predictions gathered from
  every process (repeats that DDP padding adds are dropped) and logged per loader.
* :class:`AccumulatedBackwardCallback` / :class:`OptimizerStepCallback` - loss scaled by the
  accumulation steps, backward through the engine (fp16 aware), then at every accumulation
  boundary (and at the end of the loader) gradient clipping, optimizer step and a per-step
  scheduler step.
* :class:`BestCheckpointCallback` - the selected metric decides the best checkpoint; a last
  checkpoint (model, optimizer, scheduler, epoch, best score, history) lets a run resume.
  Only the main process writes files.
* :class:`ReportCallback` - after every epoch, the valid score goes to a search's pruner
  (``context.report`` of :mod:`textclf.core.fit_flow`), which may stop the trial.
* :class:`EpochLineLogger` - the console logger: one line per epoch with the main metrics of
  every loader rounded to 4 digits (everything else goes to TensorBoard and CSV only).

Nothing here waits for the GPU per batch: predictions, losses and gradient norms stay on the
device until a loader ends, so CUDA work queues up without a sync on every step.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Sequence
from pathlib import Path

import torch
from catalyst.core.callback import (
    Callback,
    CallbackOrder,
    IBackwardCallback,
    ICheckpointCallback,
    IMetricCallback,
    IOptimizerCallback,
    ISchedulerCallback,
)
from catalyst.core.logger import ILogger

from textclf.core.atomic import atomic_replace_file
from textclf.core.integrity import load_checkpoint
from textclf.core.metrics import DEFAULT_BETAS, beta_name, classification_metrics, is_minimized, multilabel_metrics

log = logging.getLogger(__name__)

class FBetaCallback(IMetricCallback):
    """Accuracy and F-beta scores of a loader's predictions, written to ``runner.loader_metrics``.

    After every batch it keeps ``(index, predicted class, true class)`` from ``runner.batch``
    (``index_key``, ``logits_key``, ``target_key``). On loader end the triples of every process
    are gathered (``torch.distributed.all_gather_object``) and de-duplicated by dataset index
    (DDP samplers pad the last batches with repeats), then ``accuracy`` and
    ``{macro,micro,weighted}_f{beta}`` for each beta are set: exactly the values of
    :func:`textclf.core.metrics.classification_metrics` on the same predictions.
    """

    def __init__(self, labels: Sequence[str], betas: Sequence[float] = DEFAULT_BETAS,
                 logits_key: str = "logits", target_key: str = "targets", index_key: str = "index", threshold: float = 0.5):
        super().__init__()
        self.threshold = threshold  # multi-label targets (0/1 rows): a label is predicted at sigmoid >= threshold
        self.multilabel = False
        self.labels = list(labels)
        self.betas = tuple(betas)
        self.logits_key = logits_key
        self.target_key = target_key
        self.index_key = index_key
        self._rows: list[torch.Tensor] = []
        self.last_metrics: dict[str, dict] = {}

    def on_loader_start(self, runner) -> None:
        self._rows = []

    def on_batch_end(self, runner) -> None:
        batch = runner.batch
        logits, targets = batch[self.logits_key].detach(), batch[self.target_key].detach()
        self.multilabel = targets.ndim == 2
        if self.multilabel:  # one row: index, then the predicted 0/1 row, then the gold one
            preds = (torch.sigmoid(logits.float()) >= self.threshold).long()
            self._rows.append(torch.cat([batch[self.index_key].detach().to(preds.device)[:, None], preds,
                                         targets.to(preds.device).long()], dim=1))
            return
        preds = logits.argmax(dim=-1)
        self._rows.append(torch.stack([batch[self.index_key].detach().to(preds.device), preds,
                                       targets.to(preds.device)], dim=1))  # no sync: stays put

    def gathered(self) -> tuple[list[int], list[int]]:
        """(predicted, true) class ids of every distinct example seen by any process, in dataset-index order."""
        rows = torch.cat(self._rows).cpu().tolist() if self._rows else []
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            parts: list = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(parts, rows)
            rows = [row for part in parts for row in part]
        unique = {}
        for index, *rest in rows:
            if self.multilabel:  # the two 0/1 halves as label sets
                half = len(rest) // 2
                rest = [tuple(self.labels[j] for j, bit in enumerate(part) if bit) for part in (rest[:half], rest[half:])]
            unique.setdefault(index, tuple(rest))
        ordered = [unique[i] for i in sorted(unique)]
        return [p for p, _ in ordered], [t for _, t in ordered]

    def compute(self) -> dict:
        """The full :func:`classification_metrics` dict of the predictions seen since the loader started."""
        preds, targets = self.gathered()
        if self.multilabel:  # gathered() gave label sets
            return multilabel_metrics(targets, preds, self.labels, self.betas)
        return classification_metrics([self.labels[t] for t in targets], [self.labels[p] for p in preds], self.labels,
                                      self.betas)

    def on_loader_end(self, runner) -> None:
        metrics = self.compute()
        self.last_metrics[runner.loader_key] = metrics
        runner.loader_metrics["accuracy"] = metrics["accuracy"]
        for avg in ("macro", "micro", "weighted"):
            for beta in self.betas:
                key = f"{avg}_{beta_name(beta)}"
                runner.loader_metrics[key] = metrics[key]


class AccumulatedBackwardCallback(IBackwardCallback):
    """Backward of ``runner.batch_metrics[metric_key] / accumulation_steps`` through the engine (handles fp16 scaling)."""

    def __init__(self, metric_key: str = "loss", accumulation_steps: int = 1):
        super().__init__()
        self.metric_key = metric_key
        self.accumulation_steps = max(1, int(accumulation_steps))

    def on_batch_end(self, runner) -> None:
        if runner.is_train_loader:
            runner.engine.backward(runner.batch_metrics[self.metric_key] / self.accumulation_steps)


class OptimizerStepCallback(IOptimizerCallback, ISchedulerCallback):
    """Every ``accumulation_steps`` train batches (and at the loader's last batch): clip, step, schedule, zero.

    It owns the per-step learning-rate schedule too (hence also an ``ISchedulerCallback``):
    ``runner.scheduler.step()`` follows every optimizer step, so linear warm-up/decay counts
    optimizer steps, not batches.
    """

    def __init__(self, accumulation_steps: int = 1, max_grad_norm: float | None = 1.0):
        Callback.__init__(self, order=CallbackOrder.Optimizer)
        self.accumulation_steps = max(1, int(accumulation_steps))
        self.max_grad_norm = max_grad_norm
        self._counter = 0

    def on_loader_start(self, runner) -> None:
        self._counter = 0

    def on_batch_end(self, runner) -> None:
        if not runner.is_train_loader:
            return
        self._counter += 1
        last = runner.loader_batch_step >= runner.loader_batch_len * runner.engine.num_processes
        if self._counter % self.accumulation_steps and not last:
            return
        if self.max_grad_norm:
            norm = runner.engine.clip_grad_norm_(runner.model.parameters(), self.max_grad_norm)
            if norm is not None:  # a tensor: float() here would wait for the GPU on every step
                runner.batch_metrics["grad_norm"] = norm.detach() if torch.is_tensor(norm) else norm
        runner.optimizer.step()
        if runner.scheduler is not None:
            runner.scheduler.step()
        runner.optimizer.zero_grad(set_to_none=True)
        runner.batch_metrics["lr"] = runner.optimizer.param_groups[0]["lr"]

    def on_loader_end(self, runner) -> None:
        if runner.is_train_loader:
            runner.loader_metrics["lr"] = runner.optimizer.param_groups[0]["lr"]


def optimizer_steps(batches_per_epoch: int, epochs: int, accumulation_steps: int) -> int:
    """Optimizer steps :class:`OptimizerStepCallback` takes in ``epochs`` epochs (for the LR schedule)."""
    return max(1, math.ceil(batches_per_epoch / max(1, accumulation_steps)) * epochs)


class BestCheckpointCallback(ICheckpointCallback):
    """Keep ``best.pth`` (model weights at the best ``valid`` score) and ``last.pth`` (everything needed to resume).

    ``best.pth`` holds the unwrapped model's ``state_dict``; ``last.pth`` a dict with ``model``,
    ``optimizer``, ``scheduler``, ``epoch``, ``best_score``, ``best_epoch``, ``history``. With
    ``resume=True`` an existing ``last.pth`` is loaded at experiment start and training goes on
    from the next epoch. ``history`` lists every epoch's loader metrics.

    Early stopping lives here too, so it survives a resume: after ``patience`` epochs without
    improvement (0 disables it) ``runner.need_early_stop`` is set and ``stopped_early`` recorded.
    """

    def __init__(self, logdir: str | Path, metric_key: str, loader_key: str = "valid", resume: bool = False,
                 patience: int = 0, min_delta: float = 1e-6):
        super().__init__()
        self.logdir = Path(logdir)
        self.metric_key = metric_key
        self.loader_key = loader_key
        self.minimize = is_minimized(metric_key)
        self.resume = resume
        self.min_delta = min_delta
        self.patience = patience
        self.stopped_early = False
        self.best_score: float | None = None
        self.best_epoch: int | None = None
        self.history: list[dict] = []
        self.resumed_from_epoch = 0

    @property
    def best_path(self) -> Path:
        """Where the best weights are stored."""
        return self.logdir / "best.pth"

    @property
    def last_path(self) -> Path:
        """Where the resumable state is stored."""
        return self.logdir / "last.pth"

    def _better(self, score: float) -> bool:
        if self.best_score is None:
            return True
        if self.minimize:
            return score < self.best_score - self.min_delta
        return score > self.best_score + self.min_delta

    def on_experiment_start(self, runner) -> None:
        self.best_score, self.best_epoch, self.history, self.stopped_early = None, None, [], False
        if not (self.resume and self.last_path.exists()):
            return
        state = load_checkpoint(self.last_path)  # weights_only: a planted pickle does not run
        runner.engine.unwrap_model(runner.model).load_state_dict(state["model"])
        runner.optimizer.load_state_dict(state["optimizer"])
        if runner.scheduler is not None and state.get("scheduler") is not None:
            runner.scheduler.load_state_dict(state["scheduler"])
        runner.epoch_step = state["epoch"]
        self.best_score, self.best_epoch = state["best_score"], state["best_epoch"]
        self.history = state["history"]
        self.resumed_from_epoch = state["epoch"]
        self.stopped_early = runner.need_early_stop = bool(state.get("stopped_early", False))
        log.info("resumed from %s at epoch %d (best %s=%.4f at epoch %s)", self.last_path, state["epoch"],
                 self.metric_key, self.best_score, self.best_epoch)

    def _save(self, runner, obj, path: Path) -> None:
        atomic_replace_file(lambda tmp: torch.save(obj, tmp), path)

    def on_epoch_end(self, runner) -> None:
        score = float(runner.epoch_metrics[self.loader_key][self.metric_key])
        self.history.append({"epoch": runner.epoch_step,
                             **{k: dict(v) for k, v in runner.epoch_metrics.items() if not k.startswith("_")}})
        improved = self._better(score)
        if improved:
            self.best_score, self.best_epoch = score, runner.epoch_step
        if self.patience and runner.epoch_step - self.best_epoch >= self.patience:
            self.stopped_early = runner.need_early_stop = True
            log.info("early stop: no %s improvement for %d epoch(s)", self.metric_key, self.patience)
        runner.engine.wait_for_everyone()
        if runner.engine.is_main_process:
            model = runner.engine.unwrap_model(runner.model)
            weights = {k: v.detach().cpu() for k, v in model.state_dict().items()}
            if improved:
                self._save(runner, weights, self.best_path)
            state = {"model": weights, "optimizer": runner.optimizer.state_dict(),
                     "scheduler": runner.scheduler.state_dict() if runner.scheduler is not None else None,
                     "epoch": runner.epoch_step, "best_score": self.best_score, "best_epoch": self.best_epoch,
                     "history": copy.deepcopy(self.history),
                     "stopped_early": self.stopped_early}
            self._save(runner, state, self.last_path)
        runner.engine.wait_for_everyone()
        log.info("epoch %d: valid %s=%.4f%s", runner.epoch_step, self.metric_key, score, " (best)" if improved else "")


class ReportCallback(Callback):
    """After every epoch (and after the checkpoint), ``report(valid[metric], offset + epoch)``: a search trial's pruning hook.

    ``report`` is :meth:`textclf.core.fit_flow.FitContext.report`; it raises ``optuna.TrialPruned``
    when the pruner gives up on the trial, which Catalyst re-raises. ``offset`` counts the epochs
    of earlier stages, so the steps of a two-stage run keep increasing.
    """

    def __init__(self, report, metric: str, loader_key: str = "valid", offset: int = 0):
        super().__init__(order=CallbackOrder.External)
        self.report = report
        self.metric = metric
        self.loader_key = loader_key
        self.offset = offset

    def on_epoch_end(self, runner) -> None:
        value = runner.epoch_metrics.get(self.loader_key, {}).get(self.metric)
        if value is not None:
            self.report(float(value), self.offset + runner.epoch_step)


class EpochLineLogger(ILogger):
    """Catalyst console logger: one line per epoch, the main metrics of every loader, 4 digits.

    ``stage epoch 2/3: train loss 0.3121 accuracy 0.8712 | valid loss 0.3320 accuracy 0.8610
    macro_f1 0.8598 macro_f0.5 0.8603 (41.2 s)``. Micro/weighted averages, learning rate and
    gradient norms stay in TensorBoard and CSV. The epoch's seconds come from
    ``runner.epoch_seconds`` when the runner sets it.
    """

    KEYS = ("loss", "accuracy", "macro_f1", "macro_f0.5")

    def __init__(self, stage: str = "", keys: tuple[str, ...] = KEYS, extra: str | None = None, stream=None):
        super().__init__(log_batch_metrics=False, log_epoch_metrics=True)
        self.stage = stage
        self.keys = tuple(dict.fromkeys((*keys, *([extra] if extra else []))))
        self.stream = stream
        self.lines: list[str] = []

    def format(self, metrics: dict, epoch: int, num_epochs: int, seconds: float | None = None) -> str:
        parts = []
        for loader, values in metrics.items():
            if loader.startswith("_") or not isinstance(values, dict):
                continue
            shown = " ".join(f"{k} {float(values[k]):.4f}" for k in self.keys if k in values)
            if shown:
                parts.append(f"{loader} {shown}")
        head = f"{self.stage + ' ' if self.stage else ''}epoch {epoch}/{num_epochs}: "
        return head + " | ".join(parts) + (f" ({seconds:.1f} s)" if seconds is not None else "")

    def log_metrics(self, metrics: dict, scope: str, runner) -> None:
        if scope != "epoch":
            return
        line = self.format(metrics, runner.epoch_step, runner.num_epochs, getattr(runner, "epoch_seconds", None))
        self.lines.append(line)
        print(line, file=self.stream, flush=True)
