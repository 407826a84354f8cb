"""Wall time of each tutorial notebook in smoke mode (issue budget: at most 5 minutes each on a 2-core CPU).

    python bench/bench_notebooks.py [--out bench/results/notebooks_smoke.txt] [NN ...]

Timings live here, not in the tests: the test suite only checks that every notebook runs. Run it on an idle
machine (nothing else using the cores); each notebook runs in a fresh kernel in its own temporary folder.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import jupytext
import nbclient

ROOT = Path(__file__).resolve().parents[1]
BUDGET_S = 300


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("only", nargs="*", help="notebook numbers (default: all)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "notebooks_smoke.txt"))
    args = ap.parse_args()
    sources = sorted(p for p in (ROOT / "tutorials").glob("[0-9][0-9]_*.py") if not args.only or p.name[:2] in args.only)
    if not sources:
        print(f"error: no notebook matches {args.only}; numbers: 01-06", file=sys.stderr)
        return 2
    os.environ["LIT_VLM_SMOKE"] = "1"
    lines = [f"# python bench/bench_notebooks.py {' '.join(args.only)}".rstrip(),
             f"# smoke mode, one fresh kernel each, {os.cpu_count()} cores; budget {BUDGET_S} s"]
    for src in sources:
        with tempfile.TemporaryDirectory() as tmp:
            nb = jupytext.read(src)
            start = time.perf_counter()
            nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                    resources={"metadata": {"path": tmp}}).execute()
            seconds = time.perf_counter() - start
        line = f"{src.stem}: {seconds:.0f} s ({'within' if seconds <= BUDGET_S else 'OVER'} the {BUDGET_S} s budget)"
        print(line, flush=True)
        lines.append(line)
    Path(args.out).write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
