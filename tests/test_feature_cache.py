"""The feature cache: a cached tower answers like the real one, never runs it for a cached image, is keyed by the
tower and the data's content, and a build killed with kill -9 leaves a temporary file the next build removes."""

import os
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from lit_vlm.data.datamodule import VLMDataModule
from lit_vlm.grid.cache import CachedTower, attach, build_store
from lit_vlm.model.vision import VisionConfig, VisionTower
from lit_vlm.module import LitVLM

VISION = VisionConfig(image_size=32, patch_size=8, hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32,
                      feature_layers=[0, -1])
DATA = {"num_train": 24, "num_val": 8, "num_test": 8, "batch_size": 8, "eval_batch_size": 8}


def tower(seed: int = 0) -> VisionTower:
    torch.manual_seed(seed)
    return VisionTower(replace(VISION, frozen=True)).eval()


@pytest.fixture(scope="module")
def module_and_data(tmp_path_factory):
    torch.manual_seed(0)
    module = LitVLM(vision=replace(VISION, frozen=True), llm={"hidden_size": 16, "num_layers": 1, "num_heads": 2},
                    compressor="quecc", visual_tokens=4, max_new_tokens=2)
    dm = VLMDataModule(data_dir=str(tmp_path_factory.mktemp("data")), processor=module.processor, **DATA)
    dm.prepare_data()
    dm.setup("fit")
    return module, dm


def test_cached_tower_answers_like_the_tower_without_running_it(module_and_data, tmp_path, monkeypatch):
    module, dm = module_and_data
    real = module.vlm.vision_tower
    store = build_store(tmp_path, real, dm.datasets)
    assert len(store) == sum(len(ds) for ds in dm.datasets.values())
    batch = next(iter(dm.test_dataloader()))
    with torch.no_grad():
        expected = real(batch["pixel_values"])
        loss = module.vlm(batch).loss
    cached = CachedTower(real, store)
    assert cached.grid_side == real.grid_side and cached.num_levels == 2  # the tower's own attributes
    monkeypatch.setattr(VisionTower, "forward", lambda *a: pytest.fail("the tower ran for a cached image"))
    torch.testing.assert_close(cached(batch["pixel_values"]), expected, rtol=1e-5, atol=1e-5)
    assert (cached.hits, cached.misses) == (len(expected), 0)
    with attach(module.vlm, store), torch.no_grad():  # the VLM calls it like the tower: same loss
        torch.testing.assert_close(module.vlm(batch).loss, loss, rtol=1e-5, atol=1e-5)
    assert module.vlm.vision_tower is real  # and the real tower is back: checkpoints keep its keys
    assert not any(".tower." in k for k in module.state_dict())


def test_an_image_the_store_lacks_goes_through_the_tower(module_and_data, tmp_path):
    module, dm = module_and_data
    real = module.vlm.vision_tower
    store = build_store(tmp_path, real, {"train": dm.datasets["train"]})
    pixels = next(iter(dm.test_dataloader()))["pixel_values"][:3]
    pixels[0] = -1.0  # a blank image: in no split
    cached = CachedTower(real, store)
    with torch.no_grad():
        torch.testing.assert_close(cached(pixels), real(pixels), rtol=1e-5, atol=1e-5)
    assert cached.misses == 3 and cached.hits == 0
    # a batch in another dtype ("16-true" precision casts it to half) cannot match the fp32 keys: computed
    other = CachedTower(real, store)
    try:
        with torch.no_grad():
            real.double()
            torch.testing.assert_close(other(pixels.double()), real(pixels.double()))
    finally:
        real.float()
    assert other.misses == 3 and other.hits == 0


def test_store_is_keyed_by_the_tower_and_the_data(module_and_data, tmp_path):
    _, dm = module_and_data
    first = build_store(tmp_path, tower(0), dm.datasets)
    again = build_store(tmp_path, tower(0), dm.datasets)
    assert again.folder == first.folder  # found, not rebuilt
    other_tower = build_store(tmp_path, tower(1), dm.datasets)
    other_data = build_store(tmp_path, tower(0), {"train": dm.datasets["train"]})
    assert len({first.folder, other_tower.folder, other_data.folder}) == 3
    assert len(other_data) == len(dm.datasets["train"])


def test_kill_minus_9_mid_build_leaves_a_tmp_file_the_next_build_removes(module_and_data, tmp_path):
    _, dm = module_and_data
    data_dir = dm.data_dir
    script = textwrap.dedent(f"""
        import os, signal, torch
        from dataclasses import replace
        from lit_vlm.data.datamodule import VLMDataModule
        from lit_vlm.grid.cache import build_store
        from lit_vlm.model.vision import VisionConfig, VisionTower

        dm = VLMDataModule(data_dir={data_dir!r}, **{DATA!r})
        dm.datasets = None
        dm.processor = object()  # setup() needs one; the store does not use it
        dm.setup("fit")
        torch.manual_seed(0)
        tower = VisionTower(replace(VisionConfig(**{VISION.__dict__!r}), frozen=True)).eval()
        tower.forward = lambda pixels: os.kill(os.getpid(), signal.SIGKILL)  # kill -9 in the first batch
        build_store(__import__("pathlib").Path({str(tmp_path)!r}), tower, dm.datasets)
    """)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == -9, done.stderr[-2000:]
    left = list(tmp_path.glob("*/.features.*.npy.tmp"))
    assert len(left) == 1 and left[0].stat().st_size > 0
    store = build_store(tmp_path, tower(0), dm.datasets)
    assert not list(tmp_path.glob("*/.*.tmp"))
    assert store.folder == left[0].parent and (store.folder / "features.npy").exists()
