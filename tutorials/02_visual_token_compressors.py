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
# # 02 · Visual-token compressors
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/lit-vlm/lit_vlm/blob/main/tutorials/02_visual_token_compressors.ipynb)
#
# The paper's knob is V, the number of visual tokens the LLM reads. A **compressor** turns the vision
# tower's P patch features into V tokens. `lit_vlm` has six, chosen by name:
#
# | name | how | V allowed on an 8 × 8 grid |
# | --- | --- | --- |
# | `identity` | all patches, no compression | 64 only |
# | `avgpool` | average each s × s region (no parameters) | 1, 4, 16, 64 |
# | `pixelshuffle` | stack each region along channels, then a linear map | 1, 4, 16, 64 |
# | `perceiver` | V learned queries cross-attend to all patches | any V ≥ 1 |
# | `tokenpacker` | bilinear "point" queries attend only to their own region, over multi-level features | 1, 4, 16, 64 |
# | `quecc` | the paper's: like tokenpacker, but the queries are conditioned on the **question** | 1, 4, 16, 64 |
#
# This notebook builds them all side by side, draws where the attention-based ones look, and shows how
# QueCC's attention moves when the question changes.

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
# Colab, or `LIT_VLM_SMOKE=0`) uses sizes meant for one Colab GPU. Full mode trains the QueCC model of section 4
# for 1,500 steps instead of 30: a few minutes on one Colab GPU (an estimate).

# %% tags=["parameters"]
MODE = ""  # committed, smoke or full; empty: $LIT_VLM_MODE, else $LIT_VLM_SMOKE, else full on Colab
WORK_DIR = ""  # data, towers and grids go here (empty: $LIT_VLM_WORK_DIR, else a default folder for the mode)
QUECC_STEPS = None  # training steps of section 4's QueCC model (None: 30, or 1,500 in full mode)
NUM_TRAIN = None  # its training examples (None: 512, or 8,000 in full mode)

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

TASK_OPTIONS = tutorial.task_options()  # cpu_mini's benchmark: questions about the image, learned in minutes

VS = [1, 4, 16, 64]
LEVELS = [0, -1]  # two feature levels (patch embeddings, last layer): tokenpacker and quecc read both
QUECC_STEPS = kit.pick(QUECC_STEPS, smoke=30, full=1500)
NUM_TRAIN = kit.pick(NUM_TRAIN, smoke=512, full=8000)

# %% [markdown]
# ## 1. Features to compress
#
# A vision tower with random weights (the offline kit has no pretrained one) turns one synthetic image into
# features `[B, n_levels, P, D]`. QueCC also needs a question embedding `[B, Dq]`; for the side-by-side table a
# random vector stands in for it (section 4 uses a real one).

# %%
from lit_vlm.data.synthetic import draw_example
from lit_vlm.model.vision import VisionConfig, VisionTower
from lit_vlm.data.processor import VLMProcessor
from lit_vlm.data.tokenizer import load_tokenizer

torch.manual_seed(0)
tower = VisionTower(VisionConfig(**VISION, feature_layers=LEVELS))
processor = VLMProcessor(load_tokenizer("synthetic"), image_size=tower.image_size,
                         image_mean=tower.image_mean, image_std=tower.image_std)
row = draw_example("test", 2, image_size=VISION["image_size"])
with torch.no_grad():
    features = tower(processor.image_to_tensor(row["image"])[None])
query = torch.randn(1, LLM["hidden_size"])
print("features", tuple(features.shape), " grid", tower.grid_side, "x", tower.grid_side,
      " query", tuple(query.shape))

# %% [markdown]
# ## 2. Every compressor at V = 1, 4, 16, 64
#
# `build_compressor` builds any of them by name and refuses a V that does not fit the grid, naming the
# valid values. Each output token has the tower's width D here (`out_dim` defaults to D); the VLM's
# projector then maps it to the LLM's width.

# %%
from lit_vlm import UserError
from lit_vlm.model.compressors import COMPRESSORS, build_compressor, valid_visual_tokens

cells = {}
for name in COMPRESSORS:
    for v in VS:
        if v not in valid_visual_tokens(name, tower.grid_side):
            cells[name, v] = "-"
            continue
        torch.manual_seed(0)
        comp = build_compressor(name, in_dim=tower.hidden_size, grid_side=tower.grid_side,
                                num_levels=tower.num_levels, visual_tokens=v, query_dim=LLM["hidden_size"])
        x = features
        if comp.resizes_image:  # downsample acts before the tower: the tower sees the image at v patches a side
            side = comp.side * tower.patch_size
            with torch.no_grad():
                x = tower(torch.nn.functional.interpolate(processor.image_to_tensor(row["image"])[None],
                                                          size=(side, side), mode="bilinear", antialias=True))
        out = comp(x, query)
        params = sum(p.numel() for p in comp.parameters())
        cells[name, v] = f"{list(out.shape)}  {params:,} params"
table = pd.Series(cells).unstack()[VS]
table.columns = [f"V = {v}" for v in VS]
display(table)
try:
    build_compressor("avgpool", in_dim=tower.hidden_size, grid_side=tower.grid_side, num_levels=2, visual_tokens=9)
except UserError as err:
    print("V = 9 ->", err)

# %% [markdown]
# Things to notice: `identity` exists only at V = P = 64; `avgpool` has no parameters at all;
# `pixelshuffle`'s parameters grow as V shrinks (one token stacks more patches); `perceiver`'s grow with V
# (one learned query per token); `tokenpacker`'s parameters are the same at every V (its attention is
# shared by all regions), and `quecc`'s change only through its depthwise convolution, whose kernel is s x s.
# The two baselines have no parameters: `random` keeps V patches drawn at random, and `downsample` shrinks the
# image itself so the tower yields V patches (its features above come from a smaller image).
#
# ## 3. Where the attention-based compressors look
#
# `forward(..., return_attention=True)` returns `(tokens, attention [B, V, P])`: for each output token, its
# weights over the 64 patches (averaged over heads). Below, V = 4, one panel per token, drawn over the image.
# **These weights are untrained**, so what you see is the *structure* each design imposes: the perceiver's
# queries may look anywhere (near-uniform at initialisation), while tokenpacker's and quecc's tokens can only
# look inside their own 4 × 4-patch quarter (point-to-region attention).

# %%
import numpy as np

def overlay(ax, image, weights, title):
    side = int(len(weights) ** 0.5)
    ax.imshow(image)
    heat = np.kron(weights.reshape(side, side), np.ones((image.size[0] // side,) * 2))
    ax.imshow(heat, cmap="magma", alpha=0.6, vmin=0)
    ax.set_title(title, fontsize=8)
    ax.set_xticks([]), ax.set_yticks([])

V_SHOW = 4
fig, axes = plt.subplots(3, V_SHOW, figsize=(2.2 * V_SHOW, 6.8))
for r, name in enumerate(["perceiver", "tokenpacker", "quecc"]):
    torch.manual_seed(0)
    comp = build_compressor(name, in_dim=tower.hidden_size, grid_side=tower.grid_side,
                            num_levels=tower.num_levels, visual_tokens=V_SHOW, query_dim=LLM["hidden_size"])
    with torch.no_grad():
        _, attn = comp(features, query, return_attention=True)
    for k in range(V_SHOW):
        overlay(axes[r, k], row["image"], attn[0, k].numpy(), f"{name}: token {k}")
plt.suptitle(f"untrained attention, V = {V_SHOW}: {row['question']}", fontsize=9)
plt.tight_layout()
plt.show()

# %% [markdown]
# ## 4. QueCC: the question moves the queries
#
# QueCC runs the question through the LLM (no gradient), takes the last layer's state at the last token,
# projects it and **adds it to every patch feature** before the strided depthwise convolution that makes one
# query per region. So the same image asked two different questions gets two different sets of queries, and
# each query weighs its region's patches differently.
#
# The query only *weights* the region's values: a token is the attention-weighted sum of its region's
# (projected) patch features, with no residual that would add the query itself to the output. Hence at
# s = 1 (one output token per patch, V = 64 here) a region holds a single patch, its weight is 1 whatever the
# query, and QueCC's output does not depend on the question at all - as in the paper's reference
# implementation. The question can only matter when tokens pool several patches (V < 64).
#
# To see this with a real question embedding we build a whole (tiny) VLM with `quecc` at V = 4 and train it
# briefly on the synthetic benchmark: `QUECC_STEPS` steps (30 in smoke mode: **far too few to learn
# anything** - the maps below then show the mechanism, not a learned skill; full mode trains 1,500).

# %%
import lightning as L
from lit_vlm.data.datamodule import VLMDataModule
from lit_vlm.module import LitVLM

L.seed_everything(0, verbose=False)
module = LitVLM(vision={**VISION, "feature_layers": LEVELS, "frozen": False}, llm=LLM, compressor="quecc",
                visual_tokens=4, optimizer={"lr": 2e-3})
data = VLMDataModule(data_dir=str(WORK / "data"), num_train=NUM_TRAIN, num_val=16, num_test=64,
                     batch_size=32, eval_batch_size=64, task_options=TASK_OPTIONS, processor=module.processor)
trainer = L.Trainer(accelerator=ACCELERATOR, max_steps=QUECC_STEPS, logger=False, enable_checkpointing=False,
                    enable_model_summary=False, enable_progress_bar=not SMOKE, limit_val_batches=0,
                    default_root_dir=str(WORK / "quecc02"))
trainer.fit(module, data)
print(f"trained {trainer.global_step} steps, last train loss {float(trainer.callback_metrics['train/loss']):.3f}")

# %%
vlm = module.vlm.eval().cpu()
# a test scene and its own question, then a second question about the same image
scene = next(r for r in (draw_example("test", i, image_size=VISION["image_size"], **TASK_OPTIONS) for i in range(50))
             if r["family"] == "reasoning" and r["task"] != "count")
questions = [scene["question"], "how many shapes are there?"]
batch = module.processor.collate([dict(scene, question=q) for q in questions])  # one image, two questions
with torch.no_grad():
    feats = vlm.encode_images(batch["pixel_values"])
    _, attn = vlm.visual_embeds(feats, batch["question_ids"], batch["question_mask"], return_attention=True)

fig, axes = plt.subplots(3, 4, figsize=(8.8, 6.8))
for k in range(4):
    overlay(axes[0, k], scene["image"], attn[0, k].numpy(), f"Q1, token {k}")
    overlay(axes[1, k], scene["image"], attn[1, k].numpy(), f"Q2, token {k}")
    diff = (attn[0, k] - attn[1, k]).abs().numpy()
    overlay(axes[2, k], scene["image"], diff, f"|Q1 - Q2|, token {k}")
plt.suptitle(f"Q1: {questions[0]}   Q2: {questions[1]}   ({trainer.global_step} training steps)", fontsize=9)
plt.tight_layout()
plt.show()
tv = 0.5 * (attn[0] - attn[1]).abs().sum(-1)  # total variation between the two maps, per token (0..1)
print("attention moved between the questions by (total variation per token; 0 = not at all, 1 = disjoint):",
      [round(float(x), 4) for x in tv])
with torch.no_grad():
    tokens = vlm.visual_embeds(feats, batch["question_ids"], batch["question_mask"])
change = (tokens[0] - tokens[1]).norm(dim=-1) / tokens[0].norm(dim=-1)
print("the visual tokens changed by (relative L2 per token):", [round(float(x), 3) for x in change])

# %% [markdown]
# Read the numbers before the pictures (each panel has its own colour scale, so even a tiny difference
# looks bright in the bottom row). Freshly initialised attention logits are close to zero, so the softmax
# inside each region is close to uniform *whatever the query*: the question changes QueCC's queries, but
# each token is a weighted average of its region's values, so it moves only as much as the weights do, and
# after 30 steps both are near zero. Training is what makes the question matter; in full mode (1,500 steps)
# compare again.

# %% [markdown]
# ### What to take away
#
# * Every compressor speaks the same contract, `[B, n_levels, P, D] -> [B, V, D']`, so V is one
#   argument (`model.visual_tokens`) and the compressor one name (`model.compressor`).
# * Region attention (tokenpacker, quecc) ties token k to a fixed part of the image; a resampler
#   (perceiver) lets each token choose. At V = 1 both reduce to "one weighted average of the image" -
#   which weights, is exactly where QueCC's question conditioning can help (notebook 06).
# * QueCC's attention changes with the question (its embedding is added to the features that form the
#   queries), and the question acts only through which patches of a region are weighted: at one patch per
#   token it has no effect. Whether that change is *useful* is learned - and notebook 06, like the paper,
#   finds it matters most at 1-4 tokens.
# * Assignment 1 (`tutorials/assignments/`) asks you to implement `avgpool` and a learned-query resampler to
#   this interface.
