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
# # 03 · Train a mini grid: LLM size × visual tokens
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/lit-vlm/lit_vlm/blob/main/tutorials/03_train_a_mini_grid.ipynb)
#
# The paper trains one VLM per (LLM size N, visual tokens V) cell - Qwen-1.5 at 0.5B-7B times
# V ∈ {1, 4, 16, 36, 64, 144, 576} - and fits a scaling law to the scores. `lit_vlm.grid` does the same at
# toy scale:
#
# 1. **stage 0**: one vision tower is trained once and then shared, frozen, by every cell (the paper shares
#    one frozen CLIP tower; offline we have no pretrained tower, so we train a tiny one);
# 2. a **feature cache**: the frozen tower's features of every image are computed once, memory-mapped;
# 3. **cells**: each (LLM size, V) trains its own compressor + projector + LLM and is evaluated per task
#    family; its rows go into one results table (`results.csv`), with the measured inference cost.

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
# Colab, or `LIT_VLM_SMOKE=0`) uses sizes meant for one Colab GPU. Only smoke mode trains a grid by default
# (`TRAIN = None`); with `TRAIN = True`, full mode trains 3 LLM sizes × 4 V for 2,000 steps each: expect roughly
# 30-60 minutes on one Colab GPU (an estimate, not a measurement). Without training, the notebook shows the
# committed grid.

# %% tags=["parameters"]
MODE = ""  # committed, smoke or full; empty: $LIT_VLM_MODE, else $LIT_VLM_SMOKE, else full on Colab
WORK_DIR = ""  # data, towers and grids go here (empty: $LIT_VLM_WORK_DIR, else a default folder for the mode)
TRAIN = None  # train a grid here (None: in smoke mode only; committed and full mode show the committed grid)
LLM_SIZES = None  # {name: {hidden_size, num_layers, num_heads}} (None: 2 tiny sizes, or 3 for one GPU)
VISUAL_TOKENS = None  # the V of the grid (None: [1, 4, 16], or [1, 4, 16, 64] in full mode)
STEPS = None  # training steps per cell (None: 60, or 2,000 in full mode)
TOWER_STEPS = None  # stage-0 steps of the shared tower (None: 20, or 1,500 in full mode)
NUM_TRAIN = None  # training examples (None: 256, or 8,000 in full mode)
NUM_TEST = None  # test examples per cell (None: 64, or 400 in full mode)

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

TASK_OPTIONS = tutorial.task_options(tutorial.GRID)  # the committed grid's benchmark (cpu_law)

from lit_vlm.grid import COLUMNS, GridConfig, TowerConfig, cells_of, load_or_train_tower, run_grid
from lit_vlm.model.vision import VisionConfig
from lit_vlm.model.vlm import LLMConfig

# smoke: 2 LLM sizes x 3 V, 60 steps per cell: seconds, and accuracies at chance or below
TRAIN = kit.pick(TRAIN, smoke=kit.mode == "smoke", full=False)
LLM_SIZES = kit.pick(LLM_SIZES, smoke={"xs": dict(hidden_size=32, num_layers=1, num_heads=2),
                                       "s": dict(hidden_size=64, num_layers=2, num_heads=4)},
                     full={"s": dict(hidden_size=64, num_layers=2, num_heads=4),
                           "m": dict(hidden_size=128, num_layers=2, num_heads=4),
                           "l": dict(hidden_size=256, num_layers=4, num_heads=8)})
SIZES = {name: LLMConfig(**size) for name, size in LLM_SIZES.items()}
VS = kit.pick(VISUAL_TOKENS, smoke=[1, 4, 16], full=[1, 4, 16, 64])
STEPS = kit.pick(STEPS, smoke=60, full=2000)
TOWER_STEPS = kit.pick(TOWER_STEPS, smoke=20, full=1500)
NUM_TRAIN = kit.pick(NUM_TRAIN, smoke=256, full=8000)
NUM_TEST = kit.pick(NUM_TEST, smoke=64, full=400)
GRID_DIR = WORK / ("grid03" if SMOKE else "grid03_full")

# %% [markdown]
# ## 1. The grid, built in Python
#
# The same `GridConfig` a YAML file gives `python -m lit_vlm grid --config ...`, written as Python. Each
# size is an `LLMConfig`; `model`, `data` and `trainer` are the arguments of `LitVLM`, `VLMDataModule` and
# `lightning.Trainer` shared by every cell.

# %%
cfg = GridConfig(
    out_dir=str(GRID_DIR),
    llms=SIZES,
    visual_tokens=VS,
    compressors=["avgpool"],
    vision=VisionConfig(**VISION),
    model={"optimizer": {"lr": 1e-3}, "max_new_tokens": 2},
    data={"data_dir": str(WORK / "data"), "task_options": TASK_OPTIONS, "num_train": NUM_TRAIN, "num_val": 16,
          "num_test": NUM_TEST,
          "batch_size": 16 if SMOKE else 32, "eval_batch_size": 64 if SMOKE else 100},
    trainer={"accelerator": ACCELERATOR, "max_steps": STEPS, "enable_progress_bar": not SMOKE,
             "enable_model_summary": False},
    tower=TowerConfig(checkpoint=str(GRID_DIR / "tower.safetensors"), objective="dense", max_steps=TOWER_STEPS),
)
print(len(cells_of(cfg)), "cells:", ", ".join(c.id for c in cells_of(cfg)))

# %% [markdown]
# ## 2. Stage 0: the shared vision tower
#
# `load_or_train_tower` trains the tower once, saves it as safetensors, and on every later call just loads
# it - after checking that the saved tower was trained for the same vision config. With `objective="dense"`
# (the default) it learns to label every patch: which object has its centre there, which character sits
# there, whether that character is the highlighted one, and the patch's row and column. The generator knows
# all of these, so this takes about a minute, where training the tower through a from-scratch LLM on the
# answers (`objective="vqa"`) leaves the whole model at the answer prior for thousands of steps. Then the
# tower's features are standardised per channel (statistics of the training images, saved with it).

# %%
import time

if TRAIN:
    start = time.perf_counter()
    tower_state = load_or_train_tower(cfg)
    print(f"tower: {sum(v.numel() for v in tower_state.values()):,} parameters, "
          f"{time.perf_counter() - start:.1f}s -> {cfg.tower.checkpoint}")
else:
    print("TRAIN is off: no tower trained here (the committed grid's tower is results/cpu_law/tower.safetensors)")

# %% [markdown]
# ## 3. Run the grid
#
# `run_grid` skips cells already in the table (re-running resumes; `force=True` redoes them), writes each
# finished cell atomically, and shows a progress bar over cells. In smoke mode this takes seconds.
#
# **At full scale on one GPU** (Colab), the grid config to run is
#
#     python -m lit_vlm grid --config configs/grid/gpu_mini.yaml
#
# (a terminal command, not run here; see `configs/grid/` for the GPU configs the repository ships).

# %%
if TRAIN:
    results_path = run_grid(cfg)
    print("this grid's table (GRID_RESULTS in notebooks 04 and 05):", results_path)
else:
    results_path = tutorial.grid_results()
    print("TRAIN is off: the committed grid,", tutorial.shown(results_path))
table = pd.read_csv(results_path)
show = ["cell", "family", "accuracy", "llm_params", "visual_tokens", "text_tokens", "inference_flops",
        "flops_ratio", "train_time_s"]
display(table[[c for c in show if c in table.columns]])

# %% [markdown]
# Each row is one (cell, task family): `llm_params` is N (embeddings excluded), `inference_flops` the
# paper's 2 N (Q + V) with the measured mean Q, and `flops_ratio` what torch's FLOP counter measured over
# that formula for one real batch (notebook 01 explains the difference).
#
# ## 4. Accuracy against V, per LLM size
#
# The committed CPU grid (`results/cpu_law/results.csv`: 5 LLM widths from 8k to 295k parameters x V = 1, 4,
# 16, 64 x 3 seeds, 2,750 steps per cell, 45 minutes from nothing on 2 CPU cores), and the grid trained here
# when there is one. Its reasoning questions are knowledge: "what is KX?" asks a symbol fixed for each of 676 names, asked
# with Zipf frequencies, so a larger LLM stores more of the rarer names. For 37.5 % of the names the image also
# shows the answer, as the red character of a grid of print 32, 16 or 8 px high, which V = 4, 16 or 64 tokens
# can read: more visual tokens take over part of what the LLM would have to store. Its OCR questions ask for
# the red character in print of graded sizes, so each V reads some sizes and not others. **A smoke grid is trained for 60 steps: its accuracies sit at
# or below the answer prior (chance) and say nothing about scaling** - it only shows the pipeline.

# %%
from lit_vlm.data.synthetic import build_synthetic_benchmark, chance_accuracy

grids = {"the committed CPU grid": tutorial.grid_results()}
if TRAIN:
    grids[f"this notebook's grid ({STEPS} steps)"] = results_path
# what a model that reads the question but not the image can reach: the majority answer per question type on
# the first 2,000 questions of the committed grid's test split (rows are a pure function of split, index, seed)
chance = chance_accuracy(build_synthetic_benchmark(WORK / "data", num_train=0, num_val=0, num_test=2000,
                                                   **TASK_OPTIONS)["test"])
for title, source in grids.items():
    res = pd.read_csv(source)
    families = [f for f in ("reasoning", "ocr") if f in set(res["family"])]
    fig, axes = plt.subplots(1, len(families), figsize=(5.2 * len(families), 3.8), squeeze=False)
    for ax, family in zip(axes[0], families):
        part = res[res.family == family]
        for llm, rows in sorted(part.groupby("llm"), key=lambda kv: kv[1]["llm_params"].iloc[0]):
            rows = rows.groupby("visual_tokens", as_index=False)["accuracy"].mean()
            n = part[part.llm == llm]["llm_params"].iloc[0]
            ax.plot(rows["visual_tokens"], rows["accuracy"], "o-", label=f"{llm} (N={n / 1e6:.2f}M)")
        if family in chance:
            ax.axhline(chance[family], color="gray", ls=":", label="blind baseline (per-task majority)")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("visual tokens V"), ax.set_ylabel("exact-match accuracy"), ax.set_title(f"{family}: {title}")
        ax.legend(fontsize=8)
    plt.tight_layout()
    plt.show()

# %% [markdown]
# ### What to take away
#
# * One table holds everything the scaling law needs: N, V, Q, the score per family, and the measured cost.
#   Notebook 04 fits the paper's law to such a table (and to the paper's own numbers); notebook 05 compares
#   the two families.
# * The grid is resumable: run the cell again and nothing retrains. Delete a cell's rows (or pass
#   `force=True`) to redo it.
# * The committed grid's benchmark is built so that the two families want different things: its reasoning
#   leans on what the LLM stores (a larger LLM scores higher at every V), its OCR on what the tokens keep
#   (every LLM reads more with more V). Whether a grid shows it depends on training long enough - the
#   committed CPU grid, or full mode, not smoke mode.
