"""Answer metrics as torchmetrics ``Metric`` objects, so they accumulate per batch and sync across devices.

- ``ExactMatch``: accuracy of normalised strings (both families).
- ``ANLS``: average normalised Levenshtein similarity, DocVQA's OCR metric (similarity below 0.5 scores 0).
- ``CharErrorRate``: torchmetrics' own, re-exported.
- ``VQAAccuracy``: the VQA v2 formula over up to 10 human answers: min(#matches / 3, 1), averaged over the
  10 leave-one-annotator-out subsets as the official evaluation does.
Targets may be one string or a list of acceptable strings per example.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch
from torchmetrics import Metric
from torchmetrics.functional.text import edit_distance
from torchmetrics.text import CharErrorRate

__all__ = [
    "ANLS", "CharErrorRate", "ExactMatch", "MultipleChoiceAccuracy", "TokenMeanLoss", "VQAAccuracy", "choice_letter",
    "metric_for", "normalize_answer", "vqa_normalize",
]


def normalize_answer(text: str) -> str:
    """Canonical form for exact match: trimmed, case-folded, inner whitespace removed.

    The synthetic benchmark's answers are single words or character strings, and a word-level tokenizer's
    decoder puts spaces between tokens, so spaces carry no information here.
    """
    return "".join(text.split()).casefold()


def _as_list(target: str | Sequence[str]) -> list[str]:
    return [target] if isinstance(target, str) else list(target)


class _MeanScore(Metric):
    """Shared state: a running sum of per-example scores and a count."""

    full_state_update = False
    higher_is_better = True

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def score(self, pred: str, targets: list[str]) -> float:
        raise NotImplementedError

    def update(self, preds: Sequence[str], targets: Sequence[str | Sequence[str]]) -> None:
        if len(preds) != len(targets):
            raise ValueError(f"{len(preds)} predictions but {len(targets)} targets")
        for pred, target in zip(preds, targets):
            self.total += self.score(pred, _as_list(target))
        self.count += len(preds)

    def compute(self) -> torch.Tensor:
        return (self.total / self.count.clamp(min=1)).float()


class ExactMatch(_MeanScore):
    """1 when the normalised prediction equals any normalised target, else 0."""

    def score(self, pred: str, targets: list[str]) -> float:
        p = normalize_answer(pred)
        return float(any(p == normalize_answer(t) for t in targets))


class ANLS(_MeanScore):
    """Average Normalised Levenshtein Similarity (Biten et al., DocVQA): best over targets of
    1 - dist / max(len), set to 0 when that similarity is below ``threshold``."""

    def __init__(self, threshold: float = 0.5, **kwargs):
        super().__init__(**kwargs)
        self.threshold = threshold

    def score(self, pred: str, targets: list[str]) -> float:
        p = " ".join(pred.split()).casefold()
        ts = [" ".join(t.split()).casefold() for t in targets]
        dists = edit_distance([p] * len(ts), ts, reduction="none").tolist()
        best = 0.0
        for t, d in zip(ts, dists):
            longest = max(len(p), len(t))
            similarity = 1.0 if longest == 0 else 1.0 - d / longest
            best = max(best, similarity if similarity >= self.threshold else 0.0)
        return best


_PUNCT = re.compile(r"[;/\[\]\"{}()=+\\_\-><@`,?!*#%^&$~|:']")
_ARTICLES = {"a", "an", "the"}
_NUMBERS = {w: str(i) for i, w in enumerate("zero one two three four five six seven eight nine ten".split())}


def vqa_normalize(text: str) -> str:
    """A compact version of the VQA v2 answer normalisation: case, punctuation, articles, number words."""
    text = _PUNCT.sub("", text.casefold().replace("\n", " ").replace("\t", " "))
    text = re.sub(r"(?<!\d)\.(?!\d)", "", text)  # periods, but not decimal points
    words = [_NUMBERS.get(w, w) for w in text.split() if w not in _ARTICLES]
    return " ".join(words)


class VQAAccuracy(_MeanScore):
    """VQA v2 accuracy. With one target it reduces to exact match on normalised strings."""

    def score(self, pred: str, targets: list[str]) -> float:
        p = vqa_normalize(pred)
        gts = [vqa_normalize(t) for t in targets]
        if len(gts) == 1:
            return float(p == gts[0])
        # Official formula: average over each leave-one-out subset of min(#matches / 3, 1).
        accs = []
        for i in range(len(gts)):
            others = gts[:i] + gts[i + 1 :]
            accs.append(min(1.0, sum(g == p for g in others) / 3.0))
        return sum(accs) / len(accs)


_LETTER = re.compile(r"^\s*(?:answer\s*[:\-]?\s*)?\(?([A-Z])(?:[\).:,]|\s|$)", re.IGNORECASE)


def choice_letter(prediction: str) -> str:
    """The option letter a prediction names ("B", "(b)", "B. a cat", "Answer: B") or the stripped text."""
    m = _LETTER.match(prediction)
    return m.group(1).upper() if m else prediction.strip()


class MultipleChoiceAccuracy(ExactMatch):
    """Accuracy of the option letter (LLaVA's multiple-choice evaluation)."""

    def score(self, pred: str, targets: list[str]) -> float:
        p = choice_letter(pred)
        return float(any(p == t.strip().upper() for t in targets))


METRICS = {"exact": ExactMatch, "vqa": VQAAccuracy, "anls": ANLS, "multiple_choice": MultipleChoiceAccuracy}


def metric_for(name: str) -> Metric:
    """A fresh metric by name: exact, vqa, anls or multiple_choice."""
    if name not in METRICS:
        from lit_vlm.errors import UserError

        raise UserError(f"metric {name!r} is not known; allowed: {', '.join(METRICS)}")
    return METRICS[name]()


class TokenMeanLoss(Metric):
    """Cross-entropy per answer token over a whole split: summed token losses / token count.

    Averaging per-batch means by example count (what ``self.log(loss, batch_size=B)`` does) weights a token of
    a short answer more than one of a long answer, and the weights change with the batch size; sums do not.
    """

    full_state_update = False
    higher_is_better = False

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.add_state("loss_sum", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("tokens", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, loss_sum: torch.Tensor, tokens: torch.Tensor) -> None:
        """``loss_sum``: summed token losses of some rows; ``tokens``: how many answer tokens they have."""
        self.loss_sum += loss_sum.detach().double().sum()
        self.tokens += tokens.detach().long().sum()

    def compute(self) -> torch.Tensor:
        return (self.loss_sum / self.tokens.clamp_min(1)).float()
