"""The training step with the LLM's last layer at the answer positions only (model.fast_answer_loss,
lit_vlm/model/answer_loss.py) against the full model's, for every (LLM, V) of a grid, side by side.

    python bench/bench_answer_loss.py [--config configs/grid/cpu_law.yaml] [--steps 30] [--reps 2] \
        [--cells llm-w96:64,llm-w16:1] [--out bench/results/answer_loss_cpu_law]

Each cell is built as ``lit_vlm.grid.cell.run_cell`` builds it (one thread, the feature cache of a random tower
attached by row, the loss logged on the logger's steps only) and trained for --steps steps, once with the full
model's loss and once with fast_answer_loss, the two interleaved and their order swapped each rep. The report
gives each cell's median step and the ratio, and the whole grid's: every cell trains the same number of steps,
so the sum of the cells' steps is the grid's training time up to a factor. It also gives the largest difference
between the two losses on each cell's first batch (same weights): float rounding, not a different loss.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_step_overhead import build, fresh_cell_data, measure_and_write, run_means, run_once  # noqa: E402
from lit_vlm.grid import Cell, load_config, validate  # noqa: E402
from lit_vlm.grid.cache import attach  # noqa: E402

PATHS = ("full model", "fast answer loss")


def parse_cells(text: str | None, cfg) -> list[tuple[str, int]]:
    """--cells "llm:V,llm:V" (default: every LLM of the config at every V), checked against the config."""
    if not text:
        return [(llm, v) for llm in cfg.llms for v in cfg.visual_tokens]
    cells = []
    for part in text.split(","):
        llm, _, v = part.strip().partition(":")
        if llm not in cfg.llms or not v.isdigit() or int(v) < 1:
            sys.exit(f"--cells: {part.strip()!r} is not LLM:V with an LLM of the config ({', '.join(cfg.llms)}) "
                     "and V >= 1")
        cells.append((llm, int(v)))
    return cells


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="configs/grid/cpu_law.yaml")
    ap.add_argument("--cells", default=None, help="LLM:V pairs, comma-separated (default: the config's every pair)")
    ap.add_argument("--steps", type=int, default=30, help="training steps per run (the first is not timed)")
    ap.add_argument("--reps", type=int, default=2, help="runs of each path per cell, interleaved")
    ap.add_argument("--out", default=None, help="writes OUT.json and OUT.md (default: print only)")
    args = ap.parse_args()
    if args.steps < 3 or args.reps < 1:
        sys.exit(f"--steps={args.steps} --reps={args.reps}: give steps >= 3 and reps >= 1")
    torch.set_num_threads(1)
    cfg = validate(load_config(args.config))
    cells = parse_cells(args.cells, cfg)
    measure_and_write(lambda tmp: measure(args, cfg, cells, tmp), "bench-answer-loss-", report, args.out)


def first_batch_losses(cfg, cell, tower_state, store, dm_args, root) -> tuple[float, float]:
    """Both losses of a freshly built cell on its first training batch (the same weights)."""
    module, dm, _ = build(cfg, cell, tower_state, dm_args, "lean loop", 1, root)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    with attach(module.vlm, store), torch.no_grad():
        return module.vlm.loss(batch).item(), module.vlm.loss(batch, fast=True).item()


def measure(args, cfg, cells, tmp: Path) -> dict:
    cfg, dm_args, tower_state, store = fresh_cell_data(cfg, args.steps, tmp)
    configs = {p: replace(cfg, model={**cfg.model, "fast_answer_loss": p == PATHS[1]}) for p in PATHS}
    per_cell = []
    for llm, v in cells:
        cell = Cell(llm=llm, visual_tokens=v, compressor=cfg.compressors[0], seed=cfg.seeds[0])
        times = {p: [] for p in PATHS}
        for rep in range(args.reps):
            for path in (PATHS if rep % 2 == 0 else PATHS[::-1]):
                timer, *_ = run_once(configs[path], cell, tower_state, store, dm_args, "lean loop", args.steps,
                                     tmp / cell.id / path.replace(" ", "-"))
                times[path].append(run_means(timer)["total"] * 1e3)
        full, fast = first_batch_losses(cfg, cell, tower_state, store, dm_args, tmp / cell.id / "loss")
        ms = {p: statistics.median(t) for p, t in times.items()}
        per_cell.append({"cell": cell.id, "llm": llm, "visual_tokens": v, "step_ms": ms,
                         "speedup": ms[PATHS[0]] / ms[PATHS[1]], "first_loss_full": full, "first_loss_fast": fast})
        print(f"{cell.id}: {ms[PATHS[0]]:.2f} ms -> {ms[PATHS[1]]:.2f} ms ({per_cell[-1]['speedup']:.2f}x); "
              f"first-batch loss {full:.6f} vs {fast:.6f}", flush=True)
    total = {p: sum(c["step_ms"][p] for c in per_cell) for p in PATHS}
    return {
        "config": args.config, "threads": torch.get_num_threads(), "steps_per_run": args.steps, "reps": args.reps,
        "cells": per_cell,
        "sum_step_ms": total, "grid_speedup": total[PATHS[0]] / total[PATHS[1]],
        "max_first_loss_abs_diff": max(abs(c["first_loss_full"] - c["first_loss_fast"]) for c in per_cell),
    }


def report(r: dict) -> str:
    lines = [
        f"# The step with fast_answer_loss against the full model's ({r['config']}, {r['threads']} thread)", "",
        f"`{r['command']}` on {r['machine']}; per cell {r['reps']} runs of each path of {r['steps_per_run']} "
        "steps, interleaved (the order swapped each rep); each run's mean step (its first step not timed), median "
        "over runs. A shared machine: read the ratios, not the absolute times.", "",
        f"- all cells' steps summed (each cell trains the same steps, so this is the grid's training time up to a "
        f"factor): {r['sum_step_ms'][PATHS[0]]:.1f} ms -> {r['sum_step_ms'][PATHS[1]]:.1f} ms, "
        f"**{r['grid_speedup']:.2f}x**",
        f"- the two losses on each cell's first batch (same weights) differ by at most "
        f"{r['max_first_loss_abs_diff']:.2e}: float rounding", "",
        "| cell | full model ms | fast answer loss ms | speedup | first-batch loss, full | fast |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for c in r["cells"]:
        lines.append(f"| {c['cell']} | {c['step_ms'][PATHS[0]]:.2f} | {c['step_ms'][PATHS[1]]:.2f} | "
                     f"{c['speedup']:.2f}x | {c['first_loss_full']:.6f} | {c['first_loss_fast']:.6f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
