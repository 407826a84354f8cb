"""The paper's OCR-vs-reasoning contrast, checked on a grid table.

    python -m lit_vlm scaling contrast --results results/cpu_mini/results.csv

Three checks, with the thresholds of the grid issue as defaults:

1. OCR needs tokens: for every LLM size, accuracy at the largest V is at least ``ocr_gain`` above V = min
   (a size without a cell at the table's largest V is compared at its own largest, and its line says so: the
   paper's 7B has no OCR cell at 576).
2. Reasoning does not: for every LLM size, accuracy at the smallest V is within ``reasoning_gap`` of its
   best over V.
3. Reasoning needs parameters: at every V, accuracy increases with N from the smallest to the largest size,
   checked two ways: the largest size beats the smallest, and (stricter) every size beats the one below.

Accuracies are means over seeds for one compressor.
"""

from __future__ import annotations

from dataclasses import dataclass

from lit_vlm.errors import UserError


@dataclass
class Check:
    name: str
    passed: bool
    detail: list[str]


def _table(path, compressor: str | None) -> dict[str, dict[tuple[int, int], float]]:
    """family -> {(N, V): accuracy}, means over seeds (load_results checks the table and averages)."""
    from lit_vlm.scaling.table import load_results

    table = {}
    for family in ("reasoning", "ocr"):  # the contrast needs both: load_results refuses a table without one
        res = load_results(path, family, compressor=compressor, metric="accuracy")
        # back to N in parameters and to the table's 6-decimal accuracies (1 - (1 - a) is not always a)
        table[family] = {(round(n * 1e9), int(v)): round(1 - e, 6) for n, v, e in zip(res.n, res.v, res.error)}
    return table


def contrast_checks(path, compressor=None, ocr_gain: float = 0.40, reasoning_gap: float = 0.10) -> list[Check]:
    table = _table(path, compressor)
    checks = []

    ocr = table["ocr"]
    sizes, vs = sorted({n for n, _ in ocr}), sorted({v for _, v in ocr})
    lines, ok = [], True
    for n in sizes:
        own = sorted(v for m, v in ocr if m == n)  # a size missing the top V is compared at its own largest
        lo = ocr.get((n, vs[0]))
        if lo is None or len(own) < 2:
            raise UserError(f"{path}: N={n} lacks an OCR cell at V={vs[0] if lo is None else vs[-1]}")
        hi = ocr[(n, own[-1])]
        ok &= hi - lo >= ocr_gain
        note = "" if own[-1] == vs[-1] else f"  (no V={vs[-1]} cell: its largest V)"
        lines.append(f"N={n:,}: V={own[-1]} {hi:.3f} - V={vs[0]} {lo:.3f} = {hi - lo:+.3f}{note}")
    checks.append(Check(f"OCR: accuracy at V={vs[-1]} >= V={vs[0]} + {ocr_gain:.2f} for every size", ok, lines))

    rea = table["reasoning"]
    sizes, vs = sorted({n for n, _ in rea}), sorted({v for _, v in rea})
    lines, ok = [], True
    for n in sizes:
        if (n, vs[0]) not in rea:  # the check compares every size with its own V=min cell
            raise UserError(f"{path}: N={n} lacks a reasoning cell at V={vs[0]} (the smallest V of the table); "
                            "every LLM size needs one")
        row = {v: rea[(n, v)] for v in vs if (n, v) in rea}
        best_v = max(row, key=row.get)
        gap = row[best_v] - row[vs[0]]
        ok &= gap <= reasoning_gap
        lines.append(f"N={n:,}: V={vs[0]} {row[vs[0]]:.3f}, best V={best_v} {row[best_v]:.3f}, gap {gap:.3f}")
    checks.append(Check(f"reasoning: V={vs[0]} within {reasoning_gap:.2f} of the best V for every size", ok, lines))

    lines, ends, steps = [], True, True
    for v in vs:
        seq = [rea[(n, v)] for n in sizes if (n, v) in rea]
        up = all(b > a for a, b in zip(seq, seq[1:]))
        ends &= seq[-1] > seq[0]
        steps &= up
        lines.append(f"V={v}: " + " -> ".join(f"{a:.3f}" for a in seq) + ("" if up else "  (not increasing at every step)"))
    order = " < ".join(f"{n:,}" for n in sizes)
    checks.append(Check(f"reasoning: at every V, the largest N beats the smallest ({order})", ends, lines))
    checks.append(Check("reasoning: at every V, accuracy increases with N size by size", steps, []))
    return checks


def format_checks(checks: list[Check]) -> str:
    out = []
    for c in checks:
        out.append(f"[{'PASS' if c.passed else 'FAIL'}] {c.name}")
        out += [f"    {line}" for line in c.detail]
    return "\n".join(out)
