"""`scaling fit` end to end: the paper's grid, a grid-runner table, what lands in --out, and how fast."""

import json
import subprocess
import sys

import pytest

from lit_vlm.scaling.cli import main

REQUIRED = {"law", "family", "params", "ci95", "alpha_over_beta", "alpha_over_beta_ci95", "v_star", "identified",
            "identified_reason", "validation", "rmse", "metadata"}


@pytest.fixture(scope="module")
def paper_run(tmp_path_factory):
    """The command from the issue, as a real process (its time is measured in bench/bench_scaling_fit.py)."""
    out = tmp_path_factory.mktemp("paper") / "reasoning"
    proc = subprocess.run([sys.executable, "-m", "lit_vlm.scaling", "fit", "--results", "paper", "--family",
                           "reasoning", "--bootstrap", "1000", "--out", str(out)],
                          capture_output=True, text=True, timeout=120)
    return proc, out


@pytest.mark.slow
def test_paper_reasoning_end_to_end(paper_run):
    proc, out = paper_run
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "fit.json").read_text())
    assert REQUIRED <= set(report)
    assert set(report["params"]) == {"A", "alpha", "beta", "D"} == set(report["ci95"])
    assert all(lo <= report["params"][k] <= hi for k, (lo, hi) in report["ci95"].items())
    assert set(report["v_star"]) == {"0", "50"}
    assert all(len(v["ci95"]) == 2 for v in report["v_star"].values())
    md = report["metadata"]
    assert md["n_points"] == 28 and md["loss"] == "squared" and md["bootstrap_scheme"] == "case"
    assert md["seed"] == 0 and md["bootstrap"]["n_resamples"] == 1000 and "units" in md
    assert report["validation"]["largest_size"]["held_out"] == "N=7B"
    for png in ("frontier.png", "error_vs_v.png", "compare_families.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "alpha/beta" in proc.stdout and "optimal V" in proc.stdout


@pytest.mark.slow
def test_paper_reasoning_findings_hold(paper_run):
    report = json.loads((paper_run[1] / "fit.json").read_text())
    assert report["params"]["alpha"] > report["params"]["beta"]
    assert report["alpha_over_beta_ci95"][0] > 1
    assert report["v_star"]["0"]["value"] == 1.0  # Q = 0: one visual token
    assert 1.0 < report["v_star"]["50"]["value"] < 576.0
    assert report["identified"]["D"] is False and report["identified"]["alpha_over_beta"] is True
    assert "D" in report["headline"]["not_identified"]


def test_ocr_text_tokens_and_ambiguous_cell(tmp_path, capsys):
    out = tmp_path / "ocr"
    assert main(["fit", "--results", "paper", "--family", "ocr", "--out", str(out), "--bootstrap", "100",
                 "--text-tokens", "20", "--ocr-ambiguous", "row", "--seed", "5", "--no-plots"]) == 0
    report = json.loads((out / "fit.json").read_text())
    assert set(report["v_star"]) == {"0", "20", "50"}
    assert report["metadata"]["n_missing_dropped"] == 1 and report["metadata"]["seed"] == 5
    assert any("row value" in n for n in report["metadata"]["data"]["notes"])
    assert report["alpha_over_beta"] < 1  # OCR: visual tokens matter more
    assert not list(out.glob("*.png"))
    assert "ocr, multiplicative law" in capsys.readouterr().out


def test_grid_runner_table_additive_law_llm_bootstrap(tmp_path):
    lines = ["llm,llm_params,visual_tokens,text_tokens,compressor,seed,family,accuracy,extra"]
    for n in (5e8, 1e9, 2e9, 4e9):
        for v in (1, 4, 16, 64, 144):
            acc = 1 - (0.3 * (n / 1e9) ** -0.1 + 0.2 * v**-0.05 + 0.05)
            lines += [f"m{n:.0f},{n:.0f},{v},50,quecc,{s},reasoning,{acc + 0.002 * s:.5f},x" for s in (0, 1)]
    path = tmp_path / "grid.csv"
    path.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    assert main(["fit", "--results", str(path), "--family", "reasoning", "--law", "additive", "--bootstrap", "100",
                 "--bootstrap-scheme", "llm", "--out", str(out)]) == 0
    report = json.loads((out / "fit.json").read_text())
    assert set(report["params"]) == {"A", "alpha", "B", "beta", "D"} == set(report["ci95"])
    assert report["metadata"]["bootstrap_scheme"] == "llm"
    assert report["v_star"]["50"]["budget_flops"] > 0  # the additive law's V* is quoted at a stated budget
    assert (out / "frontier.png").exists() and not (out / "compare_families.png").exists()


def test_help_lists_the_outputs(capsys):
    assert main(["fit", "--help"]) == 0
    assert "compare_families.png" in capsys.readouterr().out
