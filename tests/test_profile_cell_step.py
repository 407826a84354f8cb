"""bench/profile_cell_step.py: profiles the step run_cell runs, sums every op's time by kind, refuses a bad LLM."""

import json
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from profile_cell_step import kind_of  # noqa: E402
from test_step_overhead import GRID  # noqa: E402 - the smallest cell's tiny grid, shared


def test_ops_are_sorted_into_kinds():
    assert kind_of("aten::mm") == kind_of("aten::addmm") == "matmul"
    assert kind_of("aten::_scaled_dot_product_flash_attention_for_cpu") == "attention"
    assert kind_of("aten::silu_backward") == kind_of("aten::mul") == "elementwise and reductions"
    assert kind_of("aten::copy_") == "copies and layout"
    assert kind_of("Optimizer.step#AdamW.step") == "everything else"


def _run(tmp_path, *args):
    cfg = tmp_path / "grid.yaml"
    cfg.write_text(yaml.safe_dump({**GRID, "out_dir": str(tmp_path / "grid")}))
    return subprocess.run([sys.executable, "bench/profile_cell_step.py", "--config", str(cfg), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


def test_profile_of_a_tiny_cell(tmp_path):
    done = _run(tmp_path, "--llm", "xs", "--visual-tokens", "1", "--steps", "3", "--out", str(tmp_path / "p"))
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads((tmp_path / "p.json").read_text())
    kinds = result["kinds_ms_per_step"]
    assert kinds["matmul"] > 0 and kinds["attention"] > 0
    assert abs(sum(kinds.values()) - result["self_cpu_ms_per_step"]) < 1e-6 * result["self_cpu_ms_per_step"] + 1e-9
    assert result["steps"] == 3 and len(result["top_ops"]) == 15
    assert "| matmul |" in (tmp_path / "p.md").read_text()


def test_profile_refuses_an_unknown_llm(tmp_path):
    done = _run(tmp_path, "--llm", "nope")
    assert done.returncode != 0 and not (tmp_path / "p.json").exists()
    assert done.stderr.strip().splitlines()[-1] == "--llm 'nope' is not an LLM of " + str(tmp_path / "grid.yaml") + "; it has xs"
