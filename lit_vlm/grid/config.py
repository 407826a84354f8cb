"""The grid's configuration, typed end to end, and every check that can run before anything is written.

``GridConfig`` holds the grid's own fields (sizes, V, compressors, seeds, the shared tower) and three
sections shared by every cell: ``model``, ``data`` and ``trainer``, the arguments of ``LitVLM``,
``VLMDataModule`` and ``lightning.Trainer``. The sections are checked against those signatures by
jsonargparse, exactly as LightningCLI checks ``fit``'s config: a typo at any depth
(``model: {optimzer: ...}``) or a value of the wrong type is one line naming the key. ``validate`` returns
the config with each section complete and typed (every argument, defaults filled in).
"""

from __future__ import annotations

import dataclasses
import functools
import re
from dataclasses import dataclass, field, replace
from typing import Literal

import lightning as L
from jsonargparse import ArgumentParser, Namespace

from lit_vlm.errors import UserError
from lit_vlm.llm_pretrain import PretrainConfig
from lit_vlm.model.compressors import valid_visual_tokens
from lit_vlm.model.vision import VisionConfig
from lit_vlm.model.vlm import LLMConfig
from lit_vlm.tower import OBJECTIVES, TowerConfig

# Arguments each cell sets itself, so a section may not: the cell's size, V and compressor; the Trainer's
# output folder, logger and the grid's no-validation, no-checkpoint training; the processor (the model's).
CELL_MODEL_ARGS = ("vision", "llm", "compressor", "visual_tokens", "processor")
CELL_DATA_ARGS = ("processor",)
CELL_TRAINER_ARGS = ("default_root_dir", "logger", "enable_checkpointing", "num_sanity_val_steps", "limit_val_batches")


@dataclass
class SlurmConfig:
    """The SLURM job array of ``launcher: slurm`` (one array task per cell), passed to submitit's SlurmExecutor."""

    partition: str | None = None
    """The partition (sbatch --partition); None: the cluster's default."""
    time_min: int = 240
    """Time limit of each cell's task, in minutes (sbatch --time)."""
    gpus_per_cell: int = 1
    """GPUs of each cell's task (sbatch --gpus-per-node); 0 on a CPU partition."""
    cpus_per_cell: int | None = None
    """CPUs of each cell's task (sbatch --cpus-per-task); None: the cluster's default."""
    mem_gb: float | None = None
    """Memory of each cell's task in GB (sbatch --mem); None: the cluster's default."""
    parameters: dict = field(default_factory=dict)
    """Other SlurmExecutor parameters by submitit's name (account, qos, constraint, exclude, setup, ...):
    submitit refuses a name it does not know."""
    additional_parameters: dict = field(default_factory=dict)
    """Raw sbatch flags submitit writes as given (e.g. {reservation: paper}): for what it has no name for."""


@dataclass
class LaunchConfig:
    """How the cells run: in this process one after another, or each in its own process through submitit."""

    launcher: Literal["none", "local", "slurm", "debug"] = "none"
    """none: one after another in this process; local: ``workers`` long-lived processes on this machine
    (submitit's LocalExecutor) that take the cells one by one; slurm: one SLURM job array, a task per cell
    (submitit's SlurmExecutor); debug: submitit's DebugExecutor, the local workers' code run in this process
    (for tests and pdb)."""
    workers: int = 1
    """Cells at once with ``local`` (one GPU each on a GPU machine; on a CPU num_threads is split between
    them) and the array's parallelism (sbatch --array=...%workers) with ``slurm``."""
    pin_cores: bool = False
    """``local`` on a CPU: bind each worker to its own cores (os.sched_setaffinity) when workers x threads fit
    in the cores this process may use. Off by default: on the 2-core reference machine binding gained nothing
    consistent (bench/results/parallel_cells_runs.md: 1.67x against 1.83x unbound in one run, 1.68x against
    1.57x in another)."""
    time_min: int = 24 * 60
    """``local``: a worker still running after this many minutes is stopped (submitit's timeout); the cell it
    held is reported failed, the cells it finished are in the table."""
    slurm: SlurmConfig = field(default_factory=SlurmConfig)
    """The job array of ``launcher: slurm``."""


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
    """LitVLM arguments shared by every cell (optimizer, stage, compressor_options, max_new_tokens, tokenizer)."""
    data: dict = field(default_factory=dict)
    """VLMDataModule arguments (sizes, families, batch sizes)."""
    trainer: dict = field(default_factory=dict)
    """lightning.Trainer arguments for each cell (max_steps, accelerator, precision, devices, strategy)."""
    tower: TowerConfig = field(default_factory=TowerConfig)
    """Stage 0: the shared vision tower."""
    llm_pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    """Stage 1 (off by default): each LLM size first learns the benchmark's facts from text alone, and its cells
    start from those weights (lit_vlm/llm_pretrain.py)."""
    feature_cache: bool = True
    """Compute the frozen tower's features once per image and reuse them in every cell."""
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
    """CPU threads for torch while the grid runs (None: torch's default); restored when run_grid returns. Part
    of the config because results on a CPU can depend on it, and because two processes with two threads each
    on two cores thrash (OpenMP spin-waits). With ``launch.launcher: local`` they are split between workers."""
    launch: LaunchConfig = field(default_factory=LaunchConfig)
    """How the cells run (the --launcher and --workers flags set launch.launcher and launch.workers)."""


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
    return [Cell(llm, v, comp, seed) for llm in cfg.llms for v in cfg.visual_tokens for comp in cfg.compressors
            for seed in cfg.seeds]


# --- the three sections, typed by the signatures LightningCLI uses ----------------------------------------
def add_sections(parser: ArgumentParser) -> None:
    """``--model.*``, ``--data.*`` and ``--trainer.*``: LitVLM's, VLMDataModule's and Trainer's arguments,
    less those each cell sets. Not instantiated: every cell builds its own objects from them."""
    from lit_vlm.data.datamodule import VLMDataModule
    from lit_vlm.module import LitVLM

    for name, cls, skip in (("model", LitVLM, CELL_MODEL_ARGS), ("data", VLMDataModule, CELL_DATA_ARGS),
                            ("trainer", L.Trainer, CELL_TRAINER_ARGS)):
        parser.add_class_arguments(cls, name, skip=set(skip), instantiate=False, fail_untyped=False)


@functools.cache
def _section_parser() -> ArgumentParser:
    parser = ArgumentParser(exit_on_error=False)
    add_sections(parser)
    return parser


def one_line(err: Exception) -> str:
    """jsonargparse's nested report -> one line: the full dotted key and the most specific reason."""
    lines = [line.strip(" -") for line in str(err).splitlines() if line.strip(" -")]
    if not lines:
        return type(err).__name__
    keys = [m.group(1) for line in lines if (m := re.match(r'Parser key "([^"]+)"', line))]
    reasons = [line for line in lines if not line.startswith(("Parser key", "Does not validate", "Subtypes",
                                                                 "Errors", "Given value", "Problem with"))]
    # a key a nested dataclass lacks (a typo in data.task_options) says so, not why the union's None failed
    reason = next((r for r in reasons if re.match(r"Option '[^']+' is not accepted", r)), None) or \
        next((r for r in reasons if r.startswith("Expected")), reasons[0] if reasons else lines[-1])
    if keys == ["data.task_options"] and reason.startswith("Option"):
        from lit_vlm.data.datamodule import TaskOptions

        reason += f"; allowed: {', '.join(f.name for f in dataclasses.fields(TaskOptions))}"
    unknown = re.match(r"Group '(\w+)' does not accept option '([^']+)'", reason)
    if unknown and unknown.group(1) in ("model", "data", "trainer"):
        section, key = unknown.groups()
        allowed = ", ".join(vars(_section_parser().get_defaults()[section]))
        return f"{section}.{key} is not an argument of the {section} section; allowed: {allowed}"
    return f"{'.'.join(keys)}: {reason}" if keys else reason


def check_sections(model: dict | Namespace, data: dict | Namespace, trainer: dict | Namespace) -> tuple[dict, dict, dict]:
    """The three sections checked against their signatures; returned complete (defaults filled) and typed."""
    try:
        ns = _section_parser().parse_object({"model": model, "data": data, "trainer": trainer})
    except Exception as err:  # jsonargparse's ArgumentError or a TypeError from a value it cannot read
        raise UserError(one_line(err)) from None
    return ns.model.as_dict(), ns.data.as_dict(), ns.trainer.as_dict()


def trainer_kwargs(trainer: dict) -> dict:
    """Keyword arguments for one cell's lightning.Trainer: class specs (callbacks, plugins) instantiated afresh,
    so no two cells share a stateful callback."""
    parser = _section_parser()
    init = parser.instantiate(parser.parse_object({"trainer": trainer}))
    return dict(init.trainer)


def grid_side(vision: VisionConfig) -> int:
    if vision.pretrained:
        from lit_vlm.model.vision import VisionTower

        return VisionTower(vision).grid_side
    return vision.image_size // vision.patch_size


def validate(cfg: GridConfig) -> GridConfig:
    """Every mistake we can see before training anything, reported in one line; returns the config with its
    model, data and trainer sections complete and typed."""
    from lit_vlm.data.datamodule import VLMDataModule
    from lit_vlm.module import check_projector_hidden

    model, data, trainer = check_sections(cfg.model, cfg.data, cfg.trainer)
    cfg = replace(cfg, model=model, data=data, trainer=trainer)
    check_projector_hidden(model.get("projector_hidden"))  # a type check passes 0; a cell would fail on it
    VLMDataModule(**data)  # the data's own checks (source, families, batch sizes); reads nothing
    if not cfg.llms:
        raise UserError("llms is empty; give at least one LLM size, e.g. llms: {xs: {hidden_size: 32}}")
    if not cfg.visual_tokens:
        raise UserError("visual_tokens is empty; give at least one V, e.g. visual_tokens: [1, 4, 16, 64]")
    if not cfg.compressors or not cfg.seeds:
        raise UserError("compressors and seeds must each list at least one value")
    for name, llm in cfg.llms.items():
        try:
            llm.validate()
        except UserError as err:
            raise UserError(f"llms.{name}: {err}") from None
    if cfg.vision.weights:
        raise UserError(f"vision.weights={cfg.vision.weights!r} is not used by the grid: name the tower in tower.checkpoint")
    if cfg.tower.objective not in OBJECTIVES:
        raise UserError(f"tower.objective={cfg.tower.objective!r} is not allowed; use 'dense' or 'vqa'")
    if cfg.tower.objective == "dense" and not cfg.vision.pretrained and cfg.data["source"] != "synthetic":
        raise UserError(f"tower.objective=dense needs the synthetic data (its patch labels); data.source is "
                        f"{cfg.data['source']!r}: use tower.objective=vqa or a pretrained vision tower")
    if cfg.lr_width is not None:
        if cfg.lr_width < 1:
            raise UserError(f"lr_width={cfg.lr_width} must be a positive integer (a hidden size) or null")
        pretrained = [name for name, llm in cfg.llms.items() if llm.pretrained]
        if pretrained:
            raise UserError(f"lr_width scales by the hidden size of LLMs built from a config; {pretrained[0]!r} is "
                            "pretrained: set lr_width: null and give the rate in model.optimizer")
    if cfg.llm_pretrain.max_steps:
        _check_pretrain(cfg)
    if cfg.eval_split not in ("validation", "test"):
        raise UserError(f"eval_split={cfg.eval_split!r} is not allowed; use 'validation' or 'test'")
    if cfg.num_threads is not None and cfg.num_threads < 1:
        raise UserError(f"num_threads={cfg.num_threads} must be a positive integer or null")
    if cfg.launch.workers < 1:
        raise UserError(f"--workers {cfg.launch.workers} is not allowed: give 1 or more cells at once")
    if cfg.launch.workers > 1 and cfg.launch.launcher == "none":
        raise UserError(f"--workers {cfg.launch.workers} needs a launcher: add --launcher local (or slurm)")
    if cfg.launch.time_min < 1 or cfg.launch.slurm.time_min < 1:
        raise UserError("launch.time_min and launch.slurm.time_min must be at least 1 minute")
    side = grid_side(cfg.vision)
    for v in cfg.visual_tokens:
        if not any(v in valid_visual_tokens(c, side) for c in cfg.compressors):
            allowed = sorted({x for c in cfg.compressors for x in valid_visual_tokens(c, side)})
            raise UserError(
                f"visual_tokens={v} fits no compressor in {cfg.compressors} on a {side}x{side} patch grid; "
                f"valid: {', '.join(map(str, allowed))}"
            )
    return cfg


def _check_pretrain(cfg: GridConfig) -> None:
    """Stage 1 trains LLMs built from a config on the synthetic benchmark's name facts, and nothing else."""
    import numpy as np

    from lit_vlm.data.synthetic import fact_questions

    stage = cfg.llm_pretrain
    if stage.max_steps < 0 or stage.batch_size < 1 or stage.eval_questions < 1 or not stage.lr > 0:
        raise UserError(f"llm_pretrain: max_steps={stage.max_steps}, batch_size={stage.batch_size}, lr={stage.lr}, "
                        f"eval_questions={stage.eval_questions}: steps must be >= 0, the others positive")
    pretrained = [name for name, llm in cfg.llms.items() if llm.pretrained]
    if pretrained:
        raise UserError(f"llm_pretrain trains LLMs built from a config; llms.{pretrained[0]} is already pretrained "
                        "(llm.pretrained): set llm_pretrain.max_steps: 0")
    if cfg.data["source"] != "synthetic":
        raise UserError(f"llm_pretrain needs the synthetic benchmark's facts; data.source is {cfg.data['source']!r}")
    fact_questions(np.random.default_rng(0), 1, **(cfg.data.get("task_options") or {}))  # its one-line refusal


def check_trainer(cfg: GridConfig) -> None:
    """Build one Trainer from the section (no fit): Lightning's own checks (``max_steps=-5``, no GPU for
    ``accelerator: gpu``, an unknown precision) then fail before the grid writes anything."""
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    try:
        L.Trainer(**trainer_kwargs(cfg.trainer), logger=False, enable_checkpointing=False)
    except (MisconfigurationException, ValueError, TypeError) as err:
        raise UserError(f"trainer: {str(err).strip().splitlines()[0]}") from None
