"""Evaluation metrics against hand-computed cases: VQA accuracy, ANLS, CER, exact match, multiple choice."""

import pytest
import torch

from lit_vlm.data.hub import metric_for
from lit_vlm.metrics import MultipleChoiceAccuracy, choice_letter
from lit_vlm.metrics import ANLS, CharErrorRate, ExactMatch, VQAAccuracy, normalize_answer, vqa_normalize


def score(metric, preds, targets) -> float:
    metric.update(preds, targets)
    return float(metric.compute())


# --- VQA v2: min(#matches / 3, 1) averaged over the 10 leave-one-out subsets of 9 annotators -------------------
@pytest.mark.parametrize(
    "matches, expected",
    [
        (0, 0.0),
        (1, 0.3),  # 1 subset without the match: 0; 9 subsets with it: 1/3 -> 9/30
        (2, 0.6),  # 2 x 1/3 + 8 x 2/3 = 18/3 -> 6/10
        (3, 0.9),  # 3 x 2/3 + 7 x 1 = 9 -> 9/10
        (4, 1.0),  # every subset keeps >= 3 matches
        (10, 1.0),
    ],
)
def test_vqa_ten_annotator_formula(matches, expected):
    answers = ["cat"] * matches + [f"other{i}" for i in range(10 - matches)]
    assert score(VQAAccuracy(), ["cat"], [answers]) == pytest.approx(expected)


def test_vqa_normalisation_and_single_answer():
    assert vqa_normalize("Two dogs!") == "2 dogs"
    assert vqa_normalize("  The Red  sign. ") == "red sign"
    assert vqa_normalize("3.5") == "3.5"
    assert vqa_normalize("it's") == "its"
    answers = ["two"] * 3 + ["2"] * 2 + ["three"] * 5  # "two" and "2" normalise alike: 5 matches
    assert score(VQAAccuracy(), ["2"], [answers]) == 1.0
    # one target (GQA): normalised exact match
    assert score(VQAAccuracy(), ["A dog.", "cat"], ["dog", ["dogs"]]) == 0.5


def test_vqa_accumulates_over_batches():
    m = VQAAccuracy()
    m.update(["cat"], [["cat"] * 3 + ["x"] * 7])
    m.update(["dog"], [["x"] * 10])
    assert float(m.compute()) == pytest.approx(0.45)


# --- ANLS: 1 - edit distance / max length, 0 below 0.5 -----------------------------------------------------------
def test_anls_threshold():
    assert score(ANLS(), ["abcxy"], [["abcde"]]) == pytest.approx(0.6)  # 2 edits / 5 -> 0.6, kept
    assert score(ANLS(), ["abxyz"], [["abcde"]]) == 0.0  # 3 edits / 5 -> 0.4 < 0.5 -> 0
    assert score(ANLS(), ["abcdx"], [["abcde"]]) == pytest.approx(0.8)
    assert score(ANLS(threshold=0.3), ["abxyz"], [["abcde"]]) == pytest.approx(0.4)


def test_anls_normalises_case_and_spaces_and_takes_the_best_target():
    assert score(ANLS(), ["  Hello   WORLD "], [["hello world"]]) == 1.0
    assert score(ANLS(), ["1/8/93"], [["January 8, 1993", "1/8/93"]]) == 1.0
    assert score(ANLS(), [""], [[""]]) == 1.0
    assert score(ANLS(), ["x"], ["abcdefgh"]) == 0.0  # a plain string target


# --- CER, exact match --------------------------------------------------------------------------------------------
def test_cer():
    assert score(CharErrorRate(), ["abed"], ["abcd"]) == pytest.approx(0.25)
    assert score(CharErrorRate(), ["abcd", "xy"], ["abcd", "xyz"]) == pytest.approx(1 / 7)


def test_exact_match():
    assert normalize_answer("  New  York ") == "newyork"
    assert score(ExactMatch(), ["New York", "paris", "x"], ["new york", ["Rome", "Paris"], "y"]) == pytest.approx(2 / 3)


def test_multiple_choice_letter():
    for pred in ["B", "b", "(B)", "B. a cat", "B) cat", "Answer: B", " B\n"]:
        assert choice_letter(pred) == "B", pred
    assert choice_letter("Because") == "Because"
    assert score(MultipleChoiceAccuracy(), ["(C) pupa", "A", "Because"], ["C", ["B"], "B"]) == pytest.approx(1 / 3)
    assert isinstance(metric_for("multiple_choice"), MultipleChoiceAccuracy)


# --- bad inputs --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("metric", [VQAAccuracy, ANLS, ExactMatch, MultipleChoiceAccuracy])
def test_bad_inputs(metric):
    m = metric()
    with pytest.raises(ValueError, match="2 predictions but 1 targets"):
        m.update(["a", "b"], ["a"])
    assert float(m.compute()) == 0.0  # nothing counted yet: 0, not NaN
    assert m.compute().dtype == torch.float32
