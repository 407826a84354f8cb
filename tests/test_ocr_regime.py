"""`scaling ocr-regime`: accuracy vs characters per visual token and the collapse located, on small tables."""

import json

import numpy as np
import pytest

from lit_vlm.scaling.cli import main
from lit_vlm.scaling.ocr_regime import crossing, curve

HEADER = "cell,llm,visual_tokens,compressor,seed,family,accuracy,ocr_chars"


def accuracy(ratio, c0, plateau=0.9):
    """A curve that is exactly half its plateau at ratio c0 (falls as a power of the ratio beyond it)."""
    return plateau / (1 + (ratio / c0) ** 3)


def write_tables(tmp_path, c0s={"0": 2.0, "1": 3.0}, chars=(2, 4, 8, 16), vs=(1, 4, 16, 64), extra=""):
    """One table per text length, as the sweep writes them; reasoning rows in between are ignored."""
    paths = []
    for n in chars:
        lines = [HEADER]
        for v in vs:
            for seed, c0 in c0s.items():
                cell = f"m-V{v}-avgpool-s{seed}"
                lines.append(f"{cell},m,{v},avgpool,{seed},reasoning,0.5,")
                lines.append(f"{cell},m,{v},avgpool,{seed},ocr,{accuracy(n / v, c0):.6f},{n}{extra}")
        path = tmp_path / f"chars{n}" / "results.csv"
        path.parent.mkdir()
        path.write_text("\n".join(lines) + "\n")
        paths.append(str(path))
    return paths


def test_crossing_interpolates_in_log_ratio_after_the_plateau():
    x, acc = np.array([0.5, 1.0, 2.0, 4.0]), np.array([0.8, 1.0, 0.6, 0.2])
    at, plateau, why = crossing(x, acc)
    assert plateau == 1.0 and why == ""
    assert at == pytest.approx(np.exp(np.log(2.0) + 0.25 * np.log(2.0)))  # 0.6 -> 0.2 passes 0.5 a quarter on
    assert crossing(x, np.array([0.9, 0.9, 0.8, 0.7]))[0] is None  # never below half: no collapse


def test_curve_averages_cells_of_equal_ratio():
    rows = [{"chars": 4, "v": 4, "accuracy": 0.8}, {"chars": 16, "v": 16, "accuracy": 0.6},
            {"chars": 16, "v": 4, "accuracy": 0.1}]
    x, acc = curve(rows)
    assert x.tolist() == [1.0, 4.0] and acc.tolist() == pytest.approx([0.7, 0.1])


def test_regime_change_and_interval_over_seeds(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["ocr-regime", "--results", *write_tables(tmp_path), "--out", str(out)]) == 0
    report = json.loads((out / "ocr_regime.json").read_text())
    lo, hi = report["interval_over_seeds"]
    # seed 0 collapses at 2 characters per token, seed 1 at 3: each found near its own, the mean in between
    assert lo == pytest.approx(2.0, rel=0.25) and hi == pytest.approx(3.0, rel=0.25) and lo < hi
    assert lo <= report["chars_per_token"] <= hi
    assert report["n_seeds"] == 2 and len(report["cells"]) == 16  # 4 lengths x 4 V
    assert (out / "ocr_regime.png").exists()
    assert "OCR regime change at" in capsys.readouterr().out


def test_no_collapse_is_said_not_invented(tmp_path, capsys):
    out = tmp_path / "out"
    paths = write_tables(tmp_path, c0s={"0": 1e6, "1": 1e6})
    assert main(["ocr-regime", "--results", *paths, "--out", str(out), "--no-plots"]) == 0
    report = json.loads((out / "ocr_regime.json").read_text())
    assert report["chars_per_token"] is None and report["interval_over_seeds"] is None
    assert "never falls below" in report["reason"]


def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "out"
    old = tmp_path / "old.csv"
    old.write_text("cell,llm,visual_tokens,compressor,seed,family,accuracy\n")
    assert main(["ocr-regime", "--results", str(old), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "lacks ocr_chars" in err
    assert main(["ocr-regime", "--results", str(tmp_path / "none.csv"), "--out", str(out)]) == 2
    assert "does not exist" in capsys.readouterr().err
    paths = write_tables(tmp_path)
    assert main(["ocr-regime", "--results", *paths, "--out", str(out), "--fraction", "1.5"]) == 2
    assert "--fraction 1.5 must be in (0, 1)" in capsys.readouterr().err
    assert main(["ocr-regime", "--results", *paths, "--out", str(out), "--llm", "big"]) == 2
    assert "--llm 'big' is not in the tables; present: m" in capsys.readouterr().err
    assert not out.exists()
