"""Assignment 4 (open): a compressor that beats avgpool at V = 1 on OCR, graded on the probe in ocr_probe.py.

Why a probe and not a whole VLM: a tiny VLM trained from scratch on this CPU stays at the answer prior for the
first ~1000 steps whatever its compressor (measured: INSTRUCTOR.md), so "a few hundred steps" cannot separate
compressors. The probe keeps the part under study (frozen tower -> your compressor -> one token) and replaces the
LLM by a fixed two-layer head that must read the first, second and last characters from that one token.

Pass: mean probe accuracy >= THRESHOLD and at least MARGIN above avgpool measured in the same run.
Measured on 2 CPU cores (seeds 0-2): avgpool 0.130-0.153, the reference solution 0.353-0.371, chance 0.10.
"""

from __future__ import annotations

import pytest
import torch
from conftest import load_submission

import ocr_probe
from lit_vlm.model.compressors import COMPRESSORS, Compressor

THRESHOLD = 0.24
MARGIN = 0.05


@pytest.fixture(scope="module")
def cls():
    return load_submission("a4_ocr_compressor").OCRCompressor


@pytest.fixture(scope="module")
def feats(tmp_path_factory):
    return ocr_probe.probe_features(tmp_path_factory.mktemp("probe_data"))


def test_is_a_new_compressor(cls):
    assert issubclass(cls, Compressor), "OCRCompressor must subclass lit_vlm.model.compressors.Compressor"
    taken = [name for name, reg in COMPRESSORS.items() if issubclass(cls, reg) and reg is not Compressor]
    assert not taken, f"OCRCompressor subclasses the kit's {taken}: design your own"


def test_interface_at_one_token(cls, feats):
    comp = ocr_probe.build(cls, feats)
    x = feats["test"][0][:5]
    tokens = comp(x)
    assert tokens.shape == (5, 1, comp.out_dim)
    out = comp(x, return_attention=True)
    assert isinstance(out, tuple) and out[0].shape == tokens.shape
    params = sum(p.numel() for p in comp.parameters())
    assert params <= ocr_probe.MAX_PARAMS, f"{params} parameters; allowed: <= {ocr_probe.MAX_PARAMS}"
    with pytest.raises(ValueError):  # the base class checks the feature shape
        comp(x[:, :, :10])


def test_plugs_into_the_vlm(cls, monkeypatch):
    """Registered under a name, it trains inside the kit's LitVLM like any built-in compressor."""
    from lit_vlm.data.synthetic import draw_example
    from lit_vlm.module import LitVLM

    monkeypatch.setitem(COMPRESSORS, "student", cls)
    vision = dict(image_size=32, patch_size=8, hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32,
                  feature_layers=[0, -1])
    torch.manual_seed(0)
    module = LitVLM(vision=vision, llm=dict(hidden_size=32, num_layers=1, num_heads=2), compressor="student",
                    visual_tokens=1)
    batch = module.processor.collate([draw_example("train", i, image_size=32) for i in range(4)])
    loss = module.vlm(batch).loss
    loss.backward()
    grads = [p.grad for p in module.vlm.compressor.parameters()]
    assert all(g is not None for g in grads)
    assert module.vlm.generate(batch, max_new_tokens=3).shape == (4, 3)


def test_beats_avgpool_on_the_ocr_probe(cls, feats):
    base = ocr_probe.run_probe(COMPRESSORS["avgpool"], feats)
    mine = ocr_probe.run_probe(cls, feats)
    print(f"\nOCR probe at V=1: avgpool {base}\n                   submission {mine}")
    assert mine["mean"] >= THRESHOLD, (
        f"probe accuracy {mine['mean']:.3f} < threshold {THRESHOLD} (avgpool {base['mean']:.3f})")
    assert mine["mean"] >= base["mean"] + MARGIN, (
        f"probe accuracy {mine['mean']:.3f} is not {MARGIN} above avgpool {base['mean']:.3f}")
