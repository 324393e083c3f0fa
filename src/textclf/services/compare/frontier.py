"""The speed/quality frontier: predict docs/s (log axis) against macro-F1 for several models on one test set.

``textclf report`` draws it (``frontier.png``) for the reported model, its members when it is a
cascade, and every ``--frontier MODEL_DIR``; :func:`frontier_board` measures them all with the
leaderboard's own :func:`textclf.services.compare.leaderboard.measure` (same file, same batches),
and :func:`plot_frontier` marks the Pareto-optimal models (no other is both faster and better)
and joins them with a step line.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from textclf.services.compare.plots import figure, save_figure

#: bootstrap resamples of the frontier's board (its CI is not drawn; the leaderboard shows it)
FRONTIER_BOOT = 200


def cascade_members(model_dir: Path, meta: dict, others: Sequence[str | Path] = ()) -> list[Path]:
    """A cascade's student and teacher directories (inside it), or [] for another kind.

    A member copied from one of ``others`` (its ``source`` in meta.json) is left out: that
    directory is on the frontier already.
    """
    if meta.get("kind") != "cascade":
        return []
    from textclf.core.integrity import inside_path

    known = {Path(o).resolve() for o in others}
    return [inside_path(model_dir, r.get("path"), "members.path") for r in meta.get("members") or []
            if not (r.get("source") and Path(r["source"]).resolve() in known)]


def frontier_board(model_dirs: Sequence[str | Path], data_path: str | Path, data_format: str | None = None,
                   text_column: str = "text", label_column: str = "label", batch_size: int = 1024,
                   thresholds: bool = True) -> dict:
    """The leaderboard of ``model_dirs`` on ``data_path`` (in this process; every directory once)."""
    from textclf.services.compare.leaderboard import leaderboard

    unique = list(dict.fromkeys(Path(d).resolve() for d in model_dirs))
    return leaderboard(unique, data_path, data_format, text_column, label_column, FRONTIER_BOOT, batch_size=batch_size,
                       thresholds=thresholds, isolate=False)


def pareto(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the ``(speed, quality)`` points no other point beats on both (ties kept), fastest first."""
    keep = [i for i, (s, q) in enumerate(points)
            if not any((s2 >= s and q2 >= q) and (s2 > s or q2 > q) for s2, q2 in points)]
    return sorted(keep, key=lambda i: -points[i][0])


def plot_frontier(rows: Sequence[dict], path: str | Path, title: str = "", metric: str = "macro_f1") -> Path | None:
    """docs/s (log x) against ``metric`` of every row with a speed; the Pareto frontier as a step line. None: no row."""
    rows = [r for r in rows if r.get("docs_per_s")]
    if not rows:
        return None
    speed = np.array([float(r["docs_per_s"]) for r in rows])
    quality = np.array([float(r[metric]) for r in rows])
    front = pareto(list(zip(speed, quality, strict=True)))
    fig, ax = figure(figsize=(7.5, 4.8))
    colors = {"cascade": "#C44E52", "ensemble": "#8172B2"}
    for r, s, q in zip(rows, speed, quality, strict=True):
        ax.scatter([s], [q], s=46, color=colors.get(r.get("kind"), "#4C72B0"), zorder=3,
                   marker="D" if r.get("kind") == "cascade" else "o")
        ax.annotate(f"{r['name']} ({r.get('kind')})", (s, q), textcoords="offset points", xytext=(5, 4), fontsize=8)
    fx, fy = speed[front], quality[front]
    ax.step(fx, fy, where="post", color="#55A868", linewidth=1.2, label="frontier (no model both faster and better)",
            zorder=2)
    ax.set_xscale("log")
    lo, hi = speed.min(), speed.max()
    ax.set_xlim(lo / 2, hi * 3)
    pad = max(0.01, (quality.max() - quality.min()) * 0.15)
    ax.set_ylim(quality.min() - pad, min(1.0, quality.max() + pad))
    ax.set_xlabel("predict docs/s (log scale)")
    ax.set_ylabel(metric.replace("_", "-"))
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    ax.set_title(title or "Speed/quality frontier", fontsize=10)
    return save_figure(fig, path)
