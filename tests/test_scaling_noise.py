"""Seed noise of a grid table (lit_vlm.scaling.noise): pooled per-run SD and the size-step tests."""

import csv
import subprocess
import sys
from pathlib import Path

import pytest

from lit_vlm.errors import UserError
from lit_vlm.scaling.noise import format_noise, seed_noise

ROOT = Path(__file__).resolve().parents[1]
COLUMNS = ["cell", "llm", "llm_params", "visual_tokens", "compressor", "seed", "family", "examples", "accuracy"]


def write(path: Path, acc) -> Path:
    """acc(llm_index, v, seed) -> accuracy, for 3 sizes x V {1, 4} x 3 seeds, reasoning only."""
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        for i, n in enumerate((1000, 4000, 16000)):
            for v in (1, 4):
                for s in range(3):
                    w.writerow({"cell": f"m{i}-V{v}-s{s}", "llm": f"m{i}", "llm_params": n, "visual_tokens": v,
                                "compressor": "avgpool", "seed": s, "family": "reasoning", "examples": 5000,
                                "accuracy": acc(i, v, s)})
    return path


def test_clear_steps_are_significant_and_the_sd_is_pooled(tmp_path):
    table = write(tmp_path / "r.csv", lambda i, v, s: 0.5 + 0.1 * i + 0.01 * (s - 1))
    rep = seed_noise(table)
    assert rep.seeds == 3 and rep.run_sd == pytest.approx(0.01)
    assert rep.sampling_sd == pytest.approx(((0.6 * 0.4) / 5000) ** 0.5, rel=0.05)
    assert [s.significant for s in rep.steps] == [True, True]
    assert [round(s.gain, 3) for s in rep.steps] == [0.1, 0.1]
    assert "2 of 2 steps significant" in format_noise(rep) and "PASS" in format_noise(rep)


def test_a_step_smaller_than_the_noise_is_not_significant(tmp_path):
    noise = {0: -0.03, 1: 0.0, 2: 0.03}
    table = write(tmp_path / "r.csv", lambda i, v, s: 0.5 + (0.01 if i == 2 else 0.1 * i) + noise[(s + i) % 3])
    rep = seed_noise(table)
    assert rep.steps[0].significant and not rep.steps[1].significant
    assert rep.run_sd == pytest.approx(0.03)
    assert "FAIL" in format_noise(rep) and "NOT significant" in format_noise(rep)


def test_committed_cpu_mini_noise_is_what_the_experiment_issue_measured():
    rep = seed_noise(ROOT / "results" / "cpu_mini" / "results.csv")
    assert round(100 * rep.run_sd, 2) == 4.35


def test_bad_tables_are_one_line(tmp_path):
    one_seed = write(tmp_path / "one.csv", lambda i, v, s: 0.5)
    rows = list(csv.DictReader(one_seed.open()))
    with one_seed.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        w.writerows(r for r in rows if r["seed"] == "0")
    with pytest.raises(UserError, match="has one seed"):
        seed_noise(one_seed)
    with pytest.raises(UserError, match="no rows for family='ocr'"):
        seed_noise(write(tmp_path / "r.csv", lambda i, v, s: 0.5), family="ocr")
    done = subprocess.run([sys.executable, "-m", "lit_vlm", "scaling", "seeds", "--results", str(tmp_path / "nope.csv")],
                          capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "does not exist" in done.stderr
