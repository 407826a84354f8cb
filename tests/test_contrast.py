"""The OCR-vs-reasoning contrast checks on a grid table."""

import csv

import pytest

from lit_vlm.errors import UserError
from lit_vlm.grid import COLUMNS
from lit_vlm.scaling.cli import main
from lit_vlm.scaling.contrast import contrast_checks

SIZES, VS = (1000, 10000, 100000), (1, 4, 16, 64)


def write(path, acc):
    """acc(family, n, v) -> accuracy."""
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS, restval="")
        w.writeheader()
        for n in SIZES:
            for v in VS:
                for fam in ("reasoning", "ocr"):
                    w.writerow({"cell": f"{n}-V{v}", "llm": str(n), "llm_params": n, "visual_tokens": v,
                                "compressor": "avgpool", "seed": 0, "family": fam, "accuracy": acc(fam, n, v)})
    return path


def paper_like(fam, n, v):
    i = SIZES.index(n)
    return 0.1 + 0.2 * VS.index(v) + 0.01 * i if fam == "ocr" else 0.5 + 0.1 * i - 0.01 * VS.index(v)


def test_a_paper_like_table_passes_every_check(tmp_path):
    checks = contrast_checks(write(tmp_path / "r.csv", paper_like))
    assert [c.passed for c in checks] == [True, True, True, True]


@pytest.mark.parametrize(
    "broken, failing",
    [
        (lambda f, n, v: 0.3 if f == "ocr" else paper_like(f, n, v), 0),  # OCR flat in V
        (lambda f, n, v: paper_like(f, n, v) + (0.2 * (v == 64) if f == "reasoning" else 0), 1),  # reasoning needs V
        (lambda f, n, v: paper_like(f, n, v) - (0.25 * (n == 100000) if f == "reasoning" else 0), [2, 3]),  # falls
        (lambda f, n, v: paper_like(f, n, v) + (0.15 * (n == 10000) if f == "reasoning" else 0), [3]),  # a dip
    ],
)
def test_each_check_can_fail(tmp_path, broken, failing):
    checks = contrast_checks(write(tmp_path / "r.csv", broken))
    failing = failing if isinstance(failing, list) else [failing]
    assert [i for i, c in enumerate(checks) if not c.passed] == failing


def test_cli_prints_pass_and_fail_lines(tmp_path, capsys):
    assert main(["contrast", "--results", str(write(tmp_path / "r.csv", paper_like))]) == 0
    out = capsys.readouterr().out
    assert out.count("[PASS]") == 4 and "N=1,000: V=64 0.700 - V=1 0.100 = +0.600" in out


def test_bad_tables(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        contrast_checks(tmp_path / "nope.csv")
    (tmp_path / "x.csv").write_text("a,b\n1,2\n")
    with pytest.raises(UserError, match="lacks column"):
        contrast_checks(tmp_path / "x.csv")
    only = write(tmp_path / "r.csv", paper_like)
    rows = [r for r in csv.DictReader(only.open()) if r["family"] == "reasoning"]
    with only.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        w.writerows(rows)
    with pytest.raises(UserError, match="has no rows for family 'ocr'"):
        contrast_checks(only)


def test_a_size_without_a_reasoning_cell_at_the_smallest_v_is_one_line(tmp_path, capsys):
    path = write(tmp_path / "r.csv", paper_like)
    rows = [r for r in csv.DictReader(path.open())
            if not (r["family"] == "reasoning" and r["llm"] == "10000" and r["visual_tokens"] == "1")]
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        w.writerows(rows)
    with pytest.raises(UserError, match="N=10000 lacks a reasoning cell at V=1"):
        contrast_checks(path)
    assert main(["contrast", "--results", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [err.strip()] and "N=10000 lacks a reasoning cell" in err


def test_the_papers_grid_is_contrasted_with_its_missing_ocr_cell_named():
    checks = contrast_checks("paper")
    ocr = checks[0].detail
    assert len(ocr) == 4 and ocr[-1].startswith("N=7,000,000,000: V=144 ") and ocr[-1].endswith(
        "(no V=576 cell: its largest V)")
    assert all("no V=576" not in line for line in ocr[:-1])
    assert checks[1].passed and checks[2].passed  # reasoning: V = 1 near the best V; the largest N beats the smallest
