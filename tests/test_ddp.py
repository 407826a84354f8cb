"""Data-parallel runs on CPU: Lightning's ddp strategy over gloo with 2 processes, as a user with several GPUs
would run a grid cell, ``fit`` or ``validate``. The fast tests pin each fix; the slow ones run the real thing."""

import csv
import json
import os
import socket
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import yaml

from lit_vlm.data.sampler import ResumableSampler
from lit_vlm.model.vision import VisionConfig, VisionTower

ROOT = Path(__file__).resolve().parents[1]
TINY_VISION = dict(image_size=32, patch_size=8, hidden_size=16, num_layers=2, num_heads=2, intermediate_size=32)
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}


# --- stage 0: no trainable weight without a gradient ----------------------------------------------------------
@pytest.mark.parametrize("model_type", ["siglip_vision_model", "clip_vision_model", "vit"])
@pytest.mark.parametrize("layers", [[-1], [-2], [0, -1]])
def test_every_trainable_tower_weight_gets_a_gradient(model_type, layers):
    # DDP stops on a parameter that gets no gradient; the final norm (and layers above the chosen levels) never do.
    tower = VisionTower(VisionConfig(model_type=model_type, feature_layers=layers, frozen=False, **TINY_VISION))
    tower(torch.randn(2, 3, 32, 32)).sum().backward()
    assert [n for n, p in tower.named_parameters() if p.grad is None] == []
    assert tower.unused_weights  # there was something to park: the final norm at least
    # ... and they are still in the state dict, so old checkpoints and pretrained weights load unchanged
    assert {f"model.{n}" for n in tower.unused_weights} <= set(tower.state_dict())


def test_pretrained_tower_keeps_its_unused_weights(tmp_path):
    import transformers

    cfg = transformers.SiglipVisionConfig(image_size=32, patch_size=8, hidden_size=16, num_hidden_layers=2,
                                          num_attention_heads=2, intermediate_size=32, vision_use_head=False)
    torch.manual_seed(0)
    hf = transformers.SiglipVisionModel(cfg)
    torch.nn.init.normal_(hf.post_layernorm.weight)
    hf.save_pretrained(tmp_path)
    tower = VisionTower(VisionConfig(pretrained=str(tmp_path), frozen=False))
    assert "post_layernorm.weight" in tower.unused_weights
    torch.testing.assert_close(tower.model.post_layernorm.weight, hf.post_layernorm.weight)  # loaded, not reset
    assert "post_layernorm.weight" not in dict(tower.model.named_parameters())


# --- samplers: every rank a disjoint share; evaluation counts each row once -------------------------------
def test_resumable_sampler_splits_one_permutation_over_ranks():
    single = list(ResumableSampler(11, seed=3, batch_size=2))
    shares = [list(ResumableSampler(11, seed=3, batch_size=2, num_replicas=2, rank=r)) for r in (0, 1)]
    assert len(shares[0]) == len(shares[1]) == 6  # equal steps per rank (DDP needs them), padded like torch's
    assert sorted(shares[0][:5] + shares[1][:5] + shares[0][5:]) == sorted(single)
    assert shares[0][:5] + shares[1][:5] != single  # interleaved from one permutation, not two
    assert [x for pair in zip(*shares) for x in pair][:11] == single
    # resume: a rank skips its own batches
    s = ResumableSampler(11, seed=3, batch_size=2, num_replicas=2, rank=1)
    s.resume_at(0, 2)
    assert list(s) == shares[1][4:]


def test_eval_loaders_score_every_row_once_under_ddp(tmp_path):
    from types import SimpleNamespace

    from lit_vlm.data.datamodule import VLMDataModule
    from lit_vlm.module import LitVLM

    module = LitVLM(vision=VisionConfig(**TINY_VISION), llm={"hidden_size": 16, "num_layers": 1, "num_heads": 2})
    seen = []
    for rank in (0, 1, 2):
        dm = VLMDataModule(data_dir=str(tmp_path), num_train=8, num_val=7, num_test=4, eval_batch_size=2,
                           processor=module.processor)
        dm.trainer = SimpleNamespace(global_rank=rank, world_size=3)
        dm.prepare_data()
        dm.setup("validate")
        seen += [i for batch in dm.val_dataloader() for i in batch["index"].tolist()]
    assert sorted(seen) == list(range(7))  # Lightning's default sampler would pad to 9 (rows 0 and 1 twice)


# --- stage 0's checkpoint: one writer ---------------------------------------------------------------------------
def _save_on_two_ranks(rank: int, port: int, path: str, out: str) -> None:
    from lit_vlm import tower as stage0

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        vision = VisionConfig(**TINY_VISION)
        torch.manual_seed(rank)  # different states on purpose: every rank must end with rank 0's
        state = VisionTower(vision).state_dict()
        writes = []
        real = stage0.save_file
        stage0.save_file = lambda *a, **k: (writes.append(rank), real(*a, **k))
        got = stage0.save_tower(Path(path), state, vision)
        torch.save({"writes": writes, "weight": got["model.embeddings.patch_embedding.weight"]}, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_stage0_tower_is_written_by_rank_0_only(tmp_path):
    path = tmp_path / "tower.safetensors"
    mp.spawn(_save_on_two_ranks, args=(_free_port(), str(path), str(tmp_path / "out")), nprocs=2)
    r0, r1 = (torch.load(tmp_path / f"out.{r}", weights_only=True) for r in (0, 1))
    assert r0["writes"] == [0] and r1["writes"] == []
    torch.testing.assert_close(r1["weight"], r0["weight"], rtol=0, atol=0)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary file left


# --- the real thing: 2 processes --------------------------------------------------------------------------------
DDP = {"accelerator": "cpu", "devices": 2, "strategy": "ddp"}


def _run(args: list[str], cwd: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, *args], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.mark.slow
def test_grid_with_two_processes_per_cell(tmp_path):
    out = tmp_path / "grid"
    config = {
        "out_dir": str(out),
        "llms": {"xs": {"model_type": "llama", "hidden_size": 16, "num_layers": 1, "num_heads": 2}},
        "visual_tokens": [1, 4],
        "vision": TINY_VISION,
        "model": {"max_new_tokens": 2},
        # 9 / 11 rows: not a multiple of the ranks, so a padding sampler would score a row twice
        "data": {"data_dir": str(tmp_path / "data"), "num_train": 64, "num_val": 9, "num_test": 11, "batch_size": 8,
                 "eval_batch_size": 4},
        "trainer": {**DDP, "max_steps": 3, "enable_model_summary": False, "enable_progress_bar": False},
        "tower": {"checkpoint": str(out / "tower.safetensors"), "max_steps": 3, "batch_size": 8},  # stage 0 too
        "num_threads": 1,
    }
    (tmp_path / "grid.yaml").write_text(yaml.safe_dump(config))
    _run(["-m", "lit_vlm", "grid", "--config", str(tmp_path / "grid.yaml")], tmp_path)
    with (out / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    keys = Counter((r["cell"], r["family"]) for r in rows)
    assert keys == Counter({(c, f): 1 for c in ("xs-V1-avgpool-s0", "xs-V4-avgpool-s0") for f in ("reasoning", "ocr")})
    assert {r["examples"] for r in rows} == {"6", "5"}  # the test split's 11 rows, by family
    assert (out / "tower.safetensors").exists() and not list(out.glob(".*.tmp"))


FIT_ARGS = [
    "--config", str(ROOT / "configs" / "debug.yaml"), "--trainer.devices=2", "--trainer.strategy=ddp",
    "--trainer.limit_val_batches=1.0", "--trainer.enable_checkpointing=true", "--trainer.enable_progress_bar=false",
    "--data.num_train=64", "--data.num_val=9", "--data.num_test=11", "--data.eval_batch_size=4",
]

EVALUATE = textwrap.dedent("""
    import json, sys
    import lightning as L
    from lit_vlm.data.datamodule import VLMDataModule
    from lit_vlm.module import LitVLM

    ckpt, data_dir, devices, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    module = LitVLM.load_from_checkpoint(ckpt, weights_only=True)
    dm = VLMDataModule(data_dir=data_dir, num_train=64, num_val=9, num_test=11, eval_batch_size=4,
                       processor=module.processor)
    trainer = L.Trainer(accelerator="cpu", devices=devices, strategy="ddp" if devices > 1 else "auto",
                        logger=False, enable_progress_bar=False, enable_model_summary=False)
    results = {**trainer.validate(module, dm, verbose=False)[0], **trainer.test(module, dm, verbose=False)[0]}
    if trainer.global_rank == 0:
        json.dump(results, open(out, "w"))
""")


@pytest.mark.slow
def test_fit_with_validation_then_two_process_evaluation_equals_one(tmp_path):
    data = tmp_path / "data"
    _run(["-m", "lit_vlm", "fit", *FIT_ARGS, f"--data.data_dir={data}", f"--trainer.default_root_dir={tmp_path}"],
         tmp_path)
    ckpts = list((tmp_path / "checkpoints").glob("*.ckpt"))
    assert len(ckpts) == 1
    (tmp_path / "evaluate.py").write_text(EVALUATE)
    for devices in (1, 2):
        _run([str(tmp_path / "evaluate.py"), str(ckpts[0]), str(data), str(devices), str(tmp_path / f"{devices}.json")],
             tmp_path)
    one, two = (json.loads((tmp_path / f"{d}.json").read_text()) for d in (1, 2))
    assert set(one) == set(two) and {"val/reasoning/accuracy", "val/ocr/cer", "test/ocr/anls", "test/loss_ocr"} <= set(one)
    for key in one:
        if key.endswith(("accuracy", "cer")) or key.startswith("cost/llm") or key == "cost/visual_tokens":
            # string metrics: sums of per-row scores over the same rows, each row scored once
            assert two[key] == one[key], key
        else:
            # losses, ANLS, mean prompt length: the same rows summed in another order and in other batches (other
            # padding, so float32 kernels of other shapes): equal up to rounding, not bit for bit
            assert two[key] == pytest.approx(one[key], rel=1e-5, abs=1e-7), key
