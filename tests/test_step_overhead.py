"""The step-overhead cuts (issue 14, item 7) change no number: a tiny grid cell trained and tested through the
lean path gives bitwise the losses, weights and metrics of the old path; each cut on its own keeps its output."""

from dataclasses import replace

import lightning as L
import numpy as np
import pytest
import torch
import yaml
from lightning.pytorch.callbacks import Callback, RichProgressBar, TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger
from PIL import Image

from lit_vlm.data.datamodule import VLMDataModule
from lit_vlm.data.processor import VLMProcessor, image_to_tensor
from lit_vlm.data.tokenizer import load_tokenizer
from lit_vlm.grid import Cell, build_store, cell_model_args, load_config, validate
from lit_vlm.grid.cache import attach
from lit_vlm.grid.cell import PROGRESS_EVERY, cell_trainer, legacy_cell_trainer
from lit_vlm.module import LitVLM

GRID = {
    "llms": {"xs": {"model_type": "llama", "hidden_size": 16, "num_layers": 1, "num_heads": 2}},
    "visual_tokens": [1],
    "compressors": ["avgpool"],
    "vision": {"image_size": 32, "patch_size": 8, "hidden_size": 16, "num_layers": 1, "num_heads": 2,
               "intermediate_size": 32},
    "model": {"max_new_tokens": 3},
    "data": {"num_train": 48, "num_val": 8, "num_test": 32, "batch_size": 8, "eval_batch_size": 16},
    "trainer": {"accelerator": "cpu", "max_steps": 12, "enable_model_summary": False, "deterministic": True},
}


def grid_config(tmp_path, **trainer):
    cfg = {**GRID, "out_dir": str(tmp_path / "grid"), "data": {**GRID["data"], "data_dir": str(tmp_path / "data")},
           "trainer": {**GRID["trainer"], **trainer}}
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return validate(load_config(str(path)))


class Losses(Callback):
    def __init__(self):
        self.losses = []

    def on_before_backward(self, trainer, pl_module, loss):
        self.losses.append(loss.detach().clone())


def run(cfg, tmp_path, legacy: bool):
    """One cell as run_cell trains and tests it (feature cache attached), through the old or the lean path."""
    cell = Cell(llm="xs", visual_tokens=1, compressor="avgpool", seed=0)
    L.seed_everything(0, verbose=False)
    module = LitVLM(vision=replace(cfg.vision, frozen=True), llm=cfg.llms["xs"], compressor="avgpool",
                    visual_tokens=1, **cell_model_args(cfg, cell))
    dm = VLMDataModule(**cfg.data, processor=module.processor)
    dm.prepare_data()
    dm.setup("fit")
    module.log_loss_every_step = legacy  # the lean path logs as run_cell's cells do
    if legacy:
        module.legacy_step()
        rows = dm._rows
        dm._rows = lambda split, **_: setattr(r := rows(split), "__getitems__", None) or r  # one row at a time, no memo
    store = build_store(tmp_path / "features", module.vlm.vision_tower, dm.datasets)
    trainer = (legacy_cell_trainer if legacy else cell_trainer)(cfg, tmp_path / ("old" if legacy else "new"),
                                                               logger=False)
    losses = Losses()
    trainer.callbacks.insert(0, losses)
    with attach(module.vlm, store):
        trainer.fit(module, dm)
        memo = trainer.train_dataloader.dataset.images  # the lean path keeps decoded images (rows repeat here)
        metrics = trainer.test(module, dm, verbose=False)[0]
    assert (memo is None) == legacy and (legacy or len(memo) == 48)
    return losses.losses, {k: v.clone() for k, v in module.state_dict().items()}, metrics


def test_lean_step_is_bitwise_the_old_one(tmp_path):
    cfg = grid_config(tmp_path)
    old_losses, old_weights, old_metrics = run(cfg, tmp_path, legacy=True)
    new_losses, new_weights, new_metrics = run(cfg, tmp_path, legacy=False)
    assert len(old_losses) == len(new_losses) == 12
    assert all(torch.equal(a, b) for a, b in zip(old_losses, new_losses))
    assert old_weights.keys() == new_weights.keys()
    assert all(torch.equal(old_weights[k], new_weights[k]) for k in old_weights)
    assert old_metrics == new_metrics and "test/ocr/accuracy" in new_metrics


def test_loss_logged_on_the_loggers_steps_only_writes_the_same_log(tmp_path):
    """A grid cell logs train/loss only on the steps its CSV logger writes: the log file is the one it was."""
    cfg = grid_config(tmp_path, max_steps=12, log_every_n_steps=4, enable_progress_bar=False)
    logs, calls = [], []
    for every_step in (True, False):
        L.seed_everything(0, verbose=False)
        module = LitVLM(vision=GRID["vision"], llm=GRID["llms"]["xs"], visual_tokens=1)
        module.log_loss_every_step = every_step
        log = module.log
        module.log = lambda *a, **k: calls.append(every_step) or log(*a, **k)
        root = tmp_path / str(every_step)
        trainer = cell_trainer(cfg, root, logger=CSVLogger(root, name="logs"))
        trainer.fit(module, VLMDataModule(**cfg.data, processor=module.processor))
        logs.append((root / "logs" / "version_0" / "metrics.csv").read_text())
    assert logs[0] == logs[1] and logs[0].count("\n") == 1 + 12 // 4  # header and steps 3, 7, 11
    assert calls.count(True) == 12 and calls.count(False) == 3


def test_batch_transfer_moves_the_tensors_and_keeps_the_text(tmp_path):
    module = LitVLM(vision=GRID["vision"], llm=GRID["llms"]["xs"], visual_tokens=1)
    dm = VLMDataModule(data_dir=str(tmp_path / "data"), num_train=8, num_val=4, num_test=4, processor=module.processor)
    dm.prepare_data()
    dm.setup("fit")
    batch = {**module.processor.collate([dm._rows("train")[i] for i in range(4)]), "answer_lists": [["a", "b"]] * 4}
    cpu = torch.device("cpu")
    moved = module.transfer_batch_to_device(batch, cpu, 0)
    default = L.LightningModule.transfer_batch_to_device(module, batch, cpu, 0)
    assert moved.keys() == default.keys()
    for k, v in moved.items():
        assert torch.equal(v, default[k]) if torch.is_tensor(v) else v == default[k] and v is batch[k], k
    # anything else (a nested tensor, a tuple batch) takes Lightning's default walk
    calls = []
    original = L.LightningModule.transfer_batch_to_device

    def spy(self, batch, device, idx):
        calls.append(type(batch).__name__)
        return original(self, batch, device, idx)

    L.LightningModule.transfer_batch_to_device = spy
    try:
        module.transfer_batch_to_device({"x": [torch.ones(1)]}, cpu, 0)
        module.transfer_batch_to_device((torch.ones(1), ["a"]), cpu, 0)
    finally:
        L.LightningModule.transfer_batch_to_device = original
    assert calls == ["dict", "tuple"]


def test_collate_memo_and_batched_images_give_the_same_batch(tmp_path):
    module = LitVLM(vision=GRID["vision"], llm=GRID["llms"]["xs"], visual_tokens=1)
    dm = VLMDataModule(data_dir=str(tmp_path / "data"), num_train=24, num_val=4, num_test=4, processor=module.processor)
    dm.prepare_data()
    dm.setup("fit")
    rows = dm._rows("train")
    batches = [[rows[i] for i in range(s, s + 8)] for s in (0, 8, 0)]  # the third batch is all memo hits
    lean = [module.processor.collate(b) for b in batches]
    module.processor.memo_size = 0
    old = [module.processor.collate(b) for b in batches]
    for a, b in zip(lean, old):
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]) if torch.is_tensor(a[k]) else a[k] == b[k], k


def test_memo_is_bounded(tmp_path):
    module = LitVLM(vision=GRID["vision"], llm=GRID["llms"]["xs"], visual_tokens=1)
    p = module.processor
    p.memo_size = 4
    p._memo_ids("text", ["a b", "c", "d"])
    p._memo_ids("text", ["e", "f"])  # would hold 5 entries: cleared first
    assert len(p._memo) == 2
    assert p._memo_ids("text", ["a b"]) == p._ids(["a b"])


def test_batched_rows_are_the_rows(tmp_path):
    module = LitVLM(vision=GRID["vision"], llm=GRID["llms"]["xs"], visual_tokens=1)
    dm = VLMDataModule(data_dir=str(tmp_path / "data"), num_train=12, num_val=4, num_test=4, processor=module.processor)
    dm.prepare_data()
    dm.setup("fit")
    rows = dm._rows("train")
    picked = [5, 0, 7, 7]
    for a, b in zip(rows.__getitems__(picked), [rows[i] for i in picked]):
        assert a.keys() == b.keys() and a["index"] == b["index"]
        assert all((x.tobytes() == y.tobytes()) if k == "image" else x == y for (k, x), y in zip(a.items(), b.values()))


@pytest.mark.parametrize("mean, std", [((0.5,) * 3, (0.5,) * 3),
                                       ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))])
def test_batch_normalisation_is_bitwise_the_per_image_one(mean, std):
    processor = VLMProcessor(load_tokenizer("synthetic"), image_size=16, image_mean=mean, image_std=std)
    every = np.arange(256, dtype=np.uint8).reshape(16, 16)
    images = [np.stack([every, every[::-1], every.T], -1), np.zeros((16, 16, 3), np.uint8),
              Image.fromarray(np.stack([every.T] * 3, -1)), np.full((8, 8, 3), 200, np.uint8)]  # the last is resized
    batch = processor.images_to_tensor(images)
    assert torch.equal(batch, torch.stack([image_to_tensor(im, 16, mean, std) for im in images]))


def test_memo_rows_collate_to_the_same_batch(tmp_path):
    module = LitVLM(vision=GRID["vision"], llm=GRID["llms"]["xs"], visual_tokens=1)
    dm = VLMDataModule(data_dir=str(tmp_path / "data"), num_train=16, num_val=4, num_test=4, processor=module.processor)
    dm.prepare_data()
    dm.setup("fit")
    plain, memo = dm._rows("train"), dm._rows("train", memo_images=True)
    picked = [3, 1, 3, 9]
    first, again = memo.__getitems__(picked), memo.__getitems__(picked)  # decoded, then from the memo
    assert sorted(memo.images) == [1, 3, 9]
    reference = module.processor.collate([plain[i] for i in picked])
    for rows in (first, again):
        batch = module.processor.collate(rows)
        for k in reference:
            assert torch.equal(batch[k], reference[k]) if torch.is_tensor(batch[k]) else batch[k] == reference[k], k


def test_fused_adamw_is_opt_in(tmp_path):
    cfg = grid_config(tmp_path, max_steps=2, enable_progress_bar=False)
    kinds = []
    for options, legacy in (({}, False), ({"fused": True}, False), ({}, True)):
        module = LitVLM(vision=GRID["vision"], llm=GRID["llms"]["xs"], visual_tokens=1, optimizer=options)
        if legacy:
            module.legacy_step()
        trainer = cell_trainer(cfg, tmp_path / "opt", logger=False)
        trainer.fit(module, VLMDataModule(**cfg.data, processor=module.processor))
        opt = trainer.optimizers[0]
        kinds.append((opt.defaults["foreach"], opt.defaults["fused"]))
        assert all(torch.isfinite(p).all() for p in module.parameters())
    assert kinds == [(True, None), (None, True), (None, None)]


@pytest.mark.parametrize("trainer, bar", [({}, "lean"), ({"enable_progress_bar": False}, None),
                                          ({"callbacks": [{"class_path": "lightning.pytorch.callbacks.TQDMProgressBar",
                                                           "init_args": {"refresh_rate": 3}}]}, 3)])
def test_cell_progress_bar(tmp_path, trainer, bar):
    t = cell_trainer(grid_config(tmp_path, **trainer), tmp_path, logger=False)
    bars = [c for c in t.callbacks if isinstance(c, (RichProgressBar, TQDMProgressBar))]
    if bar is None:
        assert not bars
    else:
        assert len(bars) == 1 and bars[0].refresh_rate == (PROGRESS_EVERY if bar == "lean" else bar)
