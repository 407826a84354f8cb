"""Where OCR collapses: accuracy against characters per visual token, and the regime change located.

DeepSeek-OCR reports near-lossless reading up to about 10 text tokens per vision token and a fall beyond.
The kit's analogue: a grid run at several text lengths (the OCR rows' ``ocr_chars``) and V gives each cell
``characters per token = ocr_chars / V``. For each seed, cells with the same ratio are averaged, the plateau is
the best of those means, and the regime change is where the curve (sorted by ratio, linear in log ratio)
first falls below half the plateau. The interval is the range of the per-seed crossings; the estimate is the
crossing of the curve averaged over seeds.

    python -m lit_vlm scaling ocr-regime --results results/cpu_ocr_sweep/*/results.csv --out DIR
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

from lit_vlm.errors import UserError

REQUIRED = ("visual_tokens", "family", "accuracy", "seed", "ocr_chars")


def load_ocr_rows(paths, compressor: str | None = None, llm: str | None = None) -> list[dict]:
    """The OCR rows of one or more grid tables: (seed, chars, V, accuracy), one compressor and LLM."""
    rows = []
    for path in map(Path, paths):
        if not path.is_file():
            raise UserError(f"results file {str(path)!r} does not exist; give grid results.csv paths")
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            missing = [c for c in REQUIRED if c not in (reader.fieldnames or [])]
            if missing:
                raise UserError(f"results file {str(path)!r} lacks {', '.join(missing)}; ocr-regime needs "
                                f"{', '.join(REQUIRED)} (ocr_chars is written by grid runs of this version)")
            rows += [dict(r, _source=str(path)) for r in reader if r["family"] == "ocr"]
    if not rows:
        raise UserError(f"no OCR rows in {', '.join(map(str, paths))}")
    for key, want in (("compressor", compressor), ("llm", llm)):
        present = sorted({r.get(key, "") for r in rows})
        if want is None and len(present) > 1:
            raise UserError(f"the tables hold several {key}s ({', '.join(present)}); choose one with --{key} NAME")
        if want is not None:
            if want not in present:
                raise UserError(f"--{key} {want!r} is not in the tables; present: {', '.join(present)}")
            rows = [r for r in rows if r.get(key, "") == want]
    out = []
    for r in rows:
        where = f"{r.get('cell', '?')} in {r['_source']}"
        try:
            chars, v, acc = float(r["ocr_chars"]), float(r["visual_tokens"]), float(r["accuracy"])
        except ValueError:
            raise UserError(f"ocr_chars, visual_tokens and accuracy must be numbers at {where}; got "
                            f"{r['ocr_chars']!r}, {r['visual_tokens']!r}, {r['accuracy']!r}") from None
        if not (chars > 0 and v > 0 and 0 <= acc <= 1):
            raise UserError(f"at {where}: need ocr_chars > 0, V > 0 and accuracy in [0, 1]; "
                            f"got {chars:g}, {v:g}, {acc:g}")
        out.append({"seed": r["seed"], "chars": chars, "v": v, "accuracy": acc})
    return out


def curve(rows: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """(characters per token, mean accuracy) sorted by the ratio, cells with the same ratio averaged."""
    groups: dict[float, list[float]] = {}
    for r in rows:
        groups.setdefault(round(r["chars"] / r["v"], 9), []).append(r["accuracy"])
    x = np.array(sorted(groups))
    return x, np.array([np.mean(groups[k]) for k in x])


def crossing(x: np.ndarray, acc: np.ndarray, fraction: float = 0.5) -> tuple[float | None, float, str]:
    """(ratio where acc first falls below fraction x plateau after the plateau, plateau, why when None)."""
    top = int(np.argmax(acc))
    plateau = float(acc[top])
    threshold = fraction * plateau
    for i in range(top + 1, len(x)):
        if acc[i] < threshold:
            a0, a1 = acc[i - 1], acc[i]
            t = (a0 - threshold) / (a0 - a1)  # linear in log ratio between the last point above and this one
            return float(math.exp(math.log(x[i - 1]) + t * (math.log(x[i]) - math.log(x[i - 1])))), plateau, ""
    return None, plateau, f"accuracy never falls below {fraction:g} x its plateau {plateau:.3f} within the sweep"


def ocr_regime(rows: list[dict], fraction: float = 0.5) -> dict:
    """The regime change per seed and for the seed-mean curve, with the points behind them."""
    seeds = sorted({r["seed"] for r in rows})
    per_seed = {}
    for s in seeds:
        x, acc = curve([r for r in rows if r["seed"] == s])
        at, plateau, why = crossing(x, acc, fraction)
        per_seed[s] = {"chars_per_token": at, "plateau": plateau, "reason": why or None}
    # the seed-mean curve: each (chars, V) cell averaged over seeds first
    cells: dict[tuple, list[float]] = {}
    for r in rows:
        cells.setdefault((r["chars"], r["v"]), []).append(r["accuracy"])
    mean_rows = [{"chars": c, "v": v, "accuracy": float(np.mean(a)), "seed": "mean"} for (c, v), a in cells.items()]
    x, acc = curve(mean_rows)
    at, plateau, why = crossing(x, acc, fraction)
    found = [p["chars_per_token"] for p in per_seed.values() if p["chars_per_token"] is not None]
    return {
        "definition": f"characters per visual token (ocr_chars / V) where OCR accuracy first falls below "
                      f"{fraction:g} x its plateau (the best mean over cells of equal ratio), linear in log ratio",
        "chars_per_token": at, "plateau": plateau, "threshold": fraction * plateau, "reason": why or None,
        "interval_over_seeds": [min(found), max(found)] if len(found) == len(seeds) else None,
        "per_seed": per_seed, "n_seeds": len(seeds),
        "curve": {"chars_per_token": x.tolist(), "accuracy": acc.tolist()},
        "cells": sorted(({"ocr_chars": c, "visual_tokens": v, "chars_per_token": c / v,
                          "accuracy": [float(a) for a in accs]} for (c, v), accs in cells.items()),
                        key=lambda d: (d["chars_per_token"], d["ocr_chars"])),
    }


def plot_regime(report: dict, rows: list[dict]):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.5, 4.5), layout="constrained")
    ax = fig.add_subplot()
    for i, chars in enumerate(sorted({r["chars"] for r in rows})):
        pts = [r for r in rows if r["chars"] == chars]
        ax.scatter([r["chars"] / r["v"] for r in pts], [r["accuracy"] for r in pts], color=f"C{i}", s=16,
                   alpha=0.7, label=f"{chars:g} characters")
    c = report["curve"]
    ax.plot(c["chars_per_token"], c["accuracy"], "k-", lw=1.5, label="mean over seeds")
    ax.axhline(report["threshold"], color="grey", ls=":", lw=1, label="half the plateau")
    if report["interval_over_seeds"]:
        ax.axvspan(*report["interval_over_seeds"], color="C3", alpha=0.15, label="range over seeds")
    if report["chars_per_token"]:
        ax.axvline(report["chars_per_token"], color="C3", lw=1.5,
                   label=f"regime change: {report['chars_per_token']:.3g} chars/token")
    ax.set_xscale("log")
    ax.set_xlabel("characters per visual token (ocr_chars / V)")
    ax.set_ylabel("OCR accuracy")
    ax.legend(fontsize=8)
    return fig


def summary(report: dict) -> str:
    at, iv = report["chars_per_token"], report["interval_over_seeds"]
    head = (f"OCR regime change at {at:.3g} characters per visual token" if at is not None
            else f"no OCR regime change found: {report['reason']}")
    ival = f" (range over {report['n_seeds']} seeds: {iv[0]:.3g} to {iv[1]:.3g})" if iv else ""
    lines = [head + ival, f"  plateau {report['plateau']:.3f}, threshold {report['threshold']:.3f}",
             "  chars/token -> accuracy: " + ", ".join(
                 f"{x:.3g}: {a:.3f}" for x, a in zip(report["curve"]["chars_per_token"], report["curve"]["accuracy"]))]
    return "\n".join(lines)
