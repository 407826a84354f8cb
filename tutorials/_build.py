"""Build the tutorial notebooks (tutorials/0*.ipynb) from the cell sources below, stored without outputs.

    python tutorials/_build.py            # (re)write every notebook
    python tutorials/_build.py --check    # exit 1 if a notebook differs from what this file builds

Edit the cells HERE, not in Jupyter: each notebook is a list of cells, each cell a Python string, so a change to
a tutorial is a readable diff of this file. tests/test_notebooks.py checks that the .ipynb files are in sync.
"""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import nbformat

HERE = Path(__file__).resolve().parent
COLAB = "https://colab.research.google.com/github/lit-vlm/lit_vlm/blob/main/tutorials/{name}.ipynb"


def md(text: str) -> nbformat.NotebookNode:
    return nbformat.v4.new_markdown_cell(textwrap.dedent(text).strip("\n"))


def code(text: str, tags: tuple[str, ...] = ()) -> nbformat.NotebookNode:
    cell = nbformat.v4.new_code_cell(textwrap.dedent(text).strip("\n"))
    if tags:
        cell.metadata["tags"] = list(tags)
    return cell


def header(name: str, title: str, intro: str, extra_params: str = "", full_time: str = "") -> list:
    """Title + Colab badge, the install cell, the ONE parameters cell (papermill tag) and the common setup."""
    badge = f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]({COLAB.format(name=name)})"
    return [
        md(f"# {title}\n\n{badge}\n\n" + textwrap.dedent(intro).strip("\n")),
        code('''
            # On Colab this installs the kit from GitHub; where lit_vlm is already importable it does nothing.
            try:
                import lit_vlm
            except ImportError:
                get_ipython().run_line_magic("pip", 'install -q "git+https://github.com/lit-vlm/lit_vlm"')
                import lit_vlm
            print("lit_vlm", lit_vlm.__version__)
        '''),
        md(f"""
            **Two modes.** `SMOKE = True` (the default outside Colab, or `LIT_VLM_SMOKE=1`) uses tiny sizes and a
            handful of training steps so the notebook runs top to bottom in about a minute on a laptop CPU: it shows
            the mechanics, and its trained numbers are close to chance. `SMOKE = False` (the default on Colab, or
            `LIT_VLM_SMOKE=0`) uses sizes meant for one Colab GPU. {full_time}
        """),
        code(f'''
            import os, sys

            IN_COLAB = "google.colab" in sys.modules
            SMOKE = os.environ.get("LIT_VLM_SMOKE", "0" if IN_COLAB else "1").lower() not in ("0", "false", "no", "")
            WORK_DIR = os.environ.get("LIT_VLM_WORK_DIR", "")  # data, towers and grids go here ("" = a default folder)
            {textwrap.dedent(extra_params).strip()}
        ''', tags=("parameters",)),
        code('''
            # Sizes and paths derived from the parameters (a separate cell, so papermill's injected values apply).
            import logging, tempfile, warnings
            from pathlib import Path

            import matplotlib.pyplot as plt
            import pandas as pd
            import torch
            from IPython.display import display

            %matplotlib inline
            import datasets
            import lightning.pytorch  # imported before its loggers are quietened (importing resets their level)

            datasets.disable_progress_bars()
            for category in (UserWarning, DeprecationWarning, FutureWarning):  # Lightning's advice for big runs etc.
                warnings.filterwarnings("ignore", category=category)
            for name in ("lightning.pytorch", "lightning.fabric"):
                logging.getLogger(name).setLevel(logging.ERROR)  # and its banner lines
            if SMOKE:
                torch.set_num_threads(1)  # tiny tensors: one thread is as fast, and kind to a shared machine
            WORK = Path(WORK_DIR) if WORK_DIR else (
                Path(tempfile.gettempdir()) / "lit_vlm_tutorials" if SMOKE else Path("runs") / "tutorials")
            WORK.mkdir(parents=True, exist_ok=True)
            ACCELERATOR = "cpu" if SMOKE else "auto"
            # committed grid results, when this is a clone of the repository (absent after a pip install)
            REPO = Path(lit_vlm.__file__).resolve().parents[1]
            COMMITTED = next((p for p in (REPO / "results/cpu_mini/results.csv",
                                          Path("results/cpu_mini/results.csv")) if p.is_file()), None)
            print(f"SMOKE={SMOKE}  work folder: {WORK}  committed results: {COMMITTED}")
        '''),
    ]


# A tiny offline VLM shared by the notebooks: an 8 x 8 patch grid (64 px images, patch 8), so V in {1, 4, 16, 64}.
TINY = '''
    VISION = dict(image_size=64, patch_size=8, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64)
    LLM = dict(model_type="llama", hidden_size=64, num_layers=2, num_heads=4)
    if not SMOKE:  # the quickstart's sizes
        VISION = dict(image_size=64, patch_size=8, hidden_size=64, num_layers=2, num_heads=4, intermediate_size=128)
        LLM = dict(model_type="llama", hidden_size=128, num_layers=2, num_heads=4)
'''

# The benchmark options every training notebook uses: those of the committed CPU grid (configs/grid/cpu_mini.yaml,
# read from the repository when it is there), easier than the generator's defaults so that small models start to
# learn within minutes. The inline copy is for Colab, where only the package is installed.
TASKS = '''
    import yaml

    GRID_YAML = REPO / "configs" / "grid" / "cpu_mini.yaml"
    committed_options = yaml.safe_load(GRID_YAML.read_text())["data"].get("task_options") if GRID_YAML.is_file() else None
    TASK_OPTIONS = committed_options or {
        "colors": ["red", "green", "blue"], "shapes": ["circle", "square"], "max_shapes": 3,
        "ocr_alphabet": "ACEHKNPTX4", "ocr_length": [8, 8], "ocr_lines": 2, "font_sizes": [9, 10],
        "ocr_layout": "grid", "ocr_tasks": {"highlight": 1.0},
        "reasoning_tasks": {"count": 0.2, "count_color": 0.2, "color": 0.15, "shape": 0.1, "exist": 0.15,
                            "compare": 0.1, "spatial": 0.1}}
'''

NOTEBOOKS: dict[str, list] = {}

# ------------------------------------------------------------------------------------------------------------
NOTEBOOKS["01_anatomy_of_a_small_llava"] = header(
    "01_anatomy_of_a_small_llava",
    "01 · Anatomy of a small LLaVA",
    """
    The paper (Li, Goyal, Semedo, Kolter, ICLR 2025) prices a vision-language model's answer at
    **2 N (Q + V)** FLOPs: N LLM parameters, Q text tokens, V visual tokens. This notebook takes a tiny
    LLaVA-style model from `lit_vlm` apart to see where each of those three numbers lives:

    1. the model: vision tower → compressor → projector → causal LM;
    2. an image from the synthetic benchmark and its 8 × 8 patch grid;
    3. visual tokens, and how they are spliced into the LLM's input in place of one `<image>` token;
    4. N, Q, V and the inference FLOPs, checked against what torch's FLOP counter measures.

    Nothing here trains; everything is built offline with random weights.
    """,
    full_time="Nothing trains here, so full mode only uses the quickstart's (larger) sizes: about a minute "
              "anywhere (an estimate).",
) + [
    code(TINY + '''
    V = 16  # visual tokens: the paper's knob
    VS = [1, 4, 16, 64]  # every V an 8 x 8 grid allows for the grid compressors
    '''),
    md("""
    ## 1. The model

    `LitVLM` is the kit's LightningModule. Its `vlm` attribute is the plain `torch.nn.Module`:
    `vision_tower` (a Hugging Face SigLIP-style encoder, random weights), `compressor` (here `avgpool`: the
    8 × 8 patch grid averaged down to V tokens), `projector` (a 2-layer MLP into the LLM's width) and `llm` (a
    Hugging Face Llama). The tokenizer is built offline for the synthetic benchmark's closed vocabulary.
    """),
    code('''
    from lit_vlm.module import LitVLM

    torch.manual_seed(0)
    module = LitVLM(vision=VISION, llm=LLM, compressor="avgpool", visual_tokens=V)
    vlm = module.vlm
    parts = {name: sum(p.numel() for p in params) for name, params in vlm.param_groups().items()}
    display(pd.Series(parts, name="parameters").to_frame())
    print(vlm.compressor, "->", vlm.projector)
    '''),
    md("""
    ## 2. An image and its patch grid

    The synthetic benchmark has two task families: **reasoning** (coloured shapes: count, colour, shape,
    existence, comparison, left/right) and **ocr** (read a short rendered string, or one of its characters).
    `draw_example` draws any row as a pure function of (split, index, seed), without touching the disk.
    The vision tower cuts each 64 × 64 image into 8 × 8-pixel patches: an 8 × 8 grid, P = 64 patch tokens.
    """),
    code('''
    from lit_vlm.data.synthetic import draw_example

    rows = [draw_example("test", i, image_size=VISION["image_size"]) for i in range(4)]
    patch = VISION["patch_size"]
    fig, axes = plt.subplots(1, 2, figsize=(8, 4))
    for ax, row in zip(axes, rows[:2]):
        ax.imshow(row["image"])
        for k in range(0, row["image"].size[0] + 1, patch):  # the patch grid
            ax.axhline(k - 0.5, color="k", lw=0.5, alpha=0.5)
            ax.axvline(k - 0.5, color="k", lw=0.5, alpha=0.5)
        ax.set_title(f"{row['family']}: {row['question']}\\nanswer: {row['answer']}", fontsize=9)
        ax.set_xticks([]), ax.set_yticks([])
    plt.tight_layout()
    plt.show()
    side = VISION["image_size"] // patch
    print(f"{side} x {side} = {side * side} patches of {patch} x {patch} pixels")
    '''),
    md("""
    ## 3. From pixels to visual tokens

    The processor turns rows into a batch (the contract is in ARCHITECTURE.md). The tower maps pixels to
    patch features `[B, n_levels, P, D]`; the compressor maps those to V tokens; the projector maps each token
    to the LLM's width H. With `avgpool` and V = 16, each visual token is the average of a 2 × 2 block of
    patches (16 × 16 pixels), drawn in red below.
    """),
    code('''
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
    '''),
    md("""
    ## 4. Splicing: L text tokens become L + V − 1 positions

    Every prompt holds exactly one `<image>` placeholder. The VLM swaps it for the V visual embeddings, so the
    LLM reads L + V − 1 positions. The loss only sees the answer (labels are −100 on the prompt and on the
    visual tokens).
    """),
    code('''
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
    '''),
    md("""
    ## 5. N, Q, V and the inference FLOPs

    The paper's N excludes the embedding matrices (a lookup is not a matrix product; with tied embeddings the
    lm_head is the same matrix). Q is the number of prompt tokens besides the placeholder. With our tiny
    tokenizer Q ≈ 11; the paper uses Q = 0 (a cached prompt) and Q = 50.
    """),
    code('''
    from lit_vlm.flops import inference_flops

    N = vlm.num_llm_params(with_embeddings=False)
    Q = float((batch["prompt_mask"].sum(1) - 1).float().mean())
    print(f"N = {N:,} (with embeddings: {vlm.num_llm_params(with_embeddings=True):,}),  Q = {Q:.2f}")
    display(pd.DataFrame({"V": VS, "2 N (Q + V)": [inference_flops(N, Q, v) for v in VS],
                          "2 N (0 + V)": [inference_flops(N, 0, v) for v in VS]}).set_index("V"))
    '''),
    md("""
    ## 6. Checking the formula against torch's FLOP counter

    `lit_vlm.flops.measure_prefill` runs the real LLM prefill on a real spliced batch under
    `torch.utils.flop_counter.FlopCounterMode`. We build the same model at every V (`identity` for V = 64,
    `avgpool` below) with two attention kernels: `eager` (plain matrix products) and `sdpa` (PyTorch's fused
    attention). One example per batch, so no padding positions are counted.
    """),
    code('''
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
    '''),
    code('''
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
    '''),
    md("""
    ### What to take away

    * 2 N (Q + V) counts every weight matrix once per position. The counter agrees with it to within a few
      percent at small V; what it adds is **attention's two T × T products** (4 L d T² FLOPs, T = Q + V)
      and one lm_head row. Both are negligible for the paper's billion-parameter LLMs at small V, and grow
      with V: the paper's cost model, if anything, *undercharges* many visual tokens.
    * V enters the cost exactly like Q: one visual token costs as much as one text token. Going from 576
      visual tokens to 1 cuts the prefill of a cached prompt (Q = 0) by 576 ×; that budget can pay for a far
      bigger LLM. Notebook 04 fits how much accuracy each choice buys.
    * Assignment 2 (`tutorials/assignments/`) asks you to write this cost model and the attention correction
      yourself and checks them against the counter.
    """),
]

# ------------------------------------------------------------------------------------------------------------
NOTEBOOKS["02_visual_token_compressors"] = header(
    "02_visual_token_compressors",
    "02 · Visual-token compressors",
    """
    The paper's knob is V, the number of visual tokens the LLM reads. A **compressor** turns the vision
    tower's P patch features into V tokens. `lit_vlm` has six, chosen by name:

    | name | how | V allowed on an 8 × 8 grid |
    | --- | --- | --- |
    | `identity` | all patches, no compression | 64 only |
    | `avgpool` | average each s × s region (no parameters) | 1, 4, 16, 64 |
    | `pixelshuffle` | stack each region along channels, then a linear map | 1, 4, 16, 64 |
    | `perceiver` | V learned queries cross-attend to all patches | any V ≥ 1 |
    | `tokenpacker` | bilinear "point" queries attend only to their own region, over multi-level features | 1, 4, 16, 64 |
    | `quecc` | the paper's: like tokenpacker, but the queries are conditioned on the **question** | 1, 4, 16, 64 |

    This notebook builds them all side by side, draws where the attention-based ones look, and shows how
    QueCC's attention moves when the question changes.
    """,
    full_time="Full mode trains the QueCC model of section 4 for 1,500 steps instead of 30: a few minutes "
              "on one Colab GPU (an estimate).",
) + [
    code(TINY + TASKS + '''
    VS = [1, 4, 16, 64]
    LEVELS = [0, -1]  # two feature levels (patch embeddings, last layer): tokenpacker and quecc read both
    QUECC_STEPS = 30 if SMOKE else 1500
    '''),
    md("""
    ## 1. Features to compress

    A vision tower with random weights (the offline kit has no pretrained one) turns one synthetic image into
    features `[B, n_levels, P, D]`. QueCC also needs a question embedding `[B, Dq]`; for the side-by-side table a
    random vector stands in for it (section 4 uses a real one).
    """),
    code('''
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
    '''),
    md("""
    ## 2. Every compressor at V = 1, 4, 16, 64

    `build_compressor` builds any of them by name and refuses a V that does not fit the grid, naming the
    valid values. Each output token has the tower's width D here (`out_dim` defaults to D); the VLM's
    projector then maps it to the LLM's width.
    """),
    code('''
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
            out = comp(features, query)
            params = sum(p.numel() for p in comp.parameters())
            cells[name, v] = f"{list(out.shape)}  {params:,} params"
    table = pd.Series(cells).unstack()[VS]
    table.columns = [f"V = {v}" for v in VS]
    display(table)
    try:
        build_compressor("avgpool", in_dim=tower.hidden_size, grid_side=tower.grid_side, num_levels=2, visual_tokens=9)
    except UserError as err:
        print("V = 9 ->", err)
    '''),
    md("""
    Things to notice: `identity` exists only at V = P = 64; `avgpool` has no parameters at all;
    `pixelshuffle`'s parameters grow as V shrinks (one token stacks more patches); `perceiver`'s grow with V
    (one learned query per token); `tokenpacker` and `quecc` cost the same at every V, because their
    attention is shared by all regions.

    ## 3. Where the attention-based compressors look

    `forward(..., return_attention=True)` returns `(tokens, attention [B, V, P])`: for each output token, its
    weights over the 64 patches (averaged over heads). Below, V = 4, one panel per token, drawn over the image.
    **These weights are untrained**, so what you see is the *structure* each design imposes: the perceiver's
    queries may look anywhere (near-uniform at initialisation), while tokenpacker's and quecc's tokens can only
    look inside their own 4 × 4-patch quarter (point-to-region attention).
    """),
    code('''
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
    '''),
    md(f"""
    ## 4. QueCC: the question moves the queries

    QueCC runs the question through the LLM (no gradient), takes the last layer's state at the last token,
    projects it and **adds it to every patch feature** before the strided depthwise convolution that makes one
    query per region. So the same image asked two different questions gets two different sets of queries, and
    each query weighs its region's patches differently.

    To see this with a real question embedding we build a whole (tiny) VLM with `quecc` at V = 4 and train it
    briefly on the synthetic benchmark: `QUECC_STEPS` steps (30 in smoke mode: **far too few to learn
    anything** - the maps below then show the mechanism, not a learned skill; full mode trains 1,500).
    """),
    code('''
    import lightning as L
    from lit_vlm.data.datamodule import VLMDataModule
    from lit_vlm.module import LitVLM

    L.seed_everything(0, verbose=False)
    module = LitVLM(vision={**VISION, "feature_layers": LEVELS, "frozen": False}, llm=LLM, compressor="quecc",
                    visual_tokens=4, optimizer={"lr": 2e-3})
    data = VLMDataModule(data_dir=str(WORK / "data"), num_train=512 if SMOKE else 8000, num_val=16, num_test=64,
                         batch_size=32, eval_batch_size=64, task_options=TASK_OPTIONS, processor=module.processor)
    trainer = L.Trainer(accelerator=ACCELERATOR, max_steps=QUECC_STEPS, logger=False, enable_checkpointing=False,
                        enable_model_summary=False, enable_progress_bar=not SMOKE, limit_val_batches=0,
                        default_root_dir=str(WORK / "quecc02"))
    trainer.fit(module, data)
    print(f"trained {trainer.global_step} steps, last train loss {float(trainer.callback_metrics['train/loss']):.3f}")
    '''),
    code('''
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
    '''),
    md("""
    Read the numbers before the pictures (each panel has its own colour scale, so even a tiny difference
    looks bright in the bottom row). Freshly initialised attention logits are close to zero, so the softmax
    inside each region is close to uniform *whatever the query*: the question changes QueCC's queries - the
    visual tokens above move by a clearly non-zero amount - but moves its attention weights only a little until
    training sharpens them. That is the honest state of a 30-step model; in full mode (1,500 steps) compare
    again.
    """),
    md("""
    ### What to take away

    * Every compressor speaks the same contract, `[B, n_levels, P, D] -> [B, V, D']`, so V is one
      argument (`model.visual_tokens`) and the compressor one name (`model.compressor`).
    * Region attention (tokenpacker, quecc) ties token k to a fixed part of the image; a resampler
      (perceiver) lets each token choose. At V = 1 both reduce to "one weighted average of the image" -
      which weights, is exactly where QueCC's question conditioning can help (notebook 06).
    * Even untrained, QueCC's attention changes with the question: the question embedding is added to the
      features that form the queries. Whether that change is *useful* is learned - and notebook 06, like the
      paper, finds it matters most at 1-4 tokens.
    * Assignment 1 (`tutorials/assignments/`) asks you to implement `avgpool` and a learned-query resampler to
      this interface.
    """),
]

# ------------------------------------------------------------------------------------------------------------
NOTEBOOKS["03_train_a_mini_grid"] = header(
    "03_train_a_mini_grid",
    "03 · Train a mini grid: LLM size × visual tokens",
    """
    The paper trains one VLM per (LLM size N, visual tokens V) cell - Qwen-1.5 at 0.5B-7B times
    V ∈ {1, 4, 16, 36, 64, 144, 576} - and fits a scaling law to the scores. `lit_vlm.grid` does the same at
    toy scale:

    1. **stage 0**: one vision tower is trained once and then shared, frozen, by every cell (the paper shares
       one frozen CLIP tower; offline we have no pretrained tower, so we train a tiny one);
    2. a **feature cache**: the frozen tower's features of every image are computed once, memory-mapped;
    3. **cells**: each (LLM size, V) trains its own compressor + projector + LLM and is evaluated per task
       family; its rows go into one results table (`results.csv`), with the measured inference cost.
    """,
    extra_params='''
    TRAIN = False  # full mode only: also train the full-size grid (smoke mode always runs its tiny grid)
    ''',
    full_time="With `TRAIN = True`, full mode trains 3 LLM sizes × 4 V for 2,000 steps each; expect roughly "
              "30-60 minutes on one Colab GPU (an estimate, not a measurement). With `TRAIN = False` it only "
              "plots results that already exist.",
) + [
    code(TINY + TASKS + '''
    from lit_vlm.grid import COLUMNS, GridConfig, TowerConfig, cells_of, load_or_train_tower, run_grid
    from lit_vlm.model.vision import VisionConfig
    from lit_vlm.model.vlm import LLMConfig

    if SMOKE:  # 2 LLM sizes x 3 V, 60 steps per cell: seconds, and accuracies at chance or below
        SIZES = {"xs": LLMConfig(hidden_size=32, num_layers=1, num_heads=2),
                 "s": LLMConfig(hidden_size=64, num_layers=2, num_heads=4)}
        VS, STEPS, TOWER_STEPS, NUM_TRAIN = [1, 4, 16], 60, 20, 256
    else:
        SIZES = {"s": LLMConfig(hidden_size=64, num_layers=2, num_heads=4),
                 "m": LLMConfig(hidden_size=128, num_layers=2, num_heads=4),
                 "l": LLMConfig(hidden_size=256, num_layers=4, num_heads=8)}
        VS, STEPS, TOWER_STEPS, NUM_TRAIN = [1, 4, 16, 64], 2000, 1500, 8000
    GRID_DIR = WORK / ("grid03" if SMOKE else "grid03_full")
    '''),
    md("""
    ## 1. The grid, built in Python

    The same `GridConfig` a YAML file gives `python -m lit_vlm grid --config ...`, written as Python. Each
    size is an `LLMConfig`; `model`, `data` and `trainer` are the arguments of `LitVLM`, `VLMDataModule` and
    `lightning.Trainer` shared by every cell.
    """),
    code('''
    cfg = GridConfig(
        out_dir=str(GRID_DIR),
        llms=SIZES,
        visual_tokens=VS,
        compressors=["avgpool"],
        vision=VisionConfig(**VISION),
        model={"optimizer": {"lr": 1e-3}, "max_new_tokens": 2},
        data={"data_dir": str(WORK / "data"), "task_options": TASK_OPTIONS, "num_train": NUM_TRAIN, "num_val": 16,
              "num_test": 64 if SMOKE else 400,
              "batch_size": 16 if SMOKE else 32, "eval_batch_size": 64 if SMOKE else 100},
        trainer={"accelerator": ACCELERATOR, "max_steps": STEPS, "enable_progress_bar": not SMOKE,
                 "enable_model_summary": False},
        tower=TowerConfig(checkpoint=str(GRID_DIR / "tower.safetensors"), objective="dense", max_steps=TOWER_STEPS),
    )
    print(len(cells_of(cfg)), "cells:", ", ".join(c.id for c in cells_of(cfg)))
    '''),
    md("""
    ## 2. Stage 0: the shared vision tower

    `load_or_train_tower` trains the tower once, saves it as safetensors, and on every later call just loads
    it - after checking that the saved tower was trained for the same vision config. With `objective="dense"`
    (the default) it learns to label every patch: which object has its centre there, which character sits
    there, whether that character is the highlighted one, and the patch's row and column. The generator knows
    all of these, so this takes about a minute, where training the tower through a from-scratch LLM on the
    answers (`objective="vqa"`) leaves the whole model at the answer prior for thousands of steps. Then the
    tower's features are standardised per channel (statistics of the training images, saved with it).
    """),
    code('''
    import time

    if SMOKE or TRAIN:
        start = time.perf_counter()
        tower_state = load_or_train_tower(cfg)
        print(f"tower: {sum(v.numel() for v in tower_state.values()):,} parameters, "
              f"{time.perf_counter() - start:.1f}s -> {cfg.tower.checkpoint}")
    else:
        print("TRAIN = False: no tower trained")
    '''),
    md("""
    ## 3. Run the grid

    `run_grid` skips cells already in the table (re-running resumes; `force=True` redoes them), writes each
    finished cell atomically, and shows a progress bar over cells. In smoke mode this takes seconds.

    **At full scale on one GPU** (Colab), the grid config to run is

        python -m lit_vlm grid --config configs/grid/gpu_mini.yaml

    (a terminal command, not run here; see `configs/grid/` for the GPU configs the repository ships).
    """),
    code('''
    if SMOKE or TRAIN:
        results_path = run_grid(cfg)
    else:
        results_path = GRID_DIR / "results.csv"
        print("TRAIN = False: not training the full grid")
    table = pd.read_csv(results_path) if Path(results_path).is_file() else None
    if table is not None:
        show = ["cell", "family", "accuracy", "llm_params", "visual_tokens", "text_tokens", "inference_flops",
                "flops_ratio", "train_time_s"]
        display(table[[c for c in show if c in table.columns]])
    '''),
    md("""
    Each row is one (cell, task family): `llm_params` is N (embeddings excluded), `inference_flops` the
    paper's 2 N (Q + V) with the measured mean Q, and `flops_ratio` what torch's FLOP counter measured over
    that formula for one real batch (notebook 01 explains the difference).

    ## 4. Accuracy against V, per LLM size

    If the repository's committed CPU grid (`results/cpu_mini/results.csv`, trained much longer) is present we
    plot it; otherwise the grid just trained. **A smoke grid is trained for 60 steps: its accuracies sit at
    or below the answer prior (chance) and say nothing about scaling** - it only shows the pipeline.
    """),
    code('''
    from lit_vlm.data.synthetic import build_synthetic_benchmark, chance_accuracy

    source = COMMITTED if COMMITTED is not None else (results_path if table is not None else None)
    if source is None:
        print("no results to plot: set TRAIN = True, or run in smoke mode")
    else:
        res = pd.read_csv(source)
        print("plotting", source)
        # what a model that reads the question but not the image can reach (majorities of a training split
        # drawn with the same task options as the committed grid and ours)
        chance = chance_accuracy(build_synthetic_benchmark(WORK / "data", num_train=NUM_TRAIN, num_val=16,
                                                           num_test=64 if SMOKE else 400, **TASK_OPTIONS)["train"])
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
            ax.set_xlabel("visual tokens V"), ax.set_ylabel("exact-match accuracy"), ax.set_title(family)
            ax.legend(fontsize=8)
        plt.tight_layout()
        plt.show()
    '''),
    md("""
    ### What to take away

    * One table holds everything the scaling law needs: N, V, Q, the score per family, and the measured cost.
      Notebook 04 fits the paper's law to such a table (and to the paper's own numbers); notebook 05 compares
      the two families.
    * The grid is resumable: run the cell again and nothing retrains. Delete a cell's rows (or pass
      `force=True`) to redo it.
    * The synthetic benchmark is built so that the two families want different things from V: reasoning
      questions mostly need global facts that survive pooling, OCR needs where each character is. Whether a
      grid shows it depends on training long enough - the committed CPU grid, or full mode, not smoke mode.
    """),
]

# ------------------------------------------------------------------------------------------------------------
NOTEBOOKS["04_fit_the_scaling_law"] = header(
    "04_fit_the_scaling_law",
    "04 · Fit the scaling law",
    """
    The paper's law, as fitted in the authors' code (N in billions, V visual tokens, error = 1 − average score):

    $$\\text{error}(N, V) = A \\, N^{-\\alpha} \\, V^{-\\beta} + D$$

    Under an inference budget C = 2 N (Q + V), substituting N = C / (2 (Q + V)) and minimising over V gives a
    closed form: **V\\* = β Q / (α − β)** when α > β (clipped to [1, 576]) - independent of the budget. With a
    cached prompt (Q = 0) that is V\\* = 1 token; with Q = 50 it moves up. This notebook refits the paper's own
    grid (shipped with the kit), checks those claims, puts uncertainty on them, validates the law on a held-out
    LLM size, redraws the paper's Figure 1 from our fit - and then fits our own grid from notebook 03.
    """,
    full_time="Full mode only raises the bootstrap to 2,000 resamples: seconds anywhere.",
) + [
    code('''
    from lit_vlm.scaling import (bootstrap, fit_law, frontier, load_results, optimal_v, plot_error_vs_v,
                                 plot_frontier, profile_floor, validate)
    from lit_vlm import UserError

    N_BOOT = 100 if SMOKE else 2000  # bootstrap resamples
    '''),
    md("""
    ## 1. The paper's grid

    28 cells: Qwen-1.5 at 0.5B, 1.8B, 4B and 7B times V ∈ {1, 4, 16, 36, 64, 144, 576}; the reasoning score is
    the average over nine benchmarks (FACTS.md).
    """),
    code('''
    res = load_results("paper", "reasoning")
    grid = pd.DataFrame({"llm": res.llm, "N (B)": res.n, "V": res.v, "score": 1 - res.error})
    display(grid.pivot(index="N (B)", columns="V", values="score").round(4))
    '''),
    md("""
    ## 2. Fit, and compare with what the paper claims

    `fit_law` solves the least-squares problem properly (variable projection: A and D exactly by
    non-negative least squares for each exponent pair, the exponents by a multi-start and damped Newton) -
    the authors used a random search over a fixed box.
    """),
    code('''
    fit = fit_law(res, "multiplicative")
    print({k: round(v, 5) for k, v in fit.params.items()}, f" rmse = {fit.rmse:.4f}", f" converged = {fit.converged}")
    if fit.on_bound:
        print("on a bound:", fit.on_bound)
    claims = pd.DataFrame([
        {"claim (paper)": "error falls faster with N than with V: alpha > beta",
         "ours": f"alpha = {fit.params['alpha']:.3f}, beta = {fit.params['beta']:.4f}",
         "holds": fit.params["alpha"] > fit.params["beta"]},
        {"claim (paper)": "Q = 0: the optimal V is 1 token", "ours": f"V* = {optimal_v(fit, 0):.3g}",
         "holds": optimal_v(fit, 0) == 1},
        {"claim (paper)": "Q = 50: the optimal V rises, still far below 576", "ours": f"V* = {optimal_v(fit, 50):.3g}",
         "holds": 1 < optimal_v(fit, 50) < 576},
    ])
    display(claims)
    '''),
    md(f"""
    ## 3. How sure are we? Bootstrap intervals

    Resample the 28 cells with replacement, refit, and read percentile 95% intervals. The quantities the
    conclusions rest on (α/β, V\\*) are well determined; the floor D is not (FACTS.md: "D is weakly identified
    by this data"). The profile likelihood of D tells the same story without resampling.
    """),
    code('''
    boot = bootstrap(res, fit, N_BOOT, seed=0)
    rows = []
    for name in ["alpha", "beta", "alpha_over_beta", "v_star_q0", "v_star_q50", "A", "D"]:
        point = fit.params.get(name, None)
        if point is None:
            point = {"alpha_over_beta": fit.params["alpha"] / fit.params["beta"], "v_star_q0": optimal_v(fit, 0),
                     "v_star_q50": optimal_v(fit, 50)}[name]
        lo, hi = boot.ci95(name)
        rows.append({"quantity": name, "estimate": point, "95% low": lo, "95% high": hi})
    display(pd.DataFrame(rows).set_index("quantity").round(4))
    prof = profile_floor(res, fit)
    print(f"{N_BOOT} resamples ({boot.scheme} bootstrap). D's profile-likelihood 95% interval: "
          f"[{prof.ci95[0]:.3f}, {prof.ci95[1]:.3f}] (errors in the grid range from {res.error.min():.3f} up)")
    '''),
    md("""
    ## 4. Does the law predict an LLM size it has not seen?

    The paper fits 0.5B-7B and predicts a held-out 14B within about 2% (the 14B cells are not in the shipped
    grid). Here: leave each size out in turn, refit on the rest, predict the held-out cells; the largest size
    is the test that matters (extrapolating up). Two baselines on the same folds: the mean of the other sizes
    at the same V, and a log-linear fit.
    """),
    code('''
    val = validate(res, "multiplicative")
    display(pd.DataFrame([{"held out": f.held_out, "law MAE": f.mae, "law mean rel. error": f.mean_rel,
                           "baseline: same-V mean": f.baselines["group_mean"]["mae"],
                           "baseline: log-linear": f.baselines["loglinear"]["mae"]}
                          for f in val.leave_one_size_out]).set_index("held out").round(4))
    big = val.largest_size
    print(f"largest size ({big.held_out}) predicted within {100 * big.mean_rel:.2f}% (mean relative error)")
    '''),
    md("""
    ## 5. The inference-optimal frontier at Q = 0 and Q = 50

    For each budget C, `frontier` returns the optimal (N, V): continuous, and restricted to the menu of sizes
    and V the grid actually has.
    """),
    code('''
    import numpy as np

    sizes, vs = np.unique(res.n) * 1e9, np.unique(res.v)
    tables = []
    for q in (0.0, 50.0):
        budgets = np.geomspace(2 * sizes.min() * (q + 1), 2 * sizes.max() * (q + vs.max()), 6)
        fr = frontier(fit, budgets, q=q, v_max=float(vs.max()), menu_n=sizes, menu_v=vs)
        tables.append(pd.DataFrame({"Q": q, "budget (GFLOPs)": budgets / 1e9, "N* (B)": fr.n_opt / 1e9, "V*": fr.v_opt,
                                    "menu N (B)": fr.menu_n_opt / 1e9, "menu V": fr.menu_v_opt,
                                    "menu error": fr.menu_error}))
    display(pd.concat(tables, ignore_index=True).round(3))
    '''),
    md("""
    ## 6. The paper's Figure 1, redrawn from our fit

    Error against inference FLOPs, one curve per LLM size (dots: the paper's cells), and the optimal frontier
    (dashed). At Q = 0 the frontier runs along V = 1 of ever larger models; at Q = 50 every token is already
    expensive, so a few more visual tokens cost relatively little.
    """),
    code('''
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, q in zip(axes, (0.0, 50.0)):
        plot_frontier(fit, res, q=q, ax=ax)
    plt.show()
    fig, ax = plt.subplots(figsize=(6, 4.2))
    plot_error_vs_v(fit, res, ax=ax)
    plt.show()
    '''),
    md("""
    ## 7. Our own grid

    The committed CPU grid (`results/cpu_mini/results.csv`) if present, otherwise the grid notebook 03 wrote
    into the work folder. **A smoke-mode grid is far too short-trained to follow any law**: the fit below then
    only exercises the machinery, and the fitter's own checks (convergence, parameters on a bound) say so.
    """),
    code('''
    ours = COMMITTED if COMMITTED is not None else WORK / "grid03" / "results.csv"
    if not Path(ours).is_file():
        print("no grid results found: run notebook 03 first (same LIT_VLM_WORK_DIR)")
    else:
        for family in ("reasoning", "ocr"):
            try:
                r = load_results(ours, family)
                if np.ptp(r.error) == 0:  # e.g. every cell still at accuracy 0 after a smoke run
                    print(f"{family}: every cell has the same score ({1 - r.error[0]:.3f}): there is no trend to fit")
                    continue
                f = fit_law(r, "multiplicative")
            except UserError as err:  # e.g. too few cells, or a single size
                print(f"{family}: cannot fit - {err}")
                continue
            v_max = float(r.v.max())
            print(f"{family} ({len(r)} cells from {ours}): alpha = {f.params['alpha']:.3f}, "
                  f"beta = {f.params['beta']:.3f}, V*(Q=0) = {optimal_v(f, 0, v_max=v_max):.3g}, "
                  f"V*(Q=50) = {optimal_v(f, 50, v_max=v_max):.3g}, "
                  f"converged = {f.converged}, on bound = {f.on_bound or 'none'}")
            fig, ax = plt.subplots(figsize=(6, 4.2))
            plot_frontier(f, r, q=0.0, ax=ax)
            plt.show()
    '''),
    md("""
    ### What to take away

    * On the paper's own numbers the law fits to a few tenths of a point, α ≫ β for reasoning, V\\* = 1 at
      Q = 0, and V\\* rises to about a dozen tokens at Q = 50 - the paper's finding 1, now with intervals.
    * What is identified is the *shape* (α/β, V\\*, the frontier), not every constant. D sits on its lower bound
      0; its bootstrap interval collapses onto that bound, which is not certainty: the profile likelihood
      shows a whole range of floors fitting about as well.
    * Assignment 3 asks you to write the fit and V\\* yourself and grades them against `lit_vlm.scaling`.
    """),
]

# ------------------------------------------------------------------------------------------------------------
NOTEBOOKS["05_ocr_vs_reasoning"] = header(
    "05_ocr_vs_reasoning",
    "05 · OCR versus visual reasoning",
    """
    The paper's second finding: for **OCR / text recognition** the trade-off flips. Reading needs *where*
    each character is, which squeezing the image into a few tokens destroys, so visual tokens matter more
    than LLM size and the compute-optimal V stays large. This notebook fits the law separately to the two
    families of the paper's grid (and of our own grid when there is one), shows where each frontier puts V,
    and then looks at what a 1-token model gets right and wrong in each family of the synthetic benchmark.
    """,
    full_time="Full mode trains the 1-token model for 3,000 steps: about 5-10 minutes on one Colab GPU "
              "(an estimate).",
) + [
    code(TINY + TASKS + '''
    import numpy as np
    from lit_vlm import UserError
    from lit_vlm.scaling import families_in, fit_law, load_results, optimal_v, plot_compare

    STEPS = 60 if SMOKE else 3000  # training steps of the 1-token model (when no checkpoint is found)
    NUM_TRAIN = 512 if SMOKE else 8000
    '''),
    md("""
    ## 1. Two families, two laws (the paper's grid)

    Same fitter, same law, one fit per family. The OCR average of the paper has one missing cell (7B at 576)
    and one ambiguous cell; the loader drops the first and says which reading of the second it used.
    """),
    code('''
    def fit_families(source, families):
        pairs, rows = {}, []
        for family in families:
            try:
                res = load_results(source, family)
                if np.ptp(res.error) == 0:
                    print(f"{family}: every cell has the same score: no trend to fit")
                    continue
                fit = fit_law(res, "multiplicative")
            except UserError as err:
                print(f"{family}: cannot fit - {err}")
                continue
            v_max = float(res.v.max())
            pairs[family] = (fit, res)
            rows.append({"family": family, "cells": len(res), "alpha": fit.params["alpha"], "beta": fit.params["beta"],
                         "alpha / beta": fit.params["alpha"] / fit.params["beta"] if fit.params["beta"] > 0 else np.inf,
                         "V* (Q=0)": optimal_v(fit, 0, v_max=v_max), "V* (Q=50)": optimal_v(fit, 50, v_max=v_max),
                         "rmse": fit.rmse})
            for note in res.notes:
                print(f"{family}: {note}")
        return pairs, pd.DataFrame(rows).set_index("family").round(4) if rows else None

    paper, summary = fit_families("paper", ["reasoning", "ocr"])
    display(summary)
    '''),
    md("""
    For reasoning α/β ≈ 5: a bigger LLM buys far more than more tokens, so V\\* is 1 at Q = 0. For OCR
    α/β < 1: tokens buy more than parameters, and V\\* runs to the largest V of the grid (576) at any Q. Side by
    side, the frontiers (dashed) sit on opposite edges of the V range:
    """),
    code('''
    for q in (0.0, 50.0):
        fig = plot_compare(paper, q=q)
        fig.suptitle(f"the paper's grid, Q = {q:g}")
        display(fig)
    '''),
    md("""
    ## 2. The same on our grid

    The committed CPU grid if present, else notebook 03's grid from the work folder. In smoke mode that grid
    trained 60 steps per cell: expect flat, meaningless fits (or none at all) - the comparison only becomes
    informative on a properly trained grid.
    """),
    code('''
    ours = COMMITTED if COMMITTED is not None else WORK / "grid03" / "results.csv"
    if Path(ours).is_file():
        print("grid:", ours)
        mine, summary = fit_families(ours, families_in(ours))
        if summary is not None:
            display(summary)
        if mine:
            display(plot_compare(mine, q=0.0))
    else:
        print("no grid results found: run notebook 03 first (same LIT_VLM_WORK_DIR)")
    '''),
    md("""
    ## 3. What one visual token keeps, and what it loses

    A VLM with `avgpool` at **V = 1** reads the mean of all patch features. We look at its answers on test
    images of both families: a checkpoint of a V = 1 cell from the committed grid if one is on disk,
    otherwise a tiny model trained here for `STEPS` steps. **A smoke-trained model mostly answers from the
    question alone** (the most common answer per question type), so read the pictures for the *kind* of
    question, not for a score.
    """),
    code('''
    import lightning as L
    from lit_vlm.data.datamodule import VLMDataModule
    from lit_vlm.module import LitVLM

    ckpt = None
    if COMMITTED is not None:  # the grid stores checkpoint paths relative to where it ran (the repository root)
        table = pd.read_csv(COMMITTED)
        if "checkpoint" in table.columns:
            ones = table[table.visual_tokens == 1].sort_values("llm_params", ascending=False)  # largest LLM first
            candidates = [q for p in ones["checkpoint"].dropna() for q in (Path(p), REPO / p)]
            ckpt = next((str(q) for q in candidates if q.is_file()), None)
    if ckpt:
        module = LitVLM.load_from_checkpoint(ckpt, map_location="cpu")
        print("loaded", ckpt)
    else:
        L.seed_everything(0, verbose=False)
        module = LitVLM(vision={**VISION, "frozen": False}, llm=LLM, compressor="avgpool", visual_tokens=1,
                        optimizer={"lr": 2e-3}, max_new_tokens=6)
    data = VLMDataModule(data_dir=str(WORK / "data"), num_train=NUM_TRAIN, num_val=16, num_test=64 if SMOKE else 400,
                         batch_size=32, eval_batch_size=64, task_options=TASK_OPTIONS, processor=module.processor)
    trainer = L.Trainer(accelerator=ACCELERATOR, max_steps=STEPS, logger=False, enable_checkpointing=False,
                        enable_model_summary=False, enable_progress_bar=not SMOKE, limit_val_batches=0,
                        default_root_dir=str(WORK / "v1_model05"))
    if not ckpt:
        trainer.fit(module, data)
        print(f"trained a 1-token model for {trainer.global_step} steps")
    predictions = [p for batch in trainer.predict(module, data) for p in batch]
    preds = pd.DataFrame(predictions)
    preds["correct"] = preds.prediction == preds.answer
    display(preds.groupby(["family", "task"])["correct"].agg(["mean", "count"]).round(3))
    '''),
    code('''
    test = data.datasets["test"]
    fig, axes = plt.subplots(2, 4, figsize=(11, 6.4))
    for r, family in enumerate(["reasoning", "ocr"]):
        idx = [i for i, f in enumerate(test["family"]) if f == family][:4]
        for ax, i in zip(axes[r], idx):
            p = predictions[i]
            ax.imshow(test[i]["image"])
            ok = p["prediction"] == p["answer"]
            ax.set_title(f"{p['question']}\\nanswer {p['answer']!r}  predicted {p['prediction']!r}", fontsize=8,
                         color="green" if ok else "red")
            ax.set_xticks([]), ax.set_yticks([])
    plt.suptitle("a V = 1 model on the test split (green: right, red: wrong)", fontsize=10)
    plt.tight_layout()
    plt.show()
    '''),
    md("""
    ### What to take away

    * The same fitter on the two families of the paper's grid gives opposite answers: reasoning wants the
      biggest LLM with 1 token; OCR wants every token it can get (α < β). The frontier is a property of the
      *task*, not of the model.
    * Why: a pooled token keeps global facts (which colours, how many shapes) but not positions - the order of
      characters is exactly what an average throws away. The synthetic benchmark was built to isolate that
      contrast.
    * Assignment 4 is open: design a compressor that keeps more OCR information than avgpool in one token.
    """),
]

# ------------------------------------------------------------------------------------------------------------
NOTEBOOKS["06_query_based_compression"] = header(
    "06_query_based_compression",
    "06 · Query-based compression: QueCC vs TokenPacker vs avgpool",
    """
    If the optimum is one or a few visual tokens, the compressor must *choose* what to keep - and the one
    thing that says what matters is the user's question. That is the paper's QueCC ("query-based
    convolutional cross-attention"): TokenPacker's point-to-region attention, with the question's LLM
    embedding added to the features that form the queries. This notebook trains avgpool, TokenPacker and
    QueCC side by side at V = 1 and V = 4 on the synthetic benchmark (one shared frozen tower, via
    `lit_vlm.grid`), reports accuracy per task family, and puts the result next to the paper's numbers.
    """,
    full_time="Full mode trains 3 compressors × 2 V × 2 seeds for 3,000 steps each: roughly 30-60 minutes on "
              "one Colab GPU (an estimate, not a measurement).",
) + [
    code(TINY + TASKS + '''
    from lit_vlm.grid import GridConfig, TowerConfig, run_grid
    from lit_vlm.model.vision import VisionConfig
    from lit_vlm.model.vlm import LLMConfig

    COMPRESSORS = ["avgpool", "tokenpacker", "quecc"]
    VS = [1, 4]
    STEPS, TOWER_STEPS, SEEDS = (60, 20, [0]) if SMOKE else (3000, 2000, [0, 1])
    NUM_TRAIN = 256 if SMOKE else 8000
    GRID_DIR = WORK / ("grid06" if SMOKE else "grid06_full")
    '''),
    md("""
    ## 1. One grid: compressors × V, one LLM

    The grid runner sweeps compressors as well as sizes and V. The tower exposes two feature levels (patch
    embeddings and its last layer): TokenPacker and QueCC read both, as in the paper (QueCC reads CLIP layers
    12, 16, 22, 23); avgpool reads the last. Every cell gets the same frozen tower and the same cached features.
    """),
    code('''
    cfg = GridConfig(
        out_dir=str(GRID_DIR),
        llms={"llm": LLMConfig(**LLM)},
        visual_tokens=VS,
        compressors=COMPRESSORS,
        seeds=SEEDS,
        vision=VisionConfig(**VISION, feature_layers=[0, -1]),
        model={"optimizer": {"lr": 1e-3}, "max_new_tokens": 2},
        data={"data_dir": str(WORK / "data"), "task_options": TASK_OPTIONS, "num_train": NUM_TRAIN, "num_val": 16,
              "num_test": 64 if SMOKE else 400,
              "batch_size": 16 if SMOKE else 32, "eval_batch_size": 64 if SMOKE else 100},
        trainer={"accelerator": ACCELERATOR, "max_steps": STEPS, "enable_progress_bar": not SMOKE,
                 "enable_model_summary": False},
        tower=TowerConfig(checkpoint=str(GRID_DIR / "tower.safetensors"), objective="dense", max_steps=TOWER_STEPS),
    )
    results = pd.read_csv(run_grid(cfg))
    display(results[["cell", "family", "accuracy", "visual_tokens", "compressor", "train_steps", "train_time_s"]])
    '''),
    md("""
    ## 2. Accuracy per family

    Mean over seeds. **In smoke mode (60 steps) every cell is still at or below the answer prior, so the
    differences below are noise** - the full-mode run (or a longer CPU run) is where a comparison means
    something.
    """),
    code('''
    acc = results.groupby(["family", "compressor", "visual_tokens"])["accuracy"].mean().unstack("visual_tokens")
    acc.columns = [f"V = {v}" for v in acc.columns]
    display(acc.round(3))

    families = [f for f in ("reasoning", "ocr") if f in acc.index.get_level_values(0)]
    fig, axes = plt.subplots(1, len(families), figsize=(5 * len(families), 3.6), squeeze=False)
    width = 0.8 / len(COMPRESSORS)
    for ax, family in zip(axes[0], families):
        for k, name in enumerate(COMPRESSORS):
            ax.bar([i + k * width for i in range(len(VS))], acc.loc[(family, name)].values, width, label=name)
        ax.set_xticks([i + width for i in range(len(VS))], [f"V = {v}" for v in VS])
        ax.set_ylabel("exact-match accuracy"), ax.set_title(f"{family} ({STEPS} steps)"), ax.legend(fontsize=8)
    plt.tight_layout()
    plt.show()
    '''),
    md("""
    ## 3. What the paper reports (its numbers, quoted in FACTS.md)

    The paper states that QueCC's advantage over TokenPacker is **largest at 1-4 tokens and vanishes by 16-36
    tokens**. The numbers it gives for GQA with a Vicuna-7B LLM, QueCC vs TokenPacker:
    """),
    code('''
    paper = pd.DataFrame({"visual tokens": [1, 4, 16, 36],
                          "QueCC": [53.5, 56.5, 59.0, 60.5], "TokenPacker": [53.4, 56.2, 58.9, 59.6]})
    paper["QueCC - TokenPacker"] = (paper["QueCC"] - paper["TokenPacker"]).round(1)
    display(paper.set_index("visual tokens"))
    print("VizWiz at 1 token (the paper): QueCC 44.1 vs TokenPacker 41.1, a gap of 3.0")
    '''),
    md("""
    Read these with care. On GQA every gap is under one point and they do **not** shrink with V (+0.1, +0.3,
    +0.1, +0.9): these four numbers alone do not show the claimed trend. The clear low-token gain among the
    quoted numbers is VizWiz at one token (+3.0). The claim rests on the paper's wider table; with single runs
    and no error bars, sub-point gaps on one benchmark are within what seed noise can produce.

    ### When does knowing the question help?

    * **When the budget forces a choice.** With many tokens every region keeps its own token and nothing has
      to be thrown away. With one token the compressor must decide which part of the image survives, and the
      question is the only thing that says which.
    * **When questions about one image want different things.** "What color is the circle?" and "how many
      squares?" need different parts of a scene; "what is the first character?" and "the last?" need
      different ends of a word. A question-blind compressor must keep a compromise for all of them.
    * **Not when the answer is global anyway.** Answers that survive averaging (which colours are present,
      roughly how many shapes) gain little from the question, which is why plain pooling is a strong baseline
      for visual reasoning at V = 1. VizWiz (photos taken by blind users, often of text or a small object)
      needs a specific part of the image far more often than GQA does - consistent with the larger gap there.
    * The cost is one extra LLM pass over the question (no gradient) per image, on text that is short
      compared with the visual tokens saved.

    On the synthetic benchmark, compare the QueCC and TokenPacker rows of section 2 after a full-mode run:
    the place to look is V = 1 on OCR's single-character questions, where the question names the position.
    """),
]


# ------------------------------------------------------------------------------------------------------------
def build(name: str) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.cells = NOTEBOOKS[name]
    for i, cell in enumerate(nb.cells):
        cell.id = f"{name[:2]}-{i:02d}"  # stable ids: rebuilding changes nothing unless a cell changes
    nb.metadata = {
        "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
        "colab": {"provenance": []},
        "accelerator": "GPU",
    }
    nbformat.validate(nb)
    return nb


def main(argv: list[str]) -> int:
    check = "--check" in argv
    stale = []
    for name in NOTEBOOKS:
        path = HERE / f"{name}.ipynb"
        text = nbformat.writes(build(name)) + "\n"
        if check:
            if not path.is_file() or path.read_text() != text:
                stale.append(path.name)
        else:
            path.write_text(text)
            print("wrote", path.relative_to(HERE.parent))
    if stale:
        print("out of date (run python tutorials/_build.py):", ", ".join(stale))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
