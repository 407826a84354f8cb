"""Per-task test accuracy of trained grid cells: which questions a cell answers and which it guesses.

    python bench/task_accuracy.py --config runs/pilot/cpu_law_r3/line/grid.yaml \\
        --cells llm-d4w48-V1-avgpool-s0 [--num-test 2000] [--out bench/results/tasks_r3]

Reads each cell's ``final.ckpt`` under the grid's out_dir and greedily answers the first ``--num-test`` rows of
the grid's test split (the same rows, prompts and decoding as the grid's evaluation). Writes ``<out>.md``
when --out is given.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

import lightning as L
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from lit_vlm.data.synthetic import name_shown  # noqa: E402
from lit_vlm.errors import UserError  # noqa: E402
from lit_vlm.grid import load_config, validate  # noqa: E402


def tally(answers, digits: int | None = None) -> dict[str, dict]:
    """(family, task, correct) triples -> family -> {"accuracy", "tasks": {task: accuracy}}, rounded to
    ``digits`` when given."""
    r = (lambda x: x) if digits is None else (lambda x: round(x, digits))
    hits, totals = Counter(), Counter()
    for family, task, correct in answers:
        totals[(family, task)] += 1
        hits[(family, task)] += bool(correct)
    out: dict[str, dict] = {}
    for family in sorted({f for f, _ in totals}):
        n = sum(c for (f, _), c in totals.items() if f == family)
        out[family] = {"accuracy": r(sum(h for (f, _), h in hits.items() if f == family) / n),
                       "tasks": {t: r(hits[(f, t)] / c) for (f, t), c in sorted(totals.items()) if f == family}}
    return out


def fact_bucket(question: str, names: list[str], shown: float | None = None) -> str:
    """The "fact" task split by how common the asked name is: its frequency rank in bands of 4x (1-4, 5-16, ...);
    with ``shown`` (fact_shown of fact_shown_by "name"), also by whether the images show the name's answer."""
    rank, band = names.index(question.split()[2].rstrip("?")) + 1, 1  # "what is KX?" (fact_key name) too
    while rank > 4 ** band:
        band += 1
    kind = "" if shown is None else ("shown " if name_shown(shown, rank - 1) else "hidden ")
    return f"{kind}fact{band} (names {4 ** (band - 1) + 1 if band > 1 else 1}-{min(4 ** band, len(names))})"


def task_accuracy(predictions, fact_names: list[str] | None = None, shown: float | None = None) -> dict[str, dict]:
    """``tally`` of predict_step's rows (exact match of the stripped answer); with ``fact_names`` (most common
    first) the fact task is split by how common the name is (and with ``shown``, by shown and hidden names)."""
    def task(r):
        return fact_bucket(r["question"], fact_names, shown) if fact_names and r["task"] == "fact" else r["task"]
    return tally((r["family"], task(r), r["prediction"].strip() == r["answer"]) for batch in predictions for r in batch)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", required=True, help="the grid YAML the cells were trained by")
    ap.add_argument("--cells", nargs="+", required=True, help="cell ids (folders under <out_dir>/cells)")
    ap.add_argument("--num-test", type=int, default=2000)
    ap.add_argument("--out", default=None, help="writes <out>.md")
    args = ap.parse_args()
    try:
        from lit_vlm.data.datamodule import VLMDataModule
        from lit_vlm.data.synthetic import fact_table, resolve_options
        from lit_vlm.module import LitVLM

        cfg = validate(load_config(args.config))
        ckpts = [Path(cfg.out_dir) / "cells" / c / "final.ckpt" for c in args.cells]
        missing = [str(p) for p in ckpts if not p.is_file()]
        if missing:
            raise UserError(f"no checkpoint {missing[0]}; cells there: "
                            f"{', '.join(sorted(p.name for p in (Path(cfg.out_dir) / 'cells').glob('*'))) or 'none'}")
        opts = resolve_options(**(cfg.data.get("task_options") or {}))
        names = fact_table(opts["fact_names"], opts["fact_zipf"], opts["fact_seed"])[0] if "fact_names" in opts else None
        shown = opts["fact_shown"] if opts.get("fact_shown_by") == "name" else None
        lines = [f"`python {' '.join(sys.argv)}`", "", "| cell | family | per task |", "|---|---|---|"]
        for cell, ckpt in zip(args.cells, ckpts):
            module = LitVLM.load_from_checkpoint(ckpt, map_location="cpu", weights_only=True)
            dm = VLMDataModule(**{**cfg.data, "num_test": args.num_test}, processor=module.processor)
            trainer = L.Trainer(logger=False, accelerator="cpu", enable_progress_bar=False, enable_model_summary=False)
            for family, result in task_accuracy(trainer.predict(module, dm), names, shown).items():
                text = ", ".join(f"{t} {a:.2f}" for t, a in result["tasks"].items())
                print(f"{cell} {family}: {text}", flush=True)
                lines.append(f"| {cell} | {family} | {text} |")
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).with_suffix(".md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    torch.set_num_threads(1)
    sys.exit(main())
