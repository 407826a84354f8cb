"""The grid loop: check everything, then stage 0 (the tower), stage 1 (the LLMs' pretraining, if set), the
feature cache and the cells that are not done yet.

Everything that can refuse a run (the config, ``only``, the table's columns, the tower checkpoint, the
Trainer arguments, the data) is checked before the first file is written, so a refused run leaves no output
folder behind. Each finished cell's rows replace that cell's rows in ``results.csv`` atomically. With
``launch.launcher`` none the cells run here one after another; otherwise launch.py submits them (stage 0 and
the feature cache are still built here, once).
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import torch
from lightning.pytorch.utilities import rank_zero_only
from tqdm.auto import tqdm

from lit_vlm import tower as stage0
from lit_vlm.errors import UserError
from lit_vlm.grid.cache import build_store
from lit_vlm.grid.cell import run_cell
from lit_vlm.grid.config import Cell, GridConfig, cells_of, check_trainer, trainer_kwargs, validate
from lit_vlm.grid.launch import check_launch, run_cells
from lit_vlm.grid.table import ResultsTable

log = logging.getLogger("lit_vlm.grid")


@contextmanager
def torch_threads(n: int | None):
    """torch's intra-op thread count set to ``n`` inside the block and restored after it."""
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def select_cells(cfg: GridConfig, only: list[str] | None) -> list[Cell]:
    cells = cells_of(cfg)
    if only:
        unknown = sorted(set(only) - {c.id for c in cells})
        if unknown:
            raise UserError(f"--only {unknown[0]!r} is not a cell of this grid; cells: {', '.join(c.id for c in cells)}")
        cells = [c for c in cells if c.id in only]
    return cells


def stage0_args(cfg: GridConfig) -> dict:
    """What stage 0 takes from the cells' sections: the seed, the tokenizer, the Trainer's hardware."""
    model_args = {k: v for k, v in cfg.model.items() if k in ("tokenizer", "max_new_tokens")}
    return {"seed": cfg.seeds[0], "model_args": model_args, "trainer_args": trainer_kwargs(cfg.trainer)}


def load_or_train_tower(cfg: GridConfig) -> dict[str, torch.Tensor]:
    """Stage 0 of this grid (see lit_vlm.tower): the shared tower's state dict, read or trained and saved."""
    cfg = validate(cfg)
    return stage0.load_or_train(cfg.tower, cfg.vision, cfg.data, **stage0_args(cfg))


def pretrain_llms(cfg: GridConfig, cells: list[Cell]) -> None:
    """Stage 1 for every LLM size these cells use whose pretrained weights are not saved yet (each saved
    atomically as it finishes: an interrupted stage 1 resumes at the next size)."""
    if not cfg.llm_pretrain.max_steps:
        return
    from lit_vlm.data.tokenizer import load_tokenizer
    from lit_vlm.llm_pretrain import load_or_pretrain

    tokenizer = load_tokenizer(cfg.model["tokenizer"])
    for name in dict.fromkeys(c.llm for c in cells):
        load_or_pretrain(name, cfg.llms[name], tokenizer, cfg.data.get("task_options") or {}, cfg.llm_pretrain)


def _setup_data(cfg: GridConfig):
    """The grid's data, generated or read once (the cells read the same files)."""
    from lit_vlm.data.datamodule import VLMDataModule
    from lit_vlm.data.processor import VLMProcessor
    from lit_vlm.data.tokenizer import load_tokenizer

    processor = VLMProcessor(load_tokenizer(cfg.model["tokenizer"]), image_size=cfg.vision.image_size)
    dm = VLMDataModule(**cfg.data, processor=processor)
    dm.prepare_data()
    dm.setup("fit")
    return dm


def run_grid(cfg: GridConfig, force: bool = False, only: list[str] | None = None) -> Path:
    """Run every cell of ``cfg`` not yet in its table (all of them with ``force``; only ``only`` if given)."""
    cfg = validate(cfg)
    cells = select_cells(cfg, only)
    out = Path(cfg.out_dir)
    table = ResultsTable(out / "results.csv")
    done = set() if force else table.done()
    todo = [c for c in cells if c.id not in done]
    if not todo:
        log.info("grid %s: all %d cells done", out, len(cells))
        return table.path
    tower_path = Path(cfg.tower.checkpoint)
    tower_state = None
    if cfg.vision.pretrained or tower_path.exists():
        tower_state = stage0.load_or_train(cfg.tower, cfg.vision, cfg.data, **stage0_args(cfg))
    elif not cfg.tower.train_if_missing:
        raise UserError(f"tower checkpoint {tower_path} does not exist and tower.train_if_missing is false")
    check_trainer(cfg)
    check_launch(cfg)

    with torch_threads(cfg.num_threads):
        dm = _setup_data(cfg) if cfg.feature_cache else None  # data errors too, before the output folder
        out.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(out / "grid.log")
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        try:
            log.info("grid %s: %d cells, %d done, %d to run", out, len(cells), len(cells) - len(todo), len(todo))
            if tower_state is None:
                tower_state = stage0.train_tower(cfg.tower, cfg.vision, cfg.data, **stage0_args(cfg))
                tower_state = stage0.save_tower(tower_path, tower_state, cfg.vision, cfg.data)
            pretrain_llms(cfg, todo)

            def make_store():
                if dm is None:
                    return None
                from lit_vlm.model.vision import VisionTower

                tower = VisionTower(replace(cfg.vision, frozen=True))
                tower.load_state_dict(tower_state)
                return build_store(out / "features", tower, dm.datasets)

            if cfg.launch.launcher != "none":  # the launcher decides when to build it (local: while workers start)
                run_cells(cfg, todo, len(cells), make_store, force)
                return table.path
            store = make_store()
            bar = tqdm(total=len(cells), initial=len(cells) - len(todo), desc="grid", unit="cell", position=0)
            for cell in todo:
                bar.set_postfix_str(cell.id)
                start = time.perf_counter()
                rows, cache_note = run_cell(cfg, cell, tower_state, store)
                if rank_zero_only.rank == 0:  # under DDP every rank runs the cell; one writes the table
                    table.replace_cell(cell.id, rows)
                summary = ", ".join(f"{r['family']} acc={r['accuracy']:.3f}" for r in rows)
                log.info("cell %s done in %.1fs: %s; %s", cell.id, time.perf_counter() - start, summary, cache_note)
                bar.update(1)
            bar.close()
        finally:
            log.removeHandler(handler)
            handler.close()
    return table.path
