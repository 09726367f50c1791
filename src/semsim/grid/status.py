"""``semsim grid status``: how far a run is, read from its run folder (works while the run goes on).

The published ``DONE.json`` markers are the truth about what is finished; ``grid-state.json`` adds what only
the running scheduler knows (running tasks, attempts, errors, images per hour).
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from semsim.errors import SemsimError
from semsim.grid.plan import PLAN_FILE, STATE_FILE, Task, is_done
from semsim.grid.spec import GridSpec


@dataclass
class GridStatus:
    """A snapshot of a run folder."""

    out: Path
    phase: str  # running | finished | interrupted
    counts: dict[str, int]
    tasks_total: int
    images: dict[str, Any]
    per_set: list[dict[str, Any]] = field(default_factory=list)
    failures: dict[str, str] = field(default_factory=dict)
    running: dict[str, float] = field(default_factory=dict)  # task id -> seconds running
    executor: str = ""
    started: float | None = None
    updated: float | None = None


def _alive(pid: int, host: str) -> bool | None:
    """Is the driver process alive? None when it runs on another host."""
    if host != socket.gethostname():
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_status(spec: GridSpec) -> GridStatus:
    """Read the plan and state files of ``spec``'s run folder; count finished shards from their markers."""
    out = spec.out
    plan_path, state_path = out / PLAN_FILE, out / STATE_FILE
    if not plan_path.is_file():
        raise SemsimError(f"{out}: no run has started in this folder yet; `semsim grid plan {spec.path}` "
                          f"shows what would run, `semsim grid run {spec.path}` starts it")
    plan = json.loads(plan_path.read_text())
    tasks = [Task.from_dict(t) for t in plan["tasks"]]
    state = json.loads(state_path.read_text()) if state_path.is_file() else {}
    recorded = state.get("tasks", {})
    done = {t.id for t in tasks if is_done(t)}
    counts = {k: 0 for k in ("done", "running", "pending", "failed", "blocked")}
    alive = _alive(state.get("pid", -1), state.get("host", "")) if state else False
    finished = state.get("finished") is not None
    if state.get("interrupted"):
        phase = "interrupted"
    else:
        phase = "finished" if finished else ("running" if alive or alive is None else "interrupted")
    per_set: dict[str, dict[str, Any]] = {}
    failures, running = {}, {}
    now = time.time()
    for t in tasks:
        rec = recorded.get(t.id, {})
        status = "done" if t.id in done else rec.get("status", "pending")
        if status == "done" and t.id not in done:
            status = "pending"
        if status == "running" and phase != "running":
            status = "pending"
        counts[status] += 1
        if status == "failed":
            failures[t.id] = str(rec.get("error", "")).splitlines()[0] if rec.get("error") else ""
        if status == "running":
            running[t.id] = now - rec.get("started", now)
        name = t.set if t.set is not None else t.id
        row = per_set.setdefault(f"{t.kind}:{name}", {
            "kind": t.kind, "set": name, "tasks": 0, "done": 0, "running": 0, "failed": 0, "images": 0,
            "images_done": 0})
        row["tasks"] += 1
        row["images"] += t.n_images
        if status in ("done", "running", "failed"):
            row[status] += 1
        if status == "done":
            row["images_done"] += t.n_images
    rate_kind = plan.get("rate_kind", "attack")
    images = dict(state.get("images", {}))
    images.update({"kind": rate_kind, "total": sum(t.n_images for t in tasks if t.kind == rate_kind),
                   "done": sum(t.n_images for t in tasks if t.kind == rate_kind and t.id in done)})
    return GridStatus(out, phase, counts, len(tasks), images, list(per_set.values()), failures, running,
                      state.get("executor", ""), state.get("started"), state.get("updated"))
