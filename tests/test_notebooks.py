"""The tutorial notebooks run top to bottom in smoke mode, offline, on a CPU, without an error.

Each notebook is executed with nbclient in a fresh kernel whose working directory is a temporary folder;
LIT_VLM_WORK_DIR points all of them at one shared temporary work folder (data cache, towers, grids), in
order 01 -> 06, so notebooks 04 and 05 find the grid notebook 03 wrote - as they would for a user running them
in sequence. Nothing is written into the repository.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import nbclient
import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
TUTORIALS = ROOT / "tutorials"
NOTEBOOKS = sorted(TUTORIALS.glob("0*.ipynb"))
CELL_TIMEOUT = 300  # seconds per cell; smoke mode needs well under 30
ENV = {"LIT_VLM_SMOKE": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "MPLBACKEND": "Agg",
       "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


@pytest.fixture(scope="module")
def work_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("tutorials_work")


@pytest.fixture()
def kernel_env(monkeypatch, work_dir):
    # the kernel inherits the environment of this process
    for key, value in {**ENV, "LIT_VLM_WORK_DIR": str(work_dir)}.items():
        monkeypatch.setenv(key, value)


def test_there_are_six_notebooks():
    assert [p.stem[:2] for p in NOTEBOOKS] == ["01", "02", "03", "04", "05", "06"]


def test_notebooks_match_their_generator():
    """tutorials/_build.py is the source of truth; the .ipynb files must be what it builds."""
    proc = subprocess.run([sys.executable, str(TUTORIALS / "_build.py"), "--check"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_structure(path):
    nb = nbformat.read(path, as_version=4)
    first = nb.cells[0].source
    badge = f"colab.research.google.com/github/lit-vlm/lit_vlm/blob/main/tutorials/{path.name}"
    assert first.startswith("# ") and badge in first
    assert "except ImportError" in nb.cells[1].source and "run_line_magic" in nb.cells[1].source
    tagged = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1 and "SMOKE" in tagged[0].source and "LIT_VLM_SMOKE" in tagged[0].source
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), "store notebooks without outputs"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_in_smoke_mode(path, kernel_env, tmp_path):
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=CELL_TIMEOUT, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    # where a stray default would land in the repository (Lightning's logs, full mode's work folder)
    strays = [ROOT / "lightning_logs", ROOT / "runs" / "tutorials", TUTORIALS / "lightning_logs", TUTORIALS / "runs"]
    before = [p.exists() for p in strays]
    start = time.perf_counter()
    client.execute()  # raises CellExecutionError, naming the cell, on any error
    elapsed = time.perf_counter() - start
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
    figures = sum("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert figures >= 1, "every tutorial draws at least one figure"
    assert elapsed < 300, f"{path.name} took {elapsed:.0f}s in smoke mode (budget: 5 minutes)"
    assert [p.exists() for p in strays] == before, "a notebook wrote into the repository"
