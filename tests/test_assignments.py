"""The course assignments: the autograder passes the reference solutions, fails the student stubs and a
submission that delegates to the kit, and the student release holds no solution.

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
    assert sorted(counts) == FILES + ["integrity"], counts  # the hidden checks ran too
    assert all(c["failed"] == 0 and c["passed"] > 0 for c in counts.values()), counts


# Each file answers with the kit's own code; a3 is the re-export that passed every public check before the
# hidden checks existed.
DELEGATING = {
    "a1_compressor": """
from lit_vlm.model.compressors import COMPRESSORS, Compressor

AvgPoolCompressor = COMPRESSORS["avgpool"]
LearnedQueryResampler = COMPRESSORS["perceiver"]
""",
    "a2_flops": """
from lit_vlm.flops import inference_flops, measure_prefill


def non_embedding_params(llm):
    return sum(p.numel() for p in llm.parameters()) - llm.get_input_embeddings().weight.numel()


def text_tokens(batch):
    return float((batch["prompt_mask"].sum(1) - 1).float().mean())


def counted_prefill_flops(llm, q, v):
    return 0.0


def flops_ratio(vlm, batch):
    return measure_prefill(vlm, batch, repeats=1).ratio
""",
    "a3_scaling_law": """
from lit_vlm.scaling import fit_law, make_results, optimal_v_closed_form


def predict(params, n_billion, v):
    return params["A"] * n_billion ** -params["alpha"] * v ** -params["beta"] + params["D"]


def fit_multiplicative(n_billion, v, error):
    return dict(fit_law(make_results(n_billion, v, error=error), "multiplicative").params)


def optimal_v(params, q, v_min=1.0, v_max=576.0):
    return optimal_v_closed_form(params["alpha"], params["beta"], q, v_min, v_max)


def optimal_allocation(params, budget_flops, q, v_min=1.0, v_max=576.0):
    v = optimal_v(params, q, v_min, v_max)
    return budget_flops / (2.0 * (q + v)), v
""",
    "a4_ocr_compressor": """
import importlib

Compressor = importlib.import_module("lit_vlm.model.compressors").Compressor
TokenPacker = importlib.import_module("lit_vlm.model.compressors").COMPRESSORS["tokenpacker"]


class OCRCompressor(Compressor):
    def __init__(self, **kw):
        super().__init__(**kw)
        self.inner = TokenPacker(**kw)

    def compress(self, features, query):
        return self.inner.compress(features, query)
""",
}


def _hidden_integrity(submission: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "LIT_VLM_SUBMISSION": str(submission), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "pytest", str(ASSIGNMENTS / "autograder" / "hidden"), "-q", "-p", "no:cacheprovider",
         "-k", "interface", f"--basetemp={tmp_path / 'basetemp'}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )


def test_a_submission_that_delegates_to_the_kit_fails(tmp_path):
    folder = tmp_path / "delegating"
    folder.mkdir()
    for name, text in DELEGATING.items():
        (folder / f"{name}.py").write_text(text.lstrip())
    proc = _hidden_integrity(folder, tmp_path)
    assert proc.returncode == 1, proc.stdout[-3000:]
    for name in FILES:  # every assignment's import check fails, naming what was taken from the kit
        assert f"test_uses_only_the_interface_of_the_kit[{name}]" in proc.stdout, proc.stdout[-3000:]
    assert "4 failed" in proc.stdout, proc.stdout[-3000:]
    assert "from lit_vlm.scaling import fit_law, make_results, optimal_v_closed_form" in proc.stdout
    assert "reads .ratio" in proc.stdout and "import importlib" in proc.stdout


def test_an_honest_solution_passes_the_import_check(tmp_path):
    proc = _hidden_integrity(ASSIGNMENTS / "solutions", tmp_path)
    assert proc.returncode == 0 and "4 passed" in proc.stdout, proc.stdout[-3000:]


def _function_bodies(path: Path) -> set[str]:
    return {ast.dump(ast.Module(body=node.body, type_ignores=[]))
            for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and len(node.body) > 1}


def test_student_release_holds_stubs_and_public_checks_but_no_solution(tmp_path):
    out = tmp_path / "handout"
    proc = subprocess.run([sys.executable, str(ASSIGNMENTS / "make_release.py"), str(out)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert files == sorted(["README.md", *(f"student/{n}.py" for n in FILES), "autograder/conftest.py",
                            "autograder/ocr_probe.py", *(f"autograder/test_{n}.py" for n in FILES)]), files
    solution_bodies = set().union(*(_function_bodies(ASSIGNMENTS / "solutions" / f"{n}.py") for n in FILES))
    for path in out.rglob("*.py"):
        text = path.read_text()
        assert "solutions" not in text or path.name == "conftest.py", path  # conftest: "default: the solutions"
        assert not (_function_bodies(path) & solution_bodies), f"{path} contains a solution's function body"
    for name in FILES:  # every stub still refuses to run
        assert "raise NotImplementedError" in (out / "student" / f"{name}.py").read_text()
    again = subprocess.run([sys.executable, str(ASSIGNMENTS / "make_release.py"), str(out)], capture_output=True,
                           text=True, timeout=120)
    assert again.returncode == 2 and again.stderr.count("\n") == 1 and "exists" in again.stderr


def test_student_stubs_fail(tmp_path):
    rc, counts, out = grade(ASSIGNMENTS / "student", tmp_path)
    assert rc == 1, out  # 1 = tests failed (not a crash or a usage error)
    assert sorted(counts) == FILES + ["integrity"], counts
    assert counts["integrity"]["failed"] > 0, counts  # the hidden cases
    for name, c in ((n, counts[n]) for n in FILES):  # every assignment is graded, and the stubs earn (almost) nothing
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
