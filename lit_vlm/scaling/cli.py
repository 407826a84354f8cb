"""`python -m lit_vlm scaling fit ...`: fit a scaling law to a results table and write fit.json + plots.

Everything is written to a temporary directory first and moved into --out only once it all succeeded, so
a bad input (UserError: one line on stderr, exit code 2) never leaves a half-written --out behind.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

from lit_vlm.errors import UserError

EPILOG = """\
writes to --out:
  fit.json            law, family, params, ci95, alpha_over_beta(+_ci95), v_star (per Q: value, ci95),
                      identified (+ identified_reason), validation, law_comparison, rmse, profile_D,
                      frontier, metadata (n_points, loss, bootstrap scheme, seed, units)
  summary.txt         the summary printed to stdout
  frontier.png        error vs inference FLOPs per LLM size, fitted curves and the optimal frontier
                      (Q = 0 and Q = --text-tokens); with --cost full a third panel: each cell at its full
                      inference cost (tower + compressor + question pass + prefill) and the observed frontier
  error_vs_v.png      error vs visual tokens per LLM size
  compare_families.png  reasoning and OCR frontiers side by side, written when the table holds both
                      families (the other family gets a point fit with the same options)

examples:
  python -m lit_vlm scaling fit --results paper --family reasoning --out runs/paper_reasoning
  python -m lit_vlm scaling fit --results results/grid.csv --family ocr --law additive --out runs/ocr
  python -m lit_vlm scaling fit --results results/cpu_baselines/results.csv --compressor random --cost full \
      --out runs/random_full
"""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse's two-line usage error -> our one-line UserError
        raise UserError(message)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m lit_vlm scaling", description="Scaling laws for visual tokens vs LLM size.")
    sub = parser.add_subparsers(dest="command", metavar="fit | contrast | seeds | ocr-regime")
    fit = sub.add_parser("fit", help="fit a law, bootstrap it, validate it, find the optimal frontier",
                         epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    fit.add_argument("--results", required=True, help="'paper' (the paper's grid, shipped) or a grid-runner CSV")
    fit.add_argument("--family", default="reasoning", help="reasoning | ocr (default reasoning)")
    fit.add_argument("--out", required=True, help="output directory (created; files in it are replaced)")
    fit.add_argument("--law", default="multiplicative", help="multiplicative | additive (default multiplicative)")
    fit.add_argument("--bootstrap", type=int, default=1000, help="resamples (>= 50), 0 for none (default 1000)")
    fit.add_argument("--bootstrap-scheme", default="case", help="case (cells) | llm (whole LLM sizes)")
    fit.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    fit.add_argument("--text-tokens", type=float, default=50.0, help="Q for the frontier and V* (default 50)")
    fit.add_argument("--ocr-ambiguous", default="flat", help="the paper's ambiguous OCR cell: flat | row")
    fit.add_argument("--compressor", default=None, help="which compressor's rows, when the table has several")
    fit.add_argument("--metric", default="auto", help="auto | accuracy | anls | loss (grid tables; auto = "
                     "accuracy, error = 1 - accuracy as in the paper; loss = the family_loss column, the "
                     "family's per-token test loss)")
    fit.add_argument("--cost", default="paper", help="paper | full: the cost of the observed frontier in fit.json "
                     "(paper: 2 N (Q + V); full: the table's full_inference_flops, tower + compressor + question "
                     "pass + prefill; needs the full-cost columns)")
    fit.add_argument("--no-plots", action="store_true", help="skip the PNG figures")
    con = sub.add_parser("contrast", help="check the OCR-vs-reasoning contrast on a grid table (prints PASS/FAIL)")
    con.add_argument("--results", required=True, help="a grid-runner results.csv with both families")
    con.add_argument("--compressor", default=None, help="which compressor's rows, when the table has several")
    con.add_argument("--ocr-gain", type=float, default=0.40, help="OCR: largest V minus smallest V, at least")
    con.add_argument("--reasoning-gap", type=float, default=0.10, help="reasoning: best V minus smallest V, at most")
    seeds = sub.add_parser("seeds", help="seed noise: per-run SD and whether each step up in LLM size is significant")
    seeds.add_argument("--results", required=True, help="a grid-runner results.csv with >= 2 seeds per cell")
    seeds.add_argument("--family", default="reasoning", help="reasoning | ocr (default reasoning)")
    seeds.add_argument("--compressor", default=None, help="which compressor's rows, when the table has several")
    seeds.add_argument("--max-sd", type=float, default=0.015, help="per-run seed SD allowed (default 0.015)")
    ocr = sub.add_parser("ocr-regime", help="OCR accuracy vs characters per visual token; where it collapses")
    ocr.add_argument("--results", required=True, nargs="+", help="grid results.csv files (one per text length)")
    ocr.add_argument("--out", required=True, help="output directory: ocr_regime.json, ocr_regime.png")
    ocr.add_argument("--compressor", default=None, help="which compressor's rows, when the tables have several")
    ocr.add_argument("--llm", default=None, help="which LLM's rows, when the tables have several")
    ocr.add_argument("--fraction", type=float, default=0.5, help="collapse = below this x the plateau (0.5)")
    ocr.add_argument("--no-plots", action="store_true", help="skip the PNG figure")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["scaling"]:  # tolerate the dispatcher passing its own sub-command along
        argv = argv[1:]
    try:
        args = build_parser().parse_args(argv)
        if args.command == "contrast":
            from lit_vlm.scaling.contrast import contrast_checks, format_checks

            print(format_checks(contrast_checks(args.results, args.compressor, args.ocr_gain, args.reasoning_gap)))
            return 0
        if args.command == "seeds":
            from lit_vlm.scaling.noise import format_noise, seed_noise

            print(format_noise(seed_noise(args.results, args.family, args.compressor), args.max_sd))
            return 0
        if args.command == "ocr-regime":
            return _ocr_regime(args, argv)
        if args.command != "fit":
            raise UserError("missing command; allowed: fit, contrast, seeds, ocr-regime (see --help)")
        return _fit(args, argv)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except SystemExit as e:  # --help
        return int(e.code or 0)


def _out_dir(path: str) -> Path:
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {str(out)!r} exists and is not a directory")
    return out


def _publish(out: Path, prefix: str, write) -> list[str]:
    """``write(tmp)`` makes the outputs in a temporary folder and names them; only then are they moved into
    ``out``, so a failure on the way (a plot, a disk) leaves ``out`` as it was."""
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        names = write(Path(tmp))
        out.mkdir(parents=True, exist_ok=True)
        for name in names:
            shutil.move(str(Path(tmp) / name), str(out / name))
    return names


def _fit(args, argv) -> int:
    from lit_vlm.scaling.laws import get_law
    from lit_vlm.scaling.report import fit_report, summary_text
    from lit_vlm.scaling.table import families_in, load_results

    out = _out_dir(args.out)
    law = get_law(args.law).name
    if args.bootstrap != 0 and args.bootstrap < 50:
        raise UserError(f"--bootstrap {args.bootstrap} is too few; allowed: 0 (no bootstrap) or an integer >= 50")
    opts = dict(ocr_ambiguous=args.ocr_ambiguous, compressor=args.compressor, metric=args.metric, cost=args.cost)
    results = load_results(args.results, args.family, **opts)
    extra = {"results": str(args.results), "ocr_ambiguous": args.ocr_ambiguous,
             "command": " ".join(["python -m lit_vlm scaling", *argv])}
    report = fit_report(results, law, n_bootstrap=args.bootstrap, scheme=args.bootstrap_scheme, seed=args.seed,
                        text_tokens=args.text_tokens, extra=extra, cost=args.cost)
    summary = summary_text(report)

    def write(tmp: Path) -> list[str]:
        nonlocal summary
        written = ["fit.json", "summary.txt"]
        if not args.no_plots:
            names, notes = _plots(tmp, report, results, law, args, opts, families_in(args.results))
            written += names
            summary += "".join(f"\n  note: {n}" for n in notes)
        (tmp / "fit.json").write_text(json.dumps(_clean(report), indent=2, allow_nan=False) + "\n")
        (tmp / "summary.txt").write_text(summary + "\n")
        return written

    written = _publish(out, "lit_vlm_scaling_", write)
    print(summary)
    print(f"  wrote {', '.join(str(out / n) for n in written)}")
    return 0


def _ocr_regime(args, argv) -> int:
    from lit_vlm.scaling.ocr_regime import load_ocr_rows, ocr_regime, plot_regime, summary

    if not 0 < args.fraction < 1:
        raise UserError(f"--fraction {args.fraction} must be in (0, 1)")
    out = _out_dir(args.out)
    rows = load_ocr_rows(args.results, args.compressor, args.llm)
    report = ocr_regime(rows, args.fraction)
    report["command"] = " ".join(["python -m lit_vlm scaling", *argv])
    report["results"] = [str(p) for p in args.results]
    text = summary(report)

    def write(tmp: Path) -> list[str]:
        (tmp / "ocr_regime.json").write_text(json.dumps(_clean(report), indent=2, allow_nan=False) + "\n")
        if args.no_plots:
            return ["ocr_regime.json"]
        plot_regime(report, rows).savefig(tmp / "ocr_regime.png", dpi=110)
        return ["ocr_regime.json", "ocr_regime.png"]

    names = _publish(out, "lit_vlm_ocr_", write)
    print(text)
    print(f"  wrote {', '.join(str(out / n) for n in names)}")
    return 0


def _plots(tmp, report, results, law, args, opts, families):
    """Write the PNGs into tmp: (file names, notes)."""
    from lit_vlm.scaling.fit import Fit, fit_law
    from lit_vlm.scaling.table import load_results
    from lit_vlm.scaling.plots import plot_compare, plot_cost, plot_error_vs_v, plot_frontier
    from matplotlib.figure import Figure

    fit = Fit(law, results.family, report["params"], report["sse"], report["rmse"], len(results),
              report["converged"], 0.0, report["on_bound"], results.target)
    qs = sorted({0.0, float(args.text_tokens)})
    panels = len(qs) + (args.cost == "full")
    fig = Figure(figsize=(6 * panels, 4.5), layout="constrained")
    axes = fig.subplots(1, panels, squeeze=False)[0]
    for ax, q in zip(axes, qs):
        plot_frontier(fit, results, q=q, ax=ax)
    if args.cost == "full":
        plot_cost(fit, results, "full", args.text_tokens, ax=axes[-1])
    fig.savefig(tmp / "frontier.png", dpi=110)
    plot_error_vs_v(fit, results).savefig(tmp / "error_vs_v.png", dpi=110)
    names, notes = ["frontier.png", "error_vs_v.png"], []
    if set(families) >= {"reasoning", "ocr"}:
        pairs = {}
        try:
            for fam in ("reasoning", "ocr"):
                res = results if fam == results.family else load_results(args.results, fam, **opts)
                pairs[fam] = (fit if fam == results.family else fit_law(res, law), res)
        except UserError as e:  # the other family is not fittable: skip the side-by-side, say why
            return names, [f"no compare_families.png: {e}"]
        plot_compare(pairs, q=0.0).savefig(tmp / "compare_families.png", dpi=110)
        names.append("compare_families.png")
    return names, notes


def _clean(x):
    """JSON-safe: numpy scalars to Python, non-finite floats to null."""
    import math

    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if hasattr(x, "item") and not isinstance(x, (str, bytes)):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x
