"""What the tutorial notebooks share, and the one command that rebuilds their committed outputs.

In a notebook (after its parameters cell)::

    from lit_vlm import tutorial
    kit = tutorial.setup(MODE, WORK_DIR)     # mode, work folder, device, quiet logs, inline figures
    VISION, LLM = tutorial.tiny_sizes(kit.smoke)

Three modes. ``committed`` (what the .ipynb files in the repository were executed in): smoke sizes, and the
grid is not trained: the committed grid results are shown. ``smoke`` (the default outside Colab): tiny sizes
and a few training steps, seconds to a minute per notebook on a CPU. ``full`` (the default on Colab): sizes for
one GPU. The committed grid results are found in a clone (``results/<grid>/``) and in a pip-installed kit
(package data ``lit_vlm/_committed/<grid>/``, copied there by setup.py when the wheel is built).

    python -m lit_vlm.tutorial build [01 02 ...]   # re-execute tutorials/NN_*.py in committed mode into .ipynb
    python -m lit_vlm.tutorial check               # exit 1 if a committed .ipynb is older than its inputs
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import sys
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

from lit_vlm.errors import UserError

# The repository: the Colab badges and the install cell of every notebook use exactly these (a test checks).
REPO_URL = "https://github.com/lit-vlm/lit_vlm"
BRANCH = "main"
INSTALL = f"git+{REPO_URL}"
MODES = ("committed", "smoke", "full")
GRID = "cpu_law"  # the committed scaling grid notebooks 03-05 show and fit
# The benchmark notebooks 02, 05 and 06 train their small models on: every question is about the image (colours,
# shapes, counts, positions, characters), which is what compressors are compared on. cpu_law's reasoning is
# mostly knowledge the image does not hold, built for the law, not for looking at what a token keeps.
BENCHMARK = "cpu_mini"
BUILD_COMMAND = "python -m lit_vlm.tutorial build"

PACKAGE = Path(__file__).resolve().parent
PACKAGED = PACKAGE / "_committed"  # package data of a built wheel (setup.py)
_READS_ENV = "LIT_VLM_RECORD_READS"  # set by `build`: where setup files append the committed files they read


def colab_url(notebook: str) -> str:
    owner_name = REPO_URL.removeprefix("https://github.com/")
    return f"https://colab.research.google.com/github/{owner_name}/blob/{BRANCH}/tutorials/{notebook}.ipynb"


def repo_root() -> Path | None:
    """The clone this package was imported from, or None for an installed kit."""
    root = PACKAGE.parent
    return root if (root / "pyproject.toml").is_file() and (root / "results").is_dir() else None


def in_colab() -> bool:
    return "google.colab" in sys.modules


def resolve_mode(mode: str | None = "") -> str:
    """MODE as given, else $LIT_VLM_MODE, else $LIT_VLM_SMOKE (1: smoke, 0: full), else full on Colab and smoke
    elsewhere."""
    chosen = (mode or os.environ.get("LIT_VLM_MODE", "")).strip().lower()
    if not chosen and "LIT_VLM_SMOKE" in os.environ:
        off = os.environ["LIT_VLM_SMOKE"].strip().lower() in ("0", "false", "no", "")
        chosen = "full" if off else "smoke"
    chosen = chosen or ("full" if in_colab() else "smoke")
    if chosen not in MODES:
        raise UserError(f"MODE = {chosen!r} is not a tutorial mode; choose one of {', '.join(MODES)}")
    return chosen


@dataclass
class Kit:
    mode: str
    work: Path  # data, towers and grids
    accelerator: str
    committed: Path | None  # the committed grid's results.csv

    @property
    def smoke(self) -> bool:
        """Tiny sizes (smoke and committed modes)."""
        return self.mode != "full"

    def pick(self, value, smoke, full):
        """A parameter left at None takes the mode's default."""
        return value if value is not None else (smoke if self.smoke else full)


def _record(path: Path) -> None:
    log = os.environ.get(_READS_ENV)
    if log:
        with open(log, "a") as fh:
            fh.write(f"{path}\n")


def committed_file(name: str, grid: str = GRID, record: bool = True) -> Path | None:
    """A committed file of `grid`: results.csv, grid.log or config.yaml (the grid's config), clone first.
    `record`: the notebook's output depends on the file's content (build hashes it)."""
    root = repo_root()
    in_clone = {"config.yaml": Path("configs") / "grid" / f"{grid}.yaml"}.get(name, Path("results") / grid / name)
    for path in ([root / in_clone] if root else []) + [PACKAGED / grid / name]:
        if path.is_file():
            if record:
                _record(path)
            return path
    return None


def committed_results(grid: str = GRID, record: bool = True) -> Path | None:
    return committed_file("results.csv", grid, record)


def shown(path: Path | None) -> str:
    """A path as a notebook prints it: relative to the clone or to site-packages, so outputs carry no machine's
    folders."""
    if path is None:
        return "none"
    for base in filter(None, [repo_root(), PACKAGE.parent]):
        if Path(path).resolve().is_relative_to(base):
            return str(Path(path).resolve().relative_to(base))
    return str(path)


def grid_results(path: str = "", grid: str = GRID) -> Path:
    """The results table a notebook analyses: `path` when given (e.g. the grid notebook 03 trained), else the
    committed grid."""
    if path:
        if not Path(path).is_file():
            raise UserError(f"GRID_RESULTS = {path!r} is not a file; give a grid's results.csv, or '' for the "
                            "committed grid")
        return Path(path)
    found = committed_results(grid)
    if found is None:
        raise UserError(f"the committed grid {grid!r} is neither in a clone nor in the installed package")
    return found


def task_options(grid: str = BENCHMARK) -> dict:
    """The synthetic benchmark's options of a committed grid: by default BENCHMARK's (easier than the generator's
    defaults, so that small models start to learn within minutes); `task_options(GRID)` for the scaling grid's."""
    import yaml

    path = committed_file("config.yaml", grid)
    if path is None:
        raise UserError(f"no committed config for grid {grid!r} in the repository or the installed package")
    return yaml.safe_load(path.read_text())["data"]["task_options"]


def tiny_sizes(smoke: bool) -> tuple[dict, dict]:
    """The VLM the notebooks build: an 8 x 8 patch grid (64 px, patch 8), so V in {1, 4, 16, 64}; full mode uses
    the quickstart's sizes."""
    if smoke:
        vision = dict(image_size=64, patch_size=8, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64)
        return vision, dict(model_type="llama", hidden_size=64, num_layers=2, num_heads=4)
    vision = dict(image_size=64, patch_size=8, hidden_size=64, num_layers=2, num_heads=4, intermediate_size=128)
    return vision, dict(model_type="llama", hidden_size=128, num_layers=2, num_heads=4)


def quiet() -> None:
    """Progress bars of datasets, Lightning's banner lines and advice warnings off; figures inline."""
    import datasets
    import lightning.pytorch  # noqa: F401  (imported before its loggers are quietened: importing resets them)

    datasets.disable_progress_bars()
    for category in (UserWarning, DeprecationWarning, FutureWarning):
        warnings.filterwarnings("ignore", category=category)
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        ipython = get_ipython()  # type: ignore[name-defined]  # noqa: F821
    except NameError:
        ipython = None
    if ipython is not None and "ipykernel" in sys.modules:
        ipython.run_line_magic("matplotlib", "inline")  # even when MPLBACKEND says otherwise


def setup(mode: str | None = "", work_dir: str = "", verbose: bool = True) -> Kit:
    import torch

    chosen = resolve_mode(mode)
    quiet()
    smoke = chosen != "full"
    if smoke:
        torch.set_num_threads(1)  # tiny tensors: one thread is as fast, and kind to a shared machine
    work_dir = work_dir or os.environ.get("LIT_VLM_WORK_DIR", "")
    default = Path(tempfile.gettempdir()) / "lit_vlm_tutorials" if smoke else Path("runs") / "tutorials"
    work = Path(work_dir) if work_dir else default
    work.mkdir(parents=True, exist_ok=True)
    located = committed_results(record=False)  # shown, not read: the notebooks that read it say so
    kit = Kit(mode=chosen, work=work, accelerator="cpu" if smoke else "auto", committed=located)
    if verbose:
        print(f"mode: {kit.mode}   work folder: {kit.work}   committed grid: {shown(kit.committed)}")
    return kit


# ---------------------------------------------------------------------------------------------- build / check
def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _tutorials() -> Path:
    root = repo_root()
    if root is None:
        raise UserError("build and check need a clone of the repository (tutorials/ is not in the package)")
    return root / "tutorials"


def sources(names: list[str] | None = None) -> list[Path]:
    found = sorted(_tutorials().glob("[0-9][0-9]_*.py"))
    if names:
        unknown = [n for n in names if not any(p.stem.startswith(n) for p in found)]
        if unknown:
            raise UserError(f"no tutorial {', '.join(unknown)}; there are {', '.join(p.stem for p in found)}")
        found = [p for p in found if any(p.stem.startswith(n) for n in names)]
    return found


def stale(ipynb: Path) -> list[str]:
    """Why the executed notebook is not current: its source or a committed file it read changed ([] = current)."""
    import nbformat

    root = ipynb.parent.parent
    if not ipynb.is_file():
        return [f"{ipynb.name} is missing"]
    meta = nbformat.read(ipynb, as_version=4).metadata.get("lit_vlm", {})
    recorded = {str(ipynb.with_suffix(".py").relative_to(root)): meta.get("source_sha256"), **meta.get("inputs", {})}
    reasons = []
    for rel, sha in recorded.items():
        if not (root / rel).is_file() or _sha256(root / rel) != sha:
            reasons.append(f"{ipynb.name}: {rel} changed since it was executed")
    return reasons


def stable_widget_ids(nb):
    """The notebook with its widgets' model ids (ipywidgets draws a random uuid for each progress bar) renumbered
    in an order that does not depend on them: the widgets the outputs show, in output order, each followed by
    the widgets its state refers to; so a rebuild does not rewrite every id. Returns a new notebook."""
    import nbformat

    state = nb.metadata.get("widgets", {}).get("application/vnd.jupyter.widget-state+json", {}).get("state", {})
    if not state:
        return nb
    order: dict[str, None] = {}

    def visit(model_id: str) -> None:
        if model_id in state and model_id not in order:
            order[model_id] = None
            for ref in re.findall(r"IPY_MODEL_([0-9a-f]{32})", json.dumps(state[model_id], sort_keys=True)):
                visit(ref)

    for cell in nb.cells:
        for out in cell.get("outputs", []):
            visit(out.get("data", {}).get("application/vnd.jupyter.widget-view+json", {}).get("model_id", ""))
    for model_id in sorted(state, key=lambda m: json.dumps(state[m], sort_keys=True)):  # any the outputs miss
        visit(model_id)
    new = {old: f"{i:032x}" for i, old in enumerate(order)}
    text = re.sub(r"(?<![0-9A-Za-z])[0-9a-f]{32}(?![0-9A-Za-z])", lambda m: new.get(m[0], m[0]), nbformat.writes(nb))
    return nbformat.reads(text, as_version=4)


def build(names: list[str] | None = None, timeout: int = 600) -> list[Path]:
    """Execute each tutorial source in committed mode (one shared temporary work folder, a temporary cwd) and
    write its paired .ipynb with the outputs and the sha256 of the source and of every committed file it read."""
    import jupytext
    import nbclient
    import nbformat

    root = _tutorials().parent
    written = []
    work = Path(tempfile.gettempdir()) / "lit_vlm_build"  # a fixed name: the outputs print it
    shutil.rmtree(work, ignore_errors=True)  # fresh: the grids resume from what a folder holds
    with tempfile.TemporaryDirectory(prefix="lit_vlm_build_") as tmp:
        env = {"LIT_VLM_MODE": "committed", "LIT_VLM_WORK_DIR": str(work), "MPLBACKEND": "Agg",
               "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
               "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))}
        saved = {k: os.environ.get(k) for k in [*env, _READS_ENV]}
        try:
            os.environ.update(env)
            for src in sources(names):
                reads = Path(tmp) / f"{src.stem}.reads"
                reads.write_text("")
                os.environ[_READS_ENV] = str(reads)
                nb = jupytext.read(src)
                print(f"executing {src.name} ...", flush=True)
                nbclient.NotebookClient(nb, timeout=timeout, kernel_name="python3",
                                        resources={"metadata": {"path": tmp}}).execute()
                for i, cell in enumerate(nb.cells):
                    cell.metadata.pop("execution", None)  # timestamps: noise in every diff
                    cell.id = f"cell-{i}"  # jupytext draws random ids: noise in every diff too
                nb = stable_widget_ids(nb)
                nb.metadata["jupytext"] = {"formats": "ipynb,py:percent"}  # paired: Jupyter edits reach the .py
                inputs = sorted({Path(p).resolve() for p in reads.read_text().split()})
                nb.metadata["lit_vlm"] = {
                    "executed_with": f"{BUILD_COMMAND} (mode: committed)",
                    "source_sha256": _sha256(src),
                    "inputs": {str(p.relative_to(root)): _sha256(p) for p in inputs if p.is_relative_to(root)},
                }
                out = src.with_suffix(".ipynb")
                nbformat.write(nb, out)
                written.append(out)
                print("wrote", out.relative_to(root), flush=True)
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
    return written


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in ("build", "check"):
        print("usage: python -m lit_vlm.tutorial build [NN ...] | check", file=sys.stderr)
        return 2
    try:
        if argv[0] == "build":
            build(argv[1:])
            return 0
        reasons = [r for src in sources(argv[1:]) for r in stale(src.with_suffix(".ipynb"))]
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for reason in reasons:
        print(reason)
    if reasons:
        print(f"regenerate with: {BUILD_COMMAND}")
        return 1
    print(json.dumps({"current": [p.stem for p in sources(argv[1:])]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
