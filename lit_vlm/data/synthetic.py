"""A synthetic VQA benchmark small enough to train on a CPU, built to show the paper's two regimes.

Why synthetic: the paper's finding is about *which information a question needs*. Visual reasoning questions
mostly need global facts about the image (which colours and shapes are present, how many), and those survive
when the patch grid is pooled into very few visual tokens. Reading text needs *where* each character is,
which pooling destroys. This benchmark isolates exactly that contrast at 64 x 64 pixels, so a tiny vision
tower with patch 8 (an 8 x 8 patch grid, V in {1, 4, 16, 64} after compression) can show it in minutes.

Two families (all answers are one word or one character string, so exact match is the metric):

* ``reasoning``: 1-4 coloured shapes (circle, square, triangle by default; 5 colours) on a plain light
  background, placed in distinct cells of a 4 x 4 layout grid. Task types and default weights:

  ============  ====  ===========================================  ===================================
  task          w     question                                     answers (drawn balanced)
  ============  ====  ===========================================  ===================================
  count         .16   how many shapes are there?                   1-4 uniform
  count_color   .14   how many red shapes are there?               0-3 uniform
  color         .16   what color is the circle?                    5 colours uniform
  shape         .14   what shape is the red one?                   3 shapes uniform
  exist         .16   is there a blue square?                      yes/no 50/50 (a "no" scene always
                                                                   holds a half-match distractor)
  compare       .12   are there more circles than squares?         yes/no 50/50
  spatial       .12   is the red shape left of the blue shape?     yes/no 50/50 (only positional task)
  ============  ====  ===========================================  ===================================

  The answer is drawn first and the scene is built to match it, which keeps answers balanced: a model that
  ignores the image can do no better than the per-task majority (about 0.35 overall, see chance_accuracy).
* ``ocr``: 3-4 characters from a 20-symbol alphabet (uppercase letters and digits, visually confusable ones
  such as O/0, I/1, S/5, B/8, Z/2 and the wide W/M left out) drawn at a fixed pitch of about one patch
  (8-10 px) with font sizes 10-12, at a random position, dark ink on a light background. Task types:
  ``read`` (.4, "what is the text?"), ``first``/``second``/``last`` (.2 each, "what is the first
  character?"), and ``highlight`` (weight 0 by default, see below). Chance is about 0.03: a single pooled
  token can at best keep the bag of characters, not their order, so accuracy should collapse at V = 1 and
  climb with V.

  A second layout, ``ocr_layout="grid"`` (used by the committed grids and the quickstart), centres one
  character in each 8 x 8 patch cell (``ocr_cell``), in ``ocr_lines`` lines of ``ocr_length`` characters, and
  the ``highlight`` task draws one of them in red: "what is the red character?". Reading it needs the patch
  that holds it: a token that pools it with its neighbours mixes the red one with the dark ones, and one
  token cannot hold 16 characters. Found by measurement (README, "The benchmark"): with free placement and
  first/last/read questions, tiny from-scratch models did not learn to read within CPU minutes at any V.

  Graded OCR, ``ocr_cells={64: w, 32: w, 16: w, 8: w}`` (grid layouts; used by cpu_law): each image draws
  its character cell size from these weights and holds as many characters as fit (one 64 px character, 2 x 2
  of 32 px, 2 lines of 4 at 16 px, 2 lines of 8 at 8 px). A token pooling a k x k patch block holds one whole
  character only when the characters are at least that large, so an ideal reader of V tokens reads the sizes
  of at least 64 / sqrt(V) px: its error falls step by step as V grows, not all at once at V = 64.

Every knob is a keyword option (see ``DEFAULT_OPTIONS``), e.g. ``reasoning_tasks={"spatial": 0.5, ...}`` or
``ocr_length=(5, 6)``, so the grid experiment can make either family harder or easier.

Determinism: one row is a pure function of (seed, split, index, attempt) - see :func:`draw_example`. The
builder redraws a row with ``attempt + 1`` only when its PNG bytes already occur in an earlier split, so
train/validation/test never share an image. Datasets are stored with ``datasets.save_to_disk`` under
``data_dir/synthetic-<fingerprint>``; the fingerprint covers every generation parameter, ``GENERATOR_VERSION``
and the Pillow version (font rasterisation may change between Pillow releases).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import uuid
from collections import Counter, defaultdict
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import PIL
from PIL import Image, ImageDraw, ImageFont

from lit_vlm.constants import FAMILIES
from lit_vlm.errors import UserError

# Bump whenever drawing or question logic changes: it invalidates every cached dataset.
GENERATOR_VERSION = 1

SPLITS = ("train", "validation", "test")

# Superset of what the generator may draw; options pick a subset. The tokenizer's vocabulary covers all of it.
PALETTE = {
    "red": (220, 40, 40),
    "green": (30, 160, 60),
    "blue": (40, 80, 225),
    "yellow": (235, 200, 20),
    "purple": (145, 55, 185),
    "orange": (245, 130, 20),
    "cyan": (20, 185, 200),
    "pink": (240, 110, 180),
}
SHAPES = ("circle", "square", "triangle", "diamond")
OCR_SYMBOLS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
REASONING_TASKS = ("count", "count_color", "color", "shape", "exist", "compare", "spatial", "fact")
LATER_TASKS = ("fact",)  # added after caches were fingerprinted: in the resolved options only when drawn
OCR_TASKS = ("read", "first", "second", "last", "highlight")
HIGHLIGHT = "red"  # the ink of the one character the "highlight" task asks about

DEFAULT_OPTIONS: dict[str, Any] = {
    "colors": ("red", "green", "blue", "yellow", "purple"),
    "shapes": ("circle", "square", "triangle"),
    "max_shapes": 4,
    "reasoning_tasks": {
        "count": 0.16,
        "count_color": 0.14,
        "color": 0.16,
        "shape": 0.14,
        "exist": 0.16,
        "compare": 0.12,
        "spatial": 0.12,
    },
    "ocr_tasks": {"read": 0.4, "first": 0.2, "second": 0.2, "last": 0.2},
    "ocr_alphabet": "ACDEFHKLNPRTUVXY3467",
    "ocr_length": (3, 4),
    "font_sizes": (10, 11, 12),  # at 64 px; scaled with image_size
    "ocr_layout": "free",
    "ocr_lines": 1,  # lines of text (grid layouts only); each line holds ocr_length characters
    "ocr_cell": 8,  # at 64 px; scaled with image_size; used by ocr_layout="grid"
    # Graded OCR (grid layouts): {cell px at 64 px: weight}; each image draws its character size from it, so
    # what V visual tokens can read falls smoothly with V instead of in one step. None: every image uses ocr_cell.
    "ocr_cells": None,
    # Radius of a shape as a fraction of its 16 px scene cell, drawn per object from [lo, hi]. Equal bounds
    # give every object one size, so a pooled token's colour/shape areas are exact counts (cpu_law).
    "shape_radius": (0.3, 0.42),
    # The "fact" task: knowledge the LLM must hold, looked up with what the image shows. Each of fact_names
    # two-letter names (drawn with Zipf exponent fact_zipf: a few names are common, most are rare) has a fixed
    # random digit for every object count, from a table seeded by fact_seed (the same for every split and data
    # seed). "what is KX of the shapes?" asks the digit of name KX at this image's count: the count is read from
    # the image (what V visual tokens allow), the table is stored in the LLM's weights (what N allows), and
    # rarer names are learned only by larger models, so the error falls gradually with N.
    # fact_key "color" keys the digit on the one colour all of the image's objects share instead ("what is KX
    # of the color?"): a category a single pooled token still holds, where a count needs finer reading.
    # fact_key "name" keys it on the name alone ("what is KX?"): pure knowledge, the image plays no part, and
    # with one digit per name even the rarest names are seen often enough that the LLM's size, not the luck of
    # which rare facts a run happened to meet, decides how many it stores. fact_digits (name key only) makes
    # each name's answer that many digits ("what is KX?" -> "47"): more to store per name.
    # fact_shown (name key only): the share of fact images that also show the answer. The name's answer then
    # starts with one symbol of the OCR alphabet (its other fact_digits - 1 digits follow, which only memory
    # holds), and the image is an OCR grid (ocr_cells' sizes) in which, with this probability, that symbol is the
    # one character drawn in red (otherwise no character is red): two routes to
    # one answer, the LLM's memory and the image. Built to make the error a product of the two routes' misses
    # (the paper's multiplicative law); measured, it is not (results/pilot_cpu_law_r15): where the image
    # supplies the answer in training, the LLM stores fewer names.
    # fact_hidden: what a fact image that does not show the answer is: "grid", the OCR grid with no red
    # character (a reader cannot tell a tiny red character from none), or "scene", shapes and no text at all.
    "fact_shown": 0.0,
    # fact_shown_by: what the share is of. "image": each fact image shows the answer with probability fact_shown.
    # "name": that share of the names (spread evenly over the frequency ranks) is shown in every one of its
    # images, the others in none: a name the image can show is answered by reading where V allows it and from
    # memory where it does not, and the hidden names need memory whatever V is, so what the LLM must store for
    # them does not depend on V (results/pilot_cpu_law_r18).
    "fact_shown_by": "image",
    "fact_hidden": "grid",
    # fact_split: the training split asks only the names of even frequency rank (0, 2, ...), validation and test
    # only the odd ones (each the next rarer name): what the VLM stage learns about names cannot reach the names it
    # is tested on, which only the LLM's own pretraining (llm_pretrain) taught it.
    # fact_cells: the character sizes of the fact task's OCR images ({cell px: weight} as ocr_cells; None:
    # ocr_cells'), so that how often V tokens can read the answer is set apart from the OCR family's sizes.
    "fact_cells": None,
    # fact_cells_by (with fact_shown_by "name"): "image" draws each image's character size from fact_cells;
    # "name" gives each shown name one size for all its images (fact_cells' weights spread evenly over the
    # frequency ranks), so a name is either readable at a V or not: at V = 1 the LLM must store every name, and
    # each step up in V lets it read a fixed share of the shown ones (results/pilot_cpu_law_r22).
    "fact_cells_by": "image",
    "fact_split": False,
    "fact_names": 256,
    "fact_zipf": 1.0,
    "fact_seed": 0,
    "fact_key": "count",
    "fact_digits": 1,
}
FACT_OPTIONS = ("fact_names", "fact_zipf", "fact_seed", "fact_key", "fact_digits", "fact_shown", "fact_shown_by",
                "fact_hidden", "fact_cells", "fact_cells_by", "fact_split")
FACT_HIDDEN = ("grid", "scene")
FACT_SHOWN_BY = ("image", "name")
FACT_CELLS_BY = ("image", "name")
FACT_KEYS = ("count", "color", "name")
OCR_LAYOUTS = ("free", "grid", "grid_left")

# Words of every question template; together with PALETTE, SHAPES and OCR_SYMBOLS this is the closed vocabulary.
QUESTION_WORDS = (
    "how many shapes are there what color is the shape one a more than left right of "
    "text first second last character yes no"
).split()
PUNCTUATION = ("?", ".", ",", ":", "'", "-")


def vocabulary() -> list[str]:
    """Every word the generator can emit in a question or answer (sorted, stable across runs)."""
    words = set(QUESTION_WORDS) | set(PALETTE) | set(SHAPES) | {s + "s" for s in SHAPES}
    words |= set(OCR_SYMBOLS) | set(PUNCTUATION)
    return sorted(words)


# ----------------------------------------------------------------------------------------------- options
def resolve_options(**options: Any) -> dict[str, Any]:
    """Merge ``options`` over ``DEFAULT_OPTIONS`` and validate them (UserError on bad values)."""
    unknown = sorted(set(options) - set(DEFAULT_OPTIONS))
    if unknown:
        raise UserError(f"unknown synthetic task option(s) {unknown}; allowed: {sorted(DEFAULT_OPTIONS)}")
    # None is "not set" (a typed config's TaskOptions lists every knob): the default stands
    opts = {**DEFAULT_OPTIONS, **{k: v for k, v in options.items() if v is not None}}
    colors, shapes = tuple(opts["colors"]), tuple(opts["shapes"])
    if len(colors) < 2 or len(set(colors)) != len(colors) or not set(colors) <= set(PALETTE):
        raise UserError(f"colors={list(colors)}: need >= 2 distinct colours from {list(PALETTE)}")
    if len(shapes) < 2 or len(set(shapes)) != len(shapes) or not set(shapes) <= set(SHAPES):
        raise UserError(f"shapes={list(shapes)}: need >= 2 distinct shapes from {list(SHAPES)}")
    max_shapes = opts["max_shapes"]
    if not isinstance(max_shapes, int) or not 2 <= max_shapes <= 16:
        raise UserError(f"max_shapes={max_shapes!r}: must be an integer in 2..16 (a 4 x 4 layout grid)")
    alphabet = "".join(dict.fromkeys(str(opts["ocr_alphabet"])))
    if len(alphabet) < 2 or not set(alphabet) <= set(OCR_SYMBOLS):
        raise UserError(f"ocr_alphabet={opts['ocr_alphabet']!r}: need >= 2 symbols from {OCR_SYMBOLS}")
    length = tuple(opts["ocr_length"])
    if len(length) != 2 or not all(isinstance(n, int) for n in length) or not 2 <= length[0] <= length[1] <= 8:
        raise UserError(f"ocr_length={list(length)}: must be [min, max] integers with 2 <= min <= max <= 8")
    sizes = tuple(opts["font_sizes"])
    if not sizes or not all(isinstance(s, int) and 6 <= s <= 24 for s in sizes):
        raise UserError(f"font_sizes={list(sizes)}: must be integers in 6..24 (pixels at 64 px)")
    if opts["ocr_layout"] not in OCR_LAYOUTS:
        raise UserError(f"ocr_layout={opts['ocr_layout']!r}: must be one of {list(OCR_LAYOUTS)}")
    cell = opts["ocr_cell"]
    if not isinstance(cell, int) or not 4 <= cell <= 32 or 64 // cell < length[1]:
        raise UserError(f"ocr_cell={cell!r}: must be an integer in 4..32 px with 64 // ocr_cell >= max ocr_length")
    cells = _cell_weights("ocr_cells", opts["ocr_cells"], opts["ocr_layout"])
    radius = tuple(opts["shape_radius"])
    if len(radius) != 2 or not all(isinstance(r, (int, float)) for r in radius) or not 0.1 <= radius[0] <= radius[1] <= 0.5:
        raise UserError(f"shape_radius={list(radius)}: must be [lo, hi] with 0.1 <= lo <= hi <= 0.5 (of a 16 px cell)")
    lines = opts["ocr_lines"]
    if not isinstance(lines, int) or not 1 <= lines <= 64 // cell or (lines > 1 and opts["ocr_layout"] == "free"):
        raise UserError(f"ocr_lines={lines!r}: must be an integer in 1..{64 // cell} (above 1 only with a grid ocr_layout)")
    reasoning = _weights("reasoning_tasks", opts["reasoning_tasks"], REASONING_TASKS)
    reasoning = {t: w for t, w in reasoning.items() if w > 0 or t not in LATER_TASKS}
    facts = {}
    if reasoning.get("fact"):
        names, zipf, fact_seed = opts["fact_names"], opts["fact_zipf"], opts["fact_seed"]
        if not isinstance(names, int) or not 1 <= names <= len(FACT_LETTERS) ** 2:
            raise UserError(f"fact_names={names!r}: must be an integer in 1..{len(FACT_LETTERS) ** 2}")
        if not isinstance(zipf, (int, float)) or not 0 <= zipf <= 4:
            raise UserError(f"fact_zipf={zipf!r}: must be a number in 0..4 (0: every name equally common)")
        if not isinstance(fact_seed, int) or fact_seed < 0:
            raise UserError(f"fact_seed={fact_seed!r}: must be an integer >= 0")
        if opts["fact_key"] not in FACT_KEYS:
            raise UserError(f"fact_key={opts['fact_key']!r}: must be one of {list(FACT_KEYS)}")
        ndig = opts["fact_digits"]
        if not isinstance(ndig, int) or not 1 <= ndig <= 8 or (ndig > 1 and opts["fact_key"] != "name"):
            raise UserError(f"fact_digits={ndig!r}: must be an integer in 1..8 (above 1 only with fact_key: name)")
        shown = opts["fact_shown"]
        if (not isinstance(shown, (int, float)) or not 0 <= shown <= 1
                or (shown > 0 and (opts["fact_key"] != "name" or opts["ocr_layout"] == "free"))):
            raise UserError(f"fact_shown={shown!r}: must be a number in 0..1 (above 0 only with fact_key: name "
                            "and a grid ocr_layout)")
        if opts["fact_shown_by"] not in FACT_SHOWN_BY or (opts["fact_shown_by"] != "image" and not shown):
            raise UserError(f"fact_shown_by={opts['fact_shown_by']!r}: must be one of {list(FACT_SHOWN_BY)} (other "
                            "than 'image' only with fact_shown above 0)")
        if opts["fact_hidden"] not in FACT_HIDDEN or (opts["fact_hidden"] != "grid" and not shown):
            raise UserError(f"fact_hidden={opts['fact_hidden']!r}: must be one of {list(FACT_HIDDEN)} (other than "
                            "'grid' only with fact_shown above 0)")
        if opts["fact_cells"] is not None and not shown:
            raise UserError(f"fact_cells={opts['fact_cells']!r}: only with fact_shown above 0")
        fact_cells = _cell_weights("fact_cells", opts["fact_cells"], opts["ocr_layout"])
        if opts["fact_cells_by"] not in FACT_CELLS_BY or (opts["fact_cells_by"] != "image" and (
                opts["fact_shown_by"] != "name" or not fact_cells)):
            raise UserError(f"fact_cells_by={opts['fact_cells_by']!r}: must be one of {list(FACT_CELLS_BY)} (other "
                            "than 'image' only with fact_shown_by: name and fact_cells set)")
        if not isinstance(opts["fact_split"], bool) or (opts["fact_split"] and names % 2):
            raise UserError(f"fact_split={opts['fact_split']!r}: must be true or false (true needs an even fact_names, "
                            f"not {names})")
        facts = {"fact_names": names, "fact_zipf": float(zipf), "fact_seed": fact_seed}
        # added later: listed only when set, so fingerprints made before stay valid
        later = (("fact_key", "count"), ("fact_digits", 1), ("fact_shown", 0.0), ("fact_shown_by", "image"),
                 ("fact_hidden", "grid"), ("fact_cells_by", "image"))
        facts.update({k: opts[k] for k, default in later if opts[k] != default})
        facts.update({"fact_cells": fact_cells} if fact_cells else {})
        facts.update({"fact_split": True} if opts["fact_split"] else {})
    return {
        "colors": colors,
        "shapes": shapes,
        "max_shapes": max_shapes,
        "reasoning_tasks": reasoning,
        **facts,
        "ocr_tasks": _weights("ocr_tasks", opts["ocr_tasks"], OCR_TASKS),
        "ocr_alphabet": alphabet,
        "ocr_length": length,
        "font_sizes": sizes,
        "ocr_layout": opts["ocr_layout"],
        "ocr_cell": cell,
        "ocr_cells": cells,
        "ocr_lines": lines,
        # added after caches and towers were fingerprinted: listed only when set, so theirs stay valid
        **({"shape_radius": tuple(float(r) for r in radius)} if radius != DEFAULT_OPTIONS["shape_radius"] else {}),
    }


def _cell_weights(name: str, cells: Any, layout: str) -> dict[int, float] | None:
    """A {cell px: weight} option (ocr_cells, fact_cells) checked and normalised, sorted by size; None stays None."""
    if cells is None:
        return None
    if layout == "free" or not isinstance(cells, dict) or not cells:
        raise UserError(f"{name}={cells!r}: must be a mapping {{cell px: weight}} and needs a grid ocr_layout")
    cells = {int(c) if isinstance(c, str) and c.isdigit() else c: w for c, w in cells.items()}  # JSON keys
    bad = [c for c in cells if not isinstance(c, int) or c not in (4, 8, 16, 32, 64)]
    if bad:
        raise UserError(f"{name}: cell size {bad[0]!r} is not allowed; allowed: 4, 8, 16, 32, 64 (px at 64 px)")
    return {int(c): w for c, w in sorted(_weights(name, {str(c): w for c, w in cells.items()},
                                                  tuple(str(c) for c in cells)).items(), key=lambda kv: int(kv[0]))}


def _weights(name: str, weights: Any, allowed: tuple[str, ...]) -> dict[str, float]:
    if not isinstance(weights, dict) or not set(weights) <= set(allowed):
        raise UserError(f"{name}={weights!r}: must be a mapping from task to weight; tasks: {list(allowed)}")
    out = {t: float(weights.get(t, 0.0)) for t in allowed}  # a task left out has weight 0
    if any(w < 0 for w in out.values()) or sum(out.values()) <= 0:
        raise UserError(f"{name}={weights!r}: weights must be >= 0 with a positive sum")
    total = sum(out.values())
    return {t: w / total for t, w in out.items()}


# ----------------------------------------------------------------------------------------------- drawing
def _rng(seed: int, split: str, index: int, attempt: int) -> np.random.Generator:
    # SeedSequence over the tuple: independent streams per split and row, no shared global state.
    return np.random.default_rng([seed, SPLITS.index(split), index, attempt])


@lru_cache(maxsize=None)
def _font(size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)  # bundled with Pillow: no file or network access


def _background(rng: np.random.Generator) -> tuple[int, int, int]:
    g = int(rng.integers(185, 241))
    return (g, g, g)


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, fill) -> None:
    if shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    elif shape == "square":
        q = r * 0.85  # same visual area as the circle, roughly
        draw.rectangle((cx - q, cy - q, cx + q, cy + q), fill=fill)
    elif shape == "triangle":
        draw.polygon([(cx, cy - r), (cx - r, cy + r * 0.8), (cx + r, cy + r * 0.8)], fill=fill)
    else:  # diamond
        draw.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=fill)


def _scene(rng, objects: list[tuple[str, str]], size: int, order: int = 0, record: list | None = None,
           radius: tuple[float, float] = (0.3, 0.42)) -> Image.Image:
    """Draw ``objects`` (shape, colour) in distinct cells of a 4 x 4 grid.

    ``order`` constrains the first two objects' columns: -1 first strictly left of second, +1 right, 0 free.
    """
    cell = size / 4
    while True:
        cells = rng.choice(16, size=len(objects), replace=False)
        cols = cells % 4
        if order == 0 or cols[0] != cols[1]:
            break
    if order and (cols[0] < cols[1]) != (order < 0):
        cells[[0, 1]] = cells[[1, 0]]
    img = Image.new("RGB", (size, size), _background(rng))
    draw = ImageDraw.Draw(img)
    for (shape, color), c in zip(objects, cells):
        r = cell * rng.uniform(*radius)  # one draw whatever the bounds: the same stream for every setting
        jitter = cell / 2 - r  # keep the shape inside its cell
        cx = (c % 4 + 0.5) * cell + rng.uniform(-jitter, jitter)
        cy = (c // 4 + 0.5) * cell + rng.uniform(-jitter, jitter)
        _draw_shape(draw, shape, cx, cy, r, PALETTE[color])
        if record is not None:
            record.append(("object", (shape, color), cx, cy, False, 0.0))
    return img


def _pick(rng, items, exclude=()):
    pool = [x for x in items if x not in exclude]
    return pool[int(rng.integers(len(pool)))]


FACT_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


@lru_cache(maxsize=8)
def fact_table(names: int, zipf: float, seed: int, max_count: int = 16) -> tuple[list[str], np.ndarray, np.ndarray]:
    """The "fact" task's knowledge: ``names`` two-letter names, their Zipf probabilities, and a digit for
    every (name, key 0..max_count), all fixed by ``seed``; the key is the object count, the colour's index, or 0
    (the name alone; with fact_digits d, the name's answer is its digits at keys 0..d-1)."""
    rng = np.random.default_rng([seed, 7919])
    pairs = [a + b for a in FACT_LETTERS for b in FACT_LETTERS]
    chosen = [pairs[k] for k in rng.permutation(len(pairs))[:names]]
    p = 1.0 / np.arange(1, names + 1) ** zipf
    digits = rng.integers(0, 10, size=(names, max_count + 1))
    return chosen, p / p.sum(), digits


def name_answer(opts: dict, k: int) -> str:
    """The answer to "what is <name k>?" (fact_key "name"): the name's fact_digits digits; with fact_shown the
    first of them is one symbol of the OCR alphabet instead (what the image draws in red)."""
    digits = fact_table(opts["fact_names"], opts["fact_zipf"], opts["fact_seed"])[2]
    rest = "".join(map(str, digits[k, :opts.get("fact_digits", 1)]))
    if opts.get("fact_shown"):  # the first symbol is the one the image can show; the other digits stay memory's
        return opts["ocr_alphabet"][digits[k, 0] % len(opts["ocr_alphabet"])] + rest[1:]
    return rest


def name_shown(share: float, k: int) -> bool:
    """Whether name k (0 = the most common) is one of fact_shown_by "name"'s shown names: every rank at which
    the running count share * (k + 1) passes a whole number, so any run of ranks holds about that share."""
    return int(share * (k + 1)) > int(share * k)


def name_cell(cells: dict[int, float], share: float, k: int) -> int:
    """Shown name k's one character size (fact_cells_by "name"): the j-th shown name (j = int(share * k)) takes the
    j-th size of a smooth weighted round robin over fact_cells, so every run of ranks holds each size in its
    weight's share, to within one name (equal weights: the sizes in turn, smallest first)."""
    return _cell_order(tuple(cells.items()))[int(share * k)]


@lru_cache(maxsize=8)
def _cell_order(cells: tuple[tuple[int, float], ...]) -> tuple[int, ...]:
    credit, order = [0.0] * len(cells), []
    for _ in range(len(FACT_LETTERS) ** 2):  # one size per possible name
        credit = [c + w for c, (_, w) in zip(credit, cells)]
        best = max(range(len(cells)), key=lambda i: credit[i] - 1e-9 * i)  # the first on a tie
        credit[best] -= sum(w for _, w in cells)
        order.append(cells[best][0])
    return tuple(order)


def fact_questions(rng: np.random.Generator, n: int, **task_options) -> list[tuple[str, str]]:
    """``n`` text-only "what is KX?" questions with their answers, the names drawn with the fact task's Zipf
    probabilities: what an LLM can learn about the benchmark's names before it sees an image (the LLM
    pretraining stage, lit_vlm/llm_pretrain.py). Only for fact_key "name", where the image is not needed."""
    opts = resolve_options(**task_options)
    if not opts["reasoning_tasks"].get("fact") or opts.get("fact_key") != "name":
        raise UserError("LLM pretraining needs the fact task with fact_key: name in data.task_options "
                        f"(reasoning_tasks={dict(opts['reasoning_tasks'])}, fact_key={opts.get('fact_key')!r})")
    names, p, _ = fact_table(opts["fact_names"], opts["fact_zipf"], opts["fact_seed"])
    ks = rng.choice(len(names), size=n, p=p)
    return [(f"what is {names[k]}?", name_answer(opts, int(k))) for k in ks]


def _reasoning(rng, task: str, opts: dict, size: int, record: list | None = None,
               split: str = "train") -> tuple[Image.Image, str, str]:
    colors, shapes, m = opts["colors"], opts["shapes"], opts["max_shapes"]

    def rand_obj(bad_colors=(), bad_shape=None, bad_pair=None):
        while True:
            obj = (_pick(rng, shapes, (bad_shape,)), _pick(rng, colors, bad_colors))
            if obj != bad_pair:
                return obj

    order = 0
    if task == "count":
        n = int(rng.integers(1, m + 1))
        objs = [rand_obj() for _ in range(n)]
        q, a = "how many shapes are there?", str(n)
    elif task == "fact":
        names, p, digits = fact_table(opts["fact_names"], opts["fact_zipf"], opts["fact_seed"])
        k = int(rng.choice(len(names), p=p))
        if opts.get("fact_split"):  # names ranked 2j are asked in training, 2j + 1 in the other splits
            k += (split != "train") - k % 2
        n = int(rng.integers(1, m + 1))  # drawn for every key (and unused by fact_shown): rows stay as they were
        key = opts.get("fact_key", "count")
        shown = bool(opts.get("fact_shown")) and rng.random() < opts["fact_shown"]  # drawn only with fact_shown
        if opts.get("fact_shown_by", "image") == "name":
            shown = name_shown(opts["fact_shown"], k)
        if key == "color":  # every object one colour: the digit of (name, colour)
            c = _pick(rng, colors)
            objs = [(_pick(rng, shapes), c) for _ in range(n)]
            q, a = f"what is {names[k]} of the color?", str(digits[k, colors.index(c)])
        elif opts.get("fact_shown") and (shown or opts.get("fact_hidden", "grid") == "grid"):
            # the name's own symbol: the one red character of an OCR image, or (fact_hidden "grid") no red at all
            a = name_answer(opts, k)
            sizes = {**opts, "ocr_cells": opts["fact_cells"]} if opts.get("fact_cells") else opts
            if shown and opts.get("fact_cells_by", "image") == "name":  # this name's one size
                sizes = {**opts, "ocr_cells": {name_cell(opts["fact_cells"], opts["fact_shown"], k): 1.0}}
            image = _ocr(rng, "highlight" if shown else "read", sizes, size, record, answer=a[0])[0]
            return image, f"what is {names[k]}?", a
        elif key == "name":  # any scene; with fact_shown, one that does not show the answer (fact_hidden "scene")
            objs = [rand_obj() for _ in range(n)]
            q, a = f"what is {names[k]}?", name_answer(opts, k)
        else:
            objs = [rand_obj() for _ in range(n)]
            q, a = f"what is {names[k]} of the shapes?", str(digits[k, n])
    elif task == "count_color":
        c = _pick(rng, colors)
        k = int(rng.integers(0, min(m - 1, 3) + 1))  # 0..3: chance 1/4
        n = int(rng.integers(max(k, 1), m + 1))
        objs = [(_pick(rng, shapes), c) for _ in range(k)] + [rand_obj(bad_colors=(c,)) for _ in range(n - k)]
        q, a = f"how many {c} shapes are there?", str(k)
    elif task == "color":
        s, c = _pick(rng, shapes), _pick(rng, colors)
        n = int(rng.integers(1, m + 1))
        objs = [(s, c)] + [rand_obj(bad_shape=s) for _ in range(n - 1)]  # the shape is unique
        q, a = f"what color is the {s}?", c
    elif task == "shape":
        s, c = _pick(rng, shapes), _pick(rng, colors)
        n = int(rng.integers(1, m + 1))
        objs = [(s, c)] + [rand_obj(bad_colors=(c,)) for _ in range(n - 1)]  # the colour is unique
        q, a = f"what shape is the {c} one?", s
    elif task == "exist":
        s, c = _pick(rng, shapes), _pick(rng, colors)
        n = int(rng.integers(1, m + 1))
        if rng.random() < 0.5:
            objs = [(s, c)] + [rand_obj() for _ in range(n - 1)]
            a = "yes"
        else:
            # a half match (right colour or right shape) so that colour or shape presence alone cannot answer
            half = (_pick(rng, shapes, (s,)), c) if rng.random() < 0.5 else (s, _pick(rng, colors, (c,)))
            objs = [half] + [rand_obj(bad_pair=(s, c)) for _ in range(n - 1)]
            a = "no"
        q = f"is there a {c} {s}?"
    elif task == "compare":
        s1, s2 = rng.choice(len(shapes), size=2, replace=False)
        s1, s2 = shapes[s1], shapes[s2]
        yes = rng.random() < 0.5
        pairs = [(x, y) for x in range(m + 1) for y in range(m + 1) if 1 <= x + y <= m and (x > y) == yes]
        x, y = pairs[int(rng.integers(len(pairs)))]
        others = [s for s in shapes if s not in (s1, s2)]
        extra = int(rng.integers(0, m - x - y + 1)) if others else 0
        objs = [(s1, _pick(rng, colors)) for _ in range(x)] + [(s2, _pick(rng, colors)) for _ in range(y)]
        objs += [(_pick(rng, others), _pick(rng, colors)) for _ in range(extra)]
        q, a = f"are there more {s1}s than {s2}s?", "yes" if yes else "no"
    elif task == "spatial":
        i, j = rng.choice(len(colors), size=2, replace=False)
        c1, c2 = colors[i], colors[j]
        n = int(rng.integers(2, m + 1)) if len(colors) > 2 else 2  # the two colours must be unique
        objs = [(_pick(rng, shapes), c1), (_pick(rng, shapes), c2)]
        objs += [rand_obj(bad_colors=(c1, c2)) for _ in range(n - 2)]
        side = "left" if rng.random() < 0.5 else "right"
        yes = rng.random() < 0.5
        # order -1 puts c1 left of c2; "yes" to "left" and "no" to "right" both need that
        order = -1 if (side == "left") == yes else 1
        q, a = f"is the {c1} shape {side} of the {c2} shape?", "yes" if yes else "no"
    else:  # pragma: no cover - tasks are validated in resolve_options
        raise AssertionError(task)
    # shuffle drawing order except for the spatial pair, whose positions are tied to the first two slots
    head, tail = (objs[:2], objs[2:]) if order else ([], objs)
    tail = [tail[k] for k in rng.permutation(len(tail))]
    radius = opts.get("shape_radius", DEFAULT_OPTIONS["shape_radius"])
    return _scene(rng, head + tail, size, order, record, radius), q, a


def _ocr(rng, task: str, opts: dict, size: int, record: list | None = None,
         answer: str | None = None) -> tuple[Image.Image, str, str]:
    """An OCR image, its question and answer; ``answer`` (task highlight) is the character drawn in red."""
    alphabet, (lo, hi) = opts["ocr_alphabet"], opts["ocr_length"]
    n = int(rng.integers(lo, hi + 1))
    text = "".join(alphabet[k] for k in rng.integers(len(alphabet), size=n))
    font_size = max(6, round(int(rng.choice(opts["font_sizes"])) * size / 64))
    cell_px, lines = opts["ocr_cell"], opts["ocr_lines"]
    if opts["ocr_cells"]:  # graded: this image's character size, its font scaled with it, as many as fit
        sizes = list(opts["ocr_cells"])
        cell_px = sizes[int(rng.choice(len(sizes), p=list(opts["ocr_cells"].values())))]
        per_line = max(1, min(n, 64 // cell_px))
        text, n, lines = text[:per_line], per_line, max(1, min(lines, 64 // cell_px))
        font_size = max(6, round(font_size * cell_px / opts["ocr_cell"]))
    font = _font(font_size)
    ascent, descent = font.getmetrics()
    if opts["ocr_layout"] in ("grid", "grid_left"):
        # One character centred in each cell of a grid aligned with the patches: a patch sees one whole
        # character, so what a visual token can read depends only on how many patches it pools.
        # grid_left starts every line at the left margin (only the row varies), grid anywhere.
        cell = cell_px * size / 64
        cols = int(round(size / cell))
        if lines > 1:  # more text in reading order: the extra lines are drawn after the first
            text += "".join(alphabet[k] for k in rng.integers(len(alphabet), size=n * (lines - 1)))
        rows = sorted(int(r) for r in rng.choice(cols, size=lines, replace=False)) if lines > 1 else None
        centres = []
        for line in range(lines):
            col = int(rng.integers(0, cols - n + 1)) if opts["ocr_layout"] == "grid" else 0
            row = rows[line] if rows else int(rng.integers(0, cols))
            centres += [((col + k + 0.5) * cell, (row + 0.5) * cell) for k in range(n)]
        anchor = "mm"
    else:
        pitch = int(np.ceil(0.8 * font_size))  # about one 8 px patch per character at 64 px
        width, height = pitch * n, ascent  # capitals and digits have no descender
        x0 = rng.uniform(1, max(1, size - width - 1))
        y0 = rng.uniform(1, max(1, size - height - 1))
        centres = [(x0 + (k + 0.5) * pitch, y0 + ascent) for k in range(n)]
        anchor = "ms"
    img = Image.new("RGB", (size, size), _background(rng))
    draw = ImageDraw.Draw(img)
    ink = tuple(int(v) for v in rng.integers(0, 70, size=3))
    marked = int(rng.integers(len(text))) if task == "highlight" else -1  # drawn only for this task: others unchanged
    if answer is not None and marked >= 0:
        text = text[:marked] + answer + text[marked + 1:]
    for k, (ch, xy) in enumerate(zip(text, centres)):
        draw.text(xy, ch, font=font, fill=PALETTE[HIGHLIGHT] if k == marked else ink, anchor=anchor)
        if record is not None:  # the glyph's centre: "ms" anchors at the baseline, half a cap height below it
            half = cell / 2 if anchor == "mm" else 0.0  # a grid character owns its whole cell
            record.append(("char", ch, xy[0], xy[1] - (ascent / 2 if anchor == "ms" else 0), k == marked, half))
    question = {
        "read": "what is the text?",
        "first": "what is the first character?",
        "second": "what is the second character?",
        "last": "what is the last character?",
        "highlight": f"what is the {HIGHLIGHT} character?",
    }[task]
    answer = {"read": lambda: text, "first": lambda: text[0], "second": lambda: text[1], "last": lambda: text[-1],
              "highlight": lambda: text[marked]}[task]()  # lazily: a graded 64 px image holds one character
    return img, question, answer


def draw_example(
    split: str,
    index: int,
    *,
    seed: int = 0,
    image_size: int = 64,
    families: tuple[str, ...] = FAMILIES,
    attempt: int = 0,
    **options: Any,
) -> dict[str, Any]:
    """Draw row ``index`` of ``split``: a pure function of its arguments (no global state).

    Returns ``{"image": PIL.Image, "question", "answer", "family", "task"}``. The family cycles with the index
    (``families[index % len(families)]``) so every split is balanced across families.
    """
    if split not in SPLITS:
        raise UserError(f"split={split!r}: must be one of {list(SPLITS)}")
    return _draw(split, index, seed, image_size, _check_families(families), attempt, resolve_options(**options))


def _draw(split: str, index: int, seed: int, image_size: int, families: tuple, attempt: int, opts: dict,
          record: list | None = None) -> dict:
    rng = _rng(seed, split, index, attempt)
    family = families[index % len(families)]
    weights = opts["reasoning_tasks"] if family == "reasoning" else opts["ocr_tasks"]
    tasks = list(weights)
    task = tasks[int(rng.choice(len(tasks), p=list(weights.values())))]
    draw = _reasoning if family == "reasoning" else _ocr
    where = {"split": split} if draw is _reasoning else {}  # fact_split asks other names outside training
    image, question, answer = draw(rng, task, opts, image_size, record, **where)
    return {"image": image, "question": question, "answer": answer, "family": family, "task": task}


def dense_label_sizes(**options: Any) -> dict[str, int]:
    """Number of classes of each per-patch target of :func:`draw_with_patch_labels` (class 0 is "none")."""
    opts = resolve_options(**options)
    return {"object": 1 + len(opts["colors"]) * len(opts["shapes"]), "char": 1 + len(opts["ocr_alphabet"]),
            "highlight": 2}


DENSE_TARGETS = ("object", "char", "highlight")  # plus "row" and "column" of every patch, added by the tower trainer


def draw_with_patch_labels(
    split: str,
    index: int,
    *,
    grid_side: int,
    seed: int = 0,
    image_size: int = 64,
    families: tuple[str, ...] = FAMILIES,
    **options: Any,
) -> tuple[Image.Image, dict[str, np.ndarray]]:
    """Row ``index`` of ``split`` (attempt 0) and dense targets on a ``grid_side`` x ``grid_side`` patch grid.

    Stage 0 trains the shared tower on these instead of on the VQA answers: every patch gets a label, so the
    tower learns in minutes what a from-scratch VLM takes thousands of steps to discover. Targets (int64,
    raster order, 0 = none):

    * ``object``: at the patch holding an object's centre, 1 + its (colour, shape) class. Pooling these
      features keeps the histogram of objects, which is what most reasoning questions need.
    * ``char``: at the patch holding a character's centre, 1 + its index in the alphabet.
    * ``highlight``: 1 at the patch of the character drawn in the highlight ink (task ``highlight``).

    Training rows are never redrawn (only later splits are, see :func:`generate_rows`), so for ``split="train"``
    the image is exactly the benchmark's training image.
    """
    opts = resolve_options(**options)
    record: list = []
    row = _draw(split, index, seed, image_size, _check_families(families), 0, opts, record)
    labels = {name: np.zeros(grid_side * grid_side, dtype=np.int64) for name in DENSE_TARGETS}
    patch = image_size / grid_side
    n_shapes = len(opts["shapes"])
    for kind, what, x, y, marked, half in record:
        r, c = min(int(y // patch), grid_side - 1), min(int(x // patch), grid_side - 1)
        if kind == "char" and half > patch / 2:  # a character larger than a patch labels every patch it covers
            rows = range(int((y - half) // patch + 1e-6), min(grid_side, int(np.ceil((y + half) / patch - 1e-6))))
            cols = range(int((x - half) // patch + 1e-6), min(grid_side, int(np.ceil((x + half) / patch - 1e-6))))
            for rr in rows:
                for cc in cols:
                    labels["char"][rr * grid_side + cc] = 1 + opts["ocr_alphabet"].index(what)
                    labels["highlight"][rr * grid_side + cc] = int(marked)
            continue
        if kind == "object":
            shape, color = what
            labels["object"][r * grid_side + c] = 1 + opts["colors"].index(color) * n_shapes + opts["shapes"].index(shape)
        else:
            labels["char"][r * grid_side + c] = 1 + opts["ocr_alphabet"].index(what)
            labels["highlight"][r * grid_side + c] |= int(marked)  # characters smaller than a patch share it
    return row["image"], labels


# ----------------------------------------------------------------------------------------------- storage
def _check_families(families) -> tuple[str, ...]:
    if isinstance(families, str):
        families = (families,)
    families = tuple(families)
    bad = [f for f in families if f not in FAMILIES]
    if not families or bad or len(set(families)) != len(families):
        raise UserError(f"families={list(families)}: must be distinct values from {list(FAMILIES)}")
    return families


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=1)  # level 1: 64 px images, speed matters more than size
    return buf.getvalue()


def generate_rows(
    sizes: dict[str, int], *, seed: int, image_size: int, families: tuple[str, ...], opts: dict
) -> dict[str, dict[str, list]]:
    """Draw all splits as column dicts, redrawing any image whose bytes already appear in an earlier split."""
    seen: set[bytes] = set()
    columns: dict[str, dict[str, list]] = {}
    next_id = 0
    for split in SPLITS:
        cols: dict[str, list] = defaultdict(list)
        hashes = set()
        for index in range(sizes[split]):
            for attempt in range(100):
                row = _draw(split, index, seed, image_size, families, attempt, opts)
                data = _png(row["image"])
                digest = hashlib.blake2b(data, digest_size=16).digest()
                if digest not in seen:
                    break
            else:  # pragma: no cover - would need a degenerate option set
                raise UserError(f"cannot draw a {split} image unseen in earlier splits; options too narrow: {opts}")
            hashes.add(digest)
            cols["image"].append({"bytes": data, "path": None})
            for key in ("question", "answer", "family", "task"):
                cols[key].append(row[key])
            cols["image_id"].append(next_id)
            next_id += 1
        seen |= hashes
        columns[split] = dict(cols)
    return columns


def _features():
    import datasets

    return datasets.Features(
        {
            "image": datasets.Image(),
            "question": datasets.Value("string"),
            "answer": datasets.Value("string"),
            "family": datasets.Value("string"),
            "task": datasets.Value("string"),
            "image_id": datasets.Value("int64"),
        }
    )


def benchmark_params(
    *, seed: int, image_size: int, num_train: int, num_val: int, num_test: int, families, **options: Any
) -> dict[str, Any]:
    """Validated generation parameters: what the cache fingerprint is computed from."""
    for name, n in (("num_train", num_train), ("num_val", num_val), ("num_test", num_test)):
        if not isinstance(n, int) or n < 0:
            raise UserError(f"{name}={n!r}: must be an integer >= 0 (a split of size 0 is left out)")
    if not isinstance(image_size, int) or not 32 <= image_size <= 1024:
        raise UserError(f"image_size={image_size!r}: must be an integer in 32..1024")
    opts = resolve_options(**options)
    return {
        "generator_version": GENERATOR_VERSION,
        "pillow": PIL.__version__,
        "seed": int(seed),
        "image_size": image_size,
        "sizes": {"train": num_train, "validation": num_val, "test": num_test},
        "families": list(_check_families(families)),
        "options": {k: list(v) if isinstance(v, tuple) else v for k, v in opts.items()},
    }


def fingerprint(params: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]


def build_synthetic_benchmark(
    data_dir: str | os.PathLike = "data_cache",
    *,
    seed: int = 0,
    image_size: int = 64,
    num_train: int = 4000,
    num_val: int = 500,
    num_test: int = 500,
    families=FAMILIES,
    **options: Any,
):
    """Generate (once) and load the benchmark as a ``datasets.DatasetDict`` with train/validation/test.

    ``options`` are the task knobs of ``DEFAULT_OPTIONS``. The result is cached under
    ``data_dir/synthetic-<fingerprint>`` and reused; generation writes to a temporary directory first and
    renames it into place, so an interrupted run never leaves a half-written dataset behind.
    """
    import datasets

    params = benchmark_params(
        seed=seed, image_size=image_size, num_train=num_train, num_val=num_val, num_test=num_test,
        families=families, **options,
    )
    root = Path(data_dir)
    target = root / f"synthetic-{fingerprint(params)}"
    if _complete(target):
        return datasets.load_from_disk(str(target))
    if target.exists():  # left by hand or by an older layout: regenerate
        shutil.rmtree(target)
    root.mkdir(parents=True, exist_ok=True)
    opts = resolve_options(**options)
    families = tuple(params["families"])
    columns = generate_rows(params["sizes"], seed=seed, image_size=image_size, families=families, opts=opts)
    features = _features()
    # A split of size 0 is left out: Arrow cannot load an empty table back (and an empty split has no use).
    dd = datasets.DatasetDict(
        {split: datasets.Dataset.from_dict(cols, features=features) for split, cols in columns.items() if cols}
    )
    tmp = root / f".tmp-{target.name}-{uuid.uuid4().hex[:8]}"
    try:
        dd.save_to_disk(str(tmp))
        (tmp / "params.json").write_text(json.dumps(params, indent=1, sort_keys=True))
        try:
            os.rename(tmp, target)
        except OSError:
            if not _complete(target):  # someone else won the race with a complete copy: use theirs
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return datasets.load_from_disk(str(target))


def _complete(path: Path) -> bool:
    return (path / "params.json").is_file() and (path / "dataset_dict.json").is_file()


def chance_accuracy(dataset, by: str = "task") -> dict[str, float]:
    """Accuracy of a blind baseline that always answers the majority answer, per family.

    ``by="task"`` (default) takes the majority per (family, task): what a model that reads the question but
    not the image can reach. ``by="family"`` takes one majority answer per family. Majorities are computed on
    ``dataset`` itself (one split), so this is a slightly optimistic estimate of chance.
    """
    if by not in ("task", "family"):
        raise UserError(f"by={by!r}: must be 'task' or 'family'")
    cols = dataset.select_columns(["family", "task", "answer"]).to_dict()
    groups: dict[tuple, Counter] = defaultdict(Counter)
    for fam, task, ans in zip(cols["family"], cols["task"], cols["answer"]):
        groups[(fam, task) if by == "task" else (fam,)][ans] += 1
    hits, totals = Counter(), Counter()
    for key, counts in groups.items():
        hits[key[0]] += counts.most_common(1)[0][1]
        totals[key[0]] += sum(counts.values())
    return {fam: hits[fam] / totals[fam] for fam in sorted(totals)}


# ----------------------------------------------------------------------------------------------- user folders
def load_image_folder(data_dir: str | os.PathLike):
    """Load a user's VQA folder: ``data_dir/{train,validation,test}/`` each with images and ``metadata.jsonl``.

    Every ``metadata.jsonl`` line holds ``file_name``, ``question``, ``answer`` and optionally ``family``
    (``reasoning`` or ``ocr``; default ``reasoning``) and ``task`` (default: the family). At least one split
    must exist. Images are checked up front so a broken file is reported by name, not mid-training.
    """
    import datasets

    root = Path(data_dir)
    expected = f"train/, validation/ or test/ subfolders, each with images and a metadata.jsonl"
    if not root.is_dir():
        raise UserError(f"image folder {str(root)!r} does not exist; expected a directory with {expected}")
    splits = [s for s in SPLITS if (root / s / "metadata.jsonl").is_file()]
    if not splits:
        raise UserError(f"image folder {str(root)!r} holds no dataset; expected {expected}")
    for split in splits:
        _check_folder_split(root / split)
    dd = datasets.load_dataset(
        "imagefolder", data_files={s: str(root / s / "**") for s in splits}, cache_dir=None
    )
    out = {}
    next_id = 0
    for split in splits:
        ds = dd[split]
        if "family" not in ds.column_names:
            ds = ds.add_column("family", ["reasoning"] * len(ds))
        if "task" not in ds.column_names:
            ds = ds.add_column("task", list(ds["family"]))
        ds = ds.add_column("image_id", list(range(next_id, next_id + len(ds))))
        next_id += len(ds)
        keep = ["image", "question", "answer", "family", "task", "image_id"]
        ds = ds.select_columns(keep).cast_column("question", datasets.Value("string"))
        out[split] = ds.cast_column("answer", datasets.Value("string"))
    return datasets.DatasetDict(out)


def _check_folder_split(folder: Path) -> None:
    meta = folder / "metadata.jsonl"
    lines = [ln for ln in meta.read_text(encoding="utf-8").splitlines() if ln.strip()]
    if not lines:
        raise UserError(f"{str(meta)!r} is empty; expected one JSON object per image")
    for lineno, line in enumerate(lines, 1):
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{str(meta)!r} line {lineno} is not valid JSON ({e.msg})") from None
        missing = [k for k in ("file_name", "question", "answer") if k not in rec]
        if missing:
            raise UserError(f"{str(meta)!r} line {lineno} lacks {missing}; need file_name, question, answer")
        if rec.get("family", "reasoning") not in FAMILIES:
            raise UserError(f"{str(meta)!r} line {lineno}: family={rec['family']!r}; allowed: {list(FAMILIES)}")
        path = folder / rec["file_name"]
        try:
            with Image.open(path) as im:
                im.verify()  # parses headers and checksums without decoding all pixels
        except Exception as e:  # noqa: BLE001 - any failure here means the user's file is unusable
            raise UserError(f"image {str(path)!r} cannot be read ({type(e).__name__}); fix or remove it") from None
