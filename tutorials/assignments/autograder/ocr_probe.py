"""The OCR readout probe at V = 1: the cheap, clearly defined proxy that grades assignment 4.

Question it answers: how much of *where each character is* survives when the whole patch grid is squeezed into
a single visual token? Training a whole VLM until it reads (thousands of steps) is far too slow for an
autograder on a laptop CPU, so the LLM is replaced by the smallest possible reader:

    OCR image -> frozen vision tower -> features [B, 2, 64, 32] -> compressor (V = 1) -> token [B, 1, D']
              -> the fixed head MLP(D' -> 128 -> 3 x 10) -> the first, second and last character

Everything is fixed except the compressor under test:
- data: the kit's synthetic benchmark, family ``ocr``, task ``read`` only, with the easier options in
  ``TASK_OPTIONS`` (10 symbols, 2-3 characters, font 16-20 px), seed 0, ``NUM_TRAIN`` / ``NUM_TEST`` images;
- features: the kit's ``VisionTower`` with random weights (seed 0), frozen, 64 px, patch 8 (an 8 x 8 grid),
  width 32, levels ``[0, -1]`` (the patch embeddings, then the output of its one layer: the main level);
- training: the compressor and the head together, AdamW lr 3e-3, batch 64, ``STEPS`` steps, seed 0;
- metric: mean accuracy over the three character positions on the test images (chance: 0.10).

Run it by hand to see the numbers for any submission (and avgpool):

    python tutorials/assignments/autograder/ocr_probe.py [--submission FOLDER]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from torch import nn

TASK_OPTIONS = {"ocr_tasks": {"read": 1.0}, "ocr_alphabet": "ACEHKNPTX4", "ocr_length": (2, 3),
                "font_sizes": (16, 18, 20)}
ALPHABET = TASK_OPTIONS["ocr_alphabet"]
VISION = dict(image_size=64, patch_size=8, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64,
              feature_layers=[0, -1], frozen=True)
NUM_TRAIN, NUM_TEST = 4000, 500
STEPS, BATCH, LR = 1500, 64, 3e-3
OUT_DIM = 64  # width D' asked of compressors with parameters (parameter-free ones keep the tower's width)
POSITIONS = ("first", "second", "last")
MAX_PARAMS = 250_000  # a compressor, not a second vision tower


def probe_features(data_dir) -> dict:
    """Features and labels of the probe's train and test images (computed once per call, in seconds)."""
    from lit_vlm.data.processor import VLMProcessor
    from lit_vlm.data.synthetic import build_synthetic_benchmark
    from lit_vlm.data.tokenizer import load_tokenizer
    from lit_vlm.model.vision import VisionConfig, VisionTower

    data = build_synthetic_benchmark(data_dir, seed=0, image_size=64, num_train=NUM_TRAIN, num_val=8,
                                     num_test=NUM_TEST, families=("ocr",), **TASK_OPTIONS)
    torch.manual_seed(0)
    tower = VisionTower(VisionConfig(**VISION)).eval()
    processor = VLMProcessor(load_tokenizer("synthetic"), image_size=64, image_mean=tower.image_mean,
                             image_std=tower.image_std)
    out = {"grid_side": tower.grid_side, "num_levels": tower.num_levels, "in_dim": tower.hidden_size}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # see run_probe
    try:
        _features(out, data, tower, processor)
    finally:
        torch.set_num_threads(threads)
    return out


def _features(out, data, tower, processor):
    for split in ("train", "test"):
        ds = data[split]
        with torch.no_grad():
            feats = torch.cat([
                tower(torch.stack([processor.image_to_tensor(im) for im in ds[i:i + 500]["image"]]))
                for i in range(0, len(ds), 500)
            ])
        labels = torch.tensor([[ALPHABET.index(t[0]), ALPHABET.index(t[1]), ALPHABET.index(t[-1])]
                               for t in ds["answer"]])
        out[split] = (feats, labels)


def build(cls, feats: dict) -> nn.Module:
    """The compressor under test at V = 1, built with the keyword arguments of the kit's registry."""
    kwargs = dict(in_dim=feats["in_dim"], grid_side=feats["grid_side"], num_levels=feats["num_levels"],
                  visual_tokens=1, query_dim=None)
    if getattr(cls, "has_params", True):
        kwargs["out_dim"] = OUT_DIM
    return cls(**kwargs)


def run_probe(cls, feats: dict, steps: int = STEPS, seed: int = 0) -> dict:
    """Train compressor `cls` + the fixed head; return accuracy per position and their mean.

    Runs on one CPU thread: these tensors are tiny, and a second thread only adds contention (on a busy
    2-core machine, 2 threads were measured ~100x slower than 1).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _run_probe(cls, feats, steps, seed)
    finally:
        torch.set_num_threads(threads)


def _run_probe(cls, feats: dict, steps: int, seed: int) -> dict:
    torch.manual_seed(seed)
    comp = build(cls, feats)
    head = nn.Sequential(nn.Linear(comp.out_dim, 128), nn.GELU(), nn.Linear(128, len(POSITIONS) * len(ALPHABET)))
    params = [p for p in comp.parameters()] + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=LR)
    x_train, y_train = feats["train"]
    gen = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    for _ in range(steps):
        idx = torch.randint(0, len(x_train), (BATCH,), generator=gen)
        tokens = comp(x_train[idx])
        logits = head(tokens[:, 0]).view(-1, len(ALPHABET))
        loss = nn.functional.cross_entropy(logits, y_train[idx].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    comp.eval()
    x_test, y_test = feats["test"]
    with torch.no_grad():
        pred = head(comp(x_test)[:, 0]).view(len(x_test), len(POSITIONS), len(ALPHABET)).argmax(-1)
    acc = (pred == y_test).float().mean(0)
    out = {pos: round(float(a), 4) for pos, a in zip(POSITIONS, acc)}
    out["mean"] = round(float(acc.mean()), 4)
    out["train_loss"] = round(loss.item(), 4)
    out["seconds"] = round(time.perf_counter() - start, 1)
    out["params"] = sum(p.numel() for p in comp.parameters())
    return out


def main() -> None:
    import importlib.util
    import tempfile

    from lit_vlm.model.compressors import COMPRESSORS

    from conftest import DEFAULT  # the folder the autograder grades by default

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--submission", default=str(DEFAULT))
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--kit", nargs="*", default=[], choices=sorted(COMPRESSORS),
                        help="also probe these kit compressors (the reference rows of INSTRUCTOR.md's table)")
    args = parser.parse_args()
    spec = importlib.util.spec_from_file_location("a4_submission", Path(args.submission) / "a4_ocr_compressor.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    with tempfile.TemporaryDirectory() as tmp:
        feats = probe_features(tmp)
    kit = [(name, COMPRESSORS[name]) for name in args.kit]
    for name, cls in (("avgpool", COMPRESSORS["avgpool"]), *kit, ("submission", mod.OCRCompressor)):
        for seed in range(args.seeds):
            print(name, f"seed={seed}", run_probe(cls, feats, seed=seed), flush=True)


if __name__ == "__main__":
    main()
