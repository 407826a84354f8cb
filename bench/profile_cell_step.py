"""Where a grid cell's training step goes, op by op (torch.profiler, one thread, the step run_cell runs): how much
of it a cut that keeps every number bitwise (the loop, the data, the logging) could still save, and how much is
the arithmetic itself.

    python bench/profile_cell_step.py --config configs/grid/cpu_law.yaml --llm llm-w96 --visual-tokens 64 \
        --out bench/results/profile_step_cpu_law_w96_v64 [--precision bf16-mixed]

The cell is built as bench/bench_step_overhead.py's "lean loop" path builds it (a random tower, the feature cache
keyed by row, over fresh rows in a temporary folder). Every op's self time is summed by kind; the report gives
each kind's share of the profiled steps and the ops that cost most.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lit_vlm.grid import Cell, load_config, validate  # noqa: E402
from lit_vlm.grid.cache import attach  # noqa: E402
from bench_step_overhead import build, fresh_cell_data, measure_and_write  # noqa: E402 - bench/, next to this script

KINDS = {  # op name -> kind; the first kind whose words the name contains
    "matmul": ("aten::mm", "aten::addmm", "aten::bmm", "aten::linear"),
    "attention": ("scaled_dot_product",),
    "elementwise and reductions": ("aten::mul", "aten::add", "aten::silu", "aten::gelu", "aten::div", "aten::pow",
                                   "aten::neg", "aten::sum", "aten::mean", "aten::rsqrt", "aten::sqrt",
                                   "aten::where", "aten::lerp", "aten::addc", "aten::_foreach", "softmax",
                                   "aten::exp", "aten::sub"),
    "copies and layout": ("aten::copy_", "aten::cat", "aten::gather", "aten::scatter", "aten::fill_",
                          "aten::zero", "aten::index", "aten::clone", "aten::contiguous", "aten::empty"),
}


def kind_of(name: str) -> str:
    return next((k for k, words in KINDS.items() if any(w in name for w in words)), "everything else")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="configs/grid/cpu_law.yaml")
    ap.add_argument("--llm", default="llm-w96")
    ap.add_argument("--visual-tokens", type=int, default=64)
    ap.add_argument("--steps", type=int, default=40, help="training steps profiled")
    ap.add_argument("--precision", default=None,
                    help="the Trainer's precision for this run, e.g. bf16-mixed (default: the config's)")
    ap.add_argument("--out", default=None, help="writes OUT.json and OUT.md (default: print only)")
    args = ap.parse_args()
    if args.steps < 2:
        sys.exit(f"--steps={args.steps} is too small: give at least 2")
    torch.set_num_threads(1)
    cfg = validate(load_config(args.config))
    if args.llm not in cfg.llms:
        sys.exit(f"--llm {args.llm!r} is not an LLM of {args.config}; it has {', '.join(cfg.llms)}")
    if args.visual_tokens < 1:
        sys.exit(f"--visual-tokens={args.visual_tokens} must be a positive number of visual tokens")
    measure_and_write(lambda tmp: measure(args, cfg, tmp), "bench-profile-", report, args.out)


def measure(args, cfg, tmp: Path) -> dict:
    precision = {"precision": args.precision} if args.precision else {}
    cfg, dm_args, tower_state, store = fresh_cell_data(cfg, args.steps, tmp, **precision)
    cell = Cell(llm=args.llm, visual_tokens=args.visual_tokens, compressor=cfg.compressors[0], seed=cfg.seeds[0])
    module, dm, trainer = build(cfg, cell, tower_state, dm_args, "lean loop", args.steps, tmp / "cell")
    with attach(module.vlm, store, dm, trainer), profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        trainer.fit(module, dm)
        seconds = time.perf_counter() - start
    ops = [(e.key, e.self_cpu_time_total / 1e3, e.count) for e in prof.key_averages()]
    total = sum(ms for _, ms, _ in ops)
    kinds: dict[str, float] = {}
    for name, ms, _ in ops:
        kinds[kind_of(name)] = kinds.get(kind_of(name), 0.0) + ms
    top = sorted(ops, key=lambda o: -o[1])[:15]
    return {
        "cell": cell.id, "config": args.config, "threads": torch.get_num_threads(), "steps": args.steps,
        "precision": str(cfg.trainer.get("precision") or "32-true"),
        "step_ms_under_profiler": seconds / args.steps * 1e3,
        "self_cpu_ms_per_step": total / args.steps,
        "kinds_ms_per_step": {k: v / args.steps for k, v in sorted(kinds.items(), key=lambda kv: -kv[1])},
        "top_ops": [{"op": n, "kind": kind_of(n), "ms_per_step": ms / args.steps, "calls_per_step": c / args.steps}
                    for n, ms, c in top],
    }


def report(r: dict) -> str:
    total = r["self_cpu_ms_per_step"]
    lines = [f"# Where a training step of {r['cell']} goes ({r['config']}, {r['threads']} thread, {r['precision']})", "",
             f"`{r['command']}` on {r['machine']}: {r['steps']} steps under torch.profiler, "
             f"{r['step_ms_under_profiler']:.1f} ms a step (the profiler adds its own cost: read the shares).", "",
             "| kind of op | ms a step | share |", "| --- | ---: | ---: |"]
    lines += [f"| {k} | {v:.2f} | {v / total:.0%} |" for k, v in r["kinds_ms_per_step"].items()]
    lines += ["", "| op (self time) | kind | ms a step | calls a step |", "| --- | --- | ---: | ---: |"]
    lines += [f"| {o['op'][:60]} | {o['kind']} | {o['ms_per_step']:.2f} | {o['calls_per_step']:.0f} |"
              for o in r["top_ops"]]
    lines += ["", "\"everything else\" holds the Python between ops (the optimizer's and the loop's self time, the",
              "data loader) as well as the ops no kind names."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
