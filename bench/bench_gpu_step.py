"""Step time and peak memory of every cell of the one-GPU grids, with random-weight models of the real shapes.

    python bench/bench_gpu_step.py                      # every cell of configs/grid/{one_gpu_80gb,colab_t4}.yaml
    python bench/bench_gpu_step.py --config configs/grid/colab_t4.yaml --steps 10
    python bench/bench_gpu_step.py --estimate           # analytic estimates only (no model is built)
    python bench/bench_gpu_step.py --smoke              # tiny shapes, a few seconds on a CPU (CI / no GPU)

No download: each pretrained id in a grid config is replaced by a random-weight model built from the sizes
in SHAPES / TOWERS below (written down from the checkpoints' config.json), with the cell's own knobs (dtype,
LoRA, gradient checkpointing, precision, batch size, V, compressor). One step = forward + loss + backward +
AdamW step on the trainable parameters (instruct stage: compressor, projector, LLM or its LoRA adapters;
the tower is frozen). Prompt: 48 text tokens + the image placeholder; answer: 8 tokens (+ eos).

Writes bench/results/gpu_step_<device>.json and .md (measured next to the analytic estimate of lit_vlm.gpu).
A cell that runs out of memory is recorded as OOM and the next one runs. A 4-bit cell (load_in_4bit) is
measured with fp16 base weights instead (random weights are not quantised), so its memory is an upper bound.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import resource
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lit_vlm import gpu  # noqa: E402
from lit_vlm.model.vision import VisionConfig  # noqa: E402
from lit_vlm.model.vlm import IMAGE_TOKEN, VLM, LLMConfig  # noqa: E402

# hub id -> the sizes of its config.json (hidden, layers, heads, kv heads, MLP width, vocab, tied embeddings)
SHAPES = {
    "HuggingFaceTB/SmolLM2-135M-Instruct": dict(model_type="llama", hidden_size=576, num_layers=30, num_heads=9,
                                                num_kv_heads=3, intermediate_size=1536, vocab=49152, tie=True),
    "HuggingFaceTB/SmolLM2-360M-Instruct": dict(model_type="llama", hidden_size=960, num_layers=32, num_heads=15,
                                                num_kv_heads=5, intermediate_size=2560, vocab=49152, tie=True),
    "HuggingFaceTB/SmolLM2-1.7B-Instruct": dict(model_type="llama", hidden_size=2048, num_layers=24, num_heads=32,
                                                num_kv_heads=32, intermediate_size=8192, vocab=49152, tie=True),
    "Qwen/Qwen2.5-0.5B-Instruct": dict(model_type="qwen2", hidden_size=896, num_layers=24, num_heads=14,
                                       num_kv_heads=2, intermediate_size=4864, vocab=151936, tie=True),
    "Qwen/Qwen2.5-1.5B-Instruct": dict(model_type="qwen2", hidden_size=1536, num_layers=28, num_heads=12,
                                       num_kv_heads=2, intermediate_size=8960, vocab=151936, tie=True),
    "Qwen/Qwen2.5-3B-Instruct": dict(model_type="qwen2", hidden_size=2048, num_layers=36, num_heads=16,
                                     num_kv_heads=2, intermediate_size=11008, vocab=151936, tie=True),
    "Qwen/Qwen2.5-7B-Instruct": dict(model_type="qwen2", hidden_size=3584, num_layers=28, num_heads=28,
                                     num_kv_heads=4, intermediate_size=18944, vocab=152064, tie=False),
}
# hub id -> vision tower sizes (the vision half of the dual encoder)
TOWERS = {
    "google/siglip-base-patch16-224": dict(model_type="siglip_vision_model", image_size=224, patch_size=16,
                                           hidden_size=768, num_layers=12, num_heads=12, intermediate_size=3072),
    "google/siglip-so400m-patch14-384": dict(model_type="siglip_vision_model", image_size=384, patch_size=14,
                                             hidden_size=1152, num_layers=27, num_heads=16, intermediate_size=4304),
    "openai/clip-vit-base-patch16": dict(model_type="clip_vision_model", image_size=224, patch_size=16,
                                         hidden_size=768, num_layers=12, num_heads=12, intermediate_size=3072),
    "openai/clip-vit-large-patch14-336": dict(model_type="clip_vision_model", image_size=336, patch_size=14,
                                              hidden_size=1024, num_layers=24, num_heads=16, intermediate_size=4096),
}
# smoke: the same structure at toy sizes
SMOKE_LLM = dict(model_type="llama", hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                 intermediate_size=128, vocab=512, tie=True)
SMOKE_TOWER = dict(model_type="clip_vision_model", image_size=32, patch_size=8, hidden_size=32, num_layers=2,
                   num_heads=4, intermediate_size=64)
# which GPU each config is written for (for the time estimate at an assumed MFU)
# The target GPU of each config, named as torch.cuda.get_device_name reports it, and the MFU assumed on it.
TARGET_GPU = {"colab_t4": ("Tesla T4", 0.25), "one_gpu_80gb": ("NVIDIA H100 80GB HBM3", 0.30)}


def peak_flops(device_name: str) -> float:
    """Dense fp16 peak FLOP/s of a GPU by name, from Lightning's table (get_available_flops), without the GPU."""
    from unittest import mock

    from lightning.fabric.utilities.throughput import get_available_flops

    with mock.patch("torch.cuda.get_device_name", return_value=device_name):
        return get_available_flops(torch.device("cuda"), torch.float16)
PROMPT_TOKENS, ANSWER_TOKENS = 48, 8


class StubTokenizer:
    """What VLM / LLMConfig.build read from a tokenizer: its length and the special ids."""

    pad_token_id, bos_token_id, eos_token_id, unk_token_id, image_token_id = 0, 1, 2, 3, 4
    unk_token = "<unk>"

    def __init__(self, vocab: int):
        self.vocab = vocab

    def __len__(self) -> int:
        return self.vocab

    def convert_tokens_to_ids(self, token: str) -> int:
        return self.image_token_id if token == IMAGE_TOKEN else self.unk_token_id


def llm_config(spec: dict, shape: dict) -> LLMConfig:
    knobs = {k: v for k, v in spec.items() if k in ("gradient_checkpointing", "lora", "dtype", "attn_implementation")}
    if spec.get("load_in_4bit"):
        knobs["dtype"] = "float16"
    return LLMConfig(model_type=shape["model_type"], hidden_size=shape["hidden_size"], num_layers=shape["num_layers"],
                     num_heads=shape["num_heads"], num_kv_heads=shape["num_kv_heads"],
                     intermediate_size=shape["intermediate_size"], tie_word_embeddings=shape["tie"],
                     max_position_embeddings=4096, **knobs)


def cells(config_path: Path, smoke: bool) -> list[dict]:
    cfg = yaml.safe_load(config_path.read_text())
    tower_id = cfg["vision"]["pretrained"]
    tower = SMOKE_TOWER if smoke else TOWERS[tower_id]
    out = []
    llms = list(cfg["llms"].items())[:2] if smoke else list(cfg["llms"].items())
    vs = [1, 4] if smoke else cfg["visual_tokens"]
    for name, spec in llms:
        shape = SMOKE_LLM if smoke else SHAPES[spec["pretrained"]]
        for v in vs:
            for comp in cfg.get("compressors", ["avgpool"]):
                out.append(dict(config=config_path.stem, llm=name, llm_id=spec.get("pretrained"), spec=spec,
                                shape=shape, tower=tower, tower_id=tower_id,
                                feature_layers=cfg["vision"].get("feature_layers", [-1]), V=v, compressor=comp,
                                batch=2 if smoke else cfg["data"]["batch_size"],
                                precision="32-true" if smoke else cfg["trainer"].get("precision", "32-true"),
                                stage=cfg.get("model", {}).get("stage", "instruct")))
    return out


def param_counts(vlm: VLM) -> dict:
    trainable = sum(p.numel() for p in vlm.parameters() if p.requires_grad)
    return {"llm_params": vlm.num_llm_params(), "llm_params_no_embed": vlm.num_llm_params(with_embeddings=False),
            "trainable_params": trainable,
            "other_params": sum(p.numel() for p in vlm.vision_tower.parameters())
            + sum(p.numel() for g in ("compressor", "projector") for p in getattr(vlm, g).parameters())}


def estimate(cell: dict, counts: dict) -> dict:
    s, t = cell["shape"], cell["tower"]
    seq = PROMPT_TOKENS + cell["V"] + ANSWER_TOKENS + 1
    spec = cell["spec"]
    llm_dtype = "float16" if spec.get("load_in_4bit") else spec.get("dtype", "float32")
    llm_params = counts["llm_params"]
    if spec.get("load_in_4bit"):  # NF4: ~0.5 byte per linear weight; embeddings / lm_head stay 16-bit
        emb = s["vocab"] * s["hidden_size"] * (1 if s["tie"] else 2)
        llm_params = emb + (llm_params - emb) // 4
    kv_dim = s["num_kv_heads"] * s["hidden_size"] // s["num_heads"]
    mem = gpu.estimate_train_memory(
        llm_params=llm_params, trainable_params=counts["trainable_params"], hidden=s["hidden_size"],
        layers=s["num_layers"], intermediate=s["intermediate_size"], kv_dim=kv_dim, vocab=s["vocab"],
        batch=cell["batch"], seq=seq, llm_dtype=llm_dtype, other_params=counts["other_params"],
        precision=cell["precision"], gradient_checkpointing=bool(spec.get("gradient_checkpointing")))
    patches = (t["image_size"] // t["patch_size"]) ** 2 + 1
    tower_params = 12 * t["num_layers"] * t["hidden_size"] ** 2
    flops = gpu.train_step_flops(
        llm_params_no_embed=counts["llm_params_no_embed"], hidden=s["hidden_size"], layers=s["num_layers"],
        vocab=s["vocab"], batch=cell["batch"], seq=seq, llm_trains="lora" if spec.get("lora") else "full",
        gradient_checkpointing=bool(spec.get("gradient_checkpointing")), tower_params=tower_params, patches=patches)
    name, mfu = TARGET_GPU.get(cell["config"], TARGET_GPU["one_gpu_80gb"])
    return {"est_peak_gib": round(mem.total, 2), "est_memory": {k: round(v, 2) for k, v in mem.as_dict().items()},
            "est_tflop_per_step": round(flops / 1e12, 3), "est_gpu": name, "est_mfu": mfu,
            "est_step_s": round(flops / (peak_flops(name) * mfu), 3), "seq": seq}


def make_batch(cell: dict, vocab: int, device) -> dict:
    b, img = cell["batch"], cell["tower"]["image_size"]
    g = torch.Generator().manual_seed(0)
    prompt = torch.randint(5, vocab, (b, PROMPT_TOKENS), generator=g)
    prompt[:, 1] = StubTokenizer.image_token_id
    answer = torch.randint(5, vocab, (b, ANSWER_TOKENS), generator=g)
    eos = torch.full((b, 1), StubTokenizer.eos_token_id)
    ids = torch.cat([prompt, answer, eos], 1)
    labels = torch.cat([torch.full_like(prompt, -100), answer, eos], 1)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels,
             "pixel_values": torch.randn(b, 3, img, img, generator=g),
             "question_ids": prompt[:, 2:18], "question_mask": torch.ones(b, 16, dtype=torch.long)}
    return {k: v.to(device) for k, v in batch.items()}


def run_cell(cell: dict, steps: int, warmup: int, device: torch.device) -> dict:
    s = cell["shape"]
    tok = StubTokenizer(s["vocab"])
    vision = VisionConfig(**cell["tower"], feature_layers=cell["feature_layers"], frozen=True)
    llm = llm_config(cell["spec"], s)
    with torch.device(device):
        vlm = VLM(vision, llm, cell["compressor"], cell["V"], tok)
    groups = vlm.param_groups()
    for p in groups["vision"]:
        p.requires_grad_(False)
    for p in groups["llm"]:
        p.requires_grad_(cell["stage"] == "instruct")
    counts = param_counts(vlm)
    vlm.train()
    opt = torch.optim.AdamW([p for p in vlm.parameters() if p.requires_grad], lr=1e-5, fused=device.type == "cuda")
    precision = cell["precision"]
    amp = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(precision)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "16-mixed")
    batch = make_batch(cell, s["vocab"], device)

    def step():
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            loss = vlm(batch).loss
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
        return loss

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        step()
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(steps):
        loss = step()
    sync()
    step_s = (time.perf_counter() - start) / steps
    peak = torch.cuda.max_memory_allocated() / 1024**3 if device.type == "cuda" else None
    del vlm, opt, batch
    return {"step_s": round(step_s, 4), "peak_gib": None if peak is None else round(peak, 2),
            "examples_per_s": round(cell["batch"] / step_s, 2), "loss": round(float(loss.detach()), 4), **counts}


def markdown(rows: list[dict], device: str) -> str:
    lines = [f"# GPU step benchmark on {device}", "",
             "Measured: mean of the timed steps after warm-up; peak = torch.cuda.max_memory_allocated. Estimated: "
             "lit_vlm.gpu formulas, time at the assumed MFU on the config's target GPU.", "",
             "| config | llm | V | batch | precision | measured step s | measured peak GiB | est. peak GiB | "
             "est. TFLOP/step | est. step s (GPU @ MFU) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        measured = r.get("step_s", r.get("status", "-"))
        lines.append(f"| {r['config']} | {r['llm']} | {r['V']} | {r['batch']} | {r['precision']} | {measured} | "
                     f"{r.get('peak_gib') if r.get('peak_gib') is not None else '-'} | {r['est_peak_gib']} | "
                     f"{r['est_tflop_per_step']} | {r['est_step_s']} ({r['est_gpu']} @ {r['est_mfu']}) |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", action="append", type=Path,
                    help="grid YAML (repeatable; default: configs/grid/one_gpu_80gb.yaml and colab_t4.yaml)")
    ap.add_argument("--smoke", action="store_true", help="toy shapes, 2 LLMs x V in {1, 4}, 2 steps: a CPU check")
    ap.add_argument("--estimate", action="store_true", help="analytic estimates only; build no model")
    ap.add_argument("--steps", type=int, default=None, help="timed steps per cell (default 5; smoke 2)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 2; smoke 1)")
    ap.add_argument("--only", nargs="*", default=None, help="run only cells whose 'llm-V' id is listed")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = ap.parse_args(argv)
    configs = args.config or [ROOT / "configs/grid/one_gpu_80gb.yaml", ROOT / "configs/grid/colab_t4.yaml"]
    steps = args.steps or (2 if args.smoke else 5)
    warmup = args.warmup if args.warmup is not None else (1 if args.smoke else 2)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu" and not (args.smoke or args.estimate):
        ap.error("no CUDA GPU here: real shapes would take hours on a CPU; use --smoke or --estimate")
    dev_name = torch.cuda.get_device_name() if device.type == "cuda" else f"cpu ({platform.processor() or 'cpu'})"
    torch.manual_seed(0)

    rows = []
    start = time.perf_counter()
    for path in configs:
        for cell in cells(path, args.smoke):
            cid = f"{cell['llm']}-V{cell['V']}"
            if args.only and cid not in args.only:
                continue
            row = {k: cell[k] for k in ("config", "llm", "llm_id", "tower_id", "V", "compressor", "batch", "precision")}
            row["knobs"] = {k: v for k, v in cell["spec"].items() if k != "pretrained"}
            if args.estimate:
                with torch.device("meta"):
                    vlm = VLM(VisionConfig(**cell["tower"], feature_layers=cell["feature_layers"]),
                              llm_config(cell["spec"], cell["shape"]), cell["compressor"], cell["V"],
                              StubTokenizer(cell["shape"]["vocab"]))
                for p in vlm.param_groups()["vision"]:
                    p.requires_grad_(False)
                counts = param_counts(vlm)
                row |= {"status": "estimate", **counts}
            else:
                try:
                    row |= {"status": "ok", **run_cell(cell, steps, warmup, device)}
                except Exception as err:  # noqa: BLE001 - record the cell and go on
                    if not gpu.is_oom(err):
                        raise
                    row |= {"status": "OOM"}
                gc.collect()
                if device.type == "cuda":
                    torch.cuda.empty_cache()
            counts = {k: row[k] for k in ("llm_params", "llm_params_no_embed", "trainable_params", "other_params")
                      if k in row}
            if len(counts) == 4:
                row |= estimate(cell, counts)
            else:
                row |= {"est_peak_gib": "-", "est_tflop_per_step": "-", "est_step_s": "-", "est_gpu": "-",
                        "est_mfu": "-"}
            rows.append(row)
            print(json.dumps({k: row[k] for k in ("config", "llm", "V", "status") if k in row}
                             | {k: row.get(k) for k in ("step_s", "peak_gib", "est_peak_gib", "est_step_s")}))
    elapsed = time.perf_counter() - start
    tag = "smoke_" if args.smoke else ("estimate_" if args.estimate else "")
    safe = "cpu" if device.type == "cpu" else dev_name.replace(" ", "_").replace("/", "_")
    args.out.mkdir(parents=True, exist_ok=True)
    result = {"device": dev_name, "torch": torch.__version__, "smoke": args.smoke, "estimate_only": args.estimate,
              "steps": steps, "warmup": warmup, "prompt_tokens": PROMPT_TOKENS, "answer_tokens": ANSWER_TOKENS,
              "max_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2, 2),
              "elapsed_s": round(elapsed, 1), "cells": rows}
    json_path = args.out / f"gpu_step_{tag}{safe}.json"
    json_path.write_text(json.dumps(result, indent=1))
    (args.out / f"gpu_step_{tag}{safe}.md").write_text(markdown(rows, dev_name))
    print(f"{len(rows)} cells in {elapsed:.1f}s -> {json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
