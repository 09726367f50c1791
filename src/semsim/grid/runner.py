"""The scheduler: run a plan's tasks on an executor with retries, progress and a state file, then merge.

Tasks start when the tasks they read from are published. A failed or killed attempt is retried up to
``retries`` more times; a task that still fails is reported and the tasks that need it are *blocked*; the
rest of the grid goes on. ``grid-state.json`` in the run folder (rewritten atomically at most every second)
is what ``semsim grid status`` shows; ``grid.lock`` keeps two runs out of one folder.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import socket
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from semsim.common.io import write_json, write_table
from semsim.common.progress import progress
from semsim.errors import SemsimError
from semsim.grid.merge import merge_scores, merge_sets
from semsim.grid.plan import PLAN_FILE, STATE_FILE, Plan, Task, build_plan, is_done
from semsim.grid.spec import GridSpec

STATUSES = ("done", "running", "pending", "failed", "blocked")


@dataclass
class TaskState:
    """What the scheduler knows about one task."""

    status: str = "pending"
    attempts: int = 0
    error: str | None = None
    started: float | None = None
    seconds: float | None = None
    host: str | None = None
    skipped: bool = False  # published before this run started


@dataclass
class RunReport:
    """The outcome of ``run_grid``."""

    plan: Plan
    states: dict[str, TaskState]
    executed: list[str] = field(default_factory=list)  # task ids whose work ran in this run (successful)
    attempts: int = 0  # attempts started in this run, retries included
    merged_sets: list[str] = field(default_factory=list)
    scored_sets: list[str] = field(default_factory=list)
    incomplete: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def count(self, status: str) -> int:
        return sum(1 for s in self.states.values() if s.status == status)

    @property
    def failed(self) -> dict[str, str]:
        return {tid: s.error or "" for tid, s in self.states.items() if s.status == "failed"}


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@contextmanager
def run_lock(out: Path):
    """Hold ``out/grid.lock`` for the run; a second run on the same folder stops with a clear message."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / "grid.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = path.read_text().strip() or "another process"
            raise SemsimError(f"{out}: another `semsim grid run` ({holder}) is using this run folder; wait "
                              "for it or watch it with `semsim grid status`") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
        yield
    finally:
        os.close(fd)


class _StateWriter:
    """Keeps ``grid-state.json`` current: counts, images per hour, running and failed tasks."""

    def __init__(self, plan: Plan, executor_name: str) -> None:
        self.plan = plan
        self.path = plan.spec.out / STATE_FILE
        self.executor = executor_name
        self.started = time.time()
        self.written = 0.0
        self.rate_kind = plan.rate_kind
        self.images_total = sum(t.n_images for t in plan.tasks if t.kind == self.rate_kind)

    def images(self, states: dict[str, TaskState], tasks: dict[str, Task]) -> tuple[int, int, float]:
        done = this_run = 0
        for tid, s in states.items():
            t = tasks[tid]
            if t.kind == self.rate_kind and s.status == "done":
                done += t.n_images
                this_run += 0 if s.skipped else t.n_images
        hours = max(time.time() - self.started, 1e-6) / 3600
        return done, this_run, this_run / hours

    def write(self, states: dict[str, TaskState], tasks: dict[str, Task], finished: bool = False,
              force: bool = False, interrupted: bool = False) -> None:
        if not force and time.time() - self.written < 1.0:
            return
        done, this_run, rate = self.images(states, tasks)
        counts = {k: sum(1 for s in states.values() if s.status == k) for k in STATUSES}
        remaining = self.images_total - done
        state = {
            "grid": str(self.plan.spec.path), "out": str(self.plan.spec.out), "executor": self.executor,
            "pid": os.getpid(), "host": socket.gethostname(), "started": self.started, "updated": time.time(),
            "finished": time.time() if finished else None, "interrupted": interrupted, "counts": counts,
            "tasks_total": len(states),
            "images": {"kind": self.rate_kind, "total": self.images_total, "done": done, "this_run": this_run,
                       "per_hour": rate, "eta_seconds": remaining / rate * 3600 if rate > 0 else None},
            "tasks": {tid: {k: v for k, v in vars(s).items() if v is not None} for tid, s in states.items()
                      if s.status != "pending" or s.attempts},
        }
        write_json(state, self.path)
        self.written = time.time()


def _remove_stale_work(plan: Plan) -> None:
    """Delete work folders of tasks that are no longer in the plan (their settings changed)."""
    keys = {t.key for t in plan.tasks}
    work = plan.spec.out / "work"
    for folder in work.iterdir() if work.is_dir() else ():
        if folder.is_dir() and folder.name not in keys:
            shutil.rmtree(folder, ignore_errors=True)


def _make_executor(workers: int | None, ray: str | None, threads: int | None, gpus_per_task: float):
    from semsim.grid.executors import LocalExecutor, RayExecutor

    if ray:
        return RayExecutor(ray, threads=threads, gpus_per_task=gpus_per_task)
    return LocalExecutor(workers or 1, threads=threads)


class _Scheduler:
    """One run's loop: start ready tasks up to the executor's capacity, collect results, retry or give up,
    block what depends on a failed task, and keep the state file and the progress bar current."""

    def __init__(self, plan: Plan, executor: Any, report: RunReport, retries: int, writer: _StateWriter,
                 bar: Any, show_progress: bool) -> None:
        self.plan, self.executor, self.report, self.retries = plan, executor, report, retries
        self.states, self.tasks = report.states, plan.by_id()
        self.writer, self.bar, self.show_progress = writer, bar, show_progress

    def block_unrunnable(self) -> None:
        """Mark pending tasks that wait for a failed or blocked task as blocked, naming what they need."""
        for t in self.plan.tasks:
            s = self.states[t.id]
            if s.status == "pending" and any(self.states[d].status in ("failed", "blocked") for d in t.deps):
                s.status = "blocked"
                s.error = "needs " + ", ".join(d for d in t.deps if self.states[d].status != "done")

    def submit_ready(self) -> bool:
        """Start pending tasks whose dependencies are done, while the executor has room; False when nothing
        is running and nothing is left to start (the run is over)."""
        ready = [t for t in self.plan.tasks if self.states[t.id].status == "pending"
                 and all(self.states[d].status == "done" for d in t.deps)]
        while ready and self.executor.running() < self.executor.capacity:
            t = ready.pop(0)
            s = self.states[t.id]
            s.status, s.started = "running", time.time()
            s.attempts += 1
            self.report.attempts += 1
            self.executor.submit(t)
        return self.executor.running() > 0 or bool(ready)

    def collect(self, poll_interval: float) -> None:
        """Record the tasks that finished: done when their shard is published, else retried or failed."""
        for task_id, ok, value in self.executor.poll(poll_interval):
            s = self.states[task_id]
            if ok and is_done(self.tasks[task_id]):
                s.status, s.error = "done", None
                s.seconds, s.host = value.get("seconds"), value.get("host")
                self.report.executed.append(task_id)
                self.bar.update(1)
                continue
            s.error = value if not ok else "the task returned but its shard was not published"
            s.status = "pending" if s.attempts <= self.retries else "failed"
            if self.show_progress:
                what = "retrying" if s.status == "pending" else "giving up"
                self.bar.write(f"task {task_id} failed (attempt {s.attempts}, {what}): "
                               f"{str(s.error).splitlines()[0]}")

    def show(self) -> None:
        """Refresh the progress bar's counters and (at most every second) the state file."""
        _, _, rate = self.writer.images(self.states, self.tasks)
        self.bar.set_postfix_str(f"running={self.executor.running()} failed={self.report.count('failed')} "
                                 f"{rate:,.0f} img/h", refresh=False)
        self.writer.write(self.states, self.tasks)

    def run(self, poll_interval: float) -> None:
        """Loop until every task is done, failed or blocked; an interruption leaves a consistent state file."""
        try:
            while True:
                self.block_unrunnable()
                if not self.submit_ready():
                    break
                self.collect(poll_interval)
                self.show()
        except BaseException:
            for s in self.states.values():
                if s.status == "running":
                    s.status, s.error = "pending", "interrupted"
            self.writer.write(self.states, self.tasks, finished=True, force=True, interrupted=True)
            raise
        finally:
            self.bar.close()
            self.executor.close()


def _write_inputs(plan: Plan) -> None:
    """The plan's input tables and ``plan.json`` (what ``semsim grid status`` reads)."""
    for path, df in plan.inputs.items():
        write_table(df, path)
    write_json({"grid": str(plan.spec.path), "written": _now(), "rate_kind": plan.rate_kind,
                "tasks": [t.to_dict() for t in plan.tasks]}, plan.spec.out / PLAN_FILE)


def _merge(plan: Plan, report: RunReport) -> None:
    """Merge complete sets and score tables into the run folder (see :mod:`semsim.grid.merge`)."""
    _remove_stale_work(plan)
    report.merged_sets, incomplete = merge_sets(plan)
    report.scored_sets, incomplete_scores, report.notes = merge_scores(plan)
    report.incomplete = sorted(set(incomplete) | set(incomplete_scores))


def run_plan(plan: Plan, *, workers: int | None = None, ray: str | None = None, retries: int | None = None,
             threads: int | None = None, gpus_per_task: float = 1.0, show_progress: bool = True,
             poll_interval: float = 0.2) -> RunReport:
    """Run every unfinished task of ``plan`` (see module docstring), then merge complete sets and scores."""
    spec = plan.spec
    start = time.time()
    with run_lock(spec.out):
        executor = _make_executor(workers, ray, threads or spec.threads, gpus_per_task)  # fails early
        _write_inputs(plan)
        states = {t.id: TaskState(status="done", skipped=True) if is_done(t) else TaskState() for t in plan.tasks}
        report = RunReport(plan, states)
        writer = _StateWriter(plan, executor.name)
        bar = progress(total=len(plan.tasks), initial=report.count("done"), desc="grid", unit="task",
                       enabled=show_progress)
        scheduler = _Scheduler(plan, executor, report, spec.retries if retries is None else retries, writer, bar,
                               show_progress)
        scheduler.run(poll_interval)
        _merge(plan, report)
        report.seconds = time.time() - start
        writer.write(states, plan.by_id(), finished=True, force=True)
    return report


def run_grid(spec: GridSpec, **kwargs: Any) -> RunReport:
    """Plan and run a grid (keyword arguments as :func:`run_plan`)."""
    return run_plan(build_plan(spec), **kwargs)
