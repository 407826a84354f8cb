"""One cell: train and evaluate one (LLM size, V, compressor, seed) through the same LitVLM as ``fit``, measure
its inference cost, and return its rows of the results table (one per task family)."""

from __future__ import annotations

import math
import shutil
import time
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import ProgressBar, RichProgressBar, TQDMProgressBar
from lightning.pytorch.callbacks.progress.rich_progress import _RICH_AVAILABLE
from lightning.pytorch.loggers import CSVLogger

from lit_vlm.flops import measure_cost
from lit_vlm.grid.cache import FeatureStore, attach
from lit_vlm.grid.config import Cell, GridConfig, trainer_kwargs


PROGRESS_EVERY = 50  # steps between redraws of a cell's progress bar


def cell_model_args(cfg: GridConfig, cell: Cell) -> dict:
    """cfg.model for this cell: the learning rates scaled by lr_width / hidden size when lr_width is set (never
    above the given rates with lr_width_raise off)."""
    args = dict(cfg.model)
    if cfg.lr_width:
        from lit_vlm.module import OptimizerConfig

        optim = dict(args.get("optimizer") or {})
        factor = cfg.lr_width / cfg.llms[cell.llm].hidden_size
        if not cfg.lr_width_raise:
            factor = min(factor, 1.0)
        for key in ("lr", "llm_lr", "vision_lr"):
            base = optim.get(key, getattr(OptimizerConfig(), key))
            if base is not None:
                optim[key] = base * factor
        args["optimizer"] = optim
    return args


def cell_trainer(cfg: GridConfig, cell_dir: Path, logger=None, progress_every: int | None = PROGRESS_EVERY) -> L.Trainer:
    """A cell's Trainer. The grid's own progress bar reports cells; a cell's progress bar, redrawn every step,
    cost a small cell about as much as its arithmetic, so it refreshes only every ``progress_every`` steps
    unless the config sets its own progress bar (None: Lightning's default bar, every step). Nothing here
    changes what the cell computes."""
    kwargs = trainer_kwargs(cfg.trainer)
    callbacks = list(kwargs.pop("callbacks", None) or [])
    if progress_every and kwargs.get("enable_progress_bar") is not False and \
            not any(isinstance(c, ProgressBar) for c in callbacks):
        callbacks.append(RichProgressBar(refresh_rate=progress_every) if _RICH_AVAILABLE
                         else TQDMProgressBar(refresh_rate=progress_every))  # Lightning's own choice of bar
    logger = CSVLogger(cell_dir, name="logs") if logger is None else logger
    return L.Trainer(default_root_dir=cell_dir, logger=logger, enable_checkpointing=False,
                     num_sanity_val_steps=0, limit_val_batches=0, callbacks=callbacks, **kwargs)


def legacy_cell_trainer(cfg: GridConfig, cell_dir: Path, logger=None) -> L.Trainer:
    """A cell's Trainer as it was before the step-overhead cuts (bench/bench_step_overhead.py's "legacy")."""
    return cell_trainer(cfg, cell_dir, logger, progress_every=None)


def ocr_chars(data: dict) -> float | None:
    """Mean characters drawn in one OCR image of the synthetic benchmark (None for other data): what the
    characters per visual token of a cell, ocr_chars / V, are computed from."""
    if data.get("source", "synthetic") != "synthetic":
        return None
    from lit_vlm.data.synthetic import resolve_options

    opts = resolve_options(**(data.get("task_options") or {}))
    lo, hi = opts["ocr_length"]
    lengths = range(lo, hi + 1)  # drawn uniformly
    if opts["ocr_layout"] == "free":
        return float(sum(lengths) / len(lengths))
    if not opts["ocr_cells"]:
        return float(sum(lengths) / len(lengths) * opts["ocr_lines"])
    # graded: each cell size holds as many characters as fit (lit_vlm.data.synthetic._ocr)
    total = sum(w * min(n, 64 // c) * min(opts["ocr_lines"], 64 // c)
                for c, w in opts["ocr_cells"].items() for n in lengths)
    return float(total / len(lengths))


def _round(value: float | None, digits: int = 6) -> float:
    return round(value, digits) if value is not None else math.nan


def run_cell(cfg: GridConfig, cell: Cell, tower_state: dict, store: FeatureStore | None) -> tuple[list[dict], str]:
    """Train, evaluate and measure one cell (``cfg`` as returned by ``validate``); returns its table rows and
    a line for grid.log on the feature cache."""
    from lit_vlm.data.datamodule import VLMDataModule
    from lit_vlm.module import FAMILIES, LitVLM

    cell_dir = Path(cfg.out_dir) / "cells" / cell.id
    shutil.rmtree(cell_dir, ignore_errors=True)  # an interrupted cell is redone from scratch
    L.seed_everything(cell.seed, verbose=False)
    module = LitVLM(vision=replace(cfg.vision, frozen=True), llm=cfg.llms[cell.llm], compressor=cell.compressor,
                    visual_tokens=cell.visual_tokens, **cell_model_args(cfg, cell))
    module.vlm.vision_tower.load_state_dict(tower_state)
    module.log_loss_every_step = False  # train/loss only where the cell's CSV log writes it: a cheaper step
    if cfg.llm_pretrain.max_steps:  # stage 1's weights (run_grid made them before any cell)
        from lit_vlm.llm_pretrain import load_or_pretrain

        load_or_pretrain(cell.llm, cfg.llms[cell.llm], module.processor.tokenizer, cfg.data.get("task_options") or {},
                         cfg.llm_pretrain, llm=module.vlm.llm)
    dm = VLMDataModule(**cfg.data, processor=module.processor)
    trainer = cell_trainer(cfg, cell_dir)
    evaluate = trainer.test if cfg.eval_split == "test" else trainer.validate
    # given the data, the cache also answers by row: the splits it can prove are never decoded (grid/cache.py)
    with attach(module.vlm, store, dm, trainer) if store is not None else nullcontext() as cached:
        start = time.perf_counter()
        trainer.fit(module, dm)
        train_time = time.perf_counter() - start
        results = evaluate(module, dm, verbose=False)[0]
    cache_note = cached.summary() if cached else "no feature cache"
    ckpt = cell_dir / "final.ckpt"
    trainer.save_checkpoint(ckpt, weights_only=True)  # the real tower is back: loadable without the cache

    loader = dm.test_dataloader() if cfg.eval_split == "test" else dm.val_dataloader()
    cost = measure_cost(module.vlm, next(iter(loader)))
    prefix = "test" if cfg.eval_split == "test" else "val"
    counts = dm.family_counts(cfg.eval_split)
    chars = ocr_chars(cfg.data)
    rows = []
    for family in FAMILIES:
        if f"{prefix}/{family}/accuracy" not in results:
            continue
        rows.append({
            "cell": cell.id,
            "llm": cell.llm,
            "llm_params": int(results["cost/llm_params"]),
            "llm_params_with_embeddings": int(results["cost/llm_params_with_embeddings"]),
            "visual_tokens": cell.visual_tokens,
            "text_tokens": round(results["cost/text_tokens"], 4),
            "compressor": cell.compressor,
            "seed": cell.seed,
            "family": family,
            "examples": counts.get(family, 0),
            "accuracy": _round(results[f"{prefix}/{family}/accuracy"]),
            "anls": _round(results.get(f"{prefix}/{family}/anls")),
            "cer": _round(results.get(f"{prefix}/{family}/cer")),
            "loss": _round(results[f"{prefix}/loss"]),
            # per-token mean over this family's examples, as LitVLM logs it (empty where it logs none)
            "family_loss": _round(results[f"{prefix}/loss_{family}"]) if f"{prefix}/loss_{family}" in results else "",
            "inference_flops": results["cost/inference_flops"],
            "measured_prefill_flops": round(cost.measured_flops),
            "flops_ratio": round(cost.ratio, 4),
            "prefill_latency_ms": round(cost.latency_s * 1000, 3),
            "train_time_s": round(train_time, 2),
            "train_steps": trainer.global_step,
            "checkpoint": str(ckpt),
            "vision_flops": round(cost.vision_flops),
            "measured_vision_flops": round(cost.measured_vision_flops),
            "compressor_flops": round(cost.compressor_flops),
            "measured_compressor_flops": round(cost.measured_compressor_flops),
            "question_flops": round(cost.question_flops),
            "measured_question_flops": round(cost.measured_question_flops),
            # the paper's term from the same Q as inference_flops (the eval split's mean), the rest added on
            "full_inference_flops": round(results["cost/inference_flops"] + cost.full_flops - cost.analytic_flops),
            "measured_full_flops": round(cost.measured_full_flops),
            "full_latency_ms": round(cost.full_latency_s * 1000, 3),
            "ocr_chars": round(chars, 4) if family == "ocr" and chars is not None else "",
        })
    return rows, cache_note
