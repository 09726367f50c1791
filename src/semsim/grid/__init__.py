"""Run attack grids and scoring at scale: locally with a process pool, or on a Ray cluster (``semsim grid``).

``load_grid`` reads a grid file, ``build_plan`` expands it into tasks (one configuration x one shard of
images), ``run_plan`` / ``run_grid`` run them with retries and merge the shards into sets and score tables,
``read_status`` reports on a run in progress. See :mod:`semsim.grid.spec` for the file format.

Names are imported on first use, so a worker that only runs tasks (:mod:`semsim.grid.tasks`) does not pay for
the scheduler's imports.
"""

from semsim.common.lazy import lazy_exports

_EXPORTS = {
    "GridSpec": "spec", "load_grid": "spec", "parse_grid": "spec",
    "Plan": "plan", "Task": "plan", "build_plan": "plan", "is_done": "plan", "plan_summary": "plan",
    "RunReport": "runner", "TaskState": "runner", "run_grid": "runner", "run_plan": "runner",
    "GridStatus": "status", "read_status": "status",
}
__all__ = sorted(_EXPORTS)

__getattr__ = lazy_exports(__name__, _EXPORTS)
