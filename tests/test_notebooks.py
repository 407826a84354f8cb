"""The tutorial notebooks: sources in sync, committed outputs current, and every mode executes.

tutorials/NN_name.py (jupytext py:percent) is the source; tutorials/NN_name.ipynb is its pair, committed
executed in "committed" mode by `python -m lit_vlm.tutorial build`, which records in the notebook's metadata the
sha256 of the source and of every committed result file it read. Here:

- each pair has the same cells, and the executed .ipynb is current (hashes) and shows its figures;
- smoke mode (a local user's default) runs top to bottom, each in a fresh kernel in a temporary folder;
- full mode (a Colab user's default) runs top to bottom on CPU with tiny papermill overrides, 01 -> 06 in one
  work folder, so 04 and 05 also fit the grid that 03 trained (the branches a user with their own grid takes).

Nothing is written into the repository.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import jupytext
import nbclient
import nbformat
import pytest
from papermill.translators import PythonTranslator

from lit_vlm import tutorial

ROOT = Path(__file__).resolve().parents[1]
TUTORIALS = ROOT / "tutorials"
SOURCES = sorted(TUTORIALS.glob("[0-9][0-9]_*.py"))
IDS = [p.stem[:2] for p in SOURCES]
CELL_TIMEOUT = 300  # seconds per cell; smoke mode needs well under 30
ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1",
       "TOKENIZERS_PARALLELISM": "false"}
# the figures each notebook shows from committed results (or without training at all)
MIN_FIGURES = {"01": 3, "02": 2, "03": 1, "04": 4, "05": 4, "06": 1}
# full mode with tiny sizes and steps: the code a Colab user runs, in seconds on a CPU
TINY_LLMS = {"a": {"hidden_size": 32, "num_layers": 1, "num_heads": 2},
             "b": {"hidden_size": 64, "num_layers": 1, "num_heads": 2}}
FULL_OVERRIDES = {
    "01": {},
    "02": {"QUECC_STEPS": 2, "NUM_TRAIN": 64},
    "03": {"TRAIN": True, "LLM_SIZES": TINY_LLMS, "VISUAL_TOKENS": [1, 4], "STEPS": 2, "TOWER_STEPS": 2,
           "NUM_TRAIN": 64, "NUM_TEST": 16},
    "04": {"N_BOOT": 50},  # the fewest the bootstrap allows
    "05": {"STEPS": 2, "NUM_TRAIN": 64, "NUM_TEST": 16},
    "06": {"STEPS": 2, "TOWER_STEPS": 2, "SEEDS": [0], "NUM_TRAIN": 64, "NUM_TEST": 16},
}
STRAYS = [ROOT / "lightning_logs", ROOT / "runs" / "tutorials", TUTORIALS / "lightning_logs", TUTORIALS / "runs"]


def _cells(nb) -> list[tuple[str, str]]:
    return [(c.cell_type, c.source.strip()) for c in nb.cells]


def _outputs(nb):
    return [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]


def _figures(nb) -> int:
    return sum("image/png" in o.get("data", {}) for o in _outputs(nb))


@pytest.fixture(scope="module")
def work_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("tutorials_work")


@pytest.fixture()
def kernel_env(monkeypatch, work_dir):
    # the kernel inherits the environment of this process
    for key, value in {**ENV, "LIT_VLM_WORK_DIR": str(work_dir)}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("LIT_VLM_MODE", raising=False)
    monkeypatch.delenv("LIT_VLM_SMOKE", raising=False)


def test_there_are_six_paired_notebooks():
    assert IDS == ["01", "02", "03", "04", "05", "06"]
    assert sorted(TUTORIALS.glob("0*.ipynb")) == [p.with_suffix(".ipynb") for p in SOURCES]
    assert not (TUTORIALS / "_build.py").exists()


@pytest.mark.parametrize("src", SOURCES, ids=IDS)
def test_pair_is_in_sync(src):
    py, ipynb = jupytext.read(src), jupytext.read(src.with_suffix(".ipynb"))
    assert _cells(py) == _cells(ipynb), (
        f"{src.name} and its .ipynb differ: edit either one in Jupyter (paired) or run "
        f"`jupytext --sync {src.relative_to(ROOT)}`, then `{tutorial.BUILD_COMMAND}`")
    assert ipynb.metadata["jupytext"]["formats"] == "ipynb,py:percent"


@pytest.mark.parametrize("src", SOURCES, ids=IDS)
def test_structure_badge_install_and_parameters(src):
    nb = jupytext.read(src)
    assert nb.cells[0].source.startswith("# ") and tutorial.colab_url(src.stem) in nb.cells[0].source
    install = nb.cells[1].source
    assert "except ImportError" in install and f'pip", \'install -q "{tutorial.INSTALL}"\'' in install
    # one repository URL everywhere: the constant in lit_vlm/tutorial.py
    owner_name = tutorial.REPO_URL.removeprefix("https://github.com/")
    for url in re.findall(r"github(?:\.com)?/([\w.-]+/[\w.-]+)", src.read_text()):
        assert url == owner_name, f"{src.name} points at {url}, not tutorial.REPO_URL"
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1 and tagged[0] is nb.cells[3]
    # papermill reads every parameter (papermill --help-notebook), the ones the full-mode test overrides included
    names = [p.name for p in PythonTranslator.inspect(tagged[0])]
    assert len(names) == len(tagged[0].source.strip().splitlines())
    assert names[:2] == ["MODE", "WORK_DIR"] and set(FULL_OVERRIDES[src.stem[:2]]) <= set(names)
    assert "kit = tutorial.setup(MODE, WORK_DIR)" in nb.cells[4].source  # the shared setup is the package's


@pytest.mark.parametrize("src", SOURCES, ids=IDS)
def test_committed_outputs_are_current(src):
    reasons = tutorial.stale(src.with_suffix(".ipynb"))
    assert not reasons, "; ".join(reasons) + f" - regenerate with: {tutorial.BUILD_COMMAND}"


@pytest.mark.parametrize("src", SOURCES, ids=IDS)
def test_committed_cell_ids_are_stable(src):
    # the build numbers the cells, so a rebuild changes only what the source or the outputs changed
    ids = [cell.id for cell in nbformat.read(src.with_suffix(".ipynb"), as_version=4).cells]
    assert ids == [f"cell-{i}" for i in range(len(ids))]


def _widget_notebook(bar: str, layout: str, hidden: str):
    view = "application/vnd.jupyter.widget-view+json"
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x", id="cell-0", outputs=[
        nbformat.v4.new_output("display_data", data={view: {"model_id": bar, "version_major": 2}, "text/plain": "bar"})])])
    state = {layout: {"state": {"width": "1"}}, bar: {"state": {"layout": f"IPY_MODEL_{layout}"}},
             hidden: {"state": {"width": "2"}}}
    nb.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {"version_major": 2, "version_minor": 0,
                                                                            "state": state}}
    return nb


def test_widget_ids_do_not_depend_on_the_random_ones():
    ids = [f"{i:032x}" for i in range(3)]
    first = tutorial.stable_widget_ids(_widget_notebook("f" * 32, "0a" * 16, "1" * 32))
    again = tutorial.stable_widget_ids(_widget_notebook("3c" * 16, "e" * 32, "a1" * 16))  # another build's ids
    assert nbformat.writes(first) == nbformat.writes(again)
    assert first.cells[0].outputs[0].data["application/vnd.jupyter.widget-view+json"]["model_id"] == ids[0]
    state = first.metadata["widgets"]["application/vnd.jupyter.widget-state+json"]["state"]
    # the shown bar first, then the layout it refers to, then the one no output shows
    assert state == {ids[0]: {"state": {"layout": f"IPY_MODEL_{ids[1]}"}}, ids[1]: {"state": {"width": "1"}},
                     ids[2]: {"state": {"width": "2"}}}
    assert nbformat.writes(tutorial.stable_widget_ids(first)) == nbformat.writes(first)  # renumbering twice: same
    plain = nbformat.v4.new_notebook()
    assert tutorial.stable_widget_ids(plain) is plain


@pytest.mark.parametrize("src", SOURCES, ids=IDS)
def test_committed_notebook_shows_every_figure(src):
    nb = nbformat.read(src.with_suffix(".ipynb"), as_version=4)
    assert nb.metadata["lit_vlm"]["executed_with"].startswith(tutorial.BUILD_COMMAND)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.execution_count is not None for c in code), "every cell executed"
    assert not [o for o in _outputs(nb) if o.output_type == "error"]
    assert "mode: committed" in json.dumps([o.get("text", "") for o in _outputs(nb)])
    assert _figures(nb) >= MIN_FIGURES[src.stem[:2]]
    if src.stem[:2] in ("03", "04", "05"):  # these read the committed grid, and say so
        assert f"results/{tutorial.GRID}/results.csv" in nb.metadata["lit_vlm"]["inputs"]


def test_stale_detects_a_changed_source_and_a_changed_result(tmp_path):
    (tmp_path / "tutorials").mkdir()
    (tmp_path / "results" / "g").mkdir(parents=True)
    src, table = tmp_path / "tutorials" / "01_x.py", tmp_path / "results" / "g" / "results.csv"
    src.write_text("# %%\nprint(1)\n")
    table.write_text("a\n1\n")
    nb = nbformat.v4.new_notebook()
    nb.metadata["lit_vlm"] = {"source_sha256": tutorial._sha256(src),
                              "inputs": {"results/g/results.csv": tutorial._sha256(table)}}
    nbformat.write(nb, src.with_suffix(".ipynb"))
    assert tutorial.stale(src.with_suffix(".ipynb")) == []
    table.write_text("a\n2\n")
    assert tutorial.stale(src.with_suffix(".ipynb")) == [
        "01_x.ipynb: results/g/results.csv changed since it was executed"]
    src.write_text("# %%\nprint(2)\n")
    assert len(tutorial.stale(src.with_suffix(".ipynb"))) == 2


def test_bad_parameters_are_one_clear_line(tmp_path):
    with pytest.raises(tutorial.UserError, match="MODE = 'fast'.*committed, smoke, full"):
        tutorial.resolve_mode("fast")
    with pytest.raises(tutorial.UserError, match="GRID_RESULTS = .*nope.csv' is not a file"):
        tutorial.grid_results(str(tmp_path / "nope.csv"))


def test_mode_defaults(monkeypatch):
    monkeypatch.delenv("LIT_VLM_MODE", raising=False)
    monkeypatch.setenv("LIT_VLM_SMOKE", "0")
    assert tutorial.resolve_mode("") == "full"
    monkeypatch.setenv("LIT_VLM_SMOKE", "1")
    assert tutorial.resolve_mode("") == "smoke" and tutorial.resolve_mode("committed") == "committed"
    monkeypatch.setenv("LIT_VLM_MODE", "committed")
    assert tutorial.resolve_mode("") == "committed"


def _execute(src: Path, tmp_path: Path, parameters: dict | None = None):
    """Run the notebook in a fresh kernel in tmp_path; papermill injects `parameters` after the tagged cell."""
    import papermill

    before = [p.exists() for p in STRAYS]
    if parameters is None:
        nb = jupytext.read(src)
        nbclient.NotebookClient(nb, timeout=CELL_TIMEOUT, kernel_name="python3",
                                resources={"metadata": {"path": str(tmp_path)}}).execute()
    else:
        given = tmp_path / src.with_suffix(".ipynb").name
        jupytext.write(jupytext.read(src), given)
        nb = papermill.execute_notebook(str(given), str(tmp_path / "out.ipynb"), parameters=parameters,
                                        kernel_name="python3", cwd=str(tmp_path), progress_bar=False,
                                        execution_timeout=CELL_TIMEOUT)
    assert not [o for o in _outputs(nb) if o.output_type == "error"]
    assert [p.exists() for p in STRAYS] == before, "a notebook wrote into the repository"
    return nb


@pytest.mark.parametrize("src", SOURCES, ids=IDS)
def test_notebook_runs_in_smoke_mode(src, kernel_env, monkeypatch, tmp_path):
    monkeypatch.setenv("LIT_VLM_SMOKE", "1")
    nb = _execute(src, tmp_path)  # timings: bench/bench_notebooks.py
    assert "mode: smoke" in json.dumps([o.get("text", "") for o in _outputs(nb)])
    assert _figures(nb) >= 1, "every tutorial draws at least one figure"


@pytest.mark.slow
@pytest.mark.parametrize("src", SOURCES, ids=IDS)
def test_notebook_full_mode_path_runs_with_tiny_overrides(src, kernel_env, work_dir, tmp_path):
    params = {"MODE": "full", "WORK_DIR": str(work_dir / "full"), **FULL_OVERRIDES[src.stem[:2]]}
    own_grid = work_dir / "full" / "grid03_full" / "results.csv"  # written by 03 (run first, in order)
    if src.stem[:2] in ("04", "05") and own_grid.is_file():
        params["GRID_RESULTS"] = str(own_grid)
    nb = _execute(src, tmp_path, params)
    text = json.dumps([c.get("outputs", []) for c in nb.cells])
    assert "mode: full" in text
    if src.stem[:2] == "03":
        assert own_grid.is_file() and "this grid's table" in text
    if "GRID_RESULTS" in params:
        assert str(own_grid) in text
    shutil.rmtree(tmp_path, ignore_errors=True)


def test_build_and_check_take_notebook_names():
    assert [p.stem[:2] for p in tutorial.sources(["04", "06_query"])] == ["04", "06"]
    with pytest.raises(tutorial.UserError, match="no tutorial 07; there are 01_anatomy"):
        tutorial.sources(["07"])
    assert tutorial.main(["check", "07"]) == 2 and tutorial.main(["bogus"]) == 2
