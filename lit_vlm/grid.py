"""The grid runner: LLM size x visual tokens [x compressors] [x seeds], one results table.

    python -m lit_vlm grid --config configs/grid/cpu_smoke.yaml [--force] [--only CELL_ID ...]

1. Stage 0: the shared vision tower is trained once (or loaded from the checkpoint it saved before); every
   cell reuses it frozen, as the paper shares one CLIP tower.
2. Feature cache: the frozen tower's features are computed once per image and memory-mapped from disk; the
   cache key hashes the tower's weights, the feature layers and the data, so a changed tower never reuses
   stale features.
3. Cells: each trains and evaluates through the same LitVLM as ``fit``; its rows (one per task family) are
   appended to ``results.csv`` atomically (write a temporary file, fsync, rename), so the table is valid after
   a kill -9 at any moment. Finished cells are skipped on a re-run; an interrupted one is redone.
"""

from __future__ import annotations

import csv
import errno
import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import lightning as L
import numpy as np
import torch
from jsonargparse import ActionConfigFile, ArgumentParser
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities import rank_zero_only
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from lit_vlm.errors import UserError
from lit_vlm.flops import measure_prefill
from lit_vlm.model.compressors import valid_visual_tokens
from lit_vlm.model.vision import VisionConfig
from lit_vlm.model.vlm import LLMConfig

log = logging.getLogger("lit_vlm.grid")

# The results table. README documents each column; the scaling fitter reads it directly.
COLUMNS = [
    "cell", "llm", "llm_params", "llm_params_with_embeddings", "visual_tokens", "text_tokens", "compressor",
    "seed", "family", "examples", "accuracy", "anls", "cer", "loss", "inference_flops",
    "measured_prefill_flops", "flops_ratio", "prefill_latency_ms", "train_time_s", "train_steps", "checkpoint",
]


@dataclass
class TowerConfig:
    """Stage 0: the shared vision tower, trained once end to end, then frozen for every cell."""

    checkpoint: str = "runs/towers/tower.safetensors"
    """Where the tower's weights live (safetensors). Trained and saved here when missing."""
    train_if_missing: bool = True
    """Train the tower when the checkpoint is missing (False: a missing checkpoint is an error)."""
    llm: LLMConfig = field(default_factory=LLMConfig)
    """objective=vqa only: the LLM trained with the tower (its weights are discarded)."""
    objective: str = "dense"
    """dense: classify every patch's object and character (labels from the synthetic generator; fast, see
    lit_vlm/tower.py). vqa: train tower + identity compressor + LLM end to end on the answers (any data)."""
    max_steps: int = 400
    """Training steps of stage 0."""
    lr: float = 2e-3
    """Peak learning rate of stage 0."""
    batch_size: int = 64
    """objective=dense only: images per step."""


@dataclass
class GridConfig:
    """A grid of cells: every LLM size x every V x every compressor x every seed."""

    out_dir: str = "runs/grid"
    """Folder of results.csv, grid.log, the feature cache and one folder per cell."""
    llms: dict[str, LLMConfig] = field(default_factory=dict)
    """LLM sizes by name (the name appears in the results table)."""
    visual_tokens: list[int] = field(default_factory=list)
    """The V values to sweep."""
    compressors: list[str] = field(default_factory=lambda: ["avgpool"])
    """Compressors to sweep."""
    seeds: list[int] = field(default_factory=lambda: [0])
    """Seeds to sweep (each seed re-initialises the cell's compressor, projector and LLM)."""
    vision: VisionConfig = field(default_factory=VisionConfig)
    """The shared vision tower's architecture (frozen in every cell)."""
    model: dict = field(default_factory=dict)
    """Other LitVLM arguments shared by every cell (optimizer, stage, compressor_options, max_new_tokens)."""
    data: dict = field(default_factory=dict)
    """VLMDataModule arguments (sizes, families, batch sizes)."""
    trainer: dict = field(default_factory=dict)
    """Lightning Trainer arguments for each cell (max_steps, accelerator, precision, devices, strategy)."""
    tower: TowerConfig = field(default_factory=TowerConfig)
    """Stage 0: the shared vision tower."""
    feature_cache: bool = True
    """Compute the frozen tower's features once and reuse them in every cell."""
    eval_split: str = "test"
    """The split whose metrics go into the table: validation or test."""
    lr_width: int | None = None
    """Scale each cell's learning rates (model.optimizer) by lr_width / the LLM's hidden size, so the rates
    given are those of an LLM of width lr_width (None: the same rates for every size). From-scratch models
    of different widths want different rates (Adam's stable rate falls roughly as 1/width); one rate for
    all sizes handicaps one end of the grid."""
    lr_width_raise: bool = True
    """With lr_width: whether LLMs narrower than lr_width get proportionally higher rates (True), or keep the
    given ones (False: only wider LLMs are scaled down; narrow from-scratch models can diverge at raised rates)."""
    num_threads: int | None = None
    """CPU threads for torch (None: torch's default). Part of the config because results on a CPU can
    depend on it, and because two processes with two threads each on two cores thrash (OpenMP spin-waits)."""


@dataclass(frozen=True)
class Cell:
    llm: str
    visual_tokens: int
    compressor: str
    seed: int

    @property
    def id(self) -> str:
        return f"{self.llm}-V{self.visual_tokens}-{self.compressor}-s{self.seed}"


def cells_of(cfg: GridConfig) -> list[Cell]:
    return [
        Cell(llm, v, comp, seed)
        for llm in cfg.llms
        for v in cfg.visual_tokens
        for comp in cfg.compressors
        for seed in cfg.seeds
    ]


def grid_side(vision: VisionConfig) -> int:
    if vision.pretrained:
        from lit_vlm.model.vision import VisionTower

        return VisionTower(vision).grid_side
    return vision.image_size // vision.patch_size


def validate(cfg: GridConfig) -> None:
    """Every mistake we can see before training anything, reported in one line."""
    if not cfg.llms:
        raise UserError("llms is empty; give at least one LLM size, e.g. llms: {xs: {hidden_size: 32}}")
    if not cfg.visual_tokens:
        raise UserError("visual_tokens is empty; give at least one V, e.g. visual_tokens: [1, 4, 16, 64]")
    if not cfg.compressors or not cfg.seeds:
        raise UserError("compressors and seeds must each list at least one value")
    if cfg.vision.weights:
        raise UserError(f"vision.weights={cfg.vision.weights!r} is not used by the grid: name the tower in tower.checkpoint")
    if cfg.tower.objective not in ("dense", "vqa"):
        raise UserError(f"tower.objective={cfg.tower.objective!r} is not allowed; use 'dense' or 'vqa'")
    if cfg.tower.objective == "dense" and not cfg.vision.pretrained and cfg.data.get("source", "synthetic") != "synthetic":
        raise UserError(f"tower.objective=dense needs the synthetic data (its patch labels); data.source is "
                        f"{cfg.data['source']!r}: use tower.objective=vqa or a pretrained vision tower")
    if cfg.lr_width is not None:
        if cfg.lr_width < 1:
            raise UserError(f"lr_width={cfg.lr_width} must be a positive integer (a hidden size) or null")
        pretrained = [name for name, llm in cfg.llms.items() if llm.pretrained]
        if pretrained:
            raise UserError(f"lr_width scales by the hidden size of LLMs built from a config; {pretrained[0]!r} is "
                            "pretrained: set lr_width: null and give the rate in model.optimizer")
    if cfg.eval_split not in ("validation", "test"):
        raise UserError(f"eval_split={cfg.eval_split!r} is not allowed; use 'validation' or 'test'")
    side = grid_side(cfg.vision)
    for v in cfg.visual_tokens:
        if not any(v in valid_visual_tokens(c, side) for c in cfg.compressors):
            allowed = sorted({x for c in cfg.compressors for x in valid_visual_tokens(c, side)})
            raise UserError(
                f"visual_tokens={v} fits no compressor in {cfg.compressors} on a {side}x{side} patch grid; "
                f"valid: {', '.join(map(str, allowed))}"
            )


# --- results table ---------------------------------------------------------------------------------------
class ResultsTable:
    """A CSV that only ever changes by an atomic rename, so it is valid whatever kills the process."""

    def __init__(self, path: Path):
        self.path = path
        if path.exists():
            with path.open(newline="") as f:
                header = next(csv.reader(f), None)
            if header != COLUMNS:
                raise UserError(
                    f"{path} has columns {header} but the grid writes {COLUMNS}; refusing to overwrite it: "
                    "move it away or choose another out_dir"
                )

    def rows(self) -> list[dict]:
        if not self.path.exists():
            return []
        with self.path.open(newline="") as f:
            return list(csv.DictReader(f))

    def done(self) -> set[str]:
        return {row["cell"] for row in self.rows()}

    def replace_cell(self, cell_id: str, new_rows: list[dict]) -> None:
        """Drop any rows of ``cell_id`` (a --force re-run) and append ``new_rows``, atomically."""
        rows = [r for r in self.rows() if r["cell"] != cell_id] + new_rows
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".results-", suffix=".csv")
        try:
            with os.fdopen(fd, "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=COLUMNS)
                writer.writeheader()
                writer.writerows(rows)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except OSError as err:
            Path(tmp).unlink(missing_ok=True)
            if err.errno == errno.ENOSPC:
                raise UserError(
                    f"disk full while writing {self.path}; the table is unchanged ({len(rows) - len(new_rows)} rows). "
                    "Free some space and re-run the same command to resume"
                ) from None
            raise


# --- stage 0: the shared tower -----------------------------------------------------------------------------
def _tower_fingerprint(state: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(state):
        h.update(name.encode())
        h.update(state[name].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def load_or_train_tower(cfg: GridConfig) -> dict[str, torch.Tensor]:
    if cfg.vision.pretrained:  # a pretrained tower (CLIP, SigLIP) is already trained: no stage 0
        from lit_vlm.model.vision import VisionTower

        return VisionTower(replace(cfg.vision, frozen=True)).state_dict()
    path = Path(cfg.tower.checkpoint)
    arch = json.dumps({k: v for k, v in asdict(cfg.vision).items() if k not in ("frozen", "weights")}, sort_keys=True)
    if path.exists():
        try:
            from safetensors import safe_open

            with safe_open(str(path), "pt") as f:
                saved_arch = (f.metadata() or {}).get("vision_config")
            state = load_file(str(path))
        except Exception as err:  # noqa: BLE001 - any decode failure means "not a tower checkpoint"
            raise UserError(f"tower checkpoint {path} cannot be read as safetensors ({err})") from None
        if saved_arch != arch:
            raise UserError(
                f"tower checkpoint {path} was trained for another vision config; delete it to retrain, or set "
                f"vision to the one it was saved with: {saved_arch}"
            )
        from lit_vlm.model.vision import VisionTower

        missing = sorted(set(VisionTower(replace(cfg.vision, frozen=True)).state_dict()) - set(state))
        if missing:
            raise UserError(f"tower checkpoint {path} lacks {missing[0]} (saved by an older lit_vlm); delete it to retrain")
        return state
    if not cfg.tower.train_if_missing:
        raise UserError(f"tower checkpoint {path} does not exist and tower.train_if_missing is false")
    log.info("stage 0 (%s objective): training the shared vision tower -> %s", cfg.tower.objective, path)
    start = time.perf_counter()
    if cfg.tower.objective == "dense":
        from lit_vlm.tower import train_dense_tower

        trainer_args = {k: v for k, v in cfg.trainer.items() if k in ("accelerator", "devices", "precision", "deterministic")}
        state, acc = train_dense_tower(
            cfg.vision, cfg.data, max_steps=cfg.tower.max_steps, lr=cfg.tower.lr, batch_size=cfg.tower.batch_size,
            seed=cfg.seeds[0], trainer_args=trainer_args,
        )
        log.info("stage 0 done in %.1fs; held-out per-patch accuracy: %s", time.perf_counter() - start,
                 ", ".join(f"{k} {v:.3f}" for k, v in acc.items()))
    else:
        state = _train_tower_vqa(cfg)
        log.info("stage 0 done in %.1fs", time.perf_counter() - start)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(state, str(tmp), metadata={"vision_config": arch})
    os.replace(tmp, path)
    return state


def _train_tower_vqa(cfg: GridConfig) -> dict[str, torch.Tensor]:
    from lit_vlm.data.datamodule import VLMDataModule
    from lit_vlm.module import LitVLM, OptimizerConfig

    L.seed_everything(cfg.seeds[0], verbose=False)
    side = grid_side(cfg.vision)
    module = LitVLM(
        vision=replace(cfg.vision, frozen=False),
        llm=cfg.tower.llm,
        compressor="identity",
        visual_tokens=side * side,
        stage="instruct",
        optimizer=OptimizerConfig(lr=cfg.tower.lr),
        **{k: v for k, v in cfg.model.items() if k in ("tokenizer", "max_new_tokens")},
    )
    dm = VLMDataModule(**cfg.data, processor=module.processor)
    trainer_args = {k: v for k, v in cfg.trainer.items() if k not in ("max_steps", "max_epochs", "callbacks")}
    trainer = L.Trainer(
        max_steps=cfg.tower.max_steps,
        logger=False,
        enable_checkpointing=False,
        limit_val_batches=0,
        **trainer_args,
    )
    trainer.fit(module, dm)
    tower = module.vlm.vision_tower.eval()
    dm.setup("fit")
    loader = dm.train_dataloader()
    tower.fit_feature_stats(batch["pixel_values"] for _, batch in zip(range(20), loader))
    return {k: v.detach().cpu().contiguous() for k, v in tower.state_dict().items()}


# --- feature cache -----------------------------------------------------------------------------------------
def build_feature_cache(cfg: GridConfig, tower_state: dict, datamodule) -> dict[str, np.ndarray]:
    """Features of every image of every split, memory-mapped; computed once per (tower, layers, data)."""
    from lit_vlm.data.processor import VLMProcessor
    from lit_vlm.model.vision import VisionTower

    tower = VisionTower(replace(cfg.vision, frozen=True))
    tower.load_state_dict(tower_state)
    tower.eval()
    # The tower's own resolution and normalisation (a pretrained checkpoint brings its own).
    processor = VLMProcessor(datamodule.processor.tokenizer, tower.image_size, tower.image_mean, tower.image_std)
    fingerprints = {s: ds._fingerprint for s, ds in datamodule.datasets.items()}
    key = hashlib.sha256(
        json.dumps([_tower_fingerprint(tower_state), cfg.vision.feature_layers, fingerprints], sort_keys=True).encode()
    ).hexdigest()[:16]
    folder = Path(cfg.out_dir) / "features" / key
    folder.mkdir(parents=True, exist_ok=True)
    cache = {}
    batch = 128
    for split, ds in datamodule.datasets.items():
        path = folder / f"{split}.npy"
        if not path.exists():
            tmp = folder / f".{split}.{os.getpid()}.npy.tmp"  # one per process: DDP ranks may build it together
            shape = (len(ds), tower.num_levels, tower.num_patches, tower.hidden_size)
            out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=shape)
            with torch.no_grad():
                for start in tqdm(range(0, len(ds), batch), desc=f"features {split}", leave=False):
                    images = ds[start : start + batch]["image"]
                    pixels = torch.stack([processor.image_to_tensor(im) for im in images])
                    out[start : start + len(images)] = tower(pixels).numpy()
            out.flush()
            del out
            os.replace(tmp, path)
        cache[split] = np.load(path, mmap_mode="r")
    return cache


# --- one cell ----------------------------------------------------------------------------------------------
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


def run_cell(cfg: GridConfig, cell: Cell, tower_state: dict, features: dict | None) -> list[dict]:
    from lit_vlm.data.datamodule import VLMDataModule
    from lit_vlm.module import FAMILIES, LitVLM

    cell_dir = Path(cfg.out_dir) / "cells" / cell.id
    shutil.rmtree(cell_dir, ignore_errors=True)  # an interrupted cell is redone from scratch
    L.seed_everything(cell.seed, verbose=False)
    module = LitVLM(
        vision=replace(cfg.vision, frozen=True),
        llm=cfg.llms[cell.llm],
        compressor=cell.compressor,
        visual_tokens=cell.visual_tokens,
        **cell_model_args(cfg, cell),
    )
    module.vlm.vision_tower.load_state_dict(tower_state)
    dm = VLMDataModule(**cfg.data, processor=module.processor)
    dm.feature_cache = features
    trainer = L.Trainer(
        default_root_dir=cell_dir,
        logger=CSVLogger(cell_dir, name="logs"),
        enable_checkpointing=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        **cfg.trainer,
    )
    start = time.perf_counter()
    trainer.fit(module, dm)
    train_time = time.perf_counter() - start
    results = (trainer.test if cfg.eval_split == "test" else trainer.validate)(module, dm, verbose=False)[0]
    ckpt = cell_dir / "final.ckpt"
    trainer.save_checkpoint(ckpt, weights_only=True)

    loader = dm.test_dataloader() if cfg.eval_split == "test" else dm.val_dataloader()
    cost = measure_prefill(module.vlm, next(iter(loader)))
    prefix = "test" if cfg.eval_split == "test" else "val"
    counts = dm.family_counts(cfg.eval_split)
    rows = []
    for family in FAMILIES:
        if f"{prefix}/{family}/accuracy" not in results:
            continue
        q = results["cost/text_tokens"]
        rows.append(
            {
                "cell": cell.id,
                "llm": cell.llm,
                "llm_params": int(results["cost/llm_params"]),
                "llm_params_with_embeddings": int(results["cost/llm_params_with_embeddings"]),
                "visual_tokens": cell.visual_tokens,
                "text_tokens": round(q, 4),
                "compressor": cell.compressor,
                "seed": cell.seed,
                "family": family,
                "examples": counts.get(family, 0),
                "accuracy": round(results[f"{prefix}/{family}/accuracy"], 6),
                "anls": round(results.get(f"{prefix}/{family}/anls", float("nan")), 6),
                "cer": round(results.get(f"{prefix}/{family}/cer", float("nan")), 6),
                "loss": round(results[f"{prefix}/loss"], 6),
                "inference_flops": results["cost/inference_flops"],
                "measured_prefill_flops": round(cost.measured_flops),
                "flops_ratio": round(cost.ratio, 4),
                "prefill_latency_ms": round(cost.latency_s * 1000, 3),
                "train_time_s": round(train_time, 2),
                "train_steps": trainer.global_step,
                "checkpoint": str(ckpt),
            }
        )
    return rows


# --- the loop ----------------------------------------------------------------------------------------------
def run_grid(cfg: GridConfig, force: bool = False, only: list[str] | None = None) -> Path:
    from lit_vlm.data.datamodule import VLMDataModule
    from lit_vlm.data.tokenizer import load_tokenizer
    from lit_vlm.data.processor import VLMProcessor

    validate(cfg)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = ResultsTable(out / "results.csv")
    handler = logging.FileHandler(out / "grid.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)

    cells = cells_of(cfg)
    if only:
        unknown = sorted(set(only) - {c.id for c in cells})
        if unknown:
            raise UserError(f"--only {unknown[0]!r} is not a cell of this grid; cells: {', '.join(c.id for c in cells)}")
        cells = [c for c in cells if c.id in only]
    done = set() if force else table.done()
    todo = [c for c in cells if c.id not in done]
    log.info("grid %s: %d cells, %d done, %d to run", out, len(cells), len(cells) - len(todo), len(todo))
    if not todo:
        return table.path

    tower_state = load_or_train_tower(cfg)
    features = None
    if cfg.feature_cache:
        tok = load_tokenizer(cfg.model.get("tokenizer", "synthetic"))
        dm = VLMDataModule(**cfg.data, processor=VLMProcessor(tok, image_size=cfg.vision.image_size))
        dm.prepare_data()
        dm.setup("fit")
        features = build_feature_cache(cfg, tower_state, dm)

    bar = tqdm(total=len(cells), initial=len(cells) - len(todo), desc="grid", unit="cell", position=0)
    for cell in todo:
        bar.set_postfix_str(cell.id)
        start = time.perf_counter()
        rows = run_cell(cfg, cell, tower_state, features)
        if rank_zero_only.rank == 0:  # under DDP every rank runs the cell; one writes the table
            table.replace_cell(cell.id, rows)
        summary = ", ".join(f"{r['family']} acc={r['accuracy']:.3f}" for r in rows)
        log.info("cell %s done in %.1fs: %s", cell.id, time.perf_counter() - start, summary)
        bar.update(1)
    bar.close()
    log.removeHandler(handler)
    return table.path


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="python -m lit_vlm grid", description=__doc__.split("\n\n")[0], exit_on_error=False)
    parser.add_argument("--config", action=ActionConfigFile, help="A grid YAML (see configs/grid/).")
    parser.add_class_arguments(GridConfig, None, as_group=False)
    parser.add_argument("--force", action="store_true", help="Re-run cells that are already in the table.")
    parser.add_argument("--only", nargs="+", type=str, default=None, help="Run only these cell ids (space separated).")
    return parser


def main(argv: list[str]) -> int:
    parser = build_parser()
    try:
        ns = parser.parse_args(argv)
    except Exception as err:  # jsonargparse's ArgumentError: unknown key, bad type, unreadable file
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        raise UserError(lines[-1] if lines else str(err)) from None
    init = parser.instantiate(ns)
    cfg = GridConfig(**{f.name: init[f.name] for f in fields(GridConfig)})
    path = run_grid(cfg, force=ns.force, only=ns.only)
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
