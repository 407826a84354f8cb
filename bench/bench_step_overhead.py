"""Where one training step of the smallest grid cell goes, the step before the overhead cuts and after them (the
feature cache keyed by pixels, then by row), and the step's compute floor (its FLOPs at this machine's measured
matmul rate).

    python bench/bench_step_overhead.py [--config configs/grid/cpu_mini.yaml] [--llm llm-16k] [--steps 60] [--reps 4]
    python bench/bench_step_overhead.py --config configs/grid/cpu_law.yaml --llm llm-w16 --steps 200 --reps 8 \
        --out bench/results/step_overhead_cpu_law

A cell is built exactly as ``lit_vlm.grid.cell.run_cell`` builds it (V = 1, the grid's feature cache attached,
one thread). Three paths:
- "legacy": the step as it was before issue 14 (item 7): the grid's Trainer with its progress bar redrawn every
  step, AdamW's per-tensor loop, rows read one by one, and a collate that renders the chat template, tokenises
  and normalises every row every step; the cache looks each image up by a hash of its pixels;
- "pixel-keyed": the lean step, the cache still keyed by pixels (every image decoded, normalised and hashed);
- "row-keyed": the batch carries each image's store row, no image is decoded;
- "lean loop": what run_cell does now: row-keyed, with the training loss logged only on the steps the logger
  writes (LitVLM.log_loss_every_step off) and only the batch's tensors moved to the device (LitVLM's
  transfer_batch_to_device; before it, Lightning walked every string of the batch's lists).
All run in this one process, interleaved, the order rotated each rep (a run's slot moves its time by as much as
the last cut: give --reps a multiple of 4), and the report gives medians and their ratios: the machine is shared, so only a ratio measured side by side means anything. Each run
also records every step's loss and the final weights, and the report says whether the paths agree bitwise.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from functools import partial
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lit_vlm.grid import Cell, build_store, cell_model_args, load_config, validate  # noqa: E402
from lit_vlm.grid.cache import attach  # noqa: E402
from lit_vlm.grid.cell import cell_trainer, legacy_cell_trainer  # noqa: E402

PHASES = ("data: rows (decode), transfer", "data: collate", "forward: feature cache", "forward: LLM + splice + loss",
          "backward", "optimizer", "Lightning loop, logging, progress bar")
PATHS = ("legacy", "pixel-keyed", "row-keyed", "lean loop")
ROW_KEYED = ("row-keyed", "lean loop")


class PhaseTimer(Callback):
    """Wall time of each phase of every training step, from Lightning's hooks and two forward hooks."""

    def __init__(self, module, processor):
        self.steps: list[dict[str, float]] = []
        self.losses: list[float] = []
        self._t: dict[str, float] = {}
        self._collate = 0.0
        collate = processor.collate

        def timed_collate(rows):  # the loader calls processor.collate; time it in place
            t = time.perf_counter()
            out = collate(rows)
            self._collate += time.perf_counter() - t
            return out

        processor.collate = timed_collate
        self._tower = 0.0

    def mark(self, name):
        self._t[name] = time.perf_counter()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.mark("start")

    def on_before_backward(self, trainer, pl_module, loss):
        self.mark("before_backward")
        self.losses.append(loss.detach().clone())

    def on_after_backward(self, trainer, pl_module):
        self.mark("after_backward")

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.mark("before_opt")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        # runs before the progress bar's own hook of this step: that time lands in the next step's remainder
        t = self._t
        now = time.perf_counter()
        if "end" in t:
            total = now - t["end"]
            fetch = t["start"] - t["end"]
            forward = t["before_backward"] - t["start"]
            step = {
                "total": total,
                "data: collate": self._collate,
                "data: rows (decode), transfer": fetch - self._collate,
                "forward: feature cache": self._tower,
                "forward: LLM + splice + loss": forward - self._tower,
                "backward": t["after_backward"] - t["before_backward"],
                "optimizer": now - t["before_opt"],
            }
            step["Lightning loop, logging, progress bar"] = total - sum(step[k] for k in PHASES[:-1])
            self.steps.append(step)
        self._collate = self._tower = 0.0
        t["end"] = now


def build(cfg, cell, tower_state, dm_args, path: str, steps: int, root: Path):
    from lit_vlm.data.datamodule import VLMDataModule
    from lit_vlm.module import LitVLM

    L.seed_everything(cell.seed, verbose=False)
    module = LitVLM(vision=replace(cfg.vision, frozen=True), llm=cfg.llms[cell.llm], compressor=cell.compressor,
                    visual_tokens=cell.visual_tokens, **cell_model_args(cfg, cell))
    module.vlm.vision_tower.load_state_dict(tower_state)
    legacy = path == "legacy"
    if legacy:
        module.legacy_step()
    if path == "lean loop":
        module.log_loss_every_step = False  # as run_cell sets it
    else:  # Lightning's own batch transfer, as before LitVLM.transfer_batch_to_device
        module.transfer_batch_to_device = partial(L.LightningModule.transfer_batch_to_device, module)
    dm = VLMDataModule(**dm_args, processor=module.processor)
    if legacy:  # rows read one by one and decoded every time, as before Rows.__getitems__ and its image memo
        rows = dm._rows

        def one_by_one(split, **_):
            r = rows(split)  # torch's fetcher skips a falsy __getitems__
            r.__getitems__ = None
            return r

        dm._rows = one_by_one
    trainer_cfg = {**cfg.trainer, "max_steps": steps}
    make = legacy_cell_trainer if legacy else cell_trainer
    trainer = make(replace(cfg, trainer=trainer_cfg), root, logger=False)
    return module, dm, trainer


def run_once(cfg, cell, tower_state, store, dm_args, path, steps, root):
    module, dm, trainer = build(cfg, cell, tower_state, dm_args, path, steps, root)
    timer = PhaseTimer(module, module.processor)
    trainer.callbacks.insert(0, timer)
    by_row = path in ROW_KEYED
    with attach(module.vlm, store, dm if by_row else None, trainer):  # without the data: keyed by pixels
        if by_row and "train" not in (dm.feature_rows or {}):
            sys.exit("the store could not be attached by row (lit_vlm.grid.cache.row_keys): nothing to measure")
        _hook_tower(timer, module.vlm.vision_tower)  # the CachedTower: time its lookups
        trainer.fit(module, dm)
    weights = {k: v.detach().clone() for k, v in module.state_dict().items()}
    return timer, weights, module, dm


def _hook_tower(timer: PhaseTimer, tower) -> None:
    def pre(*_):
        timer._t["tower"] = time.perf_counter()

    def post(*_):
        timer._tower += time.perf_counter() - timer._t["tower"]

    tower.register_forward_pre_hook(pre)
    tower.register_forward_hook(post)
    lookup = tower.lookup_rows

    def timed_lookup(rows):  # the row-keyed lookup is a method, not a forward: time it in place
        pre()
        out = lookup(rows)
        post()
        return out

    tower.lookup_rows = timed_lookup


def step_flops(module, batch) -> int:
    """FLOPs of one training step's forward + backward (torch's counter; the cached tower costs none)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:  # the loss the module trains with (fast_answer_loss or not)
        module.vlm.loss(batch, fast=module.fast_answer_loss).backward()
    module.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def mm_rate(m: int, k: int, n: int, seconds: float = 0.2) -> float:
    """Measured FLOP/s of torch.mm at [m, k] x [k, n] (median of repeated timings)."""
    a, b = torch.randn(m, k), torch.randn(k, n)
    times, end = [], time.perf_counter() + seconds
    while time.perf_counter() < end or len(times) < 5:
        t = time.perf_counter()
        torch.mm(a, b)
        times.append(time.perf_counter() - t)
    return 2 * m * k * n / statistics.median(times)


def cell_shapes(module, batch) -> list[tuple[int, int, int]]:
    """The LLM's matmuls of one forward at this batch: rows x hidden into q/k/v/o, the MLP and the lm_head."""
    cfg = module.vlm.llm.config
    rows = batch["input_ids"].numel() + batch["input_ids"].shape[0] * (module.vlm.visual_tokens - 1)
    h, f, vocab = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size
    return [(rows, h, h), (rows, h, f), (rows, f, h), (rows, h, vocab)]


def run_means(timer: PhaseTimer) -> dict[str, float]:
    """Mean time per step of each phase over one run (a cell pays the mean: decoding epochs and memo epochs)."""
    return {k: statistics.fmean(s[k] for s in timer.steps) for k in ("total", *PHASES)}


def median_of_runs(timers: list[PhaseTimer]) -> dict[str, float]:
    runs = [run_means(t) for t in timers]
    return {k: statistics.median(r[k] for r in runs) for k in ("total", *PHASES)}


def same(a: tuple, b: tuple) -> bool:
    (ta, wa), (tb, wb) = a, b
    return (len(ta.losses) == len(tb.losses) and all(torch.equal(x, y) for x, y in zip(ta.losses, tb.losses))
            and wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="configs/grid/cpu_mini.yaml")
    ap.add_argument("--llm", default="llm-16k")
    ap.add_argument("--visual-tokens", type=int, default=1)
    ap.add_argument("--steps", type=int, default=60, help="training steps per run (the first is not timed)")
    ap.add_argument("--reps", type=int, default=4, help="runs of each path, interleaved (a multiple of 4: each "
                    "path runs in each slot equally often)")
    ap.add_argument("--num-train", type=int, default=None,
                    help="training rows; default: as many as give a run the epochs of the config's cell "
                         "(cpu_mini: 12, so rows repeat; cpu_law: about 2)")
    ap.add_argument("--out", default="bench/results/step_overhead", help="writes OUT.json and OUT.md")
    args = ap.parse_args()
    for name in ("steps", "reps", "num_train"):
        value = getattr(args, name)
        if value is not None and value < (3 if name == "steps" else 1):
            sys.exit(f"--{name.replace('_', '-')}={value} is too small: steps >= 3, reps and num-train >= 1")
    torch.set_num_threads(1)
    cfg = validate(load_config(args.config))
    if args.llm not in cfg.llms:
        sys.exit(f"--llm {args.llm!r} is not an LLM of {args.config}; it has {', '.join(cfg.llms)}")
    measure_and_write(lambda tmp: measure(args, cfg, tmp), "bench-step-", report, args.out)


def measure_and_write(measure_fn, prefix: str, report_fn, out: str | None) -> dict:
    """``measure_fn(tmp)`` in a fresh temporary folder (removed after), with the command and the machine added to
    its result, its report printed, and OUT.json and OUT.md written when ``out`` is given: the tail every step
    bench in bench/ shares."""
    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        result = {"command": "python " + " ".join(sys.argv),
                  "machine": f"{platform.machine()} {platform.processor() or ''} torch {torch.__version__}".strip(),
                  **measure_fn(tmp)}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    text = report_fn(result)
    print(text)
    if out:
        path = Path(out)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
        path.with_suffix(".md").write_text(text)
    return result


def fresh_cell_data(cfg, steps: int, root: Path, num_train: int | None = None, **trainer):
    """What a step bench trains a cell on, all under ``root``: the config for runs of ``steps`` steps (``trainer``
    overrides added), the data's arguments (``num_train`` fresh rows, default one batch a step), and a random
    tower's state with the feature store of its features for those rows (a step's time does not depend on the
    tower's weights). Returns (cfg, dm_args, tower_state, store)."""
    from lit_vlm.data.datamodule import VLMDataModule
    from lit_vlm.model.vision import VisionTower

    cfg = replace(cfg, out_dir=str(root), trainer={**cfg.trainer, "max_steps": steps, **trainer})
    dm_args = {**cfg.data, "data_dir": str(root / "data"), "num_train": num_train or steps * cfg.data["batch_size"],
               "num_val": 16, "num_test": 16}
    tower = VisionTower(replace(cfg.vision, frozen=True))
    dm = VLMDataModule(**dm_args, processor=None)
    dm.prepare_data()
    dm.datasets = dm._load()
    return cfg, dm_args, tower.state_dict(), build_store(root / "features", tower, dm.datasets)


def measure(args, cfg, tmp: Path) -> dict:
    batch_size = cfg.data["batch_size"]
    epochs = max(1, round(cfg.trainer.get("max_steps", 1) * batch_size / cfg.data["num_train"]))
    num_train = args.num_train or max(batch_size, args.steps * batch_size // epochs)
    cfg, dm_args, tower_state, store = fresh_cell_data(cfg, args.steps, tmp, num_train)
    cell = Cell(llm=args.llm, visual_tokens=args.visual_tokens, compressor=cfg.compressors[0], seed=cfg.seeds[0])

    runs = {path: [] for path in PATHS}
    for rep in range(args.reps):
        for path in PATHS[rep % len(PATHS):] + PATHS[:rep % len(PATHS)]:  # each path in each slot in turn
            timer, weights, module, dm = run_once(cfg, cell, tower_state, store, dm_args, path, args.steps,
                                                  tmp / path)
            runs[path].append((timer, weights))
            print(f"rep {rep} {path}: mean step {run_means(timer)['total'] * 1e3:.2f} ms", flush=True)
    identical = {path: all(same(runs["legacy"][0], r) for r in runs[path]) for path in PATHS}
    phases = {p: median_of_runs([t for t, _ in runs[p]]) for p in runs}

    batch = next(iter(dm.train_dataloader()))
    with attach(module.vlm, store):
        flops = step_flops(module, batch)
    shapes = cell_shapes(module, batch)
    cell_rate = sum(2 * m * k * n for m, k, n in shapes) / sum(2 * m * k * n / mm_rate(m, k, n) for m, k, n in shapes)
    large_rate = mm_rate(1024, 1024, 1024)
    result = {
        "config": args.config, "cell": cell.id, "threads": torch.get_num_threads(),
        "steps_per_run": args.steps, "reps": args.reps, "train_rows": num_train,
        "epochs_per_run": args.steps * batch_size / num_train,
        "step_ms": {p: phases[p]["total"] * 1e3 for p in runs},
        "speedup_vs_legacy": {p: phases["legacy"]["total"] / phases[p]["total"] for p in PATHS[1:]},
        "identical_losses_and_weights_to_legacy": identical,
        "phases_ms": {p: {k: v * 1e3 for k, v in phases[p].items() if k != "total"} for p in runs},
        "step_flops": flops,
        "matmul_shapes": shapes,
        "matmul_flops_per_s_cell_shapes": cell_rate,
        "matmul_flops_per_s_1024": large_rate,
        "compute_floor_ms_cell_shapes": flops / cell_rate * 1e3,
        "compute_floor_ms_1024": flops / large_rate * 1e3,
    }
    return result


def report(r: dict) -> str:
    ms, speed, same = r["step_ms"], r["speedup_vs_legacy"], r["identical_losses_and_weights_to_legacy"]
    lines = [
        f"# Step overhead of {r['cell']} ({r['config']}, {r['threads']} thread)", "",
        f"`{r['command']}` on {r['machine']}; {r['reps']} runs per path of {r['steps_per_run']} steps over "
        f"{r['train_rows']} rows ({r['epochs_per_run']:.1f} epochs, as in the config's cell), interleaved",
        f"({', '.join(PATHS)}, the order rotated each rep); each run's mean step (its first step not timed), median over runs. A shared",
        "machine: read the ratios, not the absolute times.", "",
        f"- step legacy: {ms['legacy']:.2f} ms, pixel-keyed cache: {ms['pixel-keyed']:.2f} ms "
        f"(**{speed['pixel-keyed']:.2f}x**), row-keyed cache: {ms['row-keyed']:.2f} ms "
        f"(**{speed['row-keyed']:.2f}x**), lean loop: {ms['lean loop']:.2f} ms "
        f"(**{speed['lean loop']:.2f}x faster than legacy**; {ms['row-keyed'] / ms['lean loop']:.2f}x faster "
        "than row-keyed: the loop's own cut)",
        "- every step's loss and the final weights bitwise equal to legacy's: "
        + ", ".join(f"{p} {same[p]}" for p in PATHS[1:]),
        f"- the step's arithmetic: {r['step_flops'] / 1e6:.2f} MFLOP (forward + backward, torch's counter) at "
        f"{r['matmul_flops_per_s_cell_shapes'] / 1e9:.2f} GFLOP/s (torch.mm at the cell's shapes) = "
        f"**{r['compute_floor_ms_cell_shapes']:.3f} ms**; at the large-matmul rate "
        f"({r['matmul_flops_per_s_1024'] / 1e9:.1f} GFLOP/s, 1024^3) {r['compute_floor_ms_1024']:.3f} ms", "",
        "| phase | " + " | ".join(f"{p} ms | share" for p in PATHS) + " |",
        "| --- |" + " ---: | ---: |" * len(PATHS),
    ]
    for k in PHASES:
        cells = [(r["phases_ms"][p][k], r["phases_ms"][p][k] / ms[p]) for p in PATHS]
        lines.append(f"| {k} | " + " | ".join(f"{v:.2f} | {share:.0%}" for v, share in cells) + " |")
    now = r["phases_ms"]["lean loop"]
    model = now["forward: LLM + splice + loss"] + now["backward"] + now["optimizer"]
    lines += ["", f"As run_cell runs it, the arithmetic floor is {r['compute_floor_ms_cell_shapes'] / ms['lean loop']:.0%} "
              f"of the step. The model's own phases (forward, backward, optimizer: {model:.2f} ms) are "
              f"{model / r['compute_floor_ms_cell_shapes']:.0f}x their arithmetic: the per-op cost of a",
              "Hugging Face decoder on matrices this small, which these bitwise cuts leave alone (torch.compile might",
              "cut it, not bitwise; not tried). Keyed by row, no image is decoded, normalised or hashed: the rows",
              "phase reads the text columns, the cache phase is a memory-mapped read of the batch's store rows.",
              "", "Phases are medians over runs of each phase's mean, so they need not add up to the step exactly.",
              "The rows phase includes moving the batch to the device (the transfer the lean loop cuts); the",
              "lean loop's training_step logs the loss on the logger's steps only (the LLM phase holds that cut).",
              "The pixel-keyed lookup hashes each image's pixels (lit_vlm/grid/cache.py); the LLM phase includes",
              "Lightning's training_step call and logging; the progress bar redraws after a step's end mark, so its",
              "time is counted in the next step's rows phase."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
