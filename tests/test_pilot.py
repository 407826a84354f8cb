"""The experiment's pilot (bench/pilot.py): its gates, its configs and its bad-input messages."""

import importlib.util
import math
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lit_vlm.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("pilot", ROOT / "bench" / "pilot.py")
pilot = importlib.util.module_from_spec(spec)
spec.loader.exec_module(pilot)


def rows_for(errors: dict[int, float], v: int = 1) -> list[dict]:
    return [{"cell": f"n{n}", "llm_params": n, "visual_tokens": v, "family": "reasoning", "accuracy": 1 - e}
            for n, e in errors.items()]


def test_line_gate_passes_a_power_law_and_fails_a_plateau():
    law = {n: 2.0 * n ** -0.3 for n in (1_000, 4_000, 16_000, 64_000)}
    g = pilot.gate_line(rows_for(law), "reasoning", {"visual_tokens": 1, "min_r2": 0.98})
    assert g["pass"] and g["r2"] == pytest.approx(1.0) and g["slope"] == pytest.approx(-0.3, abs=1e-3)
    # cpu_mini's reasoning at V = 1: a plateau from the third size on
    plateau = {16_480: 0.456, 65_728: 0.378, 131_392: 0.2565, 524_928: 0.256}
    g = pilot.gate_line(rows_for(plateau), "reasoning", {"visual_tokens": 1, "min_r2": 0.98})
    assert not g["pass"] and g["r2"] < 0.98
    rising = {n: 0.1 * n ** 0.2 for n in law}  # a straight line, but error grows with N
    assert not pilot.gate_line(rows_for(rising), "reasoning", {"visual_tokens": 1, "min_r2": 0.98})["pass"]
    # other families and other V are ignored
    other = rows_for(plateau, v=4) + [{**r, "family": "ocr"} for r in rows_for(plateau)]
    assert pilot.gate_line(rows_for(law) + other, "reasoning", {"visual_tokens": 1, "min_r2": 0.98})["pass"]


def test_converged_and_seed_gates():
    spec_c = {"max_change": 0.005}
    assert pilot.gate_converged({"c": 0.700}, {"c": 0.703}, spec_c)["pass"]
    failed = pilot.gate_converged({"c": 0.700}, {"c": 0.720}, spec_c)
    assert not failed["pass"] and failed["change"] == pytest.approx(0.02)
    assert pilot.gate_seeds({"a": 0.70, "b": 0.71, "c": 0.705}, {"max_sd": 0.015})["pass"]
    noisy = pilot.gate_seeds({"a": 0.68, "b": 0.546, "c": 0.62}, {"max_sd": 0.015})
    assert not noisy["pass"] and noisy["sd"] == pytest.approx(0.0671, abs=1e-3)


@pytest.mark.parametrize("path", sorted((ROOT / "configs" / "pilot").glob("*.yaml")), ids=lambda p: p.name)
def test_every_pilot_config_loads(path):
    spec = pilot.load_pilot(path)
    assert {"line", "seeds"} <= set(spec)  # converged is optional: cpu_law stops training early by design
    cfg = pilot.part_config(spec["grid_config"], llms=spec["line"]["llms"], visual_tokens=[1], seeds=[0],
                            steps_factor=2)
    assert list(cfg["llms"]) == spec["line"]["llms"]
    assert cfg["trainer"]["max_steps"] == 2 * spec["grid_config"]["trainer"]["max_steps"]


@pytest.mark.parametrize("edit, needle", [
    ({"colour": "red"}, "unknown key 'colour'"),
    ({"grid": "configs/grid/nope.yaml"}, "does not exist"),
    ({"family": "maths"}, "family='maths'"),
    ({"seeds": {"llm": "llm-1b", "visual_tokens": 1, "seeds": [0, 1], "max_sd": 0.01}}, "'llm-1b' is not in"),
    ({"line": {"llms": ["llm-16k", "llm-66k"], "visual_tokens": 1, "min_r2": 0.98}}, "at least 3 LLM sizes"),
])
def test_bad_pilot_configs_are_one_line(tmp_path, edit, needle):
    base = yaml.safe_load((ROOT / "configs" / "pilot" / "cpu_mini.yaml").read_text())
    path = tmp_path / "pilot.yaml"
    path.write_text(yaml.safe_dump({**base, **edit}))
    with pytest.raises(UserError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        pilot.load_pilot(path)
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "pilot.py"), "--config", str(path)],
                          capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 2 and needle in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists()  # nothing written before the config is known to be good


def test_part_config_keeps_the_grid_exact():
    grid = yaml.safe_load((ROOT / "configs" / "grid" / "cpu_law.yaml").read_text())
    cfg = pilot.part_config(grid, llms=["llm-w16"], visual_tokens=[1], seeds=[0])
    # yaml round trip of the derived grid keeps integer keys (ocr_cells) and every other section
    again = yaml.safe_load(yaml.safe_dump(cfg, sort_keys=False))  # as run_part writes it
    cells = again["data"]["task_options"]["ocr_cells"]
    assert again["data"] == grid["data"] and list(cells) == [64, 32, 16, 8, 4] and all(isinstance(c, int) for c in cells)
    assert grid["llms"].keys() != cfg["llms"].keys()  # the grid itself is not modified


def test_ocr_v_gate_tells_a_power_law_from_a_step():
    def rows(errors):
        return [{"cell": f"v{v}", "visual_tokens": v, "family": "ocr", "accuracy": 1 - e} for v, e in errors.items()]

    graded = {1: 0.8, 4: 0.4, 16: 0.2, 64: 0.1}
    assert pilot.gate_ocr_v(rows(graded), {"min_r2": 0.95})["pass"]
    step = {1: 0.85, 4: 0.86, 16: 0.8, 64: 0.01}  # cpu_mini's OCR: nothing until V = 64
    assert not pilot.gate_ocr_v(rows(step), {"min_r2": 0.95})["pass"]


@pytest.mark.slow
def test_the_pilot_runs_every_gate_through_the_grid(tmp_path):
    """A tiny grid end to end: each part is a real grid run, the verdict names every gate, the exit code agrees."""
    import json

    llm = {"model_type": "llama", "num_layers": 1, "num_heads": 2}
    grid = {
        "out_dir": str(tmp_path / "unused"),
        "llms": {f"w{h}": {**llm, "hidden_size": h} for h in (8, 16, 32)},
        "visual_tokens": [1, 4], "compressors": ["avgpool"], "seeds": [0],
        "vision": {"image_size": 32, "patch_size": 8, "hidden_size": 16, "num_layers": 1, "num_heads": 2,
                   "intermediate_size": 32},
        "model": {"max_new_tokens": 3},
        "data": {"data_dir": str(tmp_path / "data"), "num_train": 64, "num_val": 16, "num_test": 32,
                 "batch_size": 16, "eval_batch_size": 32},
        "trainer": {"accelerator": "cpu", "max_steps": 3, "enable_model_summary": False, "enable_progress_bar": False},
        "tower": {"checkpoint": str(tmp_path / "tower.safetensors"), "max_steps": 2},
        "num_threads": 1,
    }
    (tmp_path / "grid.yaml").write_text(yaml.safe_dump(grid))
    spec = {"grid": str(tmp_path / "grid.yaml"), "out_dir": str(tmp_path / "pilot"), "family": "reasoning",
            "line": {"llms": ["w8", "w16", "w32"], "visual_tokens": 1, "seed": 0, "min_r2": 0.5},
            "converged": {"llm": "w32", "visual_tokens": 1, "factor": 2, "max_change": 0.5},
            "seeds": {"llm": "w16", "visual_tokens": 1, "seeds": [0, 1], "max_sd": 0.5},
            "ocr_v": {"llm": "w8", "visual_tokens": [1, 4], "seed": 0, "min_r2": 0.0}}
    (tmp_path / "pilot.yaml").write_text(yaml.safe_dump(spec))
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "pilot.py"), "--config", str(tmp_path / "pilot.yaml")],
                          capture_output=True, text=True)
    verdict = json.loads((tmp_path / "pilot" / "pilot.json").read_text())
    assert list(verdict["gates"]) == ["line", "converged", "seeds", "ocr_v"], done.stderr[-2000:]
    assert done.returncode == (0 if all(g["pass"] for g in verdict["gates"].values()) else 1)
    assert len(verdict["gates"]["line"]["points"]) == 3 and len(verdict["gates"]["seeds"]["accuracies"]) == 2
    longer = yaml.safe_load((tmp_path / "pilot" / "converged" / "grid.yaml").read_text())
    assert longer["trainer"]["max_steps"] == 6 and list(longer["llms"]) == ["w32"]
    for gate in verdict["gates"]:
        assert f"gate {gate}: " in done.stdout
