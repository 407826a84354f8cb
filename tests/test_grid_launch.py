"""Cells in parallel through submitit: the run paths, the table under concurrent writers, kill -9 of a worker
and of the driver, the SLURM submission it would make, and bad input."""

import csv
import multiprocessing
import os
import re
import signal
import stat
import subprocess
import sys
import time
from collections import Counter
from dataclasses import replace
from types import SimpleNamespace
from pathlib import Path

import psutil
import pytest
from filelock import FileLock, Timeout

from lit_vlm.errors import UserError
from lit_vlm.grid import COLUMNS, CellsFailed, ResultsTable, cells_of, load_config, run_grid
from lit_vlm.grid import launch
from lit_vlm.grid.worker import read_statuses, write_status
from test_grid import TINY, read_rows, run_cli, write_config

ONE_SIZE = {"llms": {"xs": TINY["llms"]["xs"]}}  # 1 size x 2 V = 2 cells, 4 rows


def metrics(rows: list[dict]) -> dict:
    keys = ("accuracy", "anls", "cer", "loss", "family_loss", "llm_params", "inference_flops", "train_steps")
    return {(r["cell"], r["family"]): tuple(r[k] for k in keys) for r in rows}


# --- the table under concurrent writers ---------------------------------------------------------------------
def _writer(path: str, worker: int, rounds: int) -> None:
    table = ResultsTable(Path(path))
    row = {c: "1" for c in COLUMNS}
    for i in range(rounds):
        # its own cell (new rows each round) and a cell every writer replaces (the --force race)
        table.replace_cell(f"w{worker}", [{**row, "cell": f"w{worker}", "family": f, "examples": i} for f in ("a", "b")])
        table.replace_cell("shared", [{**row, "cell": "shared", "family": f, "examples": worker} for f in ("a", "b")])


def test_concurrent_replace_cell_loses_and_duplicates_nothing(tmp_path):
    path = tmp_path / "results.csv"
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_writer, args=(str(path), w, 25)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    rows = read_rows(path)
    keys = [(r["cell"], r["family"]) for r in rows]
    assert len(keys) == len(set(keys)) == 10  # 4 own cells + the shared one, 2 families each
    assert {r["examples"] for r in rows if r["cell"].startswith("w")} == {"24"}  # each writer's last round
    assert len({r["examples"] for r in rows if r["cell"] == "shared"}) == 1  # one writer's rows, whole
    assert not list(tmp_path.glob(".results-*"))


# --- the run paths -----------------------------------------------------------------------------------------
def test_debug_and_slurm_array_paths_match_the_sequential_grid(tmp_path, monkeypatch):
    """submitit's DebugExecutor runs the launcher's code path in this process: as ``debug`` and as the SLURM
    array branch (one batch of submissions), each cell's metrics equal the sequential grid's, bitwise."""
    import submitit

    seq = load_config(str(write_config(tmp_path, **ONE_SIZE)))
    expected = metrics(read_rows(run_grid(seq)))
    debug = replace(seq, out_dir=str(tmp_path / "debug"), launch=replace(seq.launch, launcher="debug"))
    assert metrics(read_rows(run_grid(debug))) == expected
    assert "submitted (debug job" in (tmp_path / "debug" / "grid.log").read_text()

    monkeypatch.setattr(launch, "make_executor", lambda cfg, folder: submitit.DebugExecutor(folder))
    slurm = replace(seq, out_dir=str(tmp_path / "slurm"), launch=replace(seq.launch, launcher="slurm", workers=2))
    assert metrics(read_rows(run_grid(slurm))) == expected
    assert "submitted 2 cells as SLURM job array" in (tmp_path / "slurm" / "grid.log").read_text()

    # --only with --force redoes that one cell and keeps the other's rows
    before = read_rows(Path(debug.out_dir) / "results.csv")
    run_grid(debug, force=True, only=["xs-V4-avgpool-s0"])
    after = read_rows(Path(debug.out_dir) / "results.csv")
    assert [r for r in after if r["cell"] == "xs-V1-avgpool-s0"] == [r for r in before if r["cell"] == "xs-V1-avgpool-s0"]
    assert len(after) == 4 and metrics(after) == expected
    assert "1 cells, 0 done, 1 to run" in (Path(debug.out_dir) / "grid.log").read_text()


def _grid_command(config: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "lit_vlm", "grid", "--config", str(config), "--launcher", "local", "--workers", "2",
            *extra]


def _wait(predicate, timeout: float, what: str):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _runs(out: Path) -> set[Path]:
    runs = out / "submitit" / "runs"
    return set(runs.iterdir()) if runs.exists() else set()


def _kill_a_worker_mid_cell(run: Path, spare: str) -> str:
    """kill -9 a worker while it runs a cell (not ``spare``); returns that cell. The worker is stopped first, so
    the status read then is the one it dies with."""
    while True:
        cell, pid = _wait(lambda: next(((c, s["pid"]) for c, s in read_statuses(run).items()
                                        if s["state"] == "running" and c != spare), None), 300, "a cell to start")
        os.kill(pid, signal.SIGSTOP)
        status = read_statuses(run).get(cell, {})
        if status.get("state") == "running" and status.get("pid") == pid:
            os.kill(pid, signal.SIGKILL)
            return cell
        os.kill(pid, signal.SIGCONT)  # it finished that cell between the two looks: try again


@pytest.mark.slow
def test_local_workers_take_cells_one_by_one_and_survive_kill_minus_9(tmp_path):
    config = write_config(tmp_path)  # 2 sizes x 2 V: 4 cells for 2 workers
    out = tmp_path / "grid"
    cells = [c.id for c in cells_of(load_config(str(config)))]
    broken = cells[-1]  # its folder is a file: the cell raises, its worker goes on
    (out / "cells").mkdir(parents=True)
    (out / "cells" / broken).write_text("not a folder")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}

    # 1. kill -9 one worker mid-cell: that cell and the broken one are reported, the other cells finish
    driver = subprocess.Popen(_grid_command(config), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    (run,) = _wait(lambda: _runs(out), 300, "the run to start")
    killed = _kill_a_worker_mid_cell(run, spare=broken)
    _, err = driver.communicate(timeout=300)
    assert driver.returncode == 1, err[-2000:]
    assert f"{killed}: the worker died without a result" in err and "2 of 4 cells failed" in err
    assert re.search(rf"{broken}: NotADirectoryError: .*{broken}/logs'", err), err[-2000:]
    assert "Traceback" not in err
    rows = read_rows(out / "results.csv")
    keys = [(r["cell"], r["family"]) for r in rows]
    assert len(keys) == len(set(keys)) == 4 and {r["cell"] for r in rows} == set(cells) - {killed, broken}
    ran = Counter(s["pid"] for s in read_statuses(run).values())  # cells per worker process
    assert max(ran.values()) >= 2, ran  # one worker took several cells
    kept = rows

    # 2. the re-run takes only the two failed cells; kill -9 the driver mid-cell: its workers stop too
    (out / "cells" / broken).unlink()
    before = _runs(out)
    driver = subprocess.Popen(_grid_command(config), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    (run,) = _wait(lambda: _runs(out) - before, 300, "the re-run to start")
    pid = _wait(lambda: next((s["pid"] for s in read_statuses(run).values() if s["state"] == "running"), None), 300,
                "a cell to restart")
    worker = psutil.Process(pid)
    # every process the driver started, not only the one mid-cell: the other worker may hold a cell's lock for
    # the second its watch needs to see the driver gone, and the last re-run below must not meet it
    workers = psutil.Process(driver.pid).children(recursive=True)
    assert worker in workers
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    psutil.wait_procs(workers, timeout=30)
    assert all(not w.is_running() or w.status() == psutil.STATUS_ZOMBIE for w in workers)
    assert read_rows(out / "results.csv") == kept  # untouched, still valid
    assert set(read_statuses(run)) <= {killed, broken}
    assert (out / "grid.log").read_text().count("4 cells, 2 done, 2 to run") == 1

    # 3. a last re-run (in this process, through submitit's debug mode) finishes the grid: every row once, the
    # finished cells not redone
    run_grid(load_config(str(config), "--launcher", "debug"))
    rows = read_rows(out / "results.csv")
    keys = [(r["cell"], r["family"]) for r in rows]
    assert len(keys) == len(set(keys)) == 8
    assert [r for r in rows if r["cell"] not in (killed, broken)] == kept
    assert (out / "grid.log").read_text().count("4 cells, 2 done, 2 to run") == 2


def test_a_failing_cell_and_a_cell_held_elsewhere_are_reported_while_the_rest_finish(tmp_path):
    """debug: the workers' code in this process. A cell that raises is failed with its error line and the worker
    goes on; a cell whose lock another process holds is left to it; one worker takes every other cell."""
    cfg = load_config(str(write_config(tmp_path)), "--launcher", "debug", "--workers", "2")
    out = Path(cfg.out_dir)
    cells = [c.id for c in cells_of(cfg)]
    (out / "cells").mkdir(parents=True)
    (out / "cells" / cells[1]).write_text("not a folder")
    held = FileLock(out / "cells" / f".{cells[2]}.lock")
    held.acquire()
    try:
        with pytest.raises(CellsFailed) as info:
            run_grid(cfg)
    finally:
        held.release()
    lines = str(info.value).splitlines()
    assert lines[0].startswith("2 of 4 cells failed") and len(lines) == 3, lines
    assert re.fullmatch(rf"{cells[1]}: NotADirectoryError: .*{cells[1]}/logs'", lines[1]), lines
    assert lines[2].startswith(f"{cells[2]}: being run by another process"), lines
    assert {r["cell"] for r in read_rows(out / "results.csv")} == {cells[0], cells[3]}
    (run,) = _runs(out)
    statuses = read_statuses(run)
    assert {c: (s["state"], s["worker"]) for c, s in statuses.items()} == {
        cells[0]: ("done", 0), cells[1]: ("failed", 0), cells[3]: ("done", 0)}
    log = (out / "grid.log").read_text()
    assert f"cell {cells[1]} FAILED: NotADirectoryError" in log and "1/4 done, 0 running, 2 left, 1 failed" in log
    assert "2/4 done, 0 running, 0 left, 2 failed" in log.splitlines()[-1]

    (out / "cells" / cells[1]).unlink()
    run_grid(cfg)  # the same command again: only the two
    rows = read_rows(out / "results.csv")
    assert len(rows) == len({(r["cell"], r["family"]) for r in rows}) == 8
    assert "4 cells, 2 done, 2 to run" in (out / "grid.log").read_text()


class _InlineJob:
    """A submitit job stand-in that ran at submission and kept its outcome (a worker that raises = one that died)."""

    job_id = "inline"

    def __init__(self, fn, args):
        try:
            self._error = None
            fn(*args)
        except Exception as err:
            self._error = err

    def done(self):
        return True

    def exception(self):
        return self._error

    def cancel(self, check=True):
        pass


def test_a_worker_that_dies_is_reported_with_its_cell_and_replaced(tmp_path, monkeypatch):
    real = launch.worker_job

    def dies_in_its_first_cell(cfg, todo, run_dir, threads, driver_pid, force, worker, cores):
        if worker == 0:  # claims the first cell as a real worker does, then dies in it
            write_status(Path(run_dir), todo[0].id, state="running", worker=0, pid=os.getpid(), started=time.time())
            raise RuntimeError("worker 0 was killed")
        return real(cfg, todo, run_dir, threads, driver_pid, force, worker, cores)

    monkeypatch.setattr(launch, "make_executor", lambda cfg, folder: SimpleNamespace(
        submit=lambda fn, *args: _InlineJob(fn, args)))
    monkeypatch.setattr(launch, "worker_job", dies_in_its_first_cell)
    cfg = load_config(str(write_config(tmp_path)), "--launcher", "debug")  # 1 worker
    cells = [c.id for c in cells_of(cfg)]
    with pytest.raises(CellsFailed, match=rf"1 of 4 cells failed .*\n{cells[0]}: worker 0 was killed$"):
        run_grid(cfg)
    assert {r["cell"] for r in read_rows(Path(cfg.out_dir) / "results.csv")} == set(cells[1:])
    log = (Path(cfg.out_dir) / "grid.log").read_text()
    assert "worker 1 submitted" in log  # the replacement took the cells left

    # a worker that dies outside a cell (here before its first) is not replaced: the cells left are reported
    monkeypatch.setattr(launch, "worker_job", lambda *args: (_ for _ in ()).throw(RuntimeError("no memory")))
    with pytest.raises(CellsFailed, match=rf"{cells[0]}: not run: every worker stopped \(worker 0: no memory\)$"):
        run_grid(cfg)
    assert "worker 1 submitted" not in (Path(cfg.out_dir) / "grid.log").read_text().split("1 to run")[-1]


def test_local_cpu_workers_are_bound_to_disjoint_cores_when_they_fit(tmp_path, monkeypatch):
    monkeypatch.setattr(launch.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    cfg = load_config(str(write_config(tmp_path)), "--launcher", "local", "--workers", "2")
    assert launch.worker_cores(cfg, 1, 0) is None  # off by default: the OS places the workers
    cfg = replace(cfg, launch=replace(cfg.launch, pin_cores=True))
    assert [launch.worker_cores(cfg, 2, slot) for slot in (0, 1)] == [[0, 1], [2, 3]]
    assert launch.worker_cores(cfg, 3, 0) is None  # 2 x 3 threads do not fit in 4 cores: the OS places them
    debug = replace(cfg, launch=replace(cfg.launch, launcher="debug"))
    assert launch.worker_cores(debug, 1, 0) is None  # debug runs in the driver: never bind the driver


# --- SLURM without SLURM -----------------------------------------------------------------------------------
@pytest.fixture
def fake_slurm(tmp_path, monkeypatch):
    """``srun`` and ``sbatch`` stand-ins on PATH: sbatch keeps the script it is given and answers with a job id."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    scripts = tmp_path / "sbatch_scripts"
    for name, body in (("srun", "exit 0"), ("sbatch", f'cp "$1" {scripts}/; echo "Submitted batch job 4242"')):
        path = bin_dir / name
        path.write_text(f"#!/bin/sh\nmkdir -p {scripts}\n{body}\n")
        path.chmod(path.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return scripts


def test_the_sbatch_array_submitit_would_write(tmp_path, fake_slurm):
    cfg = load_config(str(write_config(tmp_path)), "--launcher", "slurm", "--workers", "2",
                      "--launch.slurm.partition", "gpu", "--launch.slurm.time_min", "30", "--launch.slurm.mem_gb", "16",
                      "--launch.slurm.cpus_per_cell", "4", "--launch.slurm.parameters", "{account: vlm, qos: high}",
                      "--launch.slurm.additional_parameters", "{reservation: paper}")
    executor = launch.make_executor(cfg, tmp_path / "submitit" / "%j")
    with executor.batch():
        jobs = [executor.submit(print, i) for i in range(3)]
    assert [j.job_id for j in jobs] == ["4242_0", "4242_1", "4242_2"]
    (script,) = fake_slurm.iterdir()
    flags = set(re.findall(r"^#SBATCH --(\S+)", script.read_text(), re.M))
    for flag in ("partition=gpu", "time=30", "gpus-per-node=1", "array=0-2%2", "cpus-per-task=4", "mem=16384MB",
                 "account=vlm", "qos=high", "reservation=paper", "job-name=lit_vlm-grid"):
        assert flag in flags, (flag, sorted(flags))
    assert "submitit.core._submit" in script.read_text()


# --- bad input: one line, non-zero, nothing written ---------------------------------------------------------
@pytest.mark.parametrize(
    "argv, needles",
    [
        (["--launcher", "local", "--workers", "0"], ["--workers 0", "1 or more"]),
        (["--workers", "2"], ["--workers 2 needs a launcher", "--launcher local"]),
        (["--launcher", "lokal"], ["'lokal'", "none, local, slurm, debug"]),
        (["--launch.launcher", "lokal"], ["lokal"]),
    ],
)
def test_bad_launch_flags_are_one_line_before_any_file(tmp_path, capsys, argv, needles):
    config = write_config(tmp_path)
    code, _, err = run_cli(["grid", "--config", str(config), *argv], capsys)
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error:"), err
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grid.yaml"]


def test_launcher_not_installed_names_the_extra(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "submitit", None)  # import submitit -> ImportError
    code, _, err = run_cli(["grid", "--config", str(write_config(tmp_path)), "--launcher", "local"], capsys)
    assert code == 2 and "pip install 'lit_vlm[launch]'" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "grid").exists()


def test_slurm_refusals_are_one_line(tmp_path, capsys, monkeypatch, fake_slurm):
    config = str(write_config(tmp_path))
    code, _, err = run_cli(["grid", "--config", config, "--launcher", "slurm", "--launch.slurm.parameters", "{qso: high}"],
                           capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "Unavailable parameter(s): ['qso']" in err and "qos" in err
    assert not (tmp_path / "grid").exists() and not fake_slurm.exists()  # nothing written, nothing submitted
    monkeypatch.setenv("PATH", "/nonexistent")  # no srun: not a SLURM machine
    with pytest.raises(UserError, match='Could not detect "srun"'):
        launch.check_launch(replace(load_config(config), launch=replace(load_config(config).launch, launcher="slurm")))


def test_more_workers_than_gpus(tmp_path, monkeypatch):
    cfg = load_config(str(write_config(tmp_path)), "--launcher", "local", "--workers", "3")
    monkeypatch.setattr(launch, "uses_gpu", lambda cfg: True)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,5")
    with pytest.raises(UserError, match=r"--workers 3 but 2 GPU\(s\) are visible here \(2, 5\).*--workers 2 or fewer"):
        launch.check_launch(cfg)
    assert launch.visible_gpus() == ["2", "5"]  # worker k gets the k-th of these, not GPU k


def test_cpu_threads_are_split_between_workers(tmp_path):
    cfg = load_config(str(write_config(tmp_path)), "--launcher", "local", "--workers", "2", "--num_threads", "4")
    assert launch.threads_per_worker(cfg) == 2
    assert launch.threads_per_worker(replace(cfg, num_threads=1)) == 1  # at least one each
    assert launch.threads_per_worker(replace(cfg, launch=replace(cfg.launch, launcher="none"))) == 4


def test_parallel_workers_take_the_costliest_cells_first(tmp_path):
    llms = {"s": {"hidden_size": 16, "num_layers": 2}, "l": {"hidden_size": 64, "num_layers": 2}}
    cfg = load_config(str(write_config(tmp_path, llms=llms, visual_tokens=[1, 64], seeds=[0, 1])),
                      "--launcher", "local", "--workers", "2")
    order = [c.id for c in launch.longest_first(cfg, cells_of(cfg))]
    # width 64 at V = 64 first, width 16 at V = 1 last; the seeds of a cell stay together, in grid order
    assert [i.rsplit("-", 2)[0] for i in order[::2]] == ["l-V64", "l-V1", "s-V64", "s-V1"]
    assert order[:2] == ["l-V64-avgpool-s0", "l-V64-avgpool-s1"]
    hub = replace(cfg, llms={**cfg.llms, "l": replace(cfg.llms["l"], pretrained="org/model")})  # size unknown: 1
    assert [c.id for c in launch.longest_first(hub, cells_of(hub))][:4:2] == ["s-V64-avgpool-s0", "s-V1-avgpool-s0"]


def test_last_error_line_is_the_workers_exception():
    import submitit

    trace = ("Job (task=0) failed during processing with trace:\n----------------------\nTraceback (most recent "
             "call last):\n  File \"x.py\", line 3, in f\nValueError: bad thing\n\n----------------------\nYou can check")
    assert launch.last_error_line(submitit.core.utils.FailedJobError(trace)) == "ValueError: bad thing"
    died = submitit.core.utils.UncompletedJobError("Job 1 (task: 0) with path x\nhas not produced any output (state: FINISHED)")
    assert "died without a result" in launch.last_error_line(died)


def test_local_workers_start_while_the_driver_builds_the_feature_cache(tmp_path, monkeypatch):
    """local: the workers are submitted before the cache is built and read its folder from the run's store
    file once the driver publishes it; a worker started early waits for it."""
    import threading

    from lit_vlm.grid.worker import STORE_FILE, publish_store, wait_for_store

    order = []

    class Done:  # a job that finished at once, having run nothing
        job_id = "0"

        def done(self):
            return True

        def exception(self):
            return None

        def cancel(self, check=True):
            pass

    def submit(fn, *args):
        order.append("worker submitted")
        return Done()

    monkeypatch.setattr(launch, "make_executor", lambda cfg, folder: SimpleNamespace(
        submit=submit, update_parameters=lambda **kw: None))
    cfg = load_config(str(write_config(tmp_path)), "--launcher", "local", "--workers", "2")
    todo = cells_of(cfg)

    def make_store():
        order.append("cache built")
        return SimpleNamespace(folder=tmp_path / "features" / "abc")

    with pytest.raises(CellsFailed, match="not run: every worker stopped"):  # these stand-in workers run nothing
        launch.run_cells(cfg, todo, len(todo), make_store)
    assert order == ["worker submitted", "worker submitted", "cache built"]
    (run_dir,) = (Path(cfg.out_dir) / "submitit" / "runs").iterdir()
    assert wait_for_store(run_dir) == str(tmp_path / "features" / "abc")
    assert STORE_FILE not in {p.name for p in run_dir.glob("*.json")}  # never read as a cell's status

    late = tmp_path / "late"
    late.mkdir()
    threading.Timer(0.3, publish_store, args=(late, None)).start()
    start = time.perf_counter()
    assert wait_for_store(late) is None and time.perf_counter() - start >= 0.25
