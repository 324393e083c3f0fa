"""What every comparison page shares: the inline CSS and matplotlib figures without pyplot state (report, leaderboard)."""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

CSS = ("body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1100px;"
       "padding:0 1em;color:#222}table{border-collapse:collapse;margin:1em 0;font-size:14px}"
       "th,td{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}th{background:#f3f3f3}"
       "td.num{text-align:right;font-variant-numeric:tabular-nums}img{max-width:100%;height:auto;display:block;"
       "margin:0.5em 0}.note{color:#666;font-style:italic}code{background:#f5f5f5;padding:0 3px}"
       ".text{max-width:560px;white-space:pre-wrap;word-break:break-word}")
TEXT_CHARS = 500
DPI = 100


def figure(nrows: int = 1, ncols: int = 1, figsize: tuple[float, float] = (8, 5), width_ratios=None, height_ratios=None):
    """A matplotlib Figure (no pyplot) with a constrained layout, and its axes (one, or an array)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, layout="constrained")
    kw = {"width_ratios": list(width_ratios)} if width_ratios else {}
    if height_ratios:
        kw["height_ratios"] = list(height_ratios)
    axes = fig.subplots(nrows, ncols, gridspec_kw=kw or None, squeeze=True)
    return fig, axes


def heatmap_panel(fig, ax, values: np.ndarray, names: Sequence[str], rotation: int, fmt: str, cmap: str,
                  annotate: bool = True) -> None:
    """One panel of a count (``fmt="d"``) or share (``".2f"``, scale 0-1) heat map, cells annotated when ``annotate``."""
    k = len(names)
    font = 11 if k <= 6 else 9 if k <= 12 else 7
    vmax = (float(values.max()) if values.size and values.max() > 0 else 1.0) if fmt == "d" else 1.0
    image = ax.imshow(values, cmap=cmap, vmin=0, vmax=vmax)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    if annotate:
        for i in range(k):
            for j in range(k):
                v = values[i, j]
                ax.text(j, i, format(int(v) if fmt == "d" else v, fmt), ha="center", va="center", fontsize=font,
                        color="white" if v > 0.55 * vmax else "black")
    ax.set_xticks(range(k), names, rotation=rotation, ha="right" if rotation else "center")
    ax.set_yticks(range(k), names)


def save_figure(fig, path: str | Path, dpi: int = DPI) -> Path:
    """Save ``fig`` as PNG atomically (nothing clipped: tight bounding box); returns the path."""
    from textclf.core.atomic import atomic_open

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path, "wb", encoding=None) as fh:
        fig.savefig(fh, format="png", dpi=dpi, bbox_inches="tight", pad_inches=0.15)
    return path


def short_label(label: str, width: int = 24) -> str:
    """A label shortened to ``width`` characters with an ellipsis (tick labels stay readable)."""
    label = str(label)
    return label if len(label) <= width else label[: width - 1] + "\u2026"


def _tick_labels(labels: Sequence[str]) -> tuple[list[str], int]:
    names = [short_label(label) for label in labels]
    rotation = 0 if sum(len(n) for n in names) <= 80 and max(map(len, names), default=0) <= 14 else 40
    return names, rotation


def _num(v: float, spec: str = ".4f") -> str:
    return f'<td class="num">{format(v, spec)}</td>'


def _shorten(text: str, n: int = TEXT_CHARS) -> str:
    return text if len(text) <= n else text[: n - 1] + "\u2026"


def figure_sections(keys: Sequence[str], titles: Mapping[str, str], captions: Mapping[str, str],
                    figures: Mapping[str, str], skipped: Mapping[str, str]) -> list[str]:
    """HTML of a report's figure sections, in ``keys`` order: a heading, then the image and its caption or why it was skipped."""
    esc = html.escape
    sections = []
    for key in keys:
        sections.append(f"<h2>{titles[key]}</h2>")
        if key in figures:
            sections.append(f'<img src="{esc(figures[key])}" alt="{esc(titles[key])}"><p>{esc(captions[key])}</p>')
        else:
            sections.append(f'<p class="note">Skipped: {esc(skipped.get(key, "not applicable"))}.</p>')
    return sections


def probability_text(probabilities: Mapping) -> str:
    """An error row's top probabilities as escaped ``label: 0.123`` pairs."""
    return ", ".join(f"{html.escape(str(k))}: {v:.3f}" for k, v in probabilities.items())
