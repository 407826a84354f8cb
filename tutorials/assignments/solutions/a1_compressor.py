"""Assignment 1, reference solution: two visual-token compressors to the kit's Compressor interface."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from lit_vlm.model.compressors import Compressor


class AvgPoolCompressor(Compressor):
    """Average each s x s region of the main level; V = v * v with v dividing grid_side, s = grid_side / v."""

    has_params = False

    def __init__(self, **kw):
        super().__init__(**kw)
        v = math.isqrt(self.visual_tokens) if self.visual_tokens > 0 else 0
        if v < 1 or v * v != self.visual_tokens or self.grid_side % v:
            raise ValueError(
                f"visual_tokens={self.visual_tokens} does not fit a {self.grid_side}x{self.grid_side} grid; "
                f"valid: {self.valid_visual_tokens(self.grid_side)}"
            )

    def compress(self, features, query):
        x = features[:, -1]  # [B, P, D], the main level
        B, P, D = x.shape
        grid = x.transpose(1, 2).reshape(B, D, self.grid_side, self.grid_side)
        pooled = F.avg_pool2d(grid, kernel_size=self.scale)  # [B, D, v, v], row-major regions
        return pooled.flatten(2).transpose(1, 2), None


class LearnedQueryResampler(Compressor):
    """V learned queries, one softmax cross-attention over the main-level patches (+ positional embedding)."""

    @classmethod
    def valid_visual_tokens(cls, grid_side: int) -> list[int]:
        return list(range(1, grid_side * grid_side + 1))

    @classmethod
    def accepts(cls, visual_tokens: int, grid_side: int) -> bool:
        return visual_tokens >= 1

    def __init__(self, **kw):
        super().__init__(**kw)
        if self.visual_tokens < 1:
            raise ValueError(f"visual_tokens={self.visual_tokens} must be >= 1")
        P, D, E = self.grid_side**2, self.in_dim, self.out_dim
        self.queries = nn.Parameter(torch.randn(self.visual_tokens, E) * 0.02)
        self.pos = nn.Parameter(torch.zeros(P, D))
        self.k_proj = nn.Linear(D, E)
        self.v_proj = nn.Linear(D, E)
        self.out_proj = nn.Linear(E, E)

    def compress(self, features, query):
        x = features[:, -1] + self.pos  # [B, P, D]
        k, v = self.k_proj(x), self.v_proj(x)  # [B, P, E]
        attn = torch.softmax(self.queries @ k.transpose(1, 2) / math.sqrt(self.out_dim), dim=-1)  # [B, V, P]
        return self.out_proj(attn @ v), attn
