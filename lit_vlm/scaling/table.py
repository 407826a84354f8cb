"""One loader for both result tables, mapped to a common frame: (llm, N in billions, V, error) per cell.

Two schemas are understood:
- the paper's grid (shipped as package data, load it by the name "paper"):
  family, llm, llm_params_billion, visual_tokens, score, note
- the grid runner's table (lit_vlm/grid.py): one row per cell, family and seed, with columns
  llm, llm_params (raw count, no embeddings), visual_tokens, family, accuracy, and optionally
  compressor, seed, text_tokens, anls, loss, family_loss. Other columns are ignored. ``metric="loss"`` fits
  ``family_loss`` (the family's own per-token test loss); ``loss`` pools both families, so it is never fitted.
  ``cost="full"`` also reads the full inference-cost ledger (``FULL_COST``: tower, compressor, QueCC's
  question pass, and their sum with the prefill), averaged over seeds like the error.

Why the csv module and not pandas: an empty cell (a missing measurement, dropped and counted) must stay
distinguishable from a written "nan" (a broken measurement, refused).
"""

from __future__ import annotations

import csv
import math
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np

from lit_vlm.constants import FAMILIES
from lit_vlm.errors import UserError

METRICS = ("auto", "score", "accuracy", "anls", "loss")
COSTS = ("paper", "full")
FULL_COST = ("vision_flops", "compressor_flops", "question_flops", "full_inference_flops")
PAPER_COLUMNS = ("family", "llm", "llm_params_billion", "visual_tokens", "score")
GRID_COLUMNS = ("llm", "llm_params", "visual_tokens", "family")
# The paper's OCR source lists one cell twice with different values; the note in the CSV carries both.
AMBIGUOUS_NOTE = re.compile(r"row form of the source gives ([0-9.]+); flat list gives ([0-9.]+)")


def size_label(n_billion) -> str:
    """An LLM size as figures and fold names show it: 0.5B and 7B as the paper writes them, 8.27k or 295k for a
    CPU grid's (N in billions, as Results holds it)."""
    p = float(n_billion) * 1e9
    if p >= 1e8:  # the paper's sizes, 0.5B to 14B
        return f"N={p / 1e9:.3g}B"
    for unit, scale in (("M", 1e6), ("k", 1e3)):
        if p >= scale:
            return f"N={p / scale:.3g}{unit}"
    return f"N={p:.3g}"


@dataclass
class Results:
    """Cells of one family, one row per (LLM, V): the frame every fit works on."""

    family: str
    llm: list[str]
    n: np.ndarray  # LLM parameters in billions (no embeddings)
    v: np.ndarray  # visual tokens
    error: np.ndarray  # 1 - score, or the loss
    target: str = "1 - score"
    source: str = "arrays"
    n_missing: int = 0  # empty cells dropped
    n_seeds_averaged: int = 0  # rows folded into a mean over seeds
    text_tokens: float | None = None  # mean Q in the table, when it records one
    compressor: str | None = None
    notes: list[str] = field(default_factory=list)
    costs: dict[str, np.ndarray] | None = None  # cost="full": each FULL_COST column per cell (seed mean)

    def __len__(self) -> int:
        return len(self.error)

    def subset(self, mask) -> "Results":
        mask = np.asarray(mask)
        idx = np.flatnonzero(mask) if mask.dtype == bool else mask
        return Results(self.family, [self.llm[i] for i in idx], self.n[idx], self.v[idx], self.error[idx],
                       self.target, self.source, self.n_missing, self.n_seeds_averaged, self.text_tokens,
                       self.compressor, list(self.notes),
                       None if self.costs is None else {k: c[idx] for k, c in self.costs.items()})

    def to_dict(self) -> dict:
        return {"family": self.family, "source": self.source, "target": self.target, "n_points": len(self),
                "n_missing": self.n_missing, "llm_sizes_billion": sorted(set(self.n.tolist())),
                "visual_tokens": sorted(set(self.v.tolist())), "text_tokens_in_table": self.text_tokens,
                "compressor": self.compressor, "notes": self.notes}


def make_results(n_billion, v, *, error=None, score=None, family="custom", llm=None) -> Results:
    """Build a frame from arrays (for notebooks and tests); give exactly one of error or score."""
    if (error is None) == (score is None):
        raise UserError("give exactly one of error= or score=")
    vals = np.asarray(score if error is None else error, dtype=float).ravel()
    name = "score" if error is None else "error"
    n = np.asarray(n_billion, dtype=float).ravel()
    v = np.asarray(v, dtype=float).ravel()
    if not (len(n) == len(v) == len(vals)):
        raise UserError(f"n, v and {name} must have the same length, got {len(n)}, {len(v)}, {len(vals)}")
    for i in range(len(vals)):
        where = f"{size_label(n[i])}, V={v[i]:g}"
        _check_cell(vals[i], name, where, upper=1.0 if name == "score" else math.inf)
        _check_positive(n[i], "N (llm params)", where)
        _check_positive(v[i], "V (visual tokens)", where)
    llm = list(llm) if llm is not None else [f"{x:g}B" for x in n]
    err = 1.0 - vals if error is None else vals
    res = Results(family, llm, n, v, err, "1 - score" if error is None else "error")
    _check_duplicates(res)
    return res


def load_results(source="paper", family="reasoning", *, ocr_ambiguous="flat", compressor=None,
                 metric="auto", cost="paper") -> Results:
    """Load one family from the paper's grid ("paper") or a grid-runner CSV path (``cost="full"``: with the
    full-cost ledger per cell, which only grid tables written with it have)."""
    if family not in FAMILIES:
        raise UserError(f"unknown family {family!r}; allowed: {', '.join(FAMILIES)}")
    if ocr_ambiguous not in ("flat", "row"):
        raise UserError(f"unknown --ocr-ambiguous {ocr_ambiguous!r}; allowed: flat, row")
    if metric not in METRICS:
        raise UserError(f"unknown metric {metric!r}; allowed: {', '.join(METRICS)}")
    if cost not in COSTS:
        raise UserError(f"unknown cost {cost!r}; allowed: {', '.join(COSTS)}")
    header, rows, name = _read_csv(source)
    if cost == "full":
        missing = [c for c in FULL_COST if c not in header]
        if missing:
            raise UserError(f"--cost full needs the full-cost columns; results file {name!r} lacks "
                            f"{', '.join(missing)} (a table written before the ledger: re-run its cells, "
                            "or use --cost paper)")
    if "llm_params_billion" in header:
        return _from_paper(header, rows, name, family, ocr_ambiguous)
    return _from_grid(header, rows, name, family, compressor, metric, cost == "full")


def families_in(source="paper") -> list[str]:
    """Which families a table holds (to draw reasoning and OCR side by side when both are there)."""
    header, rows, _ = _read_csv(source)
    if "family" not in header:
        return []
    return [f for f in FAMILIES if any(r["family"] == f for r in rows)]


def _read_csv(source):
    if str(source) == "paper":
        text = resources.files("lit_vlm.scaling").joinpath("data/paper_grid.csv").read_text()
        name = "paper"
    else:
        path = Path(source)
        if not path.is_file():
            raise UserError(f"results file {str(source)!r} does not exist; give a CSV path or 'paper'")
        text, name = path.read_text(), str(path)
    reader = csv.DictReader(text.splitlines())
    header = [h.strip() for h in (reader.fieldnames or [])]
    rows = [{k.strip(): (val or "").strip() for k, val in r.items() if k is not None} for r in reader]
    return header, rows, name


def _require(header, columns, name):
    for col in columns:
        if col not in header:
            raise UserError(f"results file {name!r} lacks column {col!r} (has: {', '.join(header) or 'none'})")


def _number(text, column, where):
    try:
        return float(text)
    except ValueError:
        raise UserError(f"{column} {text!r} at {where} is not a number") from None


def _check_cell(x, column, where, upper=1.0):
    if math.isnan(x):
        raise UserError(f"{column} is NaN at {where}; allowed: a number in [0, {upper:g}] "
                        "or an empty cell for a missing measurement")
    if x < 0 or x > upper:
        raise UserError(f"{column} {x:g} at {where} is out of range; allowed: [0, {upper:g}]")


def _check_positive(x, column, where):
    if not x > 0 or math.isinf(x):
        raise UserError(f"{column} {x:g} at {where} must be a positive finite number")


def _from_paper(header, rows, name, family, ocr_ambiguous):
    _require(header, PAPER_COLUMNS, name)
    cells, missing, notes = {}, 0, []
    for r in rows:
        if r["family"] != family:
            continue
        where = f"{r['llm']}, V={r['visual_tokens']}"
        n = _number(r["llm_params_billion"], "llm_params_billion", where)
        v = _number(r["visual_tokens"], "visual_tokens", where)
        _check_positive(n, "llm_params_billion", where)
        _check_positive(v, "visual_tokens", where)
        if r["score"] == "":
            missing += 1
            notes.append(f"missing cell dropped: {where}")
            continue
        score = _number(r["score"], "score", where)
        m = AMBIGUOUS_NOTE.search(r.get("note", ""))
        if m:  # the user picks which reading of the source to trust
            score = float(m.group(1) if ocr_ambiguous == "row" else m.group(2))
            notes.append(f"ambiguous cell {where}: used the {ocr_ambiguous} value {score:g}")
        _check_cell(score, "score", where)
        _add_cell(cells, (r["llm"], v), (n, score), where)
    return _frame(cells, family, "1 - score", name, missing, 0, None, None, notes)


def _from_grid(header, rows, name, family, compressor, metric, full_cost=False):
    _require(header, GRID_COLUMNS, name)
    if metric == "auto":  # error = 1 - accuracy, the paper's definition (the grid's loss pools both families)
        metric = "accuracy"
    if metric == "score":
        metric = "accuracy"
    column = "family_loss" if metric == "loss" else metric
    if column == "family_loss" and column not in header:
        raise UserError(f"results file {name!r} has no family_loss column (the per-family test loss, written by "
                        "newer grid runs); re-run the grid, or fit --metric accuracy")
    _require(header, (column,), name)
    rows = [r for r in rows if r["family"] == family]
    if not rows:
        raise UserError(f"results file {name!r} has no rows for family {family!r}")
    present = sorted({r.get("compressor", "") for r in rows})
    if compressor is None and len(present) > 1:
        raise UserError(f"results file {name!r} has several compressors ({', '.join(present)}); "
                        "choose one with --compressor NAME")
    if compressor is not None:
        if compressor not in present:
            raise UserError(f"compressor {compressor!r} not in {name!r}; present: {', '.join(present)}")
        rows = [r for r in rows if r.get("compressor", "") == compressor]
    upper = math.inf if metric == "loss" else 1.0
    by_seed, missing, q, costs = {}, 0, [], {}
    for r in rows:
        where = f"{r['llm']}, V={r['visual_tokens']}, seed={r.get('seed', '')}"
        n = _number(r["llm_params"], "llm_params", where)
        v = _number(r["visual_tokens"], "visual_tokens", where)
        _check_positive(n, "llm_params", where)
        _check_positive(v, "visual_tokens", where)
        if r[column] == "":
            missing += 1
            continue
        val = _number(r[column], column, where)
        _check_cell(val, column, where, upper)
        if r.get("text_tokens"):
            q.append(_number(r["text_tokens"], "text_tokens", where))
        _add_cell(by_seed, (r["llm"], v, r.get("seed", "")), (n / 1e9, val), where)
        if full_cost:
            empty = [c for c in FULL_COST if r[c] == ""]
            if empty:
                raise UserError(f"--cost full: {', '.join(empty)} empty at {where} (a row written before the "
                                "full-cost ledger); re-run that cell, or use --cost paper")
            costs.setdefault((r["llm"], v), []).append([_number(r[c], c, where) for c in FULL_COST])
    # average the seeds of each (llm, V) cell: the law models the expected score, not one run's noise
    groups = {}
    for (llm, v, _), (n, val) in by_seed.items():
        groups.setdefault((llm, v), []).append((n, val))
    cells = {k: (g[0][0], float(np.mean([x for _, x in g]))) for k, g in groups.items()}
    n_avg = sum(len(g) for g in groups.values() if len(g) > 1)
    target = "loss" if metric == "loss" else f"1 - {metric}"
    res = _frame(cells, family, target, name, missing, n_avg, float(np.mean(q)) if q else None,
                 compressor or (present[0] or None), [f"{missing} empty cells dropped"] if missing else [])
    if full_cost:
        keys = list(zip(res.llm, res.v.tolist()))
        mean = {k: np.mean(costs[k], axis=0) for k in keys}
        res.costs = {c: np.array([mean[k][i] for k in keys]) for i, c in enumerate(FULL_COST)}
    return res


def _add_cell(cells, key, value, where):
    if key in cells and cells[key][1] != value[1]:
        raise UserError(f"duplicate cell {where} with different values {cells[key][1]:g} and {value[1]:g}; "
                        "allowed: one value per cell (or one per seed)")
    cells[key] = value


def _frame(cells, family, target, name, missing, n_avg, q, compressor, notes):
    if not cells:
        raise UserError(f"results {name!r} have no usable cells for family {family!r}")
    keys = sorted(cells, key=lambda k: (cells[k][0], k[1]))
    n = np.array([cells[k][0] for k in keys])
    val = np.array([cells[k][1] for k in keys])
    err = val if target == "loss" else 1.0 - val
    res = Results(family, [k[0] for k in keys], n, np.array([k[1] for k in keys]), err, target, name,
                  missing, n_avg, q, compressor, notes)
    _check_sizes(res, name)
    return res


def _check_sizes(res, name):
    # one name must mean one size, or "leave one size out" would be ambiguous
    sizes = {}
    for llm, n in zip(res.llm, res.n):
        if sizes.setdefault(llm, n) != n:
            raise UserError(f"llm {llm!r} in {name!r} has two sizes ({sizes[llm]:g}B and {n:g}B); "
                            "allowed: one parameter count per llm")


def _check_duplicates(res):
    seen = {}
    for llm, n, v, e in zip(res.llm, res.n, res.v, res.error):
        _add_cell(seen, (llm, n, v), (n, e), f"{llm}, V={v:g}")
