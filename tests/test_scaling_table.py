"""Loading results: the paper's grid and the grid runner's table map to one frame; bad input is refused
with one clear line, through the Python API and through the CLI (exit 2, nothing written)."""

import csv
import subprocess
import sys

import numpy as np
import pytest

from lit_vlm.errors import UserError
from lit_vlm.scaling import fit_law, load_results, make_results
from lit_vlm.scaling.cli import main

COLUMNS = ["llm", "llm_params", "llm_params_with_embeddings", "visual_tokens", "text_tokens", "compressor",
           "seed", "family", "accuracy", "anls", "runtime_s"]


def grid_rows(sizes=(5e8, 1.8e9, 4e9), vs=(1, 4, 16, 64), seeds=(0, 1), compressors=("quecc",),
              family="reasoning"):
    rows = []
    for n, v, seed, comp in ((n, v, s, c) for n in sizes for v in vs for s in seeds for c in compressors):
        acc = 1 - (0.6 * (n / 1e9) ** -0.07 * v**-0.015) + 0.001 * seed
        rows.append({"llm": f"m{n / 1e9:g}b", "llm_params": f"{n:.0f}", "llm_params_with_embeddings": f"{n * 1.2:.0f}",
                     "visual_tokens": str(v), "text_tokens": "48.5", "compressor": comp, "seed": str(seed),
                     "family": family, "accuracy": f"{acc:.6f}", "anls": "", "runtime_s": "1.0"})
    return rows


def write(path, rows, columns=COLUMNS):
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    return str(path)


def test_paper_grid_loads_both_families_and_reports_the_missing_cell():
    reasoning, ocr = load_results("paper", "reasoning"), load_results("paper", "ocr")
    assert len(reasoning) == 28 and reasoning.n_missing == 0
    assert len(ocr) == 27 and ocr.n_missing == 1  # 7B at 576 is empty in the source
    assert sorted(set(reasoning.n)) == [0.5, 1.8, 4.0, 7.0]
    np.testing.assert_allclose(reasoning.error[(reasoning.n == 0.5) & (reasoning.v == 1)], 1 - 0.3855)


def test_ocr_ambiguous_cell_is_the_users_choice():
    cell = lambda r: r.error[(r.n == 4) & (r.v == 4)][0]  # noqa: E731
    assert 1 - cell(load_results("paper", "ocr")) == pytest.approx(0.135895545)
    assert 1 - cell(load_results("paper", "ocr", ocr_ambiguous="row")) == pytest.approx(0.155895545)


def test_grid_runner_table_is_normalised_and_seeds_are_averaged(tmp_path):
    path = write(tmp_path / "grid.csv", grid_rows())
    res = load_results(path, "reasoning")
    assert len(res) == 12 and res.n_seeds_averaged == 24
    assert sorted(set(res.n)) == pytest.approx([0.5, 1.8, 4.0])  # raw counts -> billions
    row = [r for r in grid_rows() if r["llm"] == "m0.5b" and r["visual_tokens"] == "4"]
    expected = 1 - np.mean([float(r["accuracy"]) for r in row])
    assert res.error[(res.n == 0.5) & (res.v == 4)][0] == pytest.approx(expected)
    assert res.text_tokens == pytest.approx(48.5) and res.compressor == "quecc"


def test_grid_runner_metric_defaults_to_accuracy_and_loss_is_opt_in(tmp_path):
    # The grid's loss column pools both families, so 'auto' fits 1 - accuracy (the paper's error) and
    # 'loss' fits family_loss, each family's own per-token test loss.
    rows = grid_rows() + grid_rows(family="ocr")
    for r in rows:
        r["loss"] = "9.0"
        r["family_loss"] = "1.5" if r["family"] == "reasoning" else "2.5"
    path = write(tmp_path / "g.csv", rows, COLUMNS + ["loss", "family_loss"])
    assert load_results(path, "reasoning").target == "1 - accuracy"
    res = load_results(path, "reasoning", metric="loss")
    assert res.target == "loss" and np.all(res.error == 1.5)
    assert np.all(load_results(path, "ocr", metric="loss").error == 2.5)


def test_loss_metric_without_a_family_loss_column_is_one_clear_error(tmp_path):
    rows = grid_rows()
    for r in rows:
        r["loss"] = "1.5"
    path = write(tmp_path / "g.csv", rows, COLUMNS + ["loss"])
    with pytest.raises(UserError, match="has no family_loss column .* fit --metric accuracy"):
        load_results(path, "reasoning", metric="loss")


def test_compressor_choice(tmp_path):
    path = write(tmp_path / "g.csv", grid_rows(compressors=("quecc", "tokenpacker")))
    assert len(load_results(path, "reasoning", compressor="tokenpacker")) == 12


# --- bad input: each case builds a table and names the fragment its one-line message must contain --------

def _csv(tmp_path, rows, columns=COLUMNS):
    return write(tmp_path / "bad.csv", rows, columns)


def _edit(rows, **changes):
    rows[0].update(changes)
    return rows


BAD = {
    "nan score": (lambda t: _csv(t, _edit(grid_rows(), accuracy="nan")), "reasoning", "multiplicative", "NaN"),
    "negative score": (lambda t: _csv(t, _edit(grid_rows(), accuracy="-0.1")), "reasoning", "multiplicative",
                       "accuracy -0.1"),
    "score above 1": (lambda t: _csv(t, _edit(grid_rows(), accuracy="1.5")), "reasoning", "multiplicative",
                      "accuracy 1.5"),
    "zero N": (lambda t: _csv(t, _edit(grid_rows(), llm_params="0")), "reasoning", "multiplicative", "llm_params 0"),
    "negative V": (lambda t: _csv(t, _edit(grid_rows(), visual_tokens="-4")), "reasoning", "multiplicative",
                   "visual_tokens -4"),
    "too few points": (lambda t: _csv(t, grid_rows(sizes=(5e8, 1e9), vs=(1, 4), seeds=(0,))[:3]), "reasoning",
                       "multiplicative", "too few"),
    "one LLM size": (lambda t: _csv(t, grid_rows(sizes=(5e8,))), "reasoning", "multiplicative", "alpha cannot"),
    "one V": (lambda t: _csv(t, grid_rows(vs=(16,))), "reasoning", "multiplicative", "beta cannot"),
    "unknown family": (lambda t: "paper", "charts", "multiplicative", "unknown family 'charts'"),
    "unknown law": (lambda t: "paper", "reasoning", "cubic", "unknown law 'cubic'"),
    "duplicate cell": (lambda t: _csv(t, grid_rows() + [dict(grid_rows()[0], accuracy="0.9")]), "reasoning",
                       "multiplicative", "duplicate cell"),
    "missing file": (lambda t: str(t / "nope.csv"), "reasoning", "multiplicative", "does not exist"),
    "missing column": (lambda t: _csv(t, grid_rows(), [c for c in COLUMNS if c != "visual_tokens"]), "reasoning",
                       "multiplicative", "lacks column 'visual_tokens'"),
    "several compressors": (lambda t: _csv(t, grid_rows(compressors=("a", "b"))), "reasoning", "multiplicative",
                            "several compressors (a, b)"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_through_the_api(case, tmp_path):
    build, family, law, fragment = BAD[case]
    with pytest.raises(UserError, match=None) as e:
        fit_law(load_results(build(tmp_path), family), law)
    assert fragment in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_through_the_cli(case, tmp_path, capsys):
    build, family, law, fragment = BAD[case]
    out = tmp_path / "out"
    code = main(["fit", "--results", build(tmp_path), "--family", family, "--law", law, "--out", str(out),
                 "--bootstrap", "0", "--no-plots"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: ") and fragment in err and err.count("\n") == 1
    assert not out.exists()


def test_bad_input_through_python_dash_m(tmp_path):
    """The real process: exit status 2, one line on stderr, no --out directory."""
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "lit_vlm.scaling", "fit", "--results", "paper", "--family",
                           "charts", "--out", str(out)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["error: unknown family 'charts'; allowed: reasoning, ocr"]
    assert not out.exists()


def test_array_api_refuses_nan_and_accepts_clean_arrays():
    with pytest.raises(UserError, match="NaN"):
        make_results([1, 2, 3], [1, 4, 16], score=[0.5, float("nan"), 0.6])
    with pytest.raises(UserError, match="N \\(llm params\\) -1"):
        make_results([-1, 2, 3], [1, 4, 16], score=[0.5, 0.5, 0.6])
    res = make_results([1, 1, 2, 2, 3], [1, 4, 1, 4, 16], score=[0.4, 0.45, 0.5, 0.52, 0.6])
    assert res.target == "1 - score" and len(res) == 5


def test_argparse_mistakes_are_one_line_user_errors(capsys):
    assert main(["fit", "--family", "ocr"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "--results" in err and err.count("\n") == 1


def test_size_label_reads_like_the_paper_for_billions_and_in_k_for_a_cpu_grid():
    from lit_vlm.scaling.table import size_label

    assert [size_label(n) for n in (0.5, 1.8, 7, 14)] == ["N=0.5B", "N=1.8B", "N=7B", "N=14B"]
    assert [size_label(n) for n in (8.272e-6, 2.95392e-4, 1.2e-3, 5e-10)] == ["N=8.27k", "N=295k", "N=1.2M", "N=0.5"]
