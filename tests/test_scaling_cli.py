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


def _cost_table(tmp_path, full=True, empty_row=False):
    """A grid table whose full cost adds a tower cost that does not shrink with V: V = 64 on the small LLM
    costs the prefill 2 N (50 + 64) plus 9e9, so the full cost reorders the cells the paper's cost sorts."""
    cols = "llm,llm_params,visual_tokens,text_tokens,compressor,seed,family,accuracy"
    full_cols = ",vision_flops,compressor_flops,question_flops,full_inference_flops"
    lines = [cols + (full_cols if full else "")]
    for n in (1e8, 2e8, 4e8, 8e8):
        for v in (1, 4, 16, 64):
            acc = 1 - (0.4 * (n / 1e9) ** -0.2 * v**-0.1 + 0.05)
            prefill, vision = 2 * n * (50 + v), 1e9 * v / 8
            for s in (0, 1):
                row = f"m{n:.0f},{n:.0f},{v},50,random,{s},reasoning,{acc + 0.002 * s:.5f}"
                if full:
                    row += f",{vision:.0f},1000,0,{prefill + vision + 1000:.0f}"
                    if empty_row and n == 1e8 and v == 4 and s == 1:
                        row = row.rsplit(",", 1)[0] + ","
                lines.append(row)
    path = tmp_path / "grid.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("cost", ["paper", "full"])
def test_cost_paper_or_full_is_recorded_and_draws_the_frontier(tmp_path, cost):
    out = tmp_path / "out"
    assert main(["fit", "--results", str(_cost_table(tmp_path)), "--bootstrap", "0", "--cost", cost,
                 "--out", str(out)]) == 0
    report = json.loads((out / "fit.json").read_text())
    assert report["cost"] == cost and report["observed_frontier"]["cost"] == cost
    cells = report["observed_frontier"]["cells"]
    flops = [c["flops"] for c in cells]
    errors = [c["error"] for c in cells]
    assert flops == sorted(flops) and errors == sorted(errors, reverse=True) and len(cells) >= 2
    first = cells[0]  # the cheapest cell: the smallest LLM at V = 1 under either cost
    assert (first["llm"], first["v"]) == ("m100000000", 1.0)
    if cost == "full":  # the table's own column, averaged over seeds
        assert first["flops"] == pytest.approx(2 * 1e8 * 51 + 1e9 / 8 + 1000)
        assert report["observed_frontier"]["ledger"]["vision_flops"]["m800000000/V64"] == pytest.approx(8e9)
    else:
        assert first["flops"] == pytest.approx(2 * 1e8 * 51) and report["observed_frontier"]["ledger"] is None
    assert (out / "frontier.png").exists()


def test_cost_full_without_the_columns_is_one_line(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["fit", "--results", str(_cost_table(tmp_path, full=False)), "--cost", "full", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "lacks vision_flops, compressor_flops, question_flops, full_inference_flops" in err
    assert not out.exists()
    assert main(["fit", "--results", "paper", "--cost", "full", "--out", str(out)]) == 2
    assert "lacks vision_flops" in capsys.readouterr().err
    assert main(["fit", "--results", str(_cost_table(tmp_path, empty_row=True)), "--cost", "full",
                 "--out", str(out)]) == 2
    assert "full_inference_flops empty at m100000000, V=4, seed=1" in capsys.readouterr().err
    assert main(["fit", "--results", "paper", "--cost", "total", "--out", str(out)]) == 2
    assert "unknown cost 'total'; allowed: paper, full" in capsys.readouterr().err
    assert not out.exists()
