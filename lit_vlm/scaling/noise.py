"""Seed noise of a grid table: is the signal (one LLM size to the next) larger than the noise (one seed to
the next)? The scaling law can only be identified when it is.

    python -m lit_vlm scaling seeds --results results/cpu_law/results.csv --family reasoning

Two numbers per grid:
- the per-run seed standard deviation of accuracy, pooled over cells (each cell (LLM, V) trained with several
  seeds; sample SD with ddof = 1), next to the part of it that test-set sampling alone explains
  (sqrt(p (1 - p) / examples));
- for each step up in LLM size, a one-sided Welch t-test that the larger size is more accurate, on the
  per-seed accuracies averaged over V (one number per seed and size), at the 95% level.
"""

from __future__ import annotations

import csv
import math
import statistics
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from lit_vlm.errors import UserError

NEEDED = ("llm", "llm_params", "visual_tokens", "seed", "family", "accuracy", "examples")


@dataclass
class Step:
    smaller: str
    larger: str
    gain: float  # mean accuracy of the larger minus the smaller, averaged over V
    t: float
    p: float  # one-sided: larger > smaller

    @property
    def significant(self) -> bool:
        return self.p < 0.05


@dataclass
class SeedNoise:
    family: str
    seeds: int
    run_sd: float  # pooled per-run seed SD of accuracy
    sampling_sd: float  # what test-set sampling alone gives, pooled the same way
    worst_cell: tuple[str, int, float]  # (llm, V, SD) of the noisiest cell
    steps: list[Step]


def seed_noise(path, family: str = "reasoning", compressor: str | None = None) -> SeedNoise:
    rows = _rows(Path(path), family, compressor)
    cells: dict[tuple[str, int], dict[int, tuple[float, int]]] = defaultdict(dict)
    params: dict[str, int] = {}
    for r in rows:
        cells[(r["llm"], int(r["visual_tokens"]))][int(r["seed"])] = (float(r["accuracy"]), int(r["examples"]))
        params[r["llm"]] = int(r["llm_params"])
    seeds = sorted({s for runs in cells.values() for s in runs})
    thin = [(llm, v) for (llm, v), runs in cells.items() if len(runs) < 2]
    if thin:
        raise UserError(f"{path}: cell {thin[0][0]} at V={thin[0][1]} has one seed; seed noise needs >= 2 seeds per cell")
    variances, sampling, worst = [], [], ("", 0, -1.0)
    for (llm, v), runs in sorted(cells.items()):
        accs = [a for a, _ in runs.values()]
        var = statistics.variance(accs)
        variances.append(var)
        sampling.append(statistics.fmean(a * (1 - a) / n for a, n in runs.values()))
        if math.sqrt(var) > worst[2]:
            worst = (llm, v, math.sqrt(var))
    sizes = sorted(params, key=params.get)
    vs = sorted({v for _, v in cells})
    missing = [(llm, v) for llm in sizes for v in vs if (llm, v) not in cells]
    if missing:
        raise UserError(f"{path}: no {family} rows for {missing[0][0]} at V={missing[0][1]}; every size needs every V")
    common = set.intersection(*(set(runs) for runs in cells.values()))
    per_seed = {llm: [statistics.fmean(cells[(llm, v)][s][0] for v in vs) for s in sorted(common)] for llm in sizes}
    steps = [_welch(a, b, per_seed[a], per_seed[b]) for a, b in zip(sizes, sizes[1:])]
    return SeedNoise(family, len(seeds), math.sqrt(statistics.fmean(variances)),
                     math.sqrt(statistics.fmean(sampling)), worst, steps)


def _welch(smaller: str, larger: str, a: list[float], b: list[float]) -> Step:
    from scipy.stats import ttest_ind

    gain = statistics.fmean(b) - statistics.fmean(a)
    if statistics.variance(a) + statistics.variance(b) == 0:  # identical seeds: the test is undefined
        return Step(smaller, larger, gain, math.inf if gain > 0 else -math.inf, 0.0 if gain > 0 else 1.0)
    res = ttest_ind(b, a, equal_var=False, alternative="greater")
    return Step(smaller, larger, gain, float(res.statistic), float(res.pvalue))


def _rows(path: Path, family: str, compressor: str | None) -> list[dict]:
    if not path.is_file():
        raise UserError(f"--results {str(path)!r} does not exist; give a grid-runner results.csv")
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in NEEDED if c not in (reader.fieldnames or [])]
        if missing:
            raise UserError(f"{path} lacks the column(s) {missing}; seed noise needs a grid-runner table")
        rows = list(reader)
    compressors = sorted({r.get("compressor", "") for r in rows})
    if compressor is None and len(compressors) > 1:
        raise UserError(f"{path} holds several compressors {compressors}; choose one with --compressor")
    rows = [r for r in rows if r["family"] == family and (compressor is None or r.get("compressor") == compressor)]
    if not rows:
        raise UserError(f"{path} has no rows for family={family!r}" + (f", compressor={compressor!r}" if compressor else ""))
    return rows


def format_noise(report: SeedNoise, max_sd: float = 0.015) -> str:
    ok = report.run_sd <= max_sd
    lines = [
        f"seed noise, {report.family} ({report.seeds} seeds):",
        f"  per-run seed SD {100 * report.run_sd:.2f} points (test-set sampling alone: "
        f"{100 * report.sampling_sd:.2f}); noisiest cell {report.worst_cell[0]} V={report.worst_cell[1]}: "
        f"{100 * report.worst_cell[2]:.2f}  {'PASS' if ok else 'FAIL'} (at most {100 * max_sd:.2f})",
        "  size steps, accuracy averaged over V (one-sided Welch t-test over seeds, 95%):",
    ]
    for s in report.steps:
        lines.append(f"    {s.smaller} -> {s.larger}: {100 * s.gain:+.2f} points, t = {s.t:.2f}, p = {s.p:.3g}  "
                     f"{'significant' if s.significant else 'NOT significant'}")
    n_sig = sum(s.significant for s in report.steps)
    lines.append(f"  {n_sig} of {len(report.steps)} steps significant")
    return "\n".join(lines)
