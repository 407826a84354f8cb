"""The feature cache keyed by row (issue 14, item 7): a grid cell whose store holds its data reads features by
store row, decoding no image, and gets bitwise what the pixel-keyed lookup gives; a map it cannot prove (another
tower, dataset, transform or a tampered file) falls back to pixels; resized images and casting precisions never
use it."""

from dataclasses import replace

import lightning as L
import numpy as np
import pytest
import torch
import yaml
from lightning.pytorch.callbacks import Callback

from lit_vlm.data.datamodule import VLMDataModule
from lit_vlm.data.processor import VLMProcessor
from lit_vlm.grid import Cell, build_store, cell_model_args, load_config, run_cell, validate
from lit_vlm.grid import cache
from lit_vlm.grid.cache import attach, dataset_id, row_keys
from lit_vlm.grid.cell import cell_trainer
from lit_vlm.model.vision import VisionTower
from lit_vlm.module import LitVLM

from test_step_overhead import GRID as SMALLEST  # noqa: E402 - the smallest cell's tiny grid, shared

GRID = {**SMALLEST, "trainer": {**SMALLEST["trainer"], "enable_progress_bar": False}}
CELL = Cell(llm="xs", visual_tokens=1, compressor="avgpool", seed=0)


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    """A tiny grid's config, a random frozen tower's state and the store of its features over the grid's data."""
    tmp = tmp_path_factory.mktemp("rows")
    cfg = {**GRID, "out_dir": str(tmp / "grid"), "data": {**GRID["data"], "data_dir": str(tmp / "data")}}
    (tmp / "grid.yaml").write_text(yaml.safe_dump(cfg))
    cfg = validate(load_config(str(tmp / "grid.yaml")))
    torch.manual_seed(0)
    tower = VisionTower(replace(cfg.vision, frozen=True))
    dm = VLMDataModule(**cfg.data, processor=None)
    dm.prepare_data()
    dm.datasets = dm._load()
    return cfg, tower.state_dict(), build_store(tmp / "features", tower, dm.datasets)


def cell_module(cfg, tower_state, compressor="avgpool"):
    L.seed_everything(0, verbose=False)
    module = LitVLM(vision=replace(cfg.vision, frozen=True), llm=cfg.llms["xs"], compressor=compressor,
                    visual_tokens=1, **cell_model_args(cfg, CELL))
    module.vlm.vision_tower.load_state_dict(tower_state)
    dm = VLMDataModule(**cfg.data, processor=module.processor)
    return module, dm


def test_run_cell_by_row_is_bitwise_the_pixel_keyed_cell(grid, tmp_path, monkeypatch):
    cfg, tower_state, store = grid
    collate = VLMProcessor.collate
    seen: list[str] = []

    def recording(self, rows):  # which kind of batch every loader made
        batch = collate(self, rows)
        seen.append("rows" if "feature_rows" in batch else "pixels")
        return batch

    monkeypatch.setattr(VLMProcessor, "collate", recording)
    by_row, note = run_cell(replace(cfg, out_dir=str(tmp_path / "rows")), CELL, tower_state, store)
    row_batches, seen[:] = list(seen), []
    monkeypatch.setattr(cache, "row_keys", lambda *a, **k: {})  # the pixel-keyed path, as before this change
    by_pixels, pixel_note = run_cell(replace(cfg, out_dir=str(tmp_path / "pixels")), CELL, tower_state, store)

    # 12 training steps and 2 test batches read by row; the one batch after the cell (its cost) is pixels
    assert row_batches == ["rows"] * 14 + ["pixels"] and seen == ["pixels"] * 15
    hits = 12 * 8 + 2 * 32  # a test row is looked up twice: its loss, then its generated answer
    assert note == f"feature cache: {hits} hits, 0 misses ({hits} of the hits by row)"
    assert pixel_note == f"feature cache: {hits} hits, 0 misses (0 of the hits by row)"
    timing = {"train_time_s", "prefill_latency_ms", "full_latency_ms", "checkpoint"}
    for a, b in zip(by_row, by_pixels, strict=True):
        assert {k: v for k, v in a.items() if k not in timing} == {k: v for k, v in b.items() if k not in timing}
    weights = [torch.load(r[0]["checkpoint"], weights_only=True)["state_dict"] for r in (by_row, by_pixels)]
    assert weights[0].keys() == weights[1].keys() and not any(".tower." in k for k in weights[0])
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


class Losses(Callback):
    def __init__(self):
        self.losses = []

    def on_before_backward(self, trainer, pl_module, loss):
        self.losses.append(loss.detach().clone())


def train(cfg, tower_state, store, tmp_path, by_row: bool):
    """A few training steps with the store attached (by row when ``by_row``); the losses and the splits read by row."""
    module, dm = cell_module(cfg, tower_state)
    trainer = cell_trainer(replace(cfg, trainer={**cfg.trainer, "max_steps": 4}), tmp_path, logger=False)
    losses = Losses()
    trainer.callbacks.insert(0, losses)
    with attach(module.vlm, store, dm if by_row else None, trainer):
        splits = sorted(dm.feature_rows or {})
        trainer.fit(module, dm)
    assert dm.feature_rows is None  # the data is itself again after the block: pixels
    assert "pixel_values" in next(iter(dm.train_dataloader()))
    return torch.stack(losses.losses), splits


def test_a_tampered_map_falls_back_to_pixels(grid, tmp_path, monkeypatch):
    cfg, tower_state, store = grid
    reference, splits = train(cfg, tower_state, store, tmp_path, by_row=False)
    assert splits == []
    _, dm = cell_module(cfg, tower_state)
    dm.setup("fit")
    path = store.folder / f"rows-{dataset_id(dm.datasets['train'])}.npy"
    good = np.load(path)
    try:
        np.save(path, np.roll(good, 1))  # every training row now points at its neighbour's features
        losses, splits = train(cfg, tower_state, store, tmp_path, by_row=True)
        assert splits == ["test", "validation"]  # train is not proven: pixel-keyed, and the same losses
        assert torch.equal(losses, reference)
        # the check matters: the same map taken unchecked trains on other images' features
        with monkeypatch.context() as m:
            m.setattr(cache, "row_keys", lambda vlm, store, data, trainer=None: {"train": np.load(path)})
            wrong, _ = train(cfg, tower_state, store, tmp_path, by_row=True)
        assert not torch.equal(wrong, reference)
    finally:
        np.save(path, good)
    losses, splits = train(cfg, tower_state, store, tmp_path, by_row=True)
    assert splits == ["test", "train", "validation"] and torch.equal(losses, reference)


@pytest.mark.parametrize("change", ["tower", "dataset", "transform", "precision", "downsample", "no map"])
def test_what_the_store_cannot_prove_stays_pixel_keyed(grid, change, tmp_path):
    cfg, tower_state, store = grid
    module, dm = cell_module(cfg, tower_state, "downsample" if change == "downsample" else "avgpool")
    trainer = L.Trainer(accelerator="cpu", logger=False)
    dm.setup("fit")
    if change != "downsample":  # unchanged, every split is read by row
        assert sorted(row_keys(module.vlm, store, dm, trainer)) == ["test", "train", "validation"]
    if change == "precision":  # "*-true" precisions cast the batch's pixels, which then miss the fp32 keys
        trainer = L.Trainer(accelerator="cpu", precision="64-true", logger=False)
    elif change == "tower":  # other weights than the store's
        module.vlm.vision_tower.load_state_dict({k: v + 1 for k, v in tower_state.items()})
    elif change == "dataset":  # the same generator, another seed: other rows, no map of theirs in the store
        dm = VLMDataModule(**{**cfg.data, "seed": 1}, processor=module.processor)
        dm.setup("fit")
    elif change == "transform":  # another normalisation: the pixels the cell would hash are not the store's
        module.processor.mean = module.processor.mean + 0.1
        module.processor._levels = module.processor._levels + 0.1
    elif change == "no map":
        dm.datasets["test"] = dm.datasets["test"].select(range(16))  # a subset: not the dataset the map is of
    expected = {"no map": ["train", "validation"]}.get(change, [])
    assert sorted(row_keys(module.vlm, store, dm, trainer)) == expected
    with attach(module.vlm, store, dm, trainer) as cached:
        assert sorted(dm.feature_rows or {}) == expected
        if "train" not in expected:
            batch = next(iter(dm.train_dataloader()))
            assert "pixel_values" in batch and "feature_rows" not in batch
            with torch.no_grad():
                module.vlm(batch)
            assert cached.row_hits == 0
            if change == "downsample":  # resized images: the tower ran, never a lookup
                assert (cached.hits, cached.misses) == (0, 8)


def test_rows_by_feature_row_read_no_image(grid):
    from lit_vlm.data.datamodule import Rows

    cfg, tower_state, store = grid
    module, dm = cell_module(cfg, tower_state)
    dm.setup("fit")
    ds = dm.datasets["validation"]
    rows = Rows(ds, memo_images=True, feature_rows=np.arange(100, 100 + len(ds)))
    batched, one_by_one = rows.__getitems__([3, 0, 3]), [rows[i] for i in (3, 0, 3)]
    assert batched == one_by_one and [r["feature_row"] for r in batched] == [103, 100, 103]
    assert "image" not in batched[0] and rows.images is None  # nothing decoded, nothing kept
    batch = module.processor.collate(batched)
    assert "pixel_values" not in batch and batch["feature_rows"].tolist() == [103, 100, 103]
    plain = module.processor.collate(Rows(ds).__getitems__([3, 0, 3]))  # the same batch otherwise
    assert all(torch.equal(batch[k], plain[k]) if torch.is_tensor(batch[k]) else batch[k] == plain[k]
               for k in plain if k != "pixel_values")
