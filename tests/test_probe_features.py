"""bench/probe_features.py: pools as the avgpool compressor does, and refuses a bad V in one line."""

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from probe_features import pooled  # noqa: E402

from lit_vlm.model.compressors import build_compressor  # noqa: E402


def test_probe_pools_like_the_avgpool_compressor():
    feats = torch.randn(5, 2, 16, 8)  # [n, levels, P = 4 x 4, D]
    store = SimpleNamespace(features=feats.numpy())
    rows = [4, 0, 2]
    for v in (1, 4, 16):
        comp = build_compressor("avgpool", in_dim=8, grid_side=4, num_levels=2, visual_tokens=v)
        want, _ = comp.compress(feats[rows], None)  # [n, V, D]
        got = pooled(store, rows, v, 4).reshape(len(rows), 8, v).transpose(1, 2)
        assert torch.allclose(got, want, atol=1e-6), v


def test_probe_refuses_a_visual_token_count_that_is_not_a_square_divisor():
    done = subprocess.run([sys.executable, "bench/probe_features.py", "--config", "configs/grid/cpu_law.yaml",
                           "--visual-tokens", "1", "3"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == "error: --visual-tokens 3: must be a square v*v with v dividing 8"
