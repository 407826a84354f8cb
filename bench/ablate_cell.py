"""Train one grid cell with overrides and print its per-task test accuracy: the tool behind README's
"How the benchmark was made learnable".

    python bench/ablate_cell.py --config configs/grid/cpu_mini.yaml --llm llm-130k --visual-tokens 16 \
        [--max-steps 1500] [--lr 0.003] [--raw-features] [--data '{"task_options": {...}}']

The stage-0 tower and the feature cache of the config's out_dir are reused (trained and built when missing);
--raw-features resets the tower's per-channel standardisation to the identity for this run only.
A different --data changes the benchmark, so it needs its own tower: give --out-dir as well.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import lightning as L
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lit_vlm.errors import UserError  # noqa: E402
from lit_vlm.grid import Cell, build_store, cell_model_args, load_config, load_or_train_tower, validate  # noqa: E402
from lit_vlm.grid.cache import attach  # noqa: E402
from lit_vlm.grid.config import trainer_kwargs  # noqa: E402
from task_accuracy import task_accuracy  # noqa: E402 - bench/, next to this script


def _json_object(text: str) -> dict:
    """argparse type of --data and --llm-config: a JSON object, else argparse's one-line usage error."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"{text!r} is not JSON ({err.msg}); give an object, e.g. "
                                         "'{\"hidden_size\": 48}'") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"{text!r} must be a JSON object, e.g. '{{\"hidden_size\": 48}}'")
    return value


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="configs/grid/cpu_mini.yaml")
    ap.add_argument("--llm", required=True, help="an LLM name of the config, or a new name with --llm-config")
    ap.add_argument("--llm-config", type=_json_object, default=None,
                    help='JSON LLMConfig for --llm, e.g. \'{"hidden_size": 48}\'')
    ap.add_argument("--visual-tokens", type=int, required=True)
    ap.add_argument("--compressor", default="avgpool")
    ap.add_argument("--max-steps", type=int, default=None)
    ap.add_argument("--lr", type=float, default=None,
                    help="model.optimizer.lr of this cell as given (default: the grid's, scaled by its lr_width)")
    ap.add_argument("--raw-features", action="store_true", help="no per-channel standardisation of the features")
    ap.add_argument("--data", type=_json_object, default={}, help="JSON merged into the config's data section")
    ap.add_argument("--out-dir", default=None, help="another out_dir (its own tower and cache)")
    ap.add_argument("--seed", type=int, default=None, help="the cell's seed (default: the config's first)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    cfg = validate(load_config(args.config))
    data = {**cfg.data, **args.data}
    if args.llm_config:
        from lit_vlm.model.vlm import LLMConfig

        try:
            cfg.llms[args.llm] = LLMConfig(**args.llm_config)
        except TypeError as err:  # an unknown key
            raise UserError(f"--llm-config {args.llm_config}: {err}") from None
    elif args.llm not in cfg.llms:
        raise UserError(f"--llm {args.llm!r} is not an LLM of {args.config}; its LLMs: {', '.join(cfg.llms)} "
                        "(or give --llm-config for a new one)")
    out = args.out_dir or cfg.out_dir
    cfg = replace(cfg, data=data, out_dir=out,
                  trainer={**cfg.trainer, "enable_progress_bar": False,
                           **({"max_steps": args.max_steps} if args.max_steps else {})},
                  tower=replace(cfg.tower, checkpoint=str(Path(out) / Path(cfg.tower.checkpoint).name)))

    from lit_vlm.data.datamodule import VLMDataModule
    from lit_vlm.module import LitVLM

    tower = load_or_train_tower(cfg)
    if args.raw_features:
        tower = {**tower, "feature_mean": torch.zeros_like(tower["feature_mean"]),
                 "feature_std": torch.ones_like(tower["feature_std"])}

    cell = Cell(args.llm, args.visual_tokens, args.compressor, cfg.seeds[0] if args.seed is None else args.seed)
    model = cell_model_args(cfg, cell)  # the grid's rates for this size (lr_width)
    if args.lr is not None:
        model["optimizer"] = {**(model.get("optimizer") or {}), "lr": args.lr}
    L.seed_everything(cell.seed, verbose=False)
    module = LitVLM(vision=replace(cfg.vision, frozen=True), llm=cfg.llms[cell.llm], compressor=cell.compressor,
                    visual_tokens=cell.visual_tokens, **model)
    module.vlm.vision_tower.load_state_dict(tower)
    dm = VLMDataModule(**cfg.data, processor=module.processor)
    dm.prepare_data()
    dm.setup("fit")
    store = build_store(Path(out) / "features", module.vlm.vision_tower, dm.datasets)
    trainer = L.Trainer(logger=False, enable_checkpointing=False, num_sanity_val_steps=0, limit_val_batches=0,
                        **trainer_kwargs(cfg.trainer))
    with attach(module.vlm, store):
        start = time.perf_counter()
        trainer.fit(module, dm)
        seconds = time.perf_counter() - start
        # predict_step runs the test split and returns each answer with its family and task
        predictions = trainer.predict(module, dm)

    print(f"# python {' '.join(sys.argv)}")
    print(f"{cell.id}: {trainer.global_step} steps in {seconds:.0f} s")
    for fam, result in task_accuracy(predictions).items():
        tasks = ", ".join(f"{t} {a:.2f}" for t, a in result["tasks"].items())
        print(f"  {fam}: {result['accuracy']:.3f}   ({tasks})")

if __name__ == "__main__":
    try:
        main()
    except UserError as err:  # a bad config, LLM name or data option: one line, as the kit's CLI says it
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
