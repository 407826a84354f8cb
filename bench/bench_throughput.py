"""Training throughput of one grid cell: samples/s and achieved FLOP/s against this machine's matmul peak.

    python bench/bench_throughput.py [--config configs/grid/cpu_mini.yaml] [--llm llm-520k] [--visual-tokens 64]

The cell trains on cached vision features (as in the grid), so the step is compressor + projector + LLM.
Training FLOPs per step are counted with Lightning's ``measure_flops`` (torch's FLOP counter, forward and
backward); the peak is a large fp32 matmul timed in the same process, so the fraction compares like with
like on a shared, noisy machine. On a GPU (when the device tool lends one) the same script reports MFU.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch
from lightning.fabric.utilities.throughput import measure_flops

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lit_vlm.grid import load_config, validate  # noqa: E402
from lit_vlm.module import LitVLM  # noqa: E402


def matmul_peak(device: str, dtype: torch.dtype, n: int = 2048, repeats: int = 10) -> float:
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    if device == "cuda":
        torch.cuda.synchronize()
    return 2 * n**3 * repeats / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="configs/grid/cpu_mini.yaml")
    ap.add_argument("--llm", default=None, help="LLM size name (default: the largest in the config)")
    ap.add_argument("--visual-tokens", type=int, default=None, help="V (default: the largest in the config)")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--out", default="bench/results/throughput_cpu.json")
    args = ap.parse_args()
    cfg = validate(load_config(args.config))
    llm = args.llm or list(cfg.llms)[-1]
    v = args.visual_tokens or max(cfg.visual_tokens)
    device = "cuda" if torch.cuda.is_available() else "cpu"

    torch.manual_seed(0)
    module = LitVLM(vision=cfg.vision, llm=cfg.llms[llm], compressor=cfg.compressors[0], visual_tokens=v, **cfg.model)
    import datasets

    from lit_vlm.data.synthetic import draw_example
    from lit_vlm.grid.cache import CachedTower, build_store

    batch_size = cfg.data["batch_size"]
    rows = [{**draw_example("train", i, **(cfg.data["task_options"] or {})), "index": i} for i in range(batch_size)]
    # the frozen tower's features from the feature cache, as the grid feeds them: the tower does not run
    store = build_store(Path(tempfile.mkdtemp(prefix="bench-throughput-")), module.vlm.vision_tower,
                        {"train": datasets.Dataset.from_list(rows)})
    module.vlm.vision_tower = CachedTower(module.vlm.vision_tower, store)
    module.to(device).train()
    batch = {k: (t.to(device) if torch.is_tensor(t) else t) for k, t in module.processor.collate(rows).items()}
    opt = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-3)

    flops_per_step = measure_flops(module, lambda: module.vlm(batch).loss, loss_fn=torch.Tensor.sum)
    module.zero_grad(set_to_none=True)

    def step():
        loss = module.vlm(batch).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(3):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / args.steps
    peak = matmul_peak(device, torch.float32)
    result = {
        "command": "python " + " ".join(sys.argv),
        "device": torch.cuda.get_device_name() if device == "cuda" else f"cpu ({platform.machine()}, {torch.get_num_threads()} threads)",
        "cell": f"{llm} V={v} {cfg.compressors[0]}",
        "batch_size": batch_size,
        "step_time_s": round(seconds, 5),
        "samples_per_s": round(batch_size / seconds, 1),
        "train_flops_per_step": flops_per_step,
        "achieved_flops_per_s": round(flops_per_step / seconds),
        "matmul_peak_flops_per_s": round(peak),
        "fraction_of_matmul_peak": round(flops_per_step / seconds / peak, 4),
    }
    print(json.dumps(result, indent=1))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
