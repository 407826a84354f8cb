"""``python -m lit_vlm``: fit | validate | test | predict (LightningCLI), grid, scaling.

    python -m lit_vlm fit --config configs/quickstart.yaml
    python -m lit_vlm fit --config configs/quickstart.yaml --model.visual_tokens 4 --print_config
    python -m lit_vlm grid --config configs/grid/cpu_smoke.yaml
    python -m lit_vlm scaling fit --results paper --family reasoning --out runs/fit_paper
"""

from __future__ import annotations

import pickle
import sys
from pathlib import Path

import torch
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from lit_vlm.errors import UserError

# Config dataclasses document each field in a docstring under it (litgpt style): show those in --help.
import jsonargparse  # noqa: E402

jsonargparse.set_parsing_settings(docstring_parse_attribute_docstrings=True)


def fail(message: str) -> None:
    """A user's mistake: one line on stderr, exit status 2, no traceback."""
    sys.stderr.write(f"error: {message}\n")
    raise SystemExit(2)


class OneLineErrorParser(LightningArgumentParser):
    """jsonargparse prints usage and nested reasons; users get the one line that names the bad value."""

    def error(self, message: str, ex: Exception | None = None):
        lines = [line.strip(" -") for line in str(message).splitlines() if line.strip(" -")]
        # The last lines are the most specific reason ("Key 'x' is not expected", "Unable to load config ...").
        fail(" | ".join(lines[:1] + lines[-1:]) if len(lines) > 1 else (lines[0] if lines else "invalid arguments"))


def check_config_files(argv: list[str]) -> None:
    """Every --config file must exist and be valid YAML; say which file and where it breaks."""
    import yaml

    paths = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--config"]
    paths += [a.split("=", 1)[1] for a in argv if a.startswith("--config=")]
    for path in paths:
        if not Path(path).is_file():
            raise UserError(f"config file {path!r} does not exist; see configs/ for examples")
        try:
            yaml.safe_load(Path(path).read_text())
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            raise UserError(f"config file {path!r} is not valid YAML{where}: {getattr(err, 'problem', err)}") from None


def check_checkpoint(path: str) -> None:
    """Refuse anything that is not a Lightning checkpoint before Lightning tries to use it."""
    if not Path(path).is_file():
        raise UserError(f"--ckpt_path {path!r} does not exist; give a .ckpt file written by this kit")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)  # never unpickle arbitrary code
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"--ckpt_path {path!r} is not a loadable checkpoint ({reason[:120]})") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise UserError(f"--ckpt_path {path!r} is not a Lightning checkpoint (no 'state_dict' in it)")


class VLMCLI(LightningCLI):
    """LightningCLI with checked checkpoints, one-line errors, and the model's processor handed to the data.

    ``oom_knobs``: a dict this CLI fills with the memory knobs of the instantiated run (for explain_oom).
    """

    def __init__(self, *args, oom_knobs: dict | None = None, **kwargs):
        self.oom_knobs = {} if oom_knobs is None else oom_knobs
        super().__init__(*args, **kwargs)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # One owner: LitVLM builds the tokenizer and processor; the datamodule receives that object.
        parser.link_arguments("model", "data.processor", compute_fn=lambda model: model.processor, apply_on="instantiate")

    def parse_arguments(self, parser: LightningArgumentParser, args) -> None:
        super().parse_arguments(parser, args)
        sub = self.config.get("subcommand")
        ckpt_path = self.config[sub].get("ckpt_path") if sub else None
        if ckpt_path:  # before Lightning reads its hyperparameters: a bad file is one line, never unpickled
            check_checkpoint(ckpt_path)

    def instantiate_trainer(self, **kwargs):
        from lightning.fabric.utilities.exceptions import MisconfigurationException

        try:
            return super().instantiate_trainer(**kwargs)
        except MisconfigurationException as err:  # e.g. trainer.max_steps=-5
            raise UserError(f"trainer: {str(err).strip().splitlines()[0]}") from None

    def instantiate_classes(self) -> None:
        from lit_vlm.module import restoring_weights

        sub = self.config.get("subcommand")
        if sub and self.config[sub].get("ckpt_path"):
            with restoring_weights():  # the checkpoint holds the tower: vision.weights is not read
                super().instantiate_classes()
        else:
            super().instantiate_classes()

    def after_instantiate_classes(self) -> None:
        from lit_vlm.gpu import knobs_of

        self.oom_knobs.update(knobs_of(self.trainer, self.model, self.datamodule))


def run_lightning(argv: list[str]) -> None:
    import logging

    from lit_vlm.data.datamodule import VLMDataModule
    from lit_vlm.gpu import explain_oom
    from lit_vlm.module import LitVLM

    logging.getLogger("lightning.fabric.utilities.seed").setLevel(logging.WARNING)  # keep errors to one line

    with explain_oom() as knobs:  # an out-of-memory crash becomes one line naming the knobs and their values
        VLMCLI(
            LitVLM,
            VLMDataModule,
            args=None if argv == sys.argv[1:] else argv,  # from a shell, LightningCLI reads sys.argv itself
            parser_class=OneLineErrorParser,
            seed_everything_default=0,
            save_config_kwargs={"overwrite": True},
            oom_knobs=knobs,
        )


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        check_config_files(argv)
        if argv and argv[0] == "grid":
            from lit_vlm.grid import main as grid_main

            return grid_main(argv[1:])
        if argv and argv[0] == "scaling":
            from lit_vlm.scaling.cli import main as scaling_main

            return scaling_main(argv[1:])
        run_lightning(argv)
    except UserError as err:
        fail(str(err))
    return 0


if __name__ == "__main__":
    sys.exit(main())
