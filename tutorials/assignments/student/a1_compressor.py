"""Assignment 1: implement two visual-token compressors to the kit's interface.

Grading also checks that the work is your own: from the kit this file may import only `Compressor`
(and `UserError`).

Read lit_vlm/model/compressors.py first: every compressor subclasses `Compressor`, whose constructor takes
keyword arguments only

    in_dim        D, the width of the vision features
    grid_side     the patch grid is grid_side x grid_side (P = grid_side**2 patches)
    num_levels    how many feature levels the tower gives (features[:, -1] is the main level)
    visual_tokens V, the number of tokens to produce
    query_dim     width of the question embedding (None here: neither compressor uses the question)
    out_dim       width of the output tokens (defaults to in_dim)

and sets self.in_dim, self.grid_side, self.num_levels, self.visual_tokens, self.out_dim, self.side = isqrt(V)
and self.scale = grid_side // side. Its forward(features [B, n_levels, P, D], query=None, return_attention=False)
checks the input shape, then calls YOUR compress(features, query), which returns (tokens [B, V, out_dim],
attention [B, V, P] or None). Do not override forward.

Part A - AvgPoolCompressor (no parameters, has_params = False, so out_dim == in_dim):
  - V must be v * v with v a divisor of grid_side (1, 4, 16, 64 on an 8 x 8 grid); otherwise __init__ raises
    ValueError (lit_vlm.UserError is a ValueError too) naming the valid values;
  - token k is the mean of the main-level features over the k-th s x s region, regions in row-major order
    (left to right, then top to bottom), s = grid_side / v. Attention: return None.

Part B - LearnedQueryResampler (the Perceiver / Q-Former family, one head, one layer). Any V >= 1 is valid
  (override the classmethods valid_visual_tokens / accepts as Perceiver does; __init__ raises ValueError for
  V < 1). It must have exactly these parameters, with these names and shapes (the grader loads a state dict):
      queries   nn.Parameter [V, out_dim]   init randn * 0.02
      pos       nn.Parameter [P, in_dim]    init zeros (a learned positional embedding)
      k_proj    nn.Linear(in_dim, out_dim)
      v_proj    nn.Linear(in_dim, out_dim)
      out_proj  nn.Linear(out_dim, out_dim)
  and compute, with x = features[:, -1] + pos:
      attention = softmax(queries @ k_proj(x)^T / sqrt(out_dim))     over the P patches   [B, V, P]
      tokens    = out_proj(attention @ v_proj(x))                                         [B, V, out_dim]
  returning (tokens, attention).

Grading (tutorials/assignments/autograder/test_a1_compressor.py): output shapes for every valid V, V validation,
gradients reaching every parameter and the input, exact agreement with the kit's avgpool and with the formula
above on fixed inputs, and a forward/backward pass inside the kit's VLM.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from lit_vlm.model.compressors import Compressor


class AvgPoolCompressor(Compressor):
    """Average each s x s region of the main level; V = v * v with v dividing grid_side."""

    has_params = False

    def __init__(self, **kw):
        super().__init__(**kw)
        # TODO: raise ValueError when self.visual_tokens does not fit the grid
        raise NotImplementedError("AvgPoolCompressor.__init__")

    def compress(self, features, query):
        # TODO: features [B, n_levels, P, D] -> (tokens [B, V, D], None)
        raise NotImplementedError("AvgPoolCompressor.compress")


class LearnedQueryResampler(Compressor):
    """V learned queries, one softmax cross-attention over the main-level patches (+ positional embedding)."""

    # TODO: accept any V >= 1 (classmethods valid_visual_tokens and accepts)

    def __init__(self, **kw):
        super().__init__(**kw)
        # TODO: the five parameters listed in the module docstring, with exactly those names
        raise NotImplementedError("LearnedQueryResampler.__init__")

    def compress(self, features, query):
        # TODO: (tokens [B, V, out_dim], attention [B, V, P])
        raise NotImplementedError("LearnedQueryResampler.compress")
