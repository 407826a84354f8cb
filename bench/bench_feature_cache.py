"""Feature cache vs recomputing vision features every step, side by side in one process.

    python bench/bench_feature_cache.py [--config configs/grid/cpu_smoke.yaml] [--out bench/results/feature_cache.txt]

Both runs share one stage-0 tower and one generated dataset (both made once, before timing) and run the same
cells; the cached run's time includes building the cache. Reports wall times and their ratio (these machines are shared and noisy, so
only the ratio taken in one run means anything).
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lit_vlm.grid import load_config, load_or_train_tower, run_grid, validate  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="configs/grid/cpu_smoke.yaml")
    ap.add_argument("--out", default="bench/results/feature_cache.txt")
    ap.add_argument("--tower", default=None, help="use this stage-0 checkpoint instead of training one")
    ap.add_argument("--llms", nargs="*", default=None, help="only these LLM sizes of the config")
    ap.add_argument("--visual-tokens", nargs="*", type=int, default=None, help="only these V")
    ap.add_argument("--max-steps", type=int, default=None, help="training steps per cell")
    args = ap.parse_args()
    base = validate(load_config(args.config))
    tmp = Path(tempfile.mkdtemp(prefix="bench-cache-"))
    tower = args.tower or str(tmp / "tower.safetensors")
    base = replace(base, data={**base.data, "data_dir": str(tmp / "data")},
                   tower=replace(base.tower, checkpoint=tower),
                   trainer={**base.trainer, "enable_progress_bar": False,
                            **({"max_steps": args.max_steps} if args.max_steps else {})},
                   llms={k: v for k, v in base.llms.items() if not args.llms or k in args.llms},
                   visual_tokens=args.visual_tokens or base.visual_tokens)
    load_or_train_tower(replace(base, out_dir=str(tmp / "stage0")))  # stage 0 once, outside both timings
    from lit_vlm.data.datamodule import VLMDataModule

    VLMDataModule(**base.data).prepare_data()  # the dataset too: generated once, read by both runs
    if base.num_threads:
        torch.set_num_threads(base.num_threads)
    times = {}
    for cached in (True, False):
        cfg = replace(base, out_dir=str(tmp / f"cache_{cached}"), feature_cache=cached)
        start = time.perf_counter()
        run_grid(cfg)
        times[cached] = time.perf_counter() - start
    ratio = times[False] / times[True]
    lines = [
        "# python " + " ".join(sys.argv),
        f"# {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
        f"cells: {len(base.llms) * len(base.visual_tokens) * len(base.compressors) * len(base.seeds)}, "
        f"steps per cell: {base.trainer['max_steps']}",
        f"recompute vision features every step: {times[False]:.1f} s",
        f"feature cache (including building it):  {times[True]:.1f} s",
        f"speedup: {ratio:.2f}x",
    ]
    print("\n".join(lines))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
