"""bench/patch_visual_tokens.py: round 19's diagnostics change only what they say they change."""

import math
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import patch_visual_tokens as patch  # noqa: E402
from test_module import tiny_module  # noqa: E402

from lit_vlm.model import compressors  # noqa: E402
from lit_vlm.model import vlm as vlm_module  # noqa: E402


def _batch(module):
    image = Image.fromarray((np.random.default_rng(0).random((32, 32, 3)) * 255).astype("uint8"))
    return module.processor.collate([{"question": "what is KX?", "answer": "4", "image": image},
                                     {"question": "how many shapes are there?", "answer": "3", "image": image}])


def _keep(monkeypatch):
    """Let monkeypatch put back whatever the script replaces."""
    monkeypatch.setattr(compressors.AvgPool, "compress", compressors.AvgPool.compress)
    monkeypatch.setattr(vlm_module.VLM, "__init__", vlm_module.VLM.__init__)
    monkeypatch.setattr(vlm_module.VLM, "splice", vlm_module.VLM.splice)
    monkeypatch.setattr(patch, "_VISUAL", {})


def test_repeat_gives_v_copies_of_the_one_mean_token(monkeypatch):
    _keep(monkeypatch)
    module = tiny_module(visual_tokens=4).eval()
    features = torch.randn(2, 1, 16, module.vlm.compressor.in_dim)
    real = module.vlm.compressor(features, None)
    compressors.AvgPool.compress = patch.repeated_mean
    copies = module.vlm.compressor(features, None)
    assert copies.shape == real.shape == (2, 4, module.vlm.compressor.in_dim)
    torch.testing.assert_close(copies, features[:, -1].mean(1, keepdim=True).expand(-1, 4, -1))
    assert not torch.allclose(copies, real)


def test_the_bias_is_minus_log_v_on_the_visual_positions_and_nothing_else(monkeypatch):
    _keep(monkeypatch)
    plain = tiny_module(visual_tokens=4).eval()
    patch.install_bias()
    biased = tiny_module(visual_tokens=4).eval()
    biased.load_state_dict(plain.state_dict())
    assert biased.vlm.llm.config._attn_implementation == "visual_bias" and patch._VISUAL["log_v"] == math.log(4)
    batch = _batch(plain)
    with torch.no_grad():
        changed = biased.vlm(batch).logits
        keys = patch._VISUAL["keys"]
        assert keys.sum(1).tolist() == [4, 4]  # the four visual positions of each row, found after splicing
        patch._VISUAL["log_v"] = 0.0  # no bias: exactly the model the kit builds (right padding included)
        torch.testing.assert_close(biased.vlm(batch).logits, plain.vlm(batch).logits, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(changed, plain.vlm(batch).logits)
