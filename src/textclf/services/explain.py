"""``textclf explain``: token attributions toward a label, for any model directory.

The method is the family's own when it registers one (``Family.explainer``: captum integrated
gradients for the BiLSTM, exact coefficient x feature contributions for a linear TF-IDF pipeline,
see :mod:`textclf.core.explanation`), else **occlusion**: every word is left out in turn and the
drop in the target label's probability is its score. Occlusion needs nothing but
``predict_proba``, so it explains every family, ensembles, plug-ins and ONNX backends; all the
variants of a batch of texts go through one ``predict_proba`` call.

Nothing here knows a family: the choice goes through the registry.
"""

from __future__ import annotations

import html
import json
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np

from textclf.core.errors import ConfigError
from textclf.core.explanation import Attribution, Explanation, join_without, words

METHODS = ("auto", "occlusion")
#: at most this many texts (originals + variants) go to one predict_proba call
MAX_VARIANTS = 4096


def family_explainer(predictor) -> Callable | None:
    """The explainer registered by the predictor's family (``Family.explainer``), or None."""
    from textclf.core.registry import all_families

    family = all_families().get(getattr(predictor, "kind", None))
    return None if family is None else family.explainer_fn()


def target_indices(predictor, proba: np.ndarray, label: str | None) -> list[int]:
    """The class index to explain for every row: ``label``'s, or the predicted one (multi-label: the most probable)."""
    labels = list(predictor.labels)
    if label is not None:
        if label not in labels:
            raise ConfigError(f"--label {label!r} is not a label of this model; labels: {', '.join(map(str, labels))}")
        return [labels.index(label)] * len(proba)
    if len(proba) == 0:
        return []
    if getattr(predictor, "multilabel", False):
        return [int(i) for i in np.argmax(proba, axis=1)]
    return [int(i) for i in predictor.decide(proba)]


def occlusion(predictor, texts: Sequence[str], targets: Sequence[int], base: np.ndarray | None = None) -> list[Attribution]:
    """Leave-one-word-out: score of word i = p(target | text) - p(target | text without word i).

    The variants of as many texts as fit in :data:`MAX_VARIANTS` go through one ``predict_proba`` call.
    ``base`` (optional) holds the probabilities of the full texts when the caller has them.
    """
    tokens = [words(t) for t in texts]
    out: list[Attribution] = []
    start = 0
    while start < len(texts):
        stop, size = start, 0
        while stop < len(texts) and (stop == start or size + len(tokens[stop]) + 1 <= MAX_VARIANTS):
            size += len(tokens[stop]) + 1
            stop += 1
        variants = [join_without(tokens[i], {j}) for i in range(start, stop) for j in range(len(tokens[i]))]
        full = list(texts[start:stop]) if base is None else []
        proba = predictor.predict_proba(full + variants) if (full or variants) else np.zeros((0, len(predictor.labels)))
        full_p = proba[:len(full)] if base is None else base[start:stop]
        pos = len(full)
        for k, i in enumerate(range(start, stop)):
            n = len(tokens[i])
            p0 = float(full_p[k, targets[i]])
            scores = [p0 - float(p) for p in proba[pos:pos + n, targets[i]]]
            out.append(Attribution(tokens[i], scores, "occlusion"))
            pos += n
        start = stop
    return out


def explain_texts(predictor, texts: Sequence[str], label: str | None = None, method: str = "auto") -> list[Explanation]:
    """Explain every text toward ``label`` (None: the predicted label) with ``method`` (``auto``: the family's, else occlusion)."""
    if method not in METHODS:
        raise ConfigError(f"--method {method!r}: choose one of {', '.join(METHODS)}")
    texts = list(texts)
    if not texts:
        target_indices(predictor, np.zeros((0, len(predictor.labels))), label)  # an unknown label is still an error
        return []
    proba = np.asarray(predictor.predict_proba(texts), dtype=np.float64)
    targets = target_indices(predictor, proba, label)
    attributions = None
    hook = family_explainer(predictor) if method == "auto" else None
    if hook is not None:
        attributions = hook(predictor, texts, targets)
    if attributions is None:
        attributions = occlusion(predictor, texts, targets, proba)
    predicted = predictor.labels_of(predictor.decide(proba))
    labels = predictor.labels
    out = []
    for i, (text, attribution) in enumerate(zip(texts, attributions, strict=True)):
        shown = predicted[i]
        if isinstance(shown, tuple):
            shown = predictor.label_separator.join(shown)
        out.append(Explanation(text, labels[targets[i]], shown, float(proba[i, targets[i]]), attribution))
    return out


def explain_file(predictor, input_path: str | Path, output_path: str | Path, label: str | None = None,
                 method: str = "auto", input_format: str | None = None, text_column: str = "text",
                 batch_size: int = 64) -> int:
    """Explain every record of ``input_path`` into ``output_path`` (JSONL, line i for record i, written atomically)."""
    from textclf.core.data import batched, check_has_records, iter_texts, resolve_format
    from textclf.core.tempfiles import atomic_output

    reader = resolve_format(input_path, input_format, "texts")
    n = 0
    with atomic_output(output_path) as fh:
        for batch in batched(iter_texts(input_path, reader.name, text_column), batch_size):
            for explanation in explain_texts(predictor, batch, label, method):
                fh.write(json.dumps(explanation.to_json(), ensure_ascii=False) + "\n")
                n += 1
        check_has_records(input_path, n)  # an empty input is refused, and nothing is written
    return n


# --------------------------------------------------------------------------- showing them


def _strength(scores: Sequence[float]) -> list[float]:
    """Each score over the largest absolute score of its text (0 when all are 0)."""
    peak = max((abs(s) for s in scores), default=0.0)
    return [s / peak if peak > 0 else 0.0 for s in scores]


#: what the header says when a multi-label model predicts no label for the text
NO_LABEL = "no label"


def _predicted(e: Explanation) -> str:
    """The prediction as the header shows it (an empty label set of a multi-label model: :data:`NO_LABEL`)."""
    return str(e.predicted) if str(e.predicted) else NO_LABEL


def format_terminal(explanation: Explanation, color: bool = True, top: int = 5) -> str:
    """A header line, the tokens coloured by attribution (green toward the label, red against), and the top tokens.

    ``color=False`` gives the same lines without ANSI codes.
    """
    import click

    e = explanation
    head = f"{e.label} (p={e.probability:.3f}; predicted {_predicted(e)}; {e.attribution.method})"
    parts = []
    for token, s in zip(e.tokens, _strength(e.scores), strict=True):
        if not color or abs(s) < 0.1:
            parts.append(token)
        else:
            parts.append(click.style(token, fg="green" if s > 0 else "red", bold=abs(s) >= 0.5))
    ranked = sorted(range(len(e.tokens)), key=lambda i: -abs(e.scores[i]))[:top]
    tops = ", ".join(f"{e.tokens[i]} {e.scores[i]:+.3f}" for i in ranked)
    return "\n".join([click.style(head, bold=True) if color else head, " ".join(parts), f"top: {tops}" if tops else "top: -"])


def html_snippet(explanation: Explanation) -> str:
    """A self-contained HTML ``<div>``: each token a ``<span>`` with a background by its attribution and its score as title."""
    e = explanation
    spans = []
    for token, score, s in zip(e.tokens, e.scores, _strength(e.scores), strict=True):
        rgb = "0,150,60" if s > 0 else "210,40,40"
        spans.append(f'<span style="background:rgba({rgb},{abs(s) * 0.75:.2f});padding:1px 2px;border-radius:3px" '
                     f'title="{score:+.4f}">{html.escape(token)}</span>')
    head = (f'<div style="font-size:90%;color:#555">{html.escape(str(e.label))} (p={e.probability:.3f}; predicted '
            f'{html.escape(_predicted(e))}; {html.escape(e.attribution.method)})</div>')
    return f'<div class="textclf-explanation" style="margin:6px 0;line-height:1.9">{head}{" ".join(spans)}</div>'


def html_section(explanations: Iterable[Explanation], title: str = "Explanations") -> str:
    """An ``<h2>`` section of :func:`html_snippet` a text, with a legend (for ``report``)."""
    body = "".join(html_snippet(e) for e in explanations)
    legend = ('<p>Token attributions toward the predicted label: <span style="background:rgba(0,150,60,0.6)">green</span> '
              'pushes toward it, <span style="background:rgba(210,40,40,0.6)">red</span> against; hover a token for its '
              'score (<code>textclf explain</code>, docs/explain.md).</p>')
    return f"<h2>{html.escape(title)}</h2>{legend}{body}"
