"""environment.yml must stay equivalent to pyproject.toml, and .ci/run must run README's test command."""

import os
import re
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def _pyproject_requirements() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    reqs = project["dependencies"] + extras["test"] + extras["notebooks"]
    return {r.replace(" ", "") for r in reqs}


def _conda_pip_requirements() -> tuple[dict, set[str]]:
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    return env, {r.replace(" ", "") for r in pip if not r.startswith("-e")}


def test_environment_yml_matches_pyproject():
    env, conda = _conda_pip_requirements()
    assert "python=3.11" in env["dependencies"]
    assert conda == _pyproject_requirements(), (
        f"only in environment.yml: {sorted(conda - _pyproject_requirements())}; "
        f"only in pyproject: {sorted(_pyproject_requirements() - conda)}"
    )


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    command = re.search(r"(python -m pytest[^`\n]*)", readme).group(1).strip()
    assert command in (ROOT / ".ci" / "run").read_text()
    assert "constraints" in (ROOT / ".ci" / "run").read_text()


def test_torch_is_not_pinned_in_pyproject():
    # Colab users keep their own torch; the exact pin lives in .ci/constraints.txt only.
    assert not any(r.startswith("torch==") for r in _pyproject_requirements())
    assert "torch==2.13.0" in (ROOT / ".ci" / "constraints.txt").read_text()


# --- the Colab / pip path ------------------------------------------------------------------------------------
# What a pip install (not a clone) holds: built from the local files into a wheel, installed without
# dependencies into a fresh venv that sees this environment's packages (offline), and used from a temp dir.
PACKAGED_FILES = ["lit_vlm", "results", "configs", "pyproject.toml", "setup.py", "MANIFEST.in", "README.md"]
SETUP_FROM_WHEEL = r"""
import json, os, sys
from pathlib import Path

import jupytext, nbclient

nb = jupytext.read(sys.argv[1])  # notebook 03 in committed mode: finds, tabulates and plots the committed grid
os.environ.update(LIT_VLM_MODE="committed", LIT_VLM_WORK_DIR=str(Path.cwd() / "work"), MPLBACKEND="Agg")
nbclient.NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": "."}}).execute()
import lit_vlm
from lit_vlm import tutorial
outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
print(json.dumps({"lit_vlm": lit_vlm.__file__, "committed": str(tutorial.committed_results()),
                  "config": str(tutorial.committed_file("config.yaml")),
                  "errors": [o.get("ename") for o in outputs if o.output_type == "error"],
                  "figures": sum("image/png" in o.get("data", {}) for o in outputs),
                  "text": [o.get("text", "") for o in outputs if o.output_type == "stream"]}))
"""


@pytest.mark.slow
def test_a_pip_installed_kit_finds_the_committed_grid(tmp_path):
    import json
    import shutil
    import subprocess
    import sys

    src = tmp_path / "src"  # a copy, so that the build leaves nothing in the repository
    for name in PACKAGED_FILES:
        (shutil.copytree if (ROOT / name).is_dir() else shutil.copyfile)(
            ROOT / name, src / name, **({"ignore": shutil.ignore_patterns("__pycache__", "cells", "features")}
                                        if (ROOT / name).is_dir() else {}))
    run = dict(capture_output=True, text=True, timeout=600)
    wheel = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                            "--no-index", "-w", str(tmp_path / "dist"), str(src)], **run)
    assert wheel.returncode == 0, wheel.stderr[-2000:]
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True, **run)
    python = venv / "bin" / "python"
    install = subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index",
                              *map(str, (tmp_path / "dist").glob("lit_vlm-*.whl"))], **run)
    assert install.returncode == 0, install.stderr[-2000:]
    (tmp_path / "use").mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "LIT_VLM_MODE", "LIT_VLM_SMOKE")}
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", PATH=f"{venv / 'bin'}:{env['PATH']}")
    proc = subprocess.run([str(python), "-c", SETUP_FROM_WHEEL, str(ROOT / "tutorials" / "03_train_a_mini_grid.py")],
                          cwd=tmp_path / "use", env=env, **run)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    installed = venv / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages" / "lit_vlm"
    assert Path(got["lit_vlm"]).parent == installed  # the wheel's copy, not the clone
    assert got["committed"] == str(installed / "_committed" / "cpu_law" / "results.csv")
    assert Path(got["committed"]).read_bytes() == (ROOT / "results" / "cpu_law" / "results.csv").read_bytes()
    assert got["config"] == str(installed / "_committed" / "cpu_law" / "config.yaml")
    assert not got["errors"] and got["figures"] >= 1
    assert any("committed grid: lit_vlm/_committed/cpu_law/results.csv" in t for t in got["text"]), got["text"]
