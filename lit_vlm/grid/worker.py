"""What runs inside a launched job: a long-lived local worker (``worker_job``) or one SLURM array task (``cell_job``).

A local (or debug) worker pays its start-up once (imports, the stage-0 tower, the feature store's key index),
then takes the grid's cells one by one until none is left. It claims a cell by taking its lock
``cells/.<cell>.lock`` without waiting (a cell locked by another worker, or by another driver's, is skipped)
and by writing the cell's status file in this run's folder (``submitit/runs/<run>/<cell>.json``): running,
then done or failed. A status file means "taken in this run", so no worker takes a cell twice, a cell that
failed is not retried in the same run, and a cell whose worker was killed stays "running" for the driver to
report; a later run has a new folder, and redoes every cell that is not in the table. The rows are appended
under the table's file lock (table.py), then the status says done. The driver reads the status files for its
progress view; a worker writes nothing else.
"""

from __future__ import annotations

import gc
import json
import os
import threading
import time
import traceback
from pathlib import Path

from filelock import FileLock, Timeout

from lit_vlm.grid.config import Cell, GridConfig

RUNNING, DONE, FAILED, SKIPPED = "running", "done", "failed", "skipped"


def status_path(run_dir: Path, cell_id: str) -> Path:
    return run_dir / f"{cell_id}.json"


def write_status(run_dir: Path, cell_id: str, **status) -> None:
    """The cell's status in this run, replaced atomically (a reader sees the old file or the new one)."""
    path = status_path(run_dir, cell_id)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(status))
    os.replace(tmp, path)


def read_statuses(run_dir: Path) -> dict[str, dict]:
    statuses = {}
    for path in run_dir.glob("*.json"):
        try:
            statuses[path.stem] = json.loads(path.read_text())
        except (OSError, ValueError):  # replaced while read: the next poll sees it
            continue
    return statuses


def cell_lock(out: Path, cell_id: str) -> FileLock:
    """Held by whoever runs the cell, in any run: two drivers never run one cell at once (freed if its holder dies)."""
    return FileLock(out / "cells" / f".{cell_id}.lock")


def error_line(err: BaseException) -> str:
    """The exception's own last line, as a traceback would end."""
    lines = [line.strip() for line in traceback.format_exception_only(type(err), err) if line.strip()]
    return lines[-1] if lines else type(err).__name__


def exit_with_driver(driver_pid: int) -> None:
    """A local worker stops when its driver is gone (kill -9): a re-run must not race an orphan for a cell."""
    def watch():
        while True:
            time.sleep(1.0)
            try:
                os.kill(driver_pid, 0)
            except ProcessLookupError:
                os._exit(3)
            except PermissionError:
                pass  # exists, another user's: cannot happen for our own parent, keep waiting

    threading.Thread(target=watch, daemon=True).start()


STORE_FILE = "store.path"  # in a run's folder (not *.json: those are the cells' status files): the feature cache's folder, written by the driver once it is built


def publish_store(run_dir: Path, folder: str | None) -> None:
    """The driver's word to its workers that the feature cache is built (and where; None: no cache)."""
    tmp = run_dir / f".{STORE_FILE}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps({"folder": folder}))
    os.replace(tmp, run_dir / STORE_FILE)


def wait_for_store(run_dir: Path) -> str | None:
    """The feature cache's folder, once the driver has published it (a worker starts before it is built)."""
    path = run_dir / STORE_FILE
    while not path.exists():
        time.sleep(0.1)  # the driver is building it; if the driver dies, exit_with_driver ends this process
    return json.loads(path.read_text())["folder"]


def _tower(cfg: GridConfig):
    """The stage-0 tower's state, which every cell of a worker shares (the first call imports Lightning too)."""
    from lit_vlm import tower as stage0
    from lit_vlm.grid.run import stage0_args

    return stage0.load_or_train(cfg.tower, cfg.vision, cfg.data, **stage0_args(cfg))


def _store(folder: str | None):
    """The feature store in ``folder`` (None: the grid runs without the cache)."""
    from lit_vlm.grid.cache import FeatureStore

    return FeatureStore(Path(folder)) if folder else None


def _run_one(cfg: GridConfig, cell: Cell, tower_state, store) -> str:
    """Train and evaluate one cell, append its rows; returns its grid.log summary."""
    from lightning.pytorch.utilities import rank_zero_only

    from lit_vlm.grid.cell import run_cell
    from lit_vlm.grid.table import ResultsTable

    start = time.perf_counter()
    rows, cache_note = run_cell(cfg, cell, tower_state, store)
    if rank_zero_only.rank == 0:
        ResultsTable(Path(cfg.out_dir) / "results.csv").replace_cell(cell.id, rows)
    summary = ", ".join(f"{r['family']} acc={r['accuracy']:.3f}" for r in rows)
    return f"done in {time.perf_counter() - start:.1f}s: {summary}; {cache_note}"


def worker_job(cfg: GridConfig, todo: list[Cell], run_dir: str, threads: int | None, driver_pid: int | None,
               force: bool, worker: int, cores: list[int] | None = None) -> int:
    """A long-lived worker: loads once, then claims and runs cells of ``todo`` until none is left. A cell that
    raises is marked failed with its error line and the worker goes on. Returns the number of cells it ran.
    ``cores``: bind this process (and the threads torch starts later) to these CPU cores."""
    from lit_vlm.grid.run import torch_threads
    from lit_vlm.grid.table import ResultsTable

    if driver_pid is not None:
        exit_with_driver(driver_pid)
    if cores:
        os.sched_setaffinity(0, cores)
    out, runs = Path(cfg.out_dir), Path(run_dir)
    (out / "cells").mkdir(parents=True, exist_ok=True)
    ran = 0
    with torch_threads(threads):
        tower_state = _tower(cfg)  # while the driver builds the feature cache
        store = _store(wait_for_store(runs))
        took = True
        while took:  # passes until one finds nothing to take: the rest is taken or held by another driver
            took = False
            for cell in todo:
                if status_path(runs, cell.id).exists():
                    continue  # taken in this run: running, done, failed, or its worker died
                lock = cell_lock(out, cell.id)
                try:
                    lock.acquire(timeout=0)
                except Timeout:
                    continue  # another worker of this run has it (its status follows), or another driver's
                try:
                    if status_path(runs, cell.id).exists():
                        continue  # taken and finished between our look and our lock
                    took = True
                    base = {"worker": worker, "pid": os.getpid(), "started": time.time()}
                    if not force and cell.id in ResultsTable(out / "results.csv").done():
                        write_status(runs, cell.id, state=SKIPPED, note="already in the table", **base)
                        continue  # another driver finished it since this run started
                    write_status(runs, cell.id, state=RUNNING, **base)
                    print(f"worker {worker}: cell {cell.id} started", flush=True)
                    try:
                        note = _run_one(cfg, cell, tower_state, store)
                    except Exception as err:  # the cell failed, not the worker: report it, go on
                        traceback.print_exc()  # the whole traceback in the worker's log (submitit/)
                        write_status(runs, cell.id, state=FAILED, error=error_line(err), **base)
                        continue
                    finally:
                        gc.collect()  # the cell's model, trainer and loaders, before the next cell
                    ran += 1
                    write_status(runs, cell.id, state=DONE, note=note, **base)
                    print(f"worker {worker}: cell {cell.id} {note}", flush=True)
                finally:
                    lock.release()
    return ran


def cell_job(cfg: GridConfig, cell: Cell, store_folder: str | None, threads: int | None,
             driver_pid: int | None) -> str:
    """One SLURM array task: one cell, its rows appended to the table. Returns its grid.log summary."""
    from lit_vlm.grid.run import torch_threads

    if driver_pid is not None:
        exit_with_driver(driver_pid)
    out = Path(cfg.out_dir)
    (out / "cells").mkdir(parents=True, exist_ok=True)
    lock = cell_lock(out, cell.id)  # one process per cell, also across two drivers
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise RuntimeError(f"cell {cell.id} is being run by another process (its lock {lock.lock_file} is held)") from None
    try:
        with torch_threads(threads):
            return _run_one(cfg, cell, _tower(cfg), _store(store_folder))
    finally:
        lock.release()
