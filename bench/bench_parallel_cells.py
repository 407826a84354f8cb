"""The same grid cells run one after another with 2 threads vs two at a time (``--launcher local --workers 2``)
with 1 thread each, side by side in one run: cells per hour of each, their ratio, and each cell's metrics
compared between the two.

    python bench/bench_parallel_cells.py                        # 4 cells of configs/grid/cpu_mini.yaml
    python bench/bench_parallel_cells.py --llms llm-16k --visual-tokens 1 4 --max-steps 10 \\
        --num-train 256 --num-test 100 --out bench/results/parallel_cells_smoke      # a smoke run

Stage 0 (the config's committed tower when it exists) and the dataset are made once before either timing;
each timing is a whole ``run_grid`` (the feature cache, and for the parallel run the start-up of its two
long-lived workers, each paid once however many cells the worker then takes, included). The OS places the workers' threads (the
default); ``--pinned`` adds a third run with each worker bound to a core (``launch.pin_cores``). The metrics need not be bitwise equal: the sequential run's matrix
products reduce over 2 threads, the workers' over 1, a float sum in another order rounds differently, and
training carries those last-bit differences forward. The issue's target is a ratio of at least 1.8. Writes
``<out>.json`` and ``<out>.md``; only a ratio taken in one run on an otherwise idle machine means anything.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from lit_vlm.grid import load_config, load_or_train_tower, run_grid, validate  # noqa: E402
from lit_vlm.grid.config import LaunchConfig  # noqa: E402

METRICS = ("accuracy", "anls", "cer", "loss", "family_loss")


def read_metrics(table: Path) -> dict[str, dict[str, float]]:
    import csv

    with table.open(newline="") as f:
        return {f"{r['cell']}/{r['family']}": {m: float(r[m]) if r[m] != "" else math.nan for m in METRICS}
                for r in csv.DictReader(f)}


def train_seconds(table: Path) -> dict[str, float]:
    """Each cell's training time (the table's train_time_s; one value per cell)."""
    import csv

    with table.open(newline="") as f:
        return {r["cell"]: float(r["train_time_s"]) for r in csv.DictReader(f)}


def compare(a: dict, b: dict) -> dict:
    """Per metric, the largest |a - b| over every (cell, family), and whether all are bitwise equal."""
    assert a.keys() == b.keys(), (sorted(a), sorted(b))
    diffs = {m: max(abs(a[k][m] - b[k][m]) for k in a if not (math.isnan(a[k][m]) and math.isnan(b[k][m])))
             for m in METRICS}
    equal = all(a[k][m] == b[k][m] or (math.isnan(a[k][m]) and math.isnan(b[k][m])) for k in a for m in METRICS)
    return {"bitwise_equal": equal, "max_abs_diff": diffs}


def cells_per_worker(out_dir: Path) -> list[int]:
    """Cells each worker process ran, from the run's status files (lit_vlm/grid/worker.py)."""
    from collections import Counter

    from lit_vlm.grid.worker import read_statuses

    (run,) = (out_dir / "submitit" / "runs").iterdir()
    return sorted(Counter(s["pid"] for s in read_statuses(run).values()).values(), reverse=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="configs/grid/cpu_mini.yaml")
    ap.add_argument("--llms", nargs="*", default=["llm-16k", "llm-66k"], help="LLM sizes of the config (default: the two smallest of cpu_mini)")
    ap.add_argument("--visual-tokens", nargs="*", type=int, default=[1, 4])
    ap.add_argument("--seeds", nargs="*", type=int, default=[0])
    ap.add_argument("--max-steps", type=int, default=None, help="training steps per cell (default: the config's)")
    ap.add_argument("--num-train", type=int, default=None)
    ap.add_argument("--num-test", type=int, default=None)
    ap.add_argument("--tower", default=None, help="stage-0 checkpoint (default: the config's if it exists, else "
                                                "one trained into a temporary folder)")
    ap.add_argument("--tower-steps", type=int, default=None, help="stage-0 steps when one is trained")
    ap.add_argument("--threads", type=int, default=2, help="threads of the sequential run; the workers split them")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--pinned", action="store_true", help="also the local workers bound to a core each "
                    "(launch.pin_cores), a third run side by side")
    ap.add_argument("--out", default="bench/results/parallel_cells", help="writes <out>.json and <out>.md")
    args = ap.parse_args()

    base = validate(load_config(args.config))
    tmp = Path(tempfile.mkdtemp(prefix="bench-parallel-"))
    data = {**base.data, "data_dir": str(tmp / "data"), **({"num_train": args.num_train} if args.num_train else {}),
            **({"num_test": args.num_test} if args.num_test else {})}
    tower = args.tower or (base.tower.checkpoint if Path(base.tower.checkpoint).exists() else str(tmp / "tower.safetensors"))
    base = replace(base, data=data, tower=replace(base.tower, checkpoint=tower, train_if_missing=True,
                                                  **({"max_steps": args.tower_steps} if args.tower_steps else {})),
                   trainer={**base.trainer, "enable_progress_bar": False,
                            **({"max_steps": args.max_steps} if args.max_steps else {})},
                   llms={k: v for k, v in base.llms.items() if k in args.llms},
                   visual_tokens=args.visual_tokens, seeds=args.seeds)
    load_or_train_tower(replace(base, out_dir=str(tmp / "stage0")))  # stage 0 once, outside both timings
    from lit_vlm.data.datamodule import VLMDataModule

    VLMDataModule(**base.data).prepare_data()  # the dataset too: generated once, read by both runs
    os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])  # for the workers
    runs = {
        "sequential": replace(base, out_dir=str(tmp / "sequential"), num_threads=args.threads, launch=LaunchConfig()),
        "parallel": replace(base, out_dir=str(tmp / "parallel"), num_threads=args.threads,
                            launch=LaunchConfig(launcher="local", workers=args.workers)),
    }
    if args.pinned:
        runs["pinned"] = replace(base, out_dir=str(tmp / "pinned"), num_threads=args.threads,
                                 launch=LaunchConfig(launcher="local", workers=args.workers, pin_cores=True))
    n_cells = len(base.llms) * len(base.visual_tokens) * len(base.compressors) * len(base.seeds)
    seconds, metrics = {}, {}
    for name, cfg in runs.items():
        start = time.perf_counter()
        metrics[name] = read_metrics(run_grid(cfg))
        seconds[name] = time.perf_counter() - start
    # Where the ratio goes: the first cell once more, alone, with one thread. Its time against the sequential
    # run's (2 threads) is what 2 threads buy one cell; against the parallel run's (1 thread, side by side)
    # what two workers cost each other. K workers at 1 thread reach K x T(2 threads) / T(1 thread, side by side).
    first = next(iter(metrics["sequential"])).split("/")[0]
    alone = replace(base, out_dir=str(tmp / "alone"), num_threads=max(1, args.threads // args.workers),
                    launch=LaunchConfig())
    run_grid(alone, only=[first])
    train = {name: train_seconds(Path(cfg.out_dir) / "results.csv") for name, cfg in runs.items()}
    train["alone"] = train_seconds(Path(alone.out_dir) / "results.csv")
    per_hour = {name: n_cells * 3600 / s for name, s in seconds.items()}
    per_worker = cells_per_worker(Path(runs["parallel"].out_dir))
    ratio = per_hour["parallel"] / per_hour["sequential"]
    result = {
        "command": "python " + " ".join(sys.argv),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}",
        "config": args.config, "tower": tower, "cells": n_cells, "llms": list(base.llms), "visual_tokens": base.visual_tokens,
        "max_steps": base.trainer["max_steps"], "num_train": base.data["num_train"], "num_test": base.data["num_test"],
        "sequential": {"threads": args.threads, "seconds": round(seconds["sequential"], 2),
                       "cells_per_hour": round(per_hour["sequential"], 1)},
        "parallel": {"workers": args.workers, "threads_each": max(1, args.threads // args.workers),
                     "seconds": round(seconds["parallel"], 2), "cells_per_hour": round(per_hour["parallel"], 1),
                     "cells_per_worker": per_worker},
        "ratio": round(ratio, 3), "target": 1.8,
        "train_seconds": {"cell": first, "sequential_2_threads": train["sequential"][first],
                          "alone_1_thread": train["alone"][first], "side_by_side_1_thread": train["parallel"][first],
                          "all_cells_sequential": round(sum(train["sequential"].values()), 2),
                          "all_cells_side_by_side": round(sum(train["parallel"].values()), 2)},
        "metrics": compare(metrics["sequential"], metrics["parallel"]),
    }
    if args.pinned:
        result["pinned"] = {"seconds": round(seconds["pinned"], 2), "cells_per_hour": round(per_hour["pinned"], 1),
                            "ratio": round(per_hour["pinned"] / per_hour["sequential"], 3),
                            "side_by_side_1_thread": train["pinned"][first],
                            "metrics_vs_sequential": compare(metrics["sequential"], metrics["pinned"])}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    m = result["metrics"]
    lines = [
        f"# Parallel cells: {n_cells} cells of {args.config}, sequential vs --launcher local --workers {args.workers}",
        "", f"`{result['command']}`  ", f"{result['machine']}; max_steps {result['max_steps']}, "
        f"num_train {result['num_train']}, num_test {result['num_test']}", "",
        "| run | threads | seconds | cells per hour |", "|---|---|---|---|",
        f"| sequential | {args.threads} | {seconds['sequential']:.1f} | {per_hour['sequential']:.1f} |",
        f"| local, {args.workers} workers | {result['parallel']['threads_each']} each | {seconds['parallel']:.1f} | "
        f"{per_hour['parallel']:.1f} |",
        *([f"| local, {args.workers} workers, each bound to a core | {result['parallel']['threads_each']} each | "
           f"{seconds['pinned']:.1f} | {per_hour['pinned']:.1f} (ratio {result['pinned']['ratio']:.2f}; first cell "
           f"{result['pinned']['side_by_side_1_thread']:.1f} s) |"] if args.pinned else []), "",
        f"Ratio (parallel / sequential cells per hour): **{ratio:.2f}** (target >= 1.8: "
        f"{'met' if ratio >= 1.8 else 'NOT met'}). Each worker pays a process's start-up (imports, tower and "
        f"feature store) once, then takes cells until none is left (cells per worker: {per_worker}); short cells "
        "or a busy machine hide any gain: only a run on an otherwise idle machine with the config's full steps "
        "measures it.", "",
        f"Where it goes (training seconds from the tables; `{first}` also run alone at 1 thread): "
        f"{train['sequential'][first]:.1f} s with 2 threads, {train['alone'][first]:.1f} s alone at 1 thread "
        f"(2 threads buy one cell {train['alone'][first] / train['sequential'][first]:.2f}x), "
        f"{train['parallel'][first]:.1f} s at 1 thread beside another worker (the workers cost each other "
        f"{train['parallel'][first] / train['alone'][first]:.2f}x). Over all cells, training at 1 thread side by "
        f"side takes {sum(train['parallel'].values()) / sum(train['sequential'].values()):.2f}x the 2-thread "
        f"time, so {args.workers} workers can reach at most "
        f"{args.workers * sum(train['sequential'].values()) / sum(train['parallel'].values()):.2f}x on training; "
        "the rest is the driver, start-up and evaluation.", "",
        "Metrics per (cell, family): " + ("bitwise equal." if m["bitwise_equal"] else
                                           "not bitwise equal; largest |difference|: " +
                                           ", ".join(f"{k} {v:.3g}" for k, v in m["max_abs_diff"].items()) +
                                           ". The runs differ in threads per matrix product (2 vs 1): float sums "
                                           "reduce in another order, and training carries the last-bit "
                                           "differences forward."),
    ]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
