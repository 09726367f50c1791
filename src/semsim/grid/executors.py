"""Where tasks run: a local pool of worker processes (no extra dependency) or a Ray cluster.

Both executors take one task at a time (``submit``) and report finished ones (``poll``) as
``(task_id, ok, record_or_error)``. A worker that dies part-way (killed, out of memory, a lost node) is
reported as a failed attempt of exactly the task it was running; the scheduler decides whether to retry.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import sys
import time
import traceback
import warnings
from multiprocessing.connection import Connection, wait
from typing import Any

from semsim.errors import SemsimError
from semsim.grid.plan import Task

Result = tuple[str, bool, Any]
PRELOAD_IF_LOADED = ("semsim.cli",)  # the `semsim` command's main script imports it: preload it for workers


def _error_text(exc: BaseException) -> str:
    """The exception on one line (for the table), then the traceback (for the state file)."""
    head = f"{exc.__class__.__name__}: {exc}".splitlines()[0] if str(exc) else exc.__class__.__name__
    return head + "\n" + "".join(traceback.format_exception(exc))


def _worker_main(conn: Connection, threads: int | None) -> None:
    """Loop of a local worker process: receive a task, run it, send the result back."""
    from semsim.grid.tasks import execute_task

    while True:
        try:
            task = conn.recv()
        except EOFError:
            return
        if task is None:
            return
        try:
            conn.send((task["id"], True, execute_task(task, threads)))
        except BaseException as exc:  # the driver decides about retries; the worker stays alive
            conn.send((task["id"], False, _error_text(exc)))


class _Worker:
    def __init__(self, ctx: Any, threads: int | None) -> None:
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_worker_main, args=(child, threads), daemon=True)
        self.process.start()
        child.close()
        self.task: str | None = None
        self.since = 0.0


class LocalExecutor:
    """``workers`` long-lived processes, one task each at a time.

    Workers fork from a *fork server* that imported the heavy modules once, before any thread pool or CUDA
    context existed, so every worker starts clean and a dead worker is replaced in well under a second.
    (A new worker re-runs the driver's main script, as multiprocessing does; the modules it imports are
    already loaded.)
    """

    def __init__(self, workers: int = 1, threads: int | None = None) -> None:
        if workers < 1:
            raise SemsimError(f"--workers {workers}: need at least 1 worker")
        self.capacity = workers
        self.threads = threads or max(1, (os.cpu_count() or 1) // workers)
        self._ctx = mp.get_context("forkserver")
        # the scheduler's modules (scoring, data, torch) and the CLI when that is the driver
        preload = ["__main__", "semsim.grid.tasks", "semsim.grid.runner"]
        preload += [m for m in PRELOAD_IF_LOADED if m in sys.modules]
        self._ctx.set_forkserver_preload(preload)
        self._workers: list[_Worker | None] = [None] * workers
        self.name = f"local pool, {workers} worker(s) x {self.threads} thread(s)"

    def running(self) -> int:
        return sum(1 for w in self._workers if w is not None and w.task is not None)

    def submit(self, task: Task) -> None:
        for i, w in enumerate(self._workers):
            if w is None or not w.process.is_alive():
                w = self._workers[i] = _Worker(self._ctx, self.threads)
            if w.task is None:
                w.conn.send(task.to_dict())
                w.task, w.since = task.id, time.time()
                return
        raise RuntimeError("no idle worker; the scheduler submitted more tasks than the capacity")

    def poll(self, timeout: float) -> list[Result]:
        busy = [w for w in self._workers if w is not None and w.task is not None]
        if not busy:
            time.sleep(timeout)
            return []
        ready = set(wait([w.conn for w in busy] + [w.process.sentinel for w in busy], timeout))
        results = []
        for w in busy:
            if w.conn not in ready and w.process.sentinel not in ready:
                continue
            try:
                if w.conn.poll():
                    results.append(w.conn.recv())
                    w.task = None
                    continue
            except (EOFError, OSError):
                pass
            w.process.join(1)
            code = w.process.exitcode
            results.append((w.task, False, f"worker process died (exit code {code}) while running the task"))
            w.task = None
        return results

    def close(self) -> None:
        for w in self._workers:
            if w is None:
                continue
            try:
                if w.task is None and w.process.is_alive():
                    w.conn.send(None)
            except OSError:
                pass
        deadline = time.time() + 5
        for w in self._workers:
            if w is None:
                continue
            w.process.join(max(0.0, deadline - time.time()) if w.task is None else 0)
            if w.process.is_alive():
                w.process.terminate()
                w.process.join(2)
            w.conn.close()
        self._workers = [None] * len(self._workers)


def import_ray() -> Any:
    """Ray, imported only when asked for (``pip install 'semsim[ray]'``)."""
    try:
        import ray
    except ImportError:
        raise SemsimError("--ray needs Ray: pip install 'semsim[ray]' (or drop --ray: local pool)"
                          ) from None
    return ray


def _ray_task(task: dict[str, Any], threads: int | None) -> dict[str, Any]:
    from semsim.grid.tasks import execute_task

    return execute_task(task, threads)


class RayExecutor:
    """Tasks as Ray tasks: ``threads`` CPUs each, plus ``gpus_per_task`` GPUs when the device is CUDA.

    ``address`` is ``auto`` (the cluster this machine belongs to), ``ray://host:10001`` or ``host:6379``, or
    ``local`` (start a Ray instance on this machine). An already initialised Ray session is used as it is.
    The run folder must be on storage every node sees (NFS, a mounted bucket): workers publish into it.
    """

    def __init__(self, address: str = "auto", threads: int | None = None, gpus_per_task: float = 1.0) -> None:
        ray = self._ray = import_ray()
        self._owns_session = False
        if not ray.is_initialized():
            try:
                if address == "local":
                    ray.init(include_dashboard=False, log_to_driver=False)
                else:
                    ray.init(address=address, log_to_driver=False)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                first = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
                raise SemsimError(f"--ray {address}: cannot reach a Ray cluster ({first}); "
                                  "start one with `ray start --head`, or use --ray local") from None
            self._owns_session = True
        self.threads = threads or 1
        self.gpus_per_task = gpus_per_task
        self._remote = ray.remote(max_retries=0)(_ray_task)
        self._refs: dict[Any, str] = {}
        self._resources_at = 0.0
        self._capacity = 1
        self._cuda = False
        self.name = f"Ray cluster ({address})"

    @property
    def capacity(self) -> int:
        """Tasks kept in flight: what the cluster runs at once now (re-read every 5 s: clusters autoscale)."""
        if time.time() - self._resources_at > 5:
            res = self._ray.cluster_resources()
            cpus = int(res.get("CPU", 1) // self.threads)
            gpus = int(res.get("GPU", 0) / self.gpus_per_task) if res.get("GPU") else 0
            self._capacity = max(1, cpus if not self._cuda else min(cpus, gpus) or 1)
            self._resources_at = time.time()
        return self._capacity

    def running(self) -> int:
        return len(self._refs)

    def submit(self, task: Task) -> None:
        cuda = task.device.startswith("cuda")
        if cuda and not self._cuda:
            self._cuda, self._resources_at = True, 0.0
            if not self._ray.cluster_resources().get("GPU"):
                warnings.warn("the grid's device is CUDA but the Ray cluster has no GPU now; its tasks wait "
                              "until a GPU node joins (or set device: cpu)", stacklevel=2)
        options = {"num_cpus": self.threads, "num_gpus": self.gpus_per_task if cuda else 0}
        ref = self._remote.options(**options).remote(task.to_dict(), self.threads)
        self._refs[ref] = task.id

    def poll(self, timeout: float) -> list[Result]:
        if not self._refs:
            time.sleep(timeout)
            return []
        ray = self._ray
        ready, _ = ray.wait(list(self._refs), num_returns=1, timeout=timeout)
        if ready:
            ready, _ = ray.wait(list(self._refs), num_returns=len(self._refs), timeout=0)
        results = []
        for ref in ready:
            task_id = self._refs.pop(ref)
            try:
                results.append((task_id, True, ray.get(ref)))
            except ray.exceptions.RayTaskError as exc:
                cause = exc.cause if getattr(exc, "cause", None) is not None else exc
                results.append((task_id, False, _error_text(cause)))
            except ray.exceptions.RayError as exc:  # the worker process or its node died
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
                results.append((task_id, False, f"Ray worker died ({exc.__class__.__name__}: {first})"))
        return results

    def close(self) -> None:
        for ref in list(self._refs):
            self._ray.cancel(ref, force=True)
        self._refs.clear()
        if self._owns_session:
            self._ray.shutdown()
