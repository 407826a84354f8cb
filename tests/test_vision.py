"""Vision tower: prefix tokens dropped explicitly, levels in order, frozen stays frozen, save/load by path."""

import json

import pytest
import torch

from lit_vlm.errors import UserError
from lit_vlm.model.vision import VisionConfig, VisionTower

TINY = dict(image_size=32, patch_size=8, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64)


def tower(model_type="siglip_vision_model", **kw):
    torch.manual_seed(0)
    return VisionTower(VisionConfig(model_type=model_type, **{**TINY, **kw}))


def pixels(n=2, size=32):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("model_type,prefix", [("siglip_vision_model", 0), ("clip_vision_model", 1), ("vit", 1)])
def test_prefix_tokens_are_dropped_exactly(model_type, prefix):
    t = tower(model_type)
    assert (t.grid_side, t.num_patches, t.hidden_size, t.num_prefix_tokens) == (4, 16, 32, prefix)
    x = pixels()
    out = t(x)
    assert out.shape == (2, 1, 16, 32)
    full = t.model(pixel_values=x, output_hidden_states=True).hidden_states[-1]
    assert full.shape[1] == 16 + prefix
    torch.testing.assert_close(out[:, 0], full[:, prefix:])


def test_levels_follow_feature_layers_order():
    t = tower("clip_vision_model", feature_layers=[0, -2, 2])
    x = pixels()
    hs = t.model(pixel_values=x, output_hidden_states=True).hidden_states
    out = t(x)
    assert t.num_levels == 3 and out.shape == (2, 3, 16, 32)
    for k, i in enumerate([0, -2, 2]):
        torch.testing.assert_close(out[:, k], hs[i][:, 1:])


def test_wrong_resolution_is_a_clear_error():
    with pytest.raises(ValueError, match=r"pixel_values are \(40, 40\) px; this siglip_vision_model expects 32x32"):
        tower("siglip_vision_model")(pixels(size=40))


def test_frozen_tower_stays_frozen():
    t = tower()
    t.train()
    assert not t.model.training
    assert all(not p.requires_grad for p in t.parameters())
    assert not t(pixels()).requires_grad


def test_unfrozen_tower_trains():
    t = tower(frozen=False)
    t.train()
    assert t.model.training
    t(pixels()).sum().backward()
    assert all(p.grad is not None for p in t.model.encoder.parameters())


def test_image_stats():
    assert tower("siglip_vision_model").image_mean == (0.5, 0.5, 0.5)
    clip = tower("clip_vision_model")
    assert clip.image_mean[0] == pytest.approx(0.48145466) and clip.image_std[2] == pytest.approx(0.27577711)


@pytest.mark.parametrize("model_type", ["siglip_vision_model", "clip_vision_model", "vit"])
def test_save_pretrained_loads_back_by_path(tmp_path, model_type):
    t = tower(model_type).eval()
    t.model.save_pretrained(tmp_path)
    stats = {"image_mean": [0.1, 0.2, 0.3], "image_std": [1, 1, 1]}
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(stats))
    # size fields are ignored: they come from the checkpoint
    cfg = VisionConfig(pretrained=str(tmp_path), model_type="vit", image_size=999, feature_layers=[1, -1])
    loaded = VisionTower(cfg)
    assert loaded.model_type == model_type and loaded.grid_side == 4
    assert loaded.image_mean == (0.1, 0.2, 0.3)
    x = pixels()
    torch.testing.assert_close(loaded(x)[:, 1], t(x)[:, 0])


@pytest.mark.parametrize(
    "kw,match",
    [
        (dict(hidden_size=30), "vision.hidden_size=30 must be divisible by vision.num_heads=4"),
        (dict(image_size=36), "vision.image_size=36 must be divisible by vision.patch_size=8"),
        (dict(model_type="resnet"), "allowed: siglip_vision_model, clip_vision_model, vit"),
        (dict(feature_layers=[3]), r"out-of-range index 3; allowed: -3..2"),
        (dict(feature_layers=[]), "at least one"),
        (dict(num_layers=0), "vision.num_layers=0"),
    ],
)
def test_bad_configs_raise_user_error(kw, match):
    with pytest.raises(UserError, match=match):
        tower(**kw)


def test_a_pretrained_tower_uses_its_own_image_processor(tmp_path):
    """A checkpoint that ships an image processor: the tower exposes it (AutoImageProcessor) and the VLM's
    processor transforms images with it; a checkpoint without one keeps the kit's transform."""
    import numpy as np
    import transformers
    from PIL import Image

    from lit_vlm.data.processor import VLMProcessor
    from lit_vlm.data.tokenizer import build_synthetic_tokenizer

    tower("clip_vision_model").model.save_pretrained(tmp_path)
    reference = transformers.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    reference.save_pretrained(tmp_path)
    loaded = VisionTower(VisionConfig(pretrained=str(tmp_path)))
    assert loaded.image_processor is not None and loaded.image_processor.crop_size == {"height": 32, "width": 32}
    processor = VLMProcessor(build_synthetic_tokenizer(), image_size=32, image_processor=loaded.image_processor)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 40, 3), dtype=np.uint8))
    expected = reference(images=image, return_tensors="pt")["pixel_values"][0]
    torch.testing.assert_close(processor.image_to_tensor(image), expected)
    assert tower("siglip_vision_model").image_processor is None  # built from sizes: the kit's own transform
