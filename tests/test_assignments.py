"""The course assignments: the autograder passes the reference solutions and fails the student stubs.

Each run is a subprocess `pytest tutorials/assignments/autograder` with LIT_VLM_SUBMISSION pointing at a
folder, exactly as an instructor grades a student's copy (tutorials/assignments/INSTRUCTOR.md). Offline, CPU,
about half a minute each.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ASSIGNMENTS = ROOT / "tutorials" / "assignments"
FILES = ["a1_compressor", "a2_flops", "a3_scaling_law", "a4_ocr_compressor"]


def grade(submission: Path, tmp_path: Path) -> tuple[int, dict[str, dict[str, int]], str]:
    """Run the autograder on `submission`; return (exit code, {test file: {passed, failed}}, output)."""
    report = tmp_path / "report.xml"
    env = {**os.environ, "LIT_VLM_SUBMISSION": str(submission), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "MPLBACKEND": "Agg"}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", str(ASSIGNMENTS / "autograder"), "-q", "-p", "no:cacheprovider",
         f"--junitxml={report}", f"--basetemp={tmp_path / 'basetemp'}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    counts: dict[str, dict[str, int]] = {}
    for case in ET.parse(report).getroot().iter("testcase"):
        name = case.get("classname", "").rsplit(".", 1)[-1].removeprefix("test_")
        bad = case.find("failure") is not None or case.find("error") is not None
        entry = counts.setdefault(name, {"passed": 0, "failed": 0})
        entry["failed" if bad else "passed"] += 1
    return proc.returncode, counts, proc.stdout[-3000:] + proc.stderr[-2000:]


def test_solutions_pass(tmp_path):
    rc, counts, out = grade(ASSIGNMENTS / "solutions", tmp_path)
    assert rc == 0, out
    assert sorted(counts) == FILES, counts
    assert all(c["failed"] == 0 and c["passed"] > 0 for c in counts.values()), counts


def test_student_stubs_fail(tmp_path):
    rc, counts, out = grade(ASSIGNMENTS / "student", tmp_path)
    assert rc == 1, out  # 1 = tests failed (not a crash or a usage error)
    assert sorted(counts) == FILES, counts
    for name, c in counts.items():  # every assignment is graded, and the stubs earn (almost) nothing
        assert c["failed"] > 0 and c["passed"] <= 1, (name, c)


def test_missing_submission_file_fails_clearly(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    env = {**os.environ, "LIT_VLM_SUBMISSION": str(empty), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", str(ASSIGNMENTS / "autograder" / "test_a3_scaling_law.py"), "-q", "-x",
         "-p", "no:cacheprovider", f"--basetemp={tmp_path / 'basetemp'}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 1
    assert "has no a3_scaling_law.py" in proc.stdout


def _public_api(path: Path) -> dict[str, str]:
    """Top-level public functions (with signatures) and classes (bases, and whether they define __init__ and
    compress): what the autograder calls."""
    api = {}
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.FunctionDef) and not node.name.startswith("_"):
            api[node.name] = ast.unparse(node.args)
        elif isinstance(node, ast.ClassDef):
            api[node.name] = ", ".join(ast.unparse(b) for b in node.bases)
            for item in node.body:
                if isinstance(item, ast.FunctionDef) and item.name in ("__init__", "compress"):
                    api[f"{node.name}.{item.name}"] = "defined"
    return api


@pytest.mark.parametrize("name", FILES)
def test_student_and_solution_have_the_same_interface(name):
    student = _public_api(ASSIGNMENTS / "student" / f"{name}.py")
    solution = _public_api(ASSIGNMENTS / "solutions" / f"{name}.py")
    assert student == solution
