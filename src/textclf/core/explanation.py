"""Token attributions: what a family's explainer returns and what ``textclf explain`` shows.

A family may register ``Family(explainer=...)``: ``explain(predictor, texts, targets) ->
list[Attribution] | None``, the attributions of every text toward the class index in
``targets`` (same order). It returns None when it cannot explain this predictor (an ONNX
backend, a pipeline of another shape), and :mod:`textclf.services.explain` then falls back to
occlusion, which works for any Predictor. The service wraps each :class:`Attribution` in an
:class:`Explanation` (the label explained, the predicted one, the probability).

Tokens are what the method scored: whitespace-separated words for occlusion and the linear
models, the model's own tokens for the BiLSTM (its tokenizer) and BERT (words merged from
WordPieces). Joining them with spaces gives a text the model reads the same way, which is how
the deletion test (``benchmarks/bench_trust_explain.py``) removes tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field


@dataclass
class Attribution:
    """The tokens of one text and one score each (positive: pushes toward the target label), and how they were found."""

    tokens: list[str]
    scores: list[float]
    method: str

    def __post_init__(self) -> None:
        if len(self.tokens) != len(self.scores):
            raise ValueError(f"{len(self.tokens)} tokens but {len(self.scores)} attribution scores")
        self.scores = [float(s) for s in self.scores]


@dataclass
class Explanation:
    """One explained text: the label explained, the model's prediction and the token attributions."""

    text: str
    label: str
    predicted: str
    probability: float
    attribution: Attribution = field(repr=False)

    @property
    def tokens(self) -> list[str]:
        """The scored tokens."""
        return self.attribution.tokens

    @property
    def scores(self) -> list[float]:
        """One attribution a token."""
        return self.attribution.scores

    def top(self, k: int) -> list[int]:
        """Indices of the ``k`` tokens that push hardest toward ``label`` (largest scores first)."""
        order = sorted(range(len(self.scores)), key=lambda i: (-self.scores[i], i))
        return order[:k]

    def to_json(self) -> dict:
        """The JSON record of ``textclf explain`` and ``/explain``."""
        out = {k: v for k, v in asdict(self).items() if k != "attribution"}
        out.update(method=self.attribution.method, tokens=list(self.tokens),
                   attributions=[round(s, 6) for s in self.scores])
        return out


def words(text: str) -> list[str]:
    """The whitespace-separated words of ``text`` (the tokens of occlusion and of the linear explainers)."""
    return text.split()


def join_without(tokens: Sequence[str], drop: set[int] | Sequence[int]) -> str:
    """``tokens`` joined with spaces, leaving out the positions in ``drop``."""
    drop = set(drop)
    return " ".join(t for i, t in enumerate(tokens) if i not in drop)
