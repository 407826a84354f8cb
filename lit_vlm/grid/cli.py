"""``python -m lit_vlm grid``: the grid's command line, typed by the same signatures as its config.

    python -m lit_vlm grid --config configs/grid/cpu_smoke.yaml [--force] [--only CELL_ID ...]
    python -m lit_vlm grid --config configs/grid/cpu_mini.yaml --launcher local --workers 2   # 2 cells at once
    python -m lit_vlm grid --config configs/grid/multi_gpu.yaml --launcher slurm --workers 16 \
        --launch.slurm.partition gpu --launch.slurm.time_min 120           # one SLURM job array
    python -m lit_vlm grid --config configs/grid/cpu_smoke.yaml --trainer.max_steps=3 --model.optimizer.lr=0.01
    python -m lit_vlm grid --help          # every field, the model, data and trainer sections' included
"""

from __future__ import annotations

import sys
from dataclasses import fields
from typing import get_args, get_type_hints

from jsonargparse import ActionConfigFile, ArgumentParser, Namespace

from lit_vlm.errors import UserError
from lit_vlm.grid.config import GridConfig, LaunchConfig, add_sections, one_line
from lit_vlm.grid.launch import CellsFailed
from lit_vlm.grid.run import run_grid

SECTIONS = ("model", "data", "trainer")


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="python -m lit_vlm grid", exit_on_error=False,
                            description="The grid runner: LLM size x visual tokens [x compressors] [x seeds], one results table.")
    parser.add_argument("--config", action=ActionConfigFile, help="A grid YAML (see configs/grid/).")
    parser.add_class_arguments(GridConfig, None, as_group=False, skip=set(SECTIONS))
    add_sections(parser)
    parser.add_argument("--force", action="store_true", help="Re-run cells that are already in the table.")
    parser.add_argument("--only", nargs="+", type=str, default=None, help="Run only these cell ids (space separated).")
    parser.add_argument("--launcher", type=str, default=None,
                        help="Sets launch.launcher: none (one cell after another here), local (worker processes on "
                             "this machine that take the cells one by one), slurm (one SLURM job array), debug "
                             "(submitit's debug mode).")
    parser.add_argument("--workers", type=int, default=None, help="Sets launch.workers: cells at once.")
    return parser


def to_config(parser: ArgumentParser, ns: Namespace) -> GridConfig:
    # the --launcher and --workers flags override the config's launch section
    if ns.launcher is not None:
        allowed = get_args(get_type_hints(LaunchConfig)["launcher"])
        if ns.launcher not in allowed:
            raise UserError(f"--launcher {ns.launcher!r} is not a launcher; allowed: {', '.join(allowed)}")
        ns["launch.launcher"] = ns.launcher
    if ns.workers is not None:
        ns["launch.workers"] = ns.workers
    init = parser.instantiate(ns)
    values = {f.name: init[f.name] for f in fields(GridConfig) if f.name not in SECTIONS}
    return GridConfig(**values, **{name: ns[name].as_dict() for name in SECTIONS})


def parse(argv: list[str]) -> tuple[GridConfig, Namespace]:
    """The command line -> (the grid's config, the parsed namespace with --force and --only)."""
    parser = build_parser()
    try:
        ns = parser.parse_args(argv)
    except Exception as err:  # jsonargparse's ArgumentError: unknown key, bad type, unreadable file
        raise UserError(one_line(err)) from None
    return to_config(parser, ns), ns


def load_config(path: str, *overrides: str) -> GridConfig:
    """A grid YAML (and command-line style overrides such as ``--trainer.max_steps=3``) as a GridConfig."""
    return parse(["--config", str(path), *overrides])[0]


def main(argv: list[str]) -> int:
    cfg, ns = parse(argv)
    try:
        path = run_grid(cfg, force=ns.force, only=ns.only)
    except CellsFailed as err:  # the others' rows are written; one line per failed cell, no traceback
        sys.stderr.write(f"error: {err}\n")
        return 1
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
