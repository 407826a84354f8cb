"""The two baselines: `random` (V patches drawn at random) and `downsample` (the image resized so the tower
itself yields V patches): shapes, what each keeps, the V rule, the tower at a smaller size, the feature cache."""

import pytest
import torch

from lit_vlm.errors import UserError
from lit_vlm.grid.cache import CachedTower, build_store
from lit_vlm.model.compressors import build_compressor, valid_visual_tokens
from lit_vlm.model.vision import VisionConfig, VisionTower

B, SIDE, D = 3, 8, 16


def make(name, V, **options):
    return build_compressor(name, in_dim=D, grid_side=SIDE, num_levels=2, visual_tokens=V, query_dim=8, **options)


def feats(P=SIDE * SIDE, seed=1):
    return torch.randn(B, 2, P, D, generator=torch.Generator().manual_seed(seed))


# --- random -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("V", [1, 5, 16, 64])
def test_random_keeps_v_distinct_patches_of_the_main_level_in_raster_order(V):
    c, f = make("random", V), feats()
    for mode in (True, False):
        c.train(mode)
        tokens, keep = c(f, return_attention=True)
        assert tokens.shape == (B, V, D) and keep.shape == (B, V, SIDE * SIDE)
        index = keep.argmax(-1)  # which patch each token is
        assert (keep.sum(-1) == 1).all()
        assert (index.diff(dim=1) > 0).all()  # distinct, raster order
        torch.testing.assert_close(tokens, f[:, -1].gather(1, index[..., None].expand(-1, -1, D)))
    assert sum(p.numel() for p in c.parameters()) == 0


def test_random_draws_afresh_in_training_and_the_same_seeded_patches_in_evaluation():
    c, f = make("random", 4), feats()
    c.train()
    torch.manual_seed(0)
    draws = [c(f, return_attention=True)[1].argmax(-1) for _ in range(3)]
    assert not torch.equal(draws[0], draws[1]) or not torch.equal(draws[1], draws[2])
    assert not all(torch.equal(draws[0][0], draws[0][i]) for i in range(B))  # per image, too
    torch.manual_seed(0)
    torch.testing.assert_close(c(f, return_attention=True)[1].argmax(-1), draws[0])  # seeded: repeatable
    c.eval()
    first = c(f, return_attention=True)[1].argmax(-1)
    assert (first == first[:1]).all()  # one draw for every image
    torch.manual_seed(123)  # the global RNG does not move it
    torch.testing.assert_close(c(f, return_attention=True)[1].argmax(-1), first)
    torch.testing.assert_close(make("random", 4).eval()(f), c(f))  # a fresh module: the same patches
    assert not torch.equal(make("random", 4, seed=1).eval_index, c.eval_index)


def test_random_v_rule():
    assert valid_visual_tokens("random", 3) == list(range(1, 10))
    with pytest.raises(UserError, match=r"visual_tokens=65 does not fit a 8x8 patch grid for 'random'; "
                                        r"valid: any integer 1\.\.64$"):
        make("random", 65)
    with pytest.raises(UserError, match="valid: any integer 1..64"):
        make("random", 0)


# --- downsample: the compressor ----------------------------------------------------------------------------
def test_downsample_passes_the_small_grid_main_level_on():
    c = make("downsample", 9)
    f = feats(P=9)
    torch.testing.assert_close(c(f), f[:, -1])
    assert c.resizes_image and c.side == 3 and c.input_patches == 9
    with pytest.raises(ValueError, match=r"expects features \[B, n_levels, 9, 16\]"):
        c(feats())  # full-size features are refused, not silently sliced


def test_downsample_v_rule_lists_the_valid_v():
    assert valid_visual_tokens("downsample", 4) == [1, 4, 9, 16]
    for bad in (5, 81, 0):
        with pytest.raises(UserError, match=rf"visual_tokens={bad} does not fit a 8x8 patch grid for 'downsample'; "
                                            r"valid: 1, 4, 9, 16, 25, 36, 49, 64$"):
            make("downsample", bad)


# --- downsample: the tower at a smaller size ----------------------------------------------------------------
TOWER = dict(image_size=32, patch_size=8, hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32)


@pytest.mark.parametrize("model_type,prefix", [("siglip_vision_model", 0), ("clip_vision_model", 1), ("vit", 1)])
@pytest.mark.parametrize("side", [1, 2, 3])
def test_tower_takes_a_smaller_image_and_drops_exactly_its_prefix(model_type, prefix, side):
    torch.manual_seed(0)
    t = VisionTower(VisionConfig(model_type=model_type, **TOWER))
    x = torch.randn(2, 3, side * 8, side * 8)
    out = t(x)
    assert out.shape == (2, 1, side * side, 16)
    full = t.model(pixel_values=x, output_hidden_states=True, interpolate_pos_encoding=True).hidden_states[-1]
    assert full.shape[1] == prefix + side * side
    torch.testing.assert_close(out[:, 0], full[:, prefix:])  # the patches, not the CLS token
    with pytest.raises(ValueError, match="multiple of the patch size 8"):
        t(torch.randn(1, 3, 12, 12))
    with pytest.raises(ValueError, match="expects 32x32"):
        t(torch.randn(1, 3, 40, 40))


def test_full_size_tower_output_is_unchanged_by_the_interpolation_path():
    torch.manual_seed(0)
    t = VisionTower(VisionConfig(model_type="clip_vision_model", **TOWER))
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(t(x)[:, 0], t.model(pixel_values=x, output_hidden_states=True).hidden_states[-1][:, 1:])


# --- downsample in the VLM and the feature cache -----------------------------------------------------------
@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from lit_vlm.data.datamodule import VLMDataModule
    from lit_vlm.module import LitVLM

    def module(compressor, V):
        torch.manual_seed(0)
        return LitVLM(vision=VisionConfig(**TOWER, feature_layers=[0, -1]), compressor=compressor, visual_tokens=V,
                      llm={"hidden_size": 16, "num_layers": 1, "num_heads": 2}, max_new_tokens=2)

    m = module("avgpool", 4)
    dm = VLMDataModule(data_dir=str(tmp_path_factory.mktemp("data")), processor=m.processor, num_train=8,
                       num_val=4, num_test=4, batch_size=4, eval_batch_size=4)
    dm.prepare_data()
    dm.setup("fit")
    return module, dm


def test_vlm_resizes_the_image_before_the_tower(data):
    module, dm = data
    batch = next(iter(dm.train_dataloader()))
    m = module("downsample", 4)
    seen = []
    m.vlm.vision_tower.register_forward_pre_hook(lambda mod, args: seen.append(tuple(args[0].shape[-2:])))
    with torch.no_grad():
        features = m.vlm.encode_images(batch["pixel_values"])
        out = m.vlm(batch)
    assert seen[0] == (16, 16) and features.shape == (4, 2, 4, 16)  # 2 x 2 patches of 8 px
    small = torch.nn.functional.interpolate(batch["pixel_values"], size=(16, 16), mode="bilinear", antialias=True)
    torch.testing.assert_close(features, m.vlm.vision_tower(small))
    assert torch.isfinite(out.loss)


def test_downsample_never_gets_full_size_features_from_the_cache(data, tmp_path):
    module, dm = data
    m = module("downsample", 4)
    real = m.vlm.vision_tower.eval()
    store = build_store(tmp_path, real, dm.datasets)
    batch = next(iter(dm.test_dataloader()))
    cached = CachedTower(real, store)
    with torch.no_grad():
        full = cached(batch["pixel_values"])  # a full-size image: served from the store
        assert (cached.hits, full.shape[2]) == (4, 16)
        m.vlm.vision_tower = cached
        small = m.vlm.encode_images(batch["pixel_values"])  # resized: never a lookup
        m.vlm.vision_tower = real
        expected = m.vlm.encode_images(batch["pixel_values"])
    assert (cached.hits, cached.misses) == (4, 4)
    torch.testing.assert_close(small, expected)
