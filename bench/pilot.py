"""The experiment's pilot: a few cells of a grid that say, before the full grid is paid for, whether the
scaling law can come out of it. Up to four gates, written down in the pilot's YAML before anything runs:

1. line       error (1 - accuracy) at one V against N, over the LLM sizes: is log error linear in log N?
              (R^2 of the least-squares line, at least ``min_r2``; and error must fall: slope < 0)
2. converged  the largest size trained ``factor`` x longer: does its accuracy move by less than
              ``max_change``? (if it moves more, the grid measures training time, not capacity)
3. seeds      one middle cell with several seeds: is the per-run standard deviation of accuracy at most
              ``max_sd``? (if not, neighbouring sizes drown in seed noise)
4. ocr_v      (optional) OCR error against V at one size: is log error linear in log V (``min_r2``), i.e.
              describable by the law's V^-beta, rather than one step?

    python bench/pilot.py --config configs/pilot/cpu_mini.yaml

Each part is an ordinary grid (the kit's own grid runner, so the cells are trained exactly as the grid trains
them) written to ``out_dir/<part>/``, derived from the pilot's ``grid`` config with fewer sizes, Vs or seeds. A
re-run resumes: finished cells are skipped by the grid. The verdict goes to ``out_dir/pilot.json`` and the exit
status is 1 when a gate fails (each failing gate is printed with its number and the bound it missed).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import statistics
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from lit_vlm.errors import UserError  # noqa: E402

GATES = ("line", "converged", "seeds", "ocr_v")


def load_pilot(path: Path) -> dict:
    if not path.is_file():
        raise UserError(f"--config {str(path)!r} does not exist; give a pilot YAML such as configs/pilot/cpu_mini.yaml")
    spec = yaml.safe_load(path.read_text()) or {}
    unknown = sorted(set(spec) - {"grid", "out_dir", "family", *GATES})
    if unknown:
        raise UserError(f"{path}: unknown key {unknown[0]!r}; allowed: grid, out_dir, family, {', '.join(GATES)}")
    for key in ("grid", "out_dir"):
        if key not in spec:
            raise UserError(f"{path}: missing {key!r}")
    grid_path = ROOT / spec["grid"] if not Path(spec["grid"]).is_absolute() else Path(spec["grid"])
    if not grid_path.is_file():
        raise UserError(f"{path}: grid={spec['grid']!r} does not exist")
    grid = yaml.safe_load(grid_path.read_text())
    if spec.get("family", "reasoning") not in ("reasoning", "ocr"):
        raise UserError(f"{path}: family={spec['family']!r}; allowed: reasoning, ocr")
    llms = set(grid["llms"])
    for gate in GATES:
        part = spec.get(gate)
        if part is None:
            continue
        named = part.get("llms", [part.get("llm")])
        bad = [n for n in named if n not in llms]
        if bad:
            raise UserError(f"{path}: {gate}: LLM {bad[0]!r} is not in {spec['grid']}; sizes there: {', '.join(llms)}")
    if "line" in spec and len(spec["line"]["llms"]) < 3:
        raise UserError(f"{path}: line: needs at least 3 LLM sizes to test a straight line, got {spec['line']['llms']}")
    if "seeds" in spec and len(spec["seeds"]["seeds"]) < 2:
        raise UserError(f"{path}: seeds: needs at least 2 seeds, got {spec['seeds']['seeds']}")
    return {**spec, "grid_config": grid}


def part_config(grid: dict, *, llms: list[str], visual_tokens: list[int], seeds: list[int],
                steps_factor: float = 1) -> dict:
    """The grid config of one part: the pilot's grid with fewer cells (and optionally longer training)."""
    cfg = copy.deepcopy(grid)
    cfg["llms"] = {name: grid["llms"][name] for name in llms}
    cfg["visual_tokens"] = visual_tokens
    cfg["seeds"] = seeds
    if steps_factor != 1:
        cfg["trainer"] = {**cfg.get("trainer", {}), "max_steps": int(cfg["trainer"]["max_steps"] * steps_factor)}
    return cfg


def run_part(name: str, cfg: dict, out_dir: Path) -> list[dict]:
    folder = out_dir / name
    folder.mkdir(parents=True, exist_ok=True)
    cfg = {**cfg, "out_dir": str(folder)}
    config = folder / "grid.yaml"
    config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    print(f"pilot: part {name!r}: python -m lit_vlm grid --config {config}", flush=True)
    done = subprocess.run([sys.executable, "-m", "lit_vlm", "grid", "--config", str(config)], cwd=ROOT)
    if done.returncode != 0:
        raise UserError(f"part {name!r}: the grid exited with {done.returncode} (its log: {folder / 'grid.log'})")
    import csv

    with (folder / "results.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def _acc(rows: list[dict], family: str, **match) -> dict[str, float]:
    """accuracy by cell id, for the rows of ``family`` matching every key=value in ``match``."""
    return {r["cell"]: float(r["accuracy"]) for r in rows
            if r["family"] == family and all(str(r[k]) == str(v) for k, v in match.items())}


def _loglog(points: list[tuple[float, float]]) -> tuple[float, float]:
    """(R^2, slope) of the least-squares line of log error against log x."""
    x = [math.log(a) for a, _ in points]
    y = [math.log(max(e, 1e-6)) for _, e in points]
    mx, my = statistics.fmean(x), statistics.fmean(y)
    slope = sum((a - mx) * (b - my) for a, b in zip(x, y)) / sum((a - mx) ** 2 for a in x)
    resid = sum((b - my - slope * (a - mx)) ** 2 for a, b in zip(x, y))
    total = sum((b - my) ** 2 for b in y)
    return (1 - resid / total if total > 0 else 0.0), slope


def gate_line(rows: list[dict], family: str, spec: dict) -> dict:
    points = sorted((int(r["llm_params"]), 1 - float(r["accuracy"])) for r in rows
                    if r["family"] == family and int(r["visual_tokens"]) == spec["visual_tokens"])
    r2, slope = _loglog(points)
    ok = r2 >= spec["min_r2"] and slope < 0
    out = {"pass": ok, "r2": round(r2, 4), "slope": round(slope, 4), "bound": f"R^2 >= {spec['min_r2']} and slope < 0",
           "points": [{"llm_params": n, "error": round(e, 4)} for n, e in points]}
    losses = sorted((int(r["llm_params"]), float(r["family_loss"])) for r in rows if r["family"] == family
                    and int(r["visual_tokens"]) == spec["visual_tokens"] and r.get("family_loss"))
    if len(losses) == len(points):  # not gated: the family's own loss, the smoother quantity a fit may use
        out["loss_r2"], out["loss_slope"] = (round(x, 4) for x in _loglog(losses))
    return out


def gate_ocr_v(rows: list[dict], spec: dict) -> dict:
    """OCR error against V at one size: must fall along a power law (graded OCR), not in one step."""
    points = sorted((int(r["visual_tokens"]), 1 - float(r["accuracy"])) for r in rows if r["family"] == "ocr")
    r2, slope = _loglog(points)
    ok = r2 >= spec["min_r2"] and slope < 0
    return {"pass": ok, "r2": round(r2, 4), "slope": round(slope, 4), "bound": f"R^2 >= {spec['min_r2']} and slope < 0",
            "points": [{"visual_tokens": v, "error": round(e, 4)} for v, e in points]}


def gate_converged(base: dict[str, float], longer: dict[str, float], spec: dict) -> dict:
    (cell, acc_long), = longer.items()
    change = acc_long - base[cell]
    return {"pass": abs(change) < spec["max_change"], "cell": cell, "accuracy": base[cell],
            "accuracy_longer": acc_long, "change": round(change, 4), "bound": f"|change| < {spec['max_change']}"}


def gate_seeds(accs: dict[str, float], spec: dict) -> dict:
    values = list(accs.values())
    sd = statistics.stdev(values)
    return {"pass": sd <= spec["max_sd"], "sd": round(sd, 4), "accuracies": accs, "bound": f"sd <= {spec['max_sd']}"}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", required=True, type=Path, help="a pilot YAML (configs/pilot/)")
    ap.add_argument("--gates", nargs="+", choices=GATES, default=None,
                    help="run only these gates, in this order (default: every gate in the YAML, in the order above)")
    args = ap.parse_args(argv)
    try:
        spec = load_pilot(args.config)
        grid, family, out = spec["grid_config"], spec.get("family", "reasoning"), ROOT / spec["out_dir"]
        verdict: dict = {"config": str(args.config), "grid": spec["grid"], "family": family, "gates": {}}
        base_rows: list[dict] = []

        def line(s):
            nonlocal base_rows
            base_rows = run_part("line", part_config(grid, llms=s["llms"], visual_tokens=[s["visual_tokens"]],
                                                     seeds=[s.get("seed", 0)]), out)
            return gate_line(base_rows, family, s)

        def converged(s):
            seed = spec.get("line", {}).get("seed", 0)
            cells = dict(llms=[s["llm"]], visual_tokens=[s["visual_tokens"]], seeds=[seed])
            base = _acc(base_rows, family, llm=s["llm"], visual_tokens=s["visual_tokens"])
            if not base:  # the line part did not train this cell: train it at the grid's own length
                base = _acc(run_part("converged_base", part_config(grid, **cells), out), family)
            longer = _acc(run_part("converged", part_config(grid, steps_factor=s["factor"], **cells), out), family)
            return gate_converged(base, longer, s)

        def seeds(s):
            rows = run_part("seeds", part_config(grid, llms=[s["llm"]], visual_tokens=[s["visual_tokens"]],
                                                 seeds=s["seeds"]), out)
            return gate_seeds(_acc(rows, family), s)

        def ocr_v(s):
            rows = run_part("ocr_v", part_config(grid, llms=[s["llm"]], visual_tokens=s["visual_tokens"],
                                                 seeds=[s.get("seed", 0)]), out)
            return gate_ocr_v(rows, s)

        run = {"line": line, "converged": converged, "seeds": seeds, "ocr_v": ocr_v}
        for name in args.gates or GATES:
            if name in spec:
                verdict["gates"][name] = run[name](spec[name])
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    (out / "pilot.json").write_text(json.dumps(verdict, indent=1) + "\n")
    failed = 0
    for name, g in verdict["gates"].items():
        figures = {k: v for k, v in g.items() if k in ("r2", "slope", "change", "sd")}
        print(f"gate {name}: {'PASS' if g['pass'] else 'FAIL'}  {figures}  (needs {g['bound']})")
        failed += not g["pass"]
    print(f"pilot: {len(verdict['gates']) - failed} of {len(verdict['gates'])} gates pass; {out / 'pilot.json'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
