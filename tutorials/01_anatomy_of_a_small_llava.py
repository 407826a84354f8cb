# ---
# jupyter:
#   accelerator: GPU
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 01 · Anatomy of a small LLaVA
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/lit-vlm/lit_vlm/blob/main/tutorials/01_anatomy_of_a_small_llava.ipynb)
#
# The paper (Li, Goyal, Semedo, Kolter, ICLR 2025) prices a vision-language model's answer at
# **2 N (Q + V)** FLOPs: N LLM parameters, Q text tokens, V visual tokens. This notebook takes a tiny
# LLaVA-style model from `lit_vlm` apart to see where each of those three numbers lives:
#
# 1. the model: vision tower → compressor → projector → causal LM;
# 2. an image from the synthetic benchmark and its 8 × 8 patch grid;
# 3. visual tokens, and how they are spliced into the LLM's input in place of one `<image>` token;
# 4. N, Q, V and the inference FLOPs, checked against what torch's FLOP counter measures.
#
# Nothing here trains; everything is built offline with random weights.

# %%
# On Colab this installs the kit from GitHub; where lit_vlm is already importable it does nothing.
try:
    import lit_vlm
except ImportError:
    get_ipython().run_line_magic("pip", 'install -q "git+https://github.com/lit-vlm/lit_vlm"')
    import lit_vlm
print("lit_vlm", lit_vlm.__version__)

# %% [markdown]
# **Three modes**, set by `MODE` in the parameters cell below. `"committed"` (what this notebook shows on GitHub
# and when first opened in Colab) uses tiny sizes and shows the committed grid instead of training one; what has
# no committed counterpart runs as in smoke mode. `"smoke"` (the default outside Colab, or `LIT_VLM_SMOKE=1`)
# uses tiny sizes and a handful of training steps so the notebook runs top to bottom in about a minute on a
# laptop CPU: it shows the mechanics, and its trained numbers are close to chance. `"full"` (the default on
# Colab, or `LIT_VLM_SMOKE=0`) uses sizes meant for one Colab GPU. Nothing trains here, so full mode only uses
# the quickstart's (larger) sizes: about a minute anywhere (an estimate).

# %% tags=["parameters"]
MODE = ""  # committed, smoke or full; empty: $LIT_VLM_MODE, else $LIT_VLM_SMOKE, else full on Colab
WORK_DIR = ""  # data, towers and grids go here (empty: $LIT_VLM_WORK_DIR, else a default folder for the mode)

# %%
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import torch
from IPython.display import display

from lit_vlm import tutorial

kit = tutorial.setup(MODE, WORK_DIR)  # the mode, quiet logs, inline figures, the work folder, the device
SMOKE, WORK, ACCELERATOR = kit.smoke, kit.work, kit.accelerator

# %%
VISION, LLM = tutorial.tiny_sizes(SMOKE)  # an 8 x 8 patch grid, so V in {1, 4, 16, 64}

V = 16  # visual tokens: the paper's knob
VS = [1, 4, 16, 64]  # every V an 8 x 8 grid allows for the grid compressors

# %% [markdown]
# ## 1. The model
#
# `LitVLM` is the kit's LightningModule. Its `vlm` attribute is the plain `torch.nn.Module`:
# `vision_tower` (a Hugging Face SigLIP-style encoder, random weights), `compressor` (here `avgpool`: the
# 8 × 8 patch grid averaged down to V tokens), `projector` (a 2-layer MLP into the LLM's width) and `llm` (a
# Hugging Face Llama). The tokenizer is built offline for the synthetic benchmark's closed vocabulary.

# %%
from lit_vlm.module import LitVLM

torch.manual_seed(0)
module = LitVLM(vision=VISION, llm=LLM, compressor="avgpool", visual_tokens=V)
vlm = module.vlm
parts = {name: sum(p.numel() for p in params) for name, params in vlm.param_groups().items()}
display(pd.Series(parts, name="parameters").to_frame())
print(vlm.compressor, "->", vlm.projector)

# %% [markdown]
# ## 2. An image and its patch grid
#
# The synthetic benchmark has two task families: **reasoning** (coloured shapes: count, colour, shape,
# existence, comparison, left/right) and **ocr** (read a short rendered string, or one of its characters).
# `draw_example` draws any row as a pure function of (split, index, seed), without touching the disk.
# The vision tower cuts each 64 × 64 image into 8 × 8-pixel patches: an 8 × 8 grid, P = 64 patch tokens.

# %%
from lit_vlm.data.synthetic import draw_example

rows = [draw_example("test", i, image_size=VISION["image_size"]) for i in range(4)]
patch = VISION["patch_size"]
fig, axes = plt.subplots(1, 2, figsize=(8, 4))
for ax, row in zip(axes, rows[:2]):
    ax.imshow(row["image"])
    for k in range(0, row["image"].size[0] + 1, patch):  # the patch grid
        ax.axhline(k - 0.5, color="k", lw=0.5, alpha=0.5)
        ax.axvline(k - 0.5, color="k", lw=0.5, alpha=0.5)
    ax.set_title(f"{row['family']}: {row['question']}\nanswer: {row['answer']}", fontsize=9)
    ax.set_xticks([]), ax.set_yticks([])
plt.tight_layout()
plt.show()
side = VISION["image_size"] // patch
print(f"{side} x {side} = {side * side} patches of {patch} x {patch} pixels")

# %% [markdown]
# ## 3. From pixels to visual tokens
#
# The processor turns rows into a batch (the contract is in ARCHITECTURE.md). The tower maps pixels to
# patch features `[B, n_levels, P, D]`; the compressor maps those to V tokens; the projector maps each token
# to the LLM's width H. With `avgpool` and V = 16, each visual token is the average of a 2 × 2 block of
# patches (16 × 16 pixels), drawn in red below.

# %%
batch = module.processor.collate(rows)
with torch.no_grad():
    features = vlm.encode_images(batch["pixel_values"])
    visual = vlm.visual_embeds(features, batch["question_ids"], batch["question_mask"])
print("pixel_values ", tuple(batch["pixel_values"].shape), "  [B, 3, H, W]")
print("features     ", tuple(features.shape), "  [B, n_levels, P, D]")
print("visual tokens", tuple(visual.shape), "  [B, V, H_llm]")

region = VISION["image_size"] // int(V ** 0.5)  # pixels per visual token, on a side
fig, ax = plt.subplots(figsize=(3.5, 3.5))
ax.imshow(rows[0]["image"])
for k in range(0, VISION["image_size"] + 1, region):
    ax.axhline(k - 0.5, color="red", lw=1.5)
    ax.axvline(k - 0.5, color="red", lw=1.5)
ax.set_title(f"avgpool, V = {V}: one token per {region} x {region} px region", fontsize=9)
ax.set_xticks([]), ax.set_yticks([])
plt.show()

# %% [markdown]
# ## 4. Splicing: L text tokens become L + V − 1 positions
#
# Every prompt holds exactly one `<image>` placeholder. The VLM swaps it for the V visual embeddings, so the
# LLM reads L + V − 1 positions. The loss only sees the answer (labels are −100 on the prompt and on the
# visual tokens).

# %%
tok = module.processor.tokenizer
print(repr(module.processor.format_prompt(rows[0]["question"])))
ids = batch["input_ids"][0][batch["attention_mask"][0].bool()]
tokens = tok.convert_ids_to_tokens(ids.tolist())
print("input_ids:", tokens)
where = tokens.index("<image>")
spliced_view = tokens[:where] + [f"[v0 .. v{V - 1}]"] + tokens[where + 1:]
print("spliced:  ", spliced_view)

s = vlm.splice(batch["input_ids"], batch["attention_mask"], visual, batch["labels"])
L = batch["input_ids"].shape[1]
print(f"L = {L} text positions -> inputs_embeds {tuple(s['inputs_embeds'].shape)}; L + V - 1 = {L + V - 1}")
assert s["inputs_embeds"].shape[1] == L + V - 1
supervised = (s["labels"][0] != -100).nonzero().flatten().tolist()
print("positions with a loss:", supervised, "=", tok.convert_ids_to_tokens(s["labels"][0, supervised].tolist()))

# %% [markdown]
# ## 5. N, Q, V and the inference FLOPs
#
# The paper's N excludes the embedding matrices (a lookup is not a matrix product; with tied embeddings the
# lm_head is the same matrix). Q is the number of prompt tokens besides the placeholder. With our tiny
# tokenizer Q ≈ 11; the paper uses Q = 0 (a cached prompt) and Q = 50.

# %%
from lit_vlm.flops import inference_flops

N = vlm.num_llm_params(with_embeddings=False)
Q = float((batch["prompt_mask"].sum(1) - 1).float().mean())
print(f"N = {N:,} (with embeddings: {vlm.num_llm_params(with_embeddings=True):,}),  Q = {Q:.2f}")
display(pd.DataFrame({"V": VS, "2 N (Q + V)": [inference_flops(N, Q, v) for v in VS],
                      "2 N (0 + V)": [inference_flops(N, 0, v) for v in VS]}).set_index("V"))

# %% [markdown]
# ## 6. Checking the formula against torch's FLOP counter
#
# `lit_vlm.flops.measure_prefill` runs the real LLM prefill on a real spliced batch under
# `torch.utils.flop_counter.FlopCounterMode`. We build the same model at every V (`identity` for V = 64,
# `avgpool` below) with two attention kernels: `eager` (plain matrix products) and `sdpa` (PyTorch's fused
# attention). One example per batch, so no padding positions are counted.

# %%
from lit_vlm.flops import measure_prefill

one = rows[:1]
records = []
for v in VS:
    for attn in ("eager", "sdpa"):
        torch.manual_seed(0)
        m = LitVLM(vision=VISION, llm={**LLM, "attn_implementation": attn},
                   compressor="avgpool" if v < 64 else "identity", visual_tokens=v)
        cost = measure_prefill(m.vlm, m.processor.collate(one), repeats=1)
        records.append({"V": v, "attention": attn, "Q": cost.text_tokens, "2N(Q+V)": cost.analytic_flops,
                        "measured": cost.measured_flops, "measured / 2N(Q+V)": round(cost.ratio, 4)})
flops = pd.DataFrame(records)
display(flops.pivot(index="V", columns="attention", values=["measured", "measured / 2N(Q+V)"]))

# %%
cfg = vlm.llm.config  # the same LLM sizes at every V
eager = flops[flops.attention == "eager"].set_index("V")
T = eager["Q"] + eager.index  # positions in the prefill
attention_term = 4 * cfg.num_hidden_layers * cfg.hidden_size * T**2  # Q K^T and A V in every layer
fig, ax = plt.subplots(figsize=(5.5, 3.8))
ax.plot(eager.index, eager["2N(Q+V)"], "o-", label="2 N (Q + V)  (the paper)")
ax.plot(eager.index, eager["measured"], "s--", label="measured, eager attention")
ax.plot(eager.index, eager["2N(Q+V)"] + attention_term, ":", label="2 N (Q + V) + 4 L d T²")
ax.set_xscale("log", base=2), ax.set_yscale("log")
ax.set_xlabel("visual tokens V"), ax.set_ylabel("prefill FLOPs per example"), ax.legend(fontsize=8)
plt.show()
sdpa = flops[flops.attention == "sdpa"].set_index("V")["measured"]
if (sdpa < eager["measured"]).all():
    print("The counter saw less with sdpa: on this torch build it has no FLOP formula for the fused CPU "
          "attention kernel and counts it as 0. Eager attention is plain matmuls and is always counted.")

# %% [markdown]
# ### What to take away
#
# * 2 N (Q + V) counts every weight matrix once per position. The counter agrees with it to within a few
#   percent at small V; what it adds is **attention's two T × T products** (4 L d T² FLOPs, T = Q + V)
#   and one lm_head row. Both are negligible for the paper's billion-parameter LLMs at small V, and grow
#   with V: the paper's cost model, if anything, *undercharges* many visual tokens.
# * V enters the cost exactly like Q: one visual token costs as much as one text token. Going from 576
#   visual tokens to 1 cuts the prefill of a cached prompt (Q = 0) by 576 ×; that budget can pay for a far
#   bigger LLM. Notebook 04 fits how much accuracy each choice buys.
# * Assignment 2 (`tutorials/assignments/`) asks you to write this cost model and the attention correction
#   yourself and checks them against the counter.
