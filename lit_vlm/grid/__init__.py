"""The grid runner: LLM size x visual tokens [x compressors] [x seeds], one results table.

    python -m lit_vlm grid --config configs/grid/cpu_smoke.yaml [--force] [--only CELL_ID ...]
                           [--launcher none|local|slurm|debug] [--workers K]

1. Config (config.py): typed end to end; the model, data and trainer sections are checked against the
   signatures of LitVLM, VLMDataModule and lightning.Trainer before anything runs.
2. Stage 0 (lit_vlm/tower.py): the shared vision tower is trained once (or loaded from the checkpoint it
   saved before); every cell reuses it frozen, as the paper shares one CLIP tower.
3. Feature cache (cache.py): the frozen tower's features, computed once per image and looked up by the
   image's pixels, so a changed tower or dataset never reuses stale features; in a cell, the splits whose
   row -> store row map it can prove are looked up by row instead, and their images never decoded.
4. Cells (cell.py, run.py): each trains and evaluates through the same LitVLM as ``fit``; its rows (one per
   task family) replace its old rows in ``results.csv`` atomically (table.py), so the table is valid after a
   kill -9 at any moment. Finished cells are skipped on a re-run; an interrupted one is redone.
5. Launchers (launch.py, worker.py): with ``--launcher local`` K long-lived worker processes (submitit) take
   the cells one by one, each loading once; with ``slurm`` every cell is one task of a SLURM job array. Each
   appends its own rows under the table's file lock. Stage 0 and the feature cache are still built once, by
   the driver, before any cell.
"""

from lit_vlm.grid.cache import CachedTower, FeatureStore, build_store
from lit_vlm.grid.cell import cell_model_args, run_cell
from lit_vlm.grid.cli import build_parser, load_config, main, parse
from lit_vlm.grid.config import Cell, GridConfig, LaunchConfig, SlurmConfig, cells_of, check_sections, validate
from lit_vlm.grid.launch import CellsFailed, run_cells
from lit_vlm.grid.run import load_or_train_tower, run_grid
from lit_vlm.grid.table import COLUMNS, LEGACY_COLUMNS, ResultsTable
from lit_vlm.grid.worker import cell_job, worker_job
from lit_vlm.tower import TowerConfig

__all__ = [
    "COLUMNS", "LEGACY_COLUMNS", "CachedTower", "Cell", "CellsFailed", "FeatureStore", "GridConfig", "LaunchConfig",
    "ResultsTable", "SlurmConfig", "TowerConfig", "build_parser", "build_store", "cell_job", "cell_model_args",
    "cells_of", "check_sections", "load_config", "load_or_train_tower", "main", "parse", "run_cell", "run_cells",
    "run_grid", "validate", "worker_job",
]
