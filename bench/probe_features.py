"""How much of each task can be answered from V pooled visual tokens at all? An MLP probe on the frozen tower's
features, pooled to V tokens as the avgpool compressor pools them, plus the question's tokens, trained on the
grid's own training rows and scored per task on its test rows: an "ideal small reader" to set beside the LLM.

    python bench/probe_features.py --config configs/grid/cpu_law.yaml --visual-tokens 1 4 16 \\
        [--num-train 32000] [--num-test 4000] [--epochs 8] [--out bench/results/probe_cpu_law]

Reads the grid's stage-0 tower and feature store (``out_dir``); trains the tower and builds the store when
missing, as the grid would. When the probe at V = 1 answers a task that the grid's LLMs do not, the LLM (or
its training) is what holds that task back, not the visual tokens. Seeded; writes ``<out>.json`` and
``<out>.md`` when --out is given.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from lit_vlm.errors import UserError  # noqa: E402
from lit_vlm.grid import build_store, load_config, load_or_train_tower, validate  # noqa: E402
from lit_vlm.model.compressors import build_compressor  # noqa: E402
from task_accuracy import tally  # noqa: E402 - bench/, next to this script

MAX_QUESTION = 16  # tokens; the synthetic questions are shorter


def pooled(store, rows, v: int, grid_side: int) -> torch.Tensor:
    """[n, v * D] features of store ``rows``, pooled to v tokens by the avgpool compressor (flattened)."""
    avgpool = build_compressor("avgpool", in_dim=store.features.shape[-1], grid_side=grid_side,
                               num_levels=store.features.shape[1], visual_tokens=v)
    out = []
    for start in range(0, len(rows), 2048):
        tokens, _ = avgpool.compress(torch.from_numpy(np.asarray(store.features[rows[start : start + 2048]])), None)
        out.append(tokens.transpose(1, 2).flatten(1))  # [b, D * v], channel-major as the probe was fitted
    return torch.cat(out)


def split_rows(ds, processor, store, n: int) -> dict:
    """Store rows (the store's own row map of ``ds``), question token ids and answers/tasks/families of the
    first ``n`` rows of ``ds``."""
    n = min(n, len(ds))
    rows = store.row_map(ds)
    if rows is None:
        raise UserError(f"the feature store {store.folder} has no row map of this dataset: rebuild it (run the grid)")
    part = ds.select_columns(["question", "answer", "task", "family"]).select(range(n))
    ids = processor.tokenizer(list(part["question"]), add_special_tokens=False)["input_ids"]
    q = torch.zeros(n, MAX_QUESTION, dtype=torch.long)
    for i, t in enumerate(ids):
        q[i, : min(len(t), MAX_QUESTION)] = torch.tensor(t[:MAX_QUESTION])
    return {"rows": rows[:n].tolist(), "q": q, "answer": list(part["answer"]),
            "task": list(part["task"]), "family": list(part["family"])}


class Probe(nn.Module):
    def __init__(self, vision_dim: int, vocab: int, classes: int, hidden: int):
        super().__init__()
        self.embed = nn.Embedding(vocab, 16)
        self.mlp = nn.Sequential(nn.Linear(vision_dim + 16 * MAX_QUESTION, hidden), nn.GELU(),
                                 nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, classes))

    def forward(self, x, q):
        return self.mlp(torch.cat([x, self.embed(q).flatten(1)], 1))


def probe(train: dict, test: dict, x_train, x_test, vocab: int, epochs: int, hidden: int, seed: int) -> dict:
    torch.manual_seed(seed)
    answers = sorted(set(train["answer"]))
    index = {a: i for i, a in enumerate(answers)}
    y = torch.tensor([index[a] for a in train["answer"]])
    model = Probe(x_train.shape[1], vocab, len(answers), hidden)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for b in torch.randperm(len(y), generator=g).split(256):
            loss = F.cross_entropy(model(x_train[b], train["q"][b]), y[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        pred = model(x_test, test["q"]).argmax(1).tolist()
    return tally(((f, t, answers[p] == a) for p, a, t, f in zip(pred, test["answer"], test["task"], test["family"])),
                 digits=4)

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", required=True, help="a grid YAML (its out_dir holds the tower and feature store)")
    ap.add_argument("--visual-tokens", nargs="+", type=int, default=[1, 4, 16])
    ap.add_argument("--num-train", type=int, default=32000)
    ap.add_argument("--num-test", type=int, default=4000)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="writes <out>.json and <out>.md")
    args = ap.parse_args()
    try:
        from lit_vlm.grid.run import _setup_data
        from lit_vlm.model.vision import VisionTower

        cfg = validate(load_config(args.config))
        tower = VisionTower(replace(cfg.vision, frozen=True))
        side = tower.grid_side
        bad = [v for v in args.visual_tokens if v < 1 or round(v**0.5) ** 2 != v or side % round(v**0.5)]
        if bad:
            raise UserError(f"--visual-tokens {bad[0]}: must be a square v*v with v dividing {side}")
        tower.load_state_dict(load_or_train_tower(cfg))
        dm = _setup_data(cfg)  # the grid's data and processor: the store's keys are of its pixels
        processor = dm.processor
        store = build_store(Path(cfg.out_dir) / "features", tower, dm.datasets)
        start = time.perf_counter()
        train = split_rows(dm.datasets["train"], processor, store, args.num_train)
        test = split_rows(dm.datasets["test" if "test" in dm.datasets else "validation"], processor, store, args.num_test)
        print(f"probe: {len(train['rows'])} training and {len(test['rows'])} test rows read in "
              f"{time.perf_counter() - start:.0f} s", flush=True)
        vocab = len(processor.tokenizer)
        results = {}
        for v in args.visual_tokens:
            results[v] = probe(train, test, pooled(store, train["rows"], v, side), pooled(store, test["rows"], v, side),
                               vocab, args.epochs, args.hidden, args.seed)
            line = "  ".join(f"{f} {r['accuracy']:.3f} ({', '.join(f'{t} {a:.2f}' for t, a in r['tasks'].items())})"
                             for f, r in results[v].items())
            print(f"V={v}: {line}", flush=True)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        meta = {"command": "python " + " ".join(sys.argv), **vars(args)}
        out.with_suffix(".json").write_text(json.dumps({"meta": meta, "results": results}, indent=1) + "\n")
        lines = [f"# Feature probe: {args.config}", "", f"`{meta['command']}`", "",
                 "| V | family | accuracy | per task |", "|---|---|---|---|"]
        for v, r in results.items():
            for f, x in r.items():
                lines.append(f"| {v} | {f} | {x['accuracy']:.3f} | "
                             + ", ".join(f"{t} {a:.2f}" for t, a in x["tasks"].items()) + " |")
        out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
