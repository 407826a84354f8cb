"""environment.yml must stay equivalent to pyproject.toml, and .ci/run must run README's test command."""

import re
import tomllib
from pathlib import Path

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
