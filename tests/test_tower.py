"""Stage 0: dense patch labels, the dense tower trainer, feature standardisation, tower weights, lr_width."""

from dataclasses import replace

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from lit_vlm.data import synthetic
from lit_vlm.errors import UserError
from lit_vlm.grid import Cell, GridConfig, cell_model_args, validate
from lit_vlm.model.vision import VisionConfig, VisionTower
from lit_vlm.model.vlm import LLMConfig
from lit_vlm.tower import labelled_images, train_dense_tower

GRID_OCR = dict(ocr_layout="grid", ocr_length=[8, 8], ocr_lines=2, font_sizes=[9, 10], ocr_alphabet="ACEHKNPTX4")
TINY_VISION = VisionConfig(image_size=32, patch_size=8, hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32)


def test_patch_labels_mark_every_character_and_the_highlight():
    for index in range(1, 40, 2):  # odd rows are OCR
        image, labels = synthetic.draw_with_patch_labels("train", index, grid_side=8, **GRID_OCR, ocr_tasks={"highlight": 1})
        row = synthetic.draw_example("train", index, **GRID_OCR, ocr_tasks={"highlight": 1})
        assert np.array_equal(np.asarray(image), np.asarray(row["image"]))  # the benchmark's own image
        chars = labels["char"].reshape(8, 8)
        assert (chars > 0).sum() == 16 and sorted(np.nonzero((chars > 0).any(1))[0].tolist()) and (chars > 0).sum(1).max() == 8
        assert labels["highlight"].sum() == 1
        marked = int(np.argmax(labels["highlight"]))
        assert "ACEHKNPTX4"[labels["char"][marked] - 1] == row["answer"]
        assert labels["object"].sum() == 0


def test_patch_labels_count_the_objects():
    opts = dict(reasoning_tasks={"count": 1})
    for index in range(0, 40, 2):
        _, labels = synthetic.draw_with_patch_labels("train", index, grid_side=8, **opts)
        answer = synthetic.draw_example("train", index, **opts)["answer"]
        assert (labels["object"] > 0).sum() == int(answer)
        assert labels["char"].sum() == 0


def test_grid_layout_puts_one_character_per_patch_cell():
    image, labels = synthetic.draw_with_patch_labels("train", 1, grid_side=8, **GRID_OCR)
    ink = np.asarray(image.convert("L")) < 120
    for cell in np.nonzero(labels["char"])[0]:
        r, c = divmod(int(cell), 8)
        assert ink[r * 8 : r * 8 + 8, c * 8 : c * 8 + 8].any()
    empty = np.ones((8, 8), bool)
    empty.flat[np.nonzero(labels["char"])[0]] = False
    for r, c in zip(*np.nonzero(empty)):
        assert not ink[r * 8 : r * 8 + 8, c * 8 : c * 8 + 8].any()  # no glyph spills into a neighbour


GRADED = GRID_OCR | {"ocr_cells": {64: 1, 32: 1, 16: 1, 8: 1}, "ocr_tasks": {"highlight": 1}}


def test_graded_ocr_labels_every_patch_a_character_covers():
    seen = set()
    for index in range(1, 80, 2):
        image, labels = synthetic.draw_with_patch_labels("train", index, grid_side=8, **GRADED)
        row = synthetic.draw_example("train", index, **GRADED)
        chars = labels["char"].reshape(8, 8)
        n = int((chars > 0).sum())
        seen.add(int(labels["highlight"].sum()))
        # patches labelled: 2 lines x 8 characters of 8 px (one patch each), 2 x 4 of 16 px (4 patches each),
        # 2 x 2 of 32 px (16 each) or one 64 px character (all 64)
        assert n == {1: 16, 4: 32, 16: 64, 64: 64}[int(labels["highlight"].sum())]
        marked = np.nonzero(labels["highlight"])[0]
        assert len({int(labels["char"][m]) for m in marked}) == 1  # the highlight covers one character
        assert "ACEHKNPTX4"[labels["char"][marked[0]] - 1] == row["answer"]
        side = int(round(len(marked) ** 0.5))
        rows, cols = np.unravel_index(marked, (8, 8))
        assert rows.max() - rows.min() + 1 == side and cols.max() - cols.min() + 1 == side  # a square block
    assert seen == {1, 4, 16, 64}  # every size drawn


def test_graded_ocr_leaves_the_default_benchmark_unchanged():
    for index in (1, 3, 5):
        a = synthetic.draw_example("train", index, **GRID_OCR)
        b = synthetic.draw_example("train", index, **GRID_OCR, ocr_cells=None)
        assert a["answer"] == b["answer"] and a["image"].tobytes() == b["image"].tobytes()


@pytest.mark.parametrize(
    "options, needle",
    [
        ({"ocr_cells": {8: 1}}, "needs a grid ocr_layout"),
        ({"ocr_layout": "grid", "ocr_cells": {12: 1}}, "cell size 12 is not allowed"),
        ({"ocr_layout": "grid", "ocr_cells": {8: -1}}, "weights must be >= 0"),
        ({"ocr_layout": "diagonal"}, "ocr_layout='diagonal'"),
        ({"ocr_lines": 2}, "ocr_lines=2"),  # free layout: one line only
        ({"ocr_layout": "grid", "ocr_lines": 9}, "ocr_lines=9"),
        ({"ocr_cell": 3}, "ocr_cell=3"),
        ({"ocr_length": [2, 9]}, "ocr_length"),
    ],
)
def test_bad_ocr_options(options, needle):
    with pytest.raises(UserError, match=needle):
        synthetic.resolve_options(**options)


def test_dense_tower_learns_and_standardises_its_features():
    data = {"num_train": 128, "num_val": 64, "task_options": GRID_OCR | {"font_sizes": [6]}}
    vision = replace(TINY_VISION, image_size=64)  # ocr_cell 8 at 64 px: 8 x 8 grid
    state, acc = train_dense_tower(vision, data, max_steps=150, lr=1e-2, batch_size=32)
    # row and column of a patch are learnable from the position embeddings alone: far above 1/8 chance
    assert acc["row"] > 0.5 and acc["column"] > 0.5
    tower = VisionTower(replace(vision, frozen=True))
    tower.load_state_dict(state)
    pixels = labelled_images("train", 128, tower=tower, data=data).tensors[0]
    feats = tower(pixels)
    assert feats.mean((0, 2)).abs().max() < 1e-3
    assert torch.allclose(feats.std((0, 2)), torch.ones(1), atol=1e-2)


def test_tower_weights_load_and_mismatches_are_refused(tmp_path):
    tower = VisionTower(TINY_VISION)
    with torch.no_grad():
        tower.feature_std.fill_(2.0)
    path = tmp_path / "tower.safetensors"
    save_file({k: v.contiguous() for k, v in tower.state_dict().items()}, str(path))
    loaded = VisionTower(replace(TINY_VISION, weights=str(path)))
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(loaded(x), tower(x))
    with pytest.raises(UserError, match="does not fit this vision config"):
        VisionTower(replace(TINY_VISION, hidden_size=32, weights=str(path)))
    with pytest.raises(UserError, match="does not exist"):
        VisionTower(replace(TINY_VISION, weights=str(tmp_path / "nope.safetensors")))
    (tmp_path / "junk.safetensors").write_bytes(b"not a tensor file")
    with pytest.raises(UserError, match="cannot be read as safetensors"):
        VisionTower(replace(TINY_VISION, weights=str(tmp_path / "junk.safetensors")))


def _grid(**kw) -> GridConfig:
    base = dict(llms={"a": LLMConfig(hidden_size=32), "b": LLMConfig(hidden_size=128)}, visual_tokens=[1],
                vision=TINY_VISION, model={"optimizer": {"lr": 0.004, "llm_lr": 0.002}})
    return GridConfig(**{**base, **kw})


def test_lr_width_scales_every_rate_by_width():
    cfg = _grid(lr_width=64)
    small, large = (cell_model_args(cfg, Cell(n, 1, "avgpool", 0))["optimizer"] for n in ("a", "b"))
    assert small == {"lr": 0.008, "llm_lr": 0.004}
    assert large == {"lr": 0.002, "llm_lr": 0.001}
    assert cfg.model["optimizer"]["lr"] == 0.004  # the shared config is not modified
    assert cell_model_args(_grid(), Cell("a", 1, "avgpool", 0))["optimizer"]["lr"] == 0.004


def test_lr_width_without_raise_only_scales_wider_llms_down():
    cfg = _grid(lr_width=64, lr_width_raise=False)
    small, large = (cell_model_args(cfg, Cell(n, 1, "avgpool", 0))["optimizer"] for n in ("a", "b"))
    assert small == {"lr": 0.004, "llm_lr": 0.002}
    assert large == {"lr": 0.002, "llm_lr": 0.001}


@pytest.mark.parametrize(
    "kw, needle",
    [
        ({"lr_width": 0}, "lr_width=0"),
        ({"lr_width": 64, "llms": {"p": LLMConfig(pretrained="some/model")}}, "'p' is pretrained"),
        ({"tower": replace(GridConfig().tower, objective="clip")}, "tower.objective='clip'"),
        ({"data": {"source": "folder"}}, "tower.objective=dense needs the synthetic data"),
        ({"vision": replace(TINY_VISION, weights="t.safetensors")}, "name the tower in tower.checkpoint"),
    ],
)
def test_bad_stage0_settings(kw, needle):
    with pytest.raises(UserError, match=needle):
        validate(_grid(**kw))


def test_tower_checkpoint_round_trip_and_refusals(tmp_path):
    from lit_vlm.tower import read_tower, save_tower

    state = VisionTower(replace(TINY_VISION, frozen=True)).state_dict()
    path = tmp_path / "towers" / "tower.safetensors"
    save_tower(path, state, TINY_VISION)
    assert sorted(p.name for p in path.parent.iterdir()) == ["tower.safetensors"]  # no temporary file left
    loaded = read_tower(path, TINY_VISION)
    assert loaded.keys() == state.keys() and all(torch.equal(loaded[k], state[k]) for k in state)
    with pytest.raises(UserError, match="another vision config"):
        read_tower(path, replace(TINY_VISION, hidden_size=32))
    # a dense tower learned one benchmark's labels: a checkpoint says which, and another benchmark is refused
    data = {"task_options": {"max_shapes": 3}}
    save_tower(path, state, TINY_VISION, data)
    assert read_tower(path, TINY_VISION, data).keys() == state.keys()
    assert read_tower(path, TINY_VISION, {"task_options": {"max_shapes": 3}, "num_train": 5}).keys() == state.keys()
    with pytest.raises(UserError, match="another synthetic benchmark"):
        read_tower(path, TINY_VISION, {"task_options": {"max_shapes": 4}})
    path.write_bytes(b"not a tensor file")
    with pytest.raises(UserError, match="cannot be read as safetensors"):
        read_tower(path, TINY_VISION)


def test_stage0_refuses_an_unknown_objective():
    from lit_vlm.tower import TowerConfig, train_tower

    with pytest.raises(UserError, match="tower.objective='clip'"):
        train_tower(TowerConfig(objective="clip"), TINY_VISION, {})


def test_dense_stage0_caps_its_images(monkeypatch):
    import lit_vlm.tower as stage0

    sizes = []
    real = stage0.labelled_images
    monkeypatch.setattr(stage0, "labelled_images", lambda split, n, **kw: sizes.append((split, n)) or real(split, n, **kw))
    data = {"num_train": 96_000, "num_val": 64, "task_options": GRID_OCR}
    stage0.train_dense_tower(replace(TINY_VISION, image_size=64), data, max_steps=1, lr=1e-3, batch_size=8, num_images=24)
    assert sizes[0] == ("train", 24)


def test_stage0_log_says_n_a_for_a_target_no_image_has(monkeypatch, caplog):
    import logging

    import lit_vlm.tower as stage0

    # a benchmark without scenes (e.g. every reasoning image an OCR grid) labels no object patch
    monkeypatch.setattr(stage0, "train_dense_tower", lambda *a, **k: ({}, {"object": float("nan"), "char": 0.998}))
    with caplog.at_level(logging.INFO, logger=stage0.log.name):
        stage0.train_tower(stage0.TowerConfig(objective="dense"), TINY_VISION, {})
    assert "held-out per-patch accuracy: object n/a (no such patches), char 0.998" in caplog.text
