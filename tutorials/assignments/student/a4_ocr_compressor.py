"""Assignment 4 (open): design a compressor that beats avgpool at ONE visual token on OCR.

Grading also checks that the work is your own: from the kit this file may import only `Compressor`
(and `UserError`).

The paper's finding 2: for reading text, visual tokens matter more than LLM size, because squeezing the patch
grid into very few tokens loses *where* each character is. Your job: keep as much of it as you can in V = 1.

Write `OCRCompressor`, a subclass of lit_vlm.model.compressors.Compressor (read that file first):
- constructed like every compressor of the kit:
      OCRCompressor(in_dim=D, grid_side=8, num_levels=2, visual_tokens=1, query_dim=None, out_dim=64)
  (set the class attribute has_params = False only if it has no parameters: then out_dim is not passed);
- implement `compress(features [B, n_levels, P, D], query) -> (tokens [B, V, out_dim], attention [B, V, P] or None)`;
  the base class's forward checks the shapes and calls it. `features[:, -1]` is the main level; with
  `multi_level = True` you may use every level;
- at most 250,000 parameters; no subclassing of the kit's own compressors (AvgPool, Perceiver, ...).

How it is graded (tutorials/assignments/autograder/ocr_probe.py, the same for everyone): a frozen tiny vision
tower, your compressor at V = 1 and a fixed small head are trained for 1,500 steps (~10 s) to read the first,
second and last characters of the synthetic OCR images from your ONE token. You pass with a mean accuracy of at
least 0.24 that is also at least 0.05 above avgpool's in the same run (avgpool: ~0.14; chance: 0.10).
Try it yourself:

    python tutorials/assignments/autograder/ocr_probe.py --submission tutorials/assignments/student

Hints: which symmetry of the average throws the order of the characters away? What could a *learned* weighting
of the patches keep that a uniform one cannot? Does one weighting per token suffice?
"""

from __future__ import annotations

import torch
from torch import nn

from lit_vlm.model.compressors import Compressor


class OCRCompressor(Compressor):
    """Your compressor: features [B, n_levels, P, D] -> [B, V, out_dim]."""

    def __init__(self, **kw):
        super().__init__(**kw)
        # TODO: create your parameters here (self.out_dim is the width your tokens must have)
        raise NotImplementedError("OCRCompressor.__init__")

    def compress(self, features: torch.Tensor, query: torch.Tensor | None):
        # TODO: return (tokens [B, self.visual_tokens, self.out_dim], attention [B, V, P] or None)
        raise NotImplementedError("OCRCompressor.compress")
