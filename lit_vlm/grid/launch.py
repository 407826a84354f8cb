"""Cells in parallel, each in its own process, through submitit (``launch.launcher``: local, slurm or debug).

The driver (run.py) checks everything, trains or loads the stage-0 tower and builds the feature cache once;
then this module starts the jobs and follows them. Whatever runs a cell appends its own rows to
``results.csv`` under the table's file lock, so the table grows as cells finish and survives the driver.

- local: submitit's LocalExecutor, ``workers`` long-lived processes (worker.py): each imports and loads once,
  then takes the cells one by one until none is left, so a laptop pays a process's start-up K times, not once
  per cell. On a GPU machine one GPU each (CUDA_VISIBLE_DEVICES), on a CPU the grid's num_threads split
  between them. The driver follows the workers' status files (done / running / left / failed, ETA).
- debug: submitit's DebugExecutor, the same workers run one after another inside the driver (pdb on failure).
- slurm: submitit's SlurmExecutor, every cell as one task of a single job array (``--array=0-N%workers``):
  a cluster schedules, places and accounts jobs, and its nodes start in parallel anyway.

A cell that raises is reported failed with its last error line and its worker goes on; a worker that dies
(kill -9, out of memory) is reported with the cell it held, and replaced while cells are left. The grid then
ends with a non-zero status; the failed cells' rows were never written, so a re-run redoes only them.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import shlex
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from filelock import Timeout
from tqdm.auto import tqdm

from lit_vlm.errors import UserError
from lit_vlm.grid.config import Cell, GridConfig, LaunchConfig
from lit_vlm.grid.cache import FeatureStore
from lit_vlm.grid.worker import (FAILED, RUNNING, cell_job, cell_lock, publish_store, read_statuses, worker_job,
                                 write_status)

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


def worker_cores(cfg: GridConfig, threads: int | None, slot: int) -> list[int] | None:
    """The cores local worker ``slot`` is bound to on a CPU (``launch.pin_cores``): ``threads`` of them each,
    disjoint, when all workers' threads fit in the cores this process may use; else None (the OS schedules)."""
    launch = cfg.launch
    if (launch.launcher != "local" or not launch.pin_cores or not threads or uses_gpu(cfg)
            or not hasattr(os, "sched_getaffinity")):
        return None
    cores = sorted(os.sched_getaffinity(0))
    if launch.workers * threads > len(cores):
        return None
    return cores[slot * threads:(slot + 1) * threads]


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


def longest_first(cfg: GridConfig, todo: list[Cell]) -> list[Cell]:
    """``todo`` with the costliest cells first, so that K workers taking cells in turn end together (the
    longest-processing-time rule) instead of one worker running the grid's largest cell alone at the end.
    A cell's cost is taken as layers x width^2 x (V + 16): the LLM's work per sequence of V visual and about 16
    text tokens; a pretrained LLM (its size not in the config) counts as 1, so V alone orders it. Ties keep grid
    order."""
    def cost(cell: Cell) -> float:
        spec = cfg.llms[cell.llm]
        size = 1 if spec.pretrained else spec.num_layers * spec.hidden_size ** 2
        return size * (cell.visual_tokens + 16)

    return sorted(todo, key=cost, reverse=True)


def _folder(store) -> str | None:
    return str(store.folder) if store is not None else None


def run_cells(cfg: GridConfig, todo: list[Cell], total: int, make_store: Callable[[], FeatureStore | None],
              force: bool = False) -> None:
    """Run ``todo`` through the configured launcher and wait; raises CellsFailed if any cell failed.
    ``make_store`` builds (or loads) the feature cache; it is called once, when the launcher needs it."""
    progress = Progress(total=total, done_before=total - len(todo), todo=len(todo))
    if cfg.launch.launcher != "slurm" and cfg.launch.workers > 1:
        todo = longest_first(cfg, todo)
    try:
        if cfg.launch.launcher == "slurm":
            failures = _run_array(cfg, todo, _folder(make_store()), progress)
        else:
            failures = _run_workers(cfg, todo, make_store, force, progress)
    finally:
        progress.close()
    if failures:
        raise CellsFailed(f"{len(failures)} of {len(todo)} cells failed (the others' rows are in the table; "
                          "re-run the same command to redo only these):\n" +
                          "\n".join(f"{cell}: {reason}" for cell, reason in failures.items()))


def _thread_env(threads: int | None) -> list[str]:
    """A CPU worker's thread pools pinned before its first import: torch's OpenMP and MKL, numpy's BLAS and the
    tokenizers' Rayon pool would otherwise each start one thread per core and contend with the other workers."""
    if not threads:
        return []
    names = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "RAYON_NUM_THREADS")
    return ["export " + " ".join(f"{name}={threads}" for name in names)]


def _run_workers(cfg: GridConfig, todo: list[Cell], make_store: Callable[[], FeatureStore | None], force: bool,
                 progress: Progress) -> dict[str, str]:
    """``local`` and ``debug``: K long-lived workers (worker.worker_job) take the cells one by one; the driver
    follows their status files, reports each cell, and replaces a worker that died in a cell while cells are
    left. Returns the failed cells with their reasons."""
    launch = cfg.launch
    out = Path(cfg.out_dir)
    executor = make_executor(cfg, out / "submitit" / "%j")
    threads = threads_per_worker(cfg)
    gpus = visible_gpus() if launch.launcher == "local" and uses_gpu(cfg) else []
    if gpus:
        log.info("gpu: %d workers, one GPU each, of %s", launch.workers, ", ".join(gpus))
    driver_pid = os.getpid() if launch.launcher == "local" else None
    run_dir = out / "submitit" / "runs" / f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    run_dir.mkdir(parents=True)
    jobs: dict = {}  # job -> (worker id, GPU slot)
    seen: dict[str, str] = {}  # cell -> the last state reported
    failures: dict[str, str] = {}
    stops: list[str] = []  # workers that died outside a cell

    worker_ids = itertools.count()

    def submit(slot: int) -> None:
        wid = next(worker_ids)  # never reused: a replacement's status files are told apart from its predecessor's
        if launch.launcher == "local":
            gpu = [f"export CUDA_VISIBLE_DEVICES={shlex.quote(gpus[slot])}"] if gpus else []  # as this process names it
            executor.update_parameters(setup=_thread_env(threads) + gpu)
        cores = worker_cores(cfg, threads, slot)
        job = executor.submit(worker_job, cfg, todo, str(run_dir), threads, driver_pid, force, wid, cores)
        jobs[job] = (wid, slot)
        log.info("worker %d submitted (%s job %s)%s", wid, launch.launcher, job.job_id,
                 f", bound to core(s) {','.join(map(str, cores))}" if cores else "")

    def poll() -> dict[str, dict]:
        statuses = read_statuses(run_dir)
        running = sum(s["state"] == RUNNING for s in statuses.values())
        # in the order the cells started, the ones still running last (debug reads a whole worker's at once)
        for cell_id, s in sorted(statuses.items(), key=lambda item: (item[1]["state"] == RUNNING, item[1]["started"])):
            if seen.get(cell_id) == s["state"]:
                continue
            seen[cell_id] = s["state"]
            if s["state"] == RUNNING:
                progress.update(running)
                log.info("cell %s started by worker %d (pid %d); %s", cell_id, s["worker"], s["pid"], progress.line(running))
            elif s["state"] == FAILED:
                failures[cell_id] = s["error"]
                progress.update(running, finished=True, failed=True)
                log.error("cell %s FAILED: %s; %s", cell_id, s["error"], progress.line(running))
            else:
                progress.update(running, finished=True)
                log.info("cell %s %s; %s", cell_id, s["note"], progress.line(running))
        return statuses

    try:
        if launch.launcher == "local":
            # the workers start (imports, the tower) while the driver builds the feature cache: on a laptop
            # both take seconds, against cells of a minute; they wait for its folder in the run's store file
            for slot in range(min(launch.workers, len(todo))):
                submit(slot)
            publish_store(run_dir, _folder(make_store()))
        else:  # debug runs each worker inside the driver: the cache must exist first
            publish_store(run_dir, _folder(make_store()))
            for slot in range(min(launch.workers, len(todo))):
                submit(slot)
        while jobs:
            finished = [job for job in jobs if job.done()]
            statuses = poll()  # read after the jobs' states: a dead worker's last status is in it
            for job in finished:
                wid, slot = jobs.pop(job)
                error = job.exception()
                if error is None:
                    continue  # nothing left for it
                reason = last_error_line(error)
                held = [c for c, s in statuses.items() if s["state"] == RUNNING and s["worker"] == wid]
                for cell_id in held:  # it died in this cell: the cell failed, the others go on
                    write_status(run_dir, cell_id, **{**statuses[cell_id], "state": FAILED, "error": reason})
                if not held:
                    stops.append(f"worker {wid}: {reason}")
                    log.error("worker %d stopped outside a cell: %s", wid, reason)
                statuses = poll()
                if held and any(c.id not in statuses for c in todo):
                    submit(slot)  # a replacement, so K workers still share the cells left
            if not finished:
                time.sleep(POLL_S)
    finally:
        for job in jobs:  # the driver is stopping (Ctrl-C, an error): do not leave orphans behind
            job.cancel(check=False)
    statuses = poll()
    for cell in todo:
        if cell.id in statuses:
            continue
        lock = cell_lock(out, cell.id)
        try:
            lock.acquire(timeout=0)
            lock.release()
            reason = "not run: every worker stopped" + (f" ({stops[-1]})" if stops else "")
        except Timeout:
            reason = f"being run by another process (its lock {lock.lock_file} is held)"
        failures[cell.id] = reason
        progress.update(0, finished=True, failed=True)
        log.error("cell %s FAILED: %s; %s", cell.id, reason, progress.line(0))
    return failures


def _run_array(cfg: GridConfig, todo: list[Cell], store_folder: str | None, progress: Progress) -> dict[str, str]:
    """``slurm``: every cell as one task of one job array (a cluster schedules jobs, so a task per cell costs
    nothing there and lets SLURM place, requeue and account each cell). Returns the failed cells."""
    executor = make_executor(cfg, Path(cfg.out_dir) / "submitit" / "%j")
    threads = threads_per_worker(cfg)
    with executor.batch():  # SLURM itself keeps at most `workers` running
        jobs = [executor.submit(cell_job, cfg, cell, store_folder, threads, None) for cell in todo]
    running = dict(zip(jobs, todo))
    log.info("submitted %d cells as SLURM job array %s", len(jobs), jobs[0].job_id.split("_")[0] if jobs else "-")
    failures = {}
    try:
        while running:
            finished = [job for job in running if job.done()]
            for job in finished:
                cell = running.pop(job)
                error = job.exception()
                if error is None:
                    progress.update(len(running), finished=True)
                    log.info("cell %s %s; %s", cell.id, job.result(), progress.line(len(running)))
                else:
                    failures[cell.id] = last_error_line(error)
                    progress.update(len(running), finished=True, failed=True)
                    log.error("cell %s FAILED: %s; %s", cell.id, failures[cell.id], progress.line(len(running)))
            if not finished:
                time.sleep(POLL_S)
    finally:
        for job in running:
            job.cancel(check=False)
    return failures
