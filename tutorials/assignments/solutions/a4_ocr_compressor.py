"""Assignment 4 (open), reference solution: a compressor that keeps *where* things are in a single token.

Why avgpool fails at V = 1 on OCR: the mean over patches is invariant to permuting the patches, so "A then K"
and "K then A" give the same token; at best it keeps the bag of characters, never their order.

This design (a positional, multi-query resampler) breaks that symmetry twice:
1. a learned positional embedding is added to every patch before anything is pooled, so a feature now says
   *what* and *where*;
2. each output token is built from `heads` learned queries, each with its own softmax over the patches: one
   query can learn to look at the left end of the text, another at the right end; their read-outs are
   concatenated (not averaged) and mapped to the output width, so the order survives.
It reads both levels the probe provides: the patch embeddings (level 0: raw appearance) and the tower's output
(the main level), concatenated on channels.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from lit_vlm.model.compressors import Compressor


class OCRCompressor(Compressor):
    """features [B, n_levels, P, D] -> [B, V, out_dim] with `heads` positional learned queries per token."""

    multi_level = True

    @classmethod
    def valid_visual_tokens(cls, grid_side: int) -> list[int]:
        return list(range(1, grid_side * grid_side + 1))

    @classmethod
    def accepts(cls, visual_tokens: int, grid_side: int) -> bool:
        return visual_tokens >= 1

    def __init__(self, *, heads: int = 8, key_dim: int = 32, **kw):
        super().__init__(**kw)
        if self.visual_tokens < 1:
            raise ValueError(f"visual_tokens={self.visual_tokens} must be >= 1")
        P, D = self.grid_side**2, self.num_levels * self.in_dim
        self.heads, self.key_dim = heads, key_dim
        self.pos = nn.Parameter(torch.randn(P, D) * 0.5)  # large enough to matter against the features
        self.norm = nn.LayerNorm(D)
        self.queries = nn.Parameter(torch.randn(self.visual_tokens * heads, key_dim))
        self.k_proj = nn.Linear(D, key_dim)
        self.v_proj = nn.Linear(D, key_dim)
        self.out = nn.Linear(heads * key_dim, self.out_dim)

    def compress(self, features, query):
        x = features.permute(0, 2, 1, 3).flatten(2)  # [B, P, n_levels * D]: levels side by side
        x = self.norm(x + self.pos)
        attn = torch.softmax(self.queries @ self.k_proj(x).transpose(1, 2) / math.sqrt(self.key_dim), dim=-1)
        read = attn @ self.v_proj(x)  # [B, V * heads, key_dim]: one read-out per query
        tokens = self.out(read.reshape(x.shape[0], self.visual_tokens, -1))  # concatenate a token's heads
        per_token = attn.view(x.shape[0], self.visual_tokens, self.heads, -1).mean(2)  # [B, V, P] for plots
        return tokens, per_token
