"""Cells in parallel, each in its own process, through submitit (``launch.launcher``: local, slurm or debug).

The driver (run.py) checks everything, trains or loads the stage-0 tower and builds the feature cache once;
then this module submits one job per cell that is not done yet. Each job (``cell_job``) reads the tower
checkpoint and the feature store from disk, runs ``run_cell`` and appends its own rows to ``results.csv``
under the table's file lock, so the table grows as cells finish and survives the driver's death.

- local: submitit's LocalExecutor, one process per cell, at most ``workers`` at once; on a GPU machine one
  GPU each (CUDA_VISIBLE_DEVICES), on a CPU the grid's num_threads split between them.
- slurm: submitit's SlurmExecutor, every cell as one task of a single job array (``--array=0-N%workers``).
- debug: submitit's DebugExecutor, the same code path with each job run inside the driver (pdb on failure).

A job that fails or dies (kill -9, out of memory) is reported with its last error line; the other cells go
on and the grid ends with a non-zero status. Its rows were never written, so a re-run redoes only that cell.
"""

from __future__ import annotations

import logging
import os
import re
import shlex
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from filelock import FileLock, Timeout
from lightning.pytorch.utilities import rank_zero_only
from tqdm.auto import tqdm

from lit_vlm.errors import UserError
from lit_vlm.grid.config import Cell, GridConfig, LaunchConfig

log = logging.getLogger("lit_vlm.grid")
POLL_S = 0.5


class CellsFailed(RuntimeError):
    """Some cells failed; the others' rows are in the table. The message is one line per failed cell."""


def need_submitit(launcher: str):
    try:
        import submitit
    except ImportError:
        raise UserError(f"--launcher {launcher} needs submitit, which is not installed: "
                        "pip install 'lit_vlm[launch]' (or pip install 'submitit>=1.5')") from None
    return submitit


def slurm_parameters(launch: LaunchConfig) -> dict:
    """SlurmExecutor.update_parameters arguments (sbatch names) from ``launch.slurm``."""
    s = launch.slurm
    params = {"job_name": "lit_vlm-grid", "time": s.time_min, "array_parallelism": launch.workers}
    if s.gpus_per_cell:
        params["gpus_per_node"] = s.gpus_per_cell
    optional = {"partition": s.partition, "cpus_per_task": s.cpus_per_cell,
                "mem": None if s.mem_gb is None else f"{max(1, round(s.mem_gb * 1024))}MB"}
    params.update({k: v for k, v in optional.items() if v is not None})
    params.update(s.parameters)
    if s.additional_parameters:
        params["additional_parameters"] = dict(s.additional_parameters)
    return params


def make_executor(cfg: GridConfig, folder: Path):
    """The configured submitit executor; writes nothing. A setting submitit refuses is one line."""
    launch = cfg.launch
    submitit = need_submitit(launch.launcher)
    try:
        if launch.launcher == "debug":
            return submitit.DebugExecutor(folder)
        if launch.launcher == "local":
            executor = submitit.LocalExecutor(folder)  # creates folder: called after the driver's checks
            executor.update_parameters(timeout_min=launch.time_min, gpus_per_node=0)
            return executor
        executor = submitit.SlurmExecutor(folder)
        executor.update_parameters(**slurm_parameters(launch))
        return executor
    except (ValueError, RuntimeError, TypeError) as err:
        lines = [line.strip(" -") for line in str(err).splitlines() if line.strip(" -")]
        valid = [re.sub(r" \(default.*", "", line) for line in lines[2:]] if "Valid parameters" in str(err) else []
        message = lines[0] + (f"; valid: {', '.join(valid)}" if valid else "")
        raise UserError(f"--launcher {launch.launcher}: {message}") from None


def check_launch(cfg: GridConfig) -> None:
    """What can refuse a launched grid before anything is written: submitit installed, the SLURM options
    (submitit's own check), workers against the GPUs."""
    launch = cfg.launch
    if launch.launcher == "none":
        return
    need_submitit(launch.launcher)
    if launch.launcher == "slurm":
        make_executor(cfg, Path(cfg.out_dir) / "submitit" / "%j")  # SlurmExecutor writes nothing until submit
    if launch.launcher == "local" and uses_gpu(cfg):
        gpus = visible_gpus()
        if launch.workers > len(gpus):
            raise UserError(f"--workers {launch.workers} but {len(gpus)} GPU(s) are visible here "
                            f"({', '.join(gpus) or 'none'}): one GPU per worker, use --workers {max(len(gpus), 1)} "
                            "or fewer")


def uses_gpu(cfg: GridConfig) -> bool:
    accelerator = str(cfg.trainer.get("accelerator", "auto"))
    return accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())


def visible_gpus() -> list[str]:
    """The GPU ids this process may use, as CUDA_VISIBLE_DEVICES names them (a worker gets one of them)."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g for g in env.split(",") if g.strip()]
    return [str(i) for i in range(torch.cuda.device_count())]


def threads_per_worker(cfg: GridConfig) -> int | None:
    """On a CPU the grid's threads (num_threads, else torch's default) split between the local workers."""
    launch = cfg.launch
    if launch.launcher == "slurm":
        return launch.slurm.cpus_per_cell or cfg.num_threads
    if launch.launcher != "local" or uses_gpu(cfg):
        return cfg.num_threads
    total = cfg.num_threads or torch.get_num_threads()
    each = max(1, total // launch.workers)
    log.info("cpu: %d thread(s) split between %d workers: %d each%s", total, launch.workers, each,
             f" (num_threads {total} < {launch.workers} workers: {launch.workers} threads in use)"
             if total < launch.workers else "")
    return each


# --- in the worker ----------------------------------------------------------------------------------------
def _exit_with_driver(driver_pid: int) -> None:
    """A local worker stops when its driver is gone (kill -9): a re-run must not race an orphan for a cell."""
    while True:
        time.sleep(1.0)
        try:
            os.kill(driver_pid, 0)
        except ProcessLookupError:
            os._exit(3)
        except PermissionError:
            pass  # exists, another user's: cannot happen for our own parent, keep waiting


def cell_job(cfg: GridConfig, cell: Cell, store_folder: str | None, threads: int | None,
             driver_pid: int | None) -> str:
    """One submitted cell: train, evaluate, append its rows to the table. Returns its grid.log summary."""
    from lit_vlm import tower as stage0
    from lit_vlm.grid.cache import FeatureStore
    from lit_vlm.grid.cell import run_cell
    from lit_vlm.grid.run import stage0_args, torch_threads
    from lit_vlm.grid.table import ResultsTable

    if driver_pid is not None:
        threading.Thread(target=_exit_with_driver, args=(driver_pid,), daemon=True).start()
    out = Path(cfg.out_dir)
    lock = FileLock(out / "cells" / f".{cell.id}.lock")  # one process per cell, also across two drivers
    (out / "cells").mkdir(parents=True, exist_ok=True)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise RuntimeError(f"cell {cell.id} is being run by another process (its lock {lock.lock_file} is held)") from None
    try:
        with torch_threads(threads):
            start = time.perf_counter()
            tower_state = stage0.load_or_train(cfg.tower, cfg.vision, cfg.data, **stage0_args(cfg))
            store = FeatureStore(Path(store_folder)) if store_folder else None
            rows, cache_note = run_cell(cfg, cell, tower_state, store)
            if rank_zero_only.rank == 0:
                ResultsTable(out / "results.csv").replace_cell(cell.id, rows)
    finally:
        lock.release()
    summary = ", ".join(f"{r['family']} acc={r['accuracy']:.3f}" for r in rows)
    return f"done in {time.perf_counter() - start:.1f}s: {summary}; {cache_note}"


# --- in the driver ----------------------------------------------------------------------------------------
def last_error_line(err: BaseException) -> str:
    """The worker's own last error line out of submitit's report (its traceback, or why there is none)."""
    text = str(err)
    trace = text.split("----------------------")
    if len(trace) >= 3:  # FailedJobError: the worker's traceback between two rulers
        lines = [line.strip() for line in trace[1].splitlines() if line.strip()]
        if lines:
            return lines[-1]
    if "has not produced any output" in text:
        return "the worker died without a result (killed, e.g. kill -9 or out of memory; see its log in submitit/)"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else type(err).__name__


@dataclass
class Progress:
    """Cells done / running / left and an ETA, as a tqdm bar and as log lines."""

    total: int
    done_before: int
    todo: int
    start: float = field(default_factory=time.perf_counter)
    finished: int = 0
    failed: int = 0

    def __post_init__(self):
        self.bar = tqdm(total=self.total, initial=self.done_before, desc="grid", unit="cell", position=0)

    def line(self, running: int) -> str:
        left = self.todo - self.finished - running
        done = self.done_before + self.finished - self.failed
        eta = ""
        if self.finished:
            remaining = (time.perf_counter() - self.start) / self.finished * (self.todo - self.finished)
            eta = f", ETA {int(remaining // 60)}m{int(remaining % 60):02d}s"
        return f"{done}/{self.total} done, {running} running, {left} left, {self.failed} failed{eta}"

    def update(self, running: int, finished: bool = False, failed: bool = False) -> None:
        self.finished += finished
        self.failed += failed
        self.bar.update(int(finished))
        self.bar.set_postfix_str(f"running {running}, failed {self.failed}")

    def close(self):
        self.bar.close()


def run_cells(cfg: GridConfig, todo: list[Cell], total: int, store_folder: str | None) -> None:
    """Submit ``todo`` through the configured launcher and wait; raises CellsFailed if any cell failed."""
    launch = cfg.launch
    out = Path(cfg.out_dir)
    executor = make_executor(cfg, out / "submitit" / "%j")
    threads = threads_per_worker(cfg)
    gpus = visible_gpus() if launch.launcher == "local" and uses_gpu(cfg) else []
    if gpus:
        log.info("gpu: %d workers, one GPU each, of %s", launch.workers, ", ".join(gpus))
    driver_pid = os.getpid() if launch.launcher == "local" else None
    progress = Progress(total=total, done_before=total - len(todo), todo=len(todo))
    pending, running, failures = list(todo), {}, []
    free = list(range(launch.workers))

    def submit(cell: Cell, slot: int):
        if gpus:  # the worker's one GPU, named as this process sees it (an index, a UUID or a MIG id)
            executor.update_parameters(setup=[f"export CUDA_VISIBLE_DEVICES={shlex.quote(gpus[slot])}"])
        job = executor.submit(cell_job, cfg, cell, store_folder, threads, driver_pid)
        running[job] = (cell, slot)
        log.info("cell %s submitted (%s job %s); %s", cell.id, launch.launcher, job.job_id, progress.line(len(running)))

    try:
        if launch.launcher == "slurm":  # one array; SLURM itself keeps at most `workers` running
            with executor.batch():
                jobs = [executor.submit(cell_job, cfg, cell, store_folder, threads, None) for cell in pending]
            running = {job: (cell, 0) for job, cell in zip(jobs, pending)}
            log.info("submitted %d cells as SLURM job array %s", len(jobs), jobs[0].job_id.split("_")[0] if jobs else "-")
            pending = []
        while pending or running:
            while pending and free:
                submit(pending.pop(0), free.pop(0))
            finished = [job for job in running if job.done()]
            for job in finished:
                cell, slot = running.pop(job)
                free.append(slot)
                error = job.exception()
                if error is None:
                    progress.update(len(running), finished=True)
                    log.info("cell %s %s; %s", cell.id, job.result(), progress.line(len(running)))
                else:
                    reason = last_error_line(error)
                    failures.append(f"{cell.id}: {reason}")
                    progress.update(len(running), finished=True, failed=True)
                    log.error("cell %s FAILED: %s; %s", cell.id, reason, progress.line(len(running)))
            if not finished:
                time.sleep(POLL_S)
    finally:
        progress.close()
        for job in running:  # the driver is stopping (Ctrl-C, an error): do not leave orphans behind
            job.cancel(check=False)
    if failures:
        raise CellsFailed(f"{len(failures)} of {len(todo)} cells failed (the others' rows are in the table; "
                          "re-run the same command to redo only these):\n" + "\n".join(failures))

