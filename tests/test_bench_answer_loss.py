"""bench/bench_answer_loss.py: times a cell's step with and without fast_answer_loss, reports both losses, refuses
a bad --cells in one line."""

import json
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from test_step_overhead import GRID  # noqa: E402 - the smallest cell's tiny grid, shared


def _run(tmp_path, *args):
    cfg = tmp_path / "grid.yaml"
    cfg.write_text(yaml.safe_dump({**GRID, "visual_tokens": [1, 4], "out_dir": str(tmp_path / "grid")}))
    return subprocess.run([sys.executable, "bench/bench_answer_loss.py", "--config", str(cfg), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


def test_bench_of_a_tiny_grid(tmp_path):
    done = _run(tmp_path, "--steps", "3", "--reps", "1", "--out", str(tmp_path / "b"))
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads((tmp_path / "b.json").read_text())
    assert [c["cell"] for c in result["cells"]] == ["xs-V1-avgpool-s0", "xs-V4-avgpool-s0"]  # every (LLM, V)
    for c in result["cells"]:
        assert all(ms > 0 for ms in c["step_ms"].values())
        assert abs(c["first_loss_full"] - c["first_loss_fast"]) < 1e-5 * c["first_loss_full"]
    total = result["sum_step_ms"]
    assert abs(result["grid_speedup"] - total["full model"] / total["fast answer loss"]) < 1e-12
    assert "| xs-V4-avgpool-s0 |" in (tmp_path / "b.md").read_text()


def test_bench_refuses_a_bad_cell(tmp_path):
    done = _run(tmp_path, "--cells", "xs:0", "--out", str(tmp_path / "b"))
    assert done.returncode != 0 and not (tmp_path / "b.json").exists()
    assert done.stderr.strip().splitlines()[-1] == ("--cells: 'xs:0' is not LLM:V with an LLM of the config (xs) "
                                                    "and V >= 1")
