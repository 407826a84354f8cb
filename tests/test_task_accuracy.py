"""bench/task_accuracy.py: per-task tallies, and the fact task split by how common the asked name is."""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from task_accuracy import fact_bucket, task_accuracy  # noqa: E402


def test_fact_rows_are_split_into_bands_of_name_frequency():
    names = [f"N{i}" for i in range(100)]
    assert [fact_bucket(f"what is N{i} of the shapes?", names) for i in (0, 3, 4, 15, 16, 63, 64, 99)] == [
        "fact1 (names 1-4)", "fact1 (names 1-4)", "fact2 (names 5-16)", "fact2 (names 5-16)",
        "fact3 (names 17-64)", "fact3 (names 17-64)", "fact4 (names 65-100)", "fact4 (names 65-100)"]
    rows = [[{"family": "reasoning", "task": "fact", "question": "what is N0 of the shapes?", "answer": "3",
              "prediction": "3 "},
             {"family": "reasoning", "task": "fact", "question": "what is N70 of the shapes?", "answer": "3",
              "prediction": "4"},
             {"family": "reasoning", "task": "count", "question": "how many shapes are there?", "answer": "2",
              "prediction": "2"}]]
    split = task_accuracy(rows, names)["reasoning"]
    assert split == {"accuracy": 2 / 3, "tasks": {"count": 1.0, "fact1 (names 1-4)": 1.0, "fact4 (names 65-100)": 0.0}}
    assert task_accuracy(rows)["reasoning"]["tasks"] == {"count": 1.0, "fact": 0.5}


def test_fact_rows_of_shown_names_are_told_from_hidden_ones():
    names = [f"N{i}" for i in range(8)]
    # fact_shown 0.5 by name: ranks 2, 4, 6, 8 (N1, N3, ...) are shown, the others hidden
    assert [fact_bucket(f"what is N{i}?", names, 0.5) for i in (0, 1, 5)] == [
        "hidden fact1 (names 1-4)", "shown fact1 (names 1-4)", "shown fact2 (names 5-8)"]
    rows = [[{"family": "reasoning", "task": "fact", "question": f"what is N{i}?", "answer": "A", "prediction": p}
             for i, p in ((0, "A"), (1, "B"), (2, "A"))]]
    assert task_accuracy(rows, names, 0.5)["reasoning"]["tasks"] == {"hidden fact1 (names 1-4)": 1.0,
                                                                     "shown fact1 (names 1-4)": 0.0}
