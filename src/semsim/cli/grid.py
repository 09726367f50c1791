"""``semsim grid plan|run|status GRID.yaml``: attack grids and large scoring jobs, locally or on Ray."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

import semsim.grid as grids  # a lazy package: each command imports what it uses when it runs
from semsim.errors import SemsimError

grid_app = typer.Typer(help="Run attack grids and scoring jobs (local process pool or a Ray cluster).",
                       no_args_is_help=True, rich_markup_mode=None)
GridFile = Annotated[Path, typer.Argument(help="grid file (see examples/grid.yaml)")]


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    return f"{h}h{rem // 60:02d}m" if h else f"{rem // 60}m{rem % 60:02d}s"


@grid_app.command("plan")
def plan_cmd(grid: GridFile,
             tasks: Annotated[bool, typer.Option("--tasks", help="list every task, not only sets")] = False
             ) -> None:
    """Show what `grid run` would do: tasks per set, and how many are already done."""
    from rich.console import Console
    from rich.table import Table

    plan = grids.build_plan(grids.load_grid(grid))
    summary = grids.plan_summary(plan)
    kinds = list(dict.fromkeys(summary["kind"]))
    table = Table(title=f"grid {grid} -> {plan.spec.out}")
    table.add_column("set (or victim)", overflow="fold")
    for kind in kinds:
        table.add_column(f"{kind} done/tasks", justify="right")
    table.add_column("images", justify="right")
    for name, rows in summary.groupby("set", sort=False):
        by_kind = rows.set_index("kind")
        cells = [f"{by_kind.loc[k, 'done']}/{by_kind.loc[k, 'tasks']}" if k in by_kind.index else "-"
                 for k in kinds]
        table.add_row(str(name), *cells, str(int(rows["images"].max())))
    console = Console()
    console.print(table)
    if tasks:
        for t in plan.tasks:
            deps = f" after {', '.join(t.deps)}" if t.deps else ""
            console.print(f"{t.id} [{t.n_images} image(s), key {t.key}]{deps}", highlight=False)
    n, done = int(summary["tasks"].sum()), int(summary["done"].sum())
    typer.echo(f"{n} task(s): {done} done, {n - done} to run")


@grid_app.command("run")
def run_cmd(
    grid: GridFile,
    workers: Annotated[int, typer.Option(min=1, help="local worker processes")] = 1,
    ray: Annotated[str | None, typer.Option(help="run on Ray: auto (this machine's cluster), an address "
                                            "(host:6379 or ray://host:10001), or local")] = None,
    retries: Annotated[int | None, typer.Option(min=0, help="extra attempts per task (default: the grid's)")
                       ] = None,
    threads: Annotated[int | None, typer.Option(
        min=1, help="torch threads (CPUs) per task (default: CPUs / workers locally, 1 on Ray; "
                    "1 on a busy machine)")] = None,
    gpus_per_task: Annotated[float, typer.Option(min=0.01, help="GPUs Ray reserves per CUDA task "
                                                 "(0.25: four tasks share a GPU)")] = 1.0,
    quiet: Annotated[bool, typer.Option("--quiet", help="no progress bar")] = False,
) -> None:
    """Run the grid's unfinished tasks, retrying failures; merge finished sets and scores."""
    from semsim.common.checks import check_device

    spec = grids.load_grid(grid)
    if ray is None:  # local workers compute here; Ray nodes may have GPUs this machine lacks
        try:
            check_device(spec.device, option="device:")
        except SemsimError as exc:
            raise SemsimError(f"{grid}: {exc}") from None
    plan = grids.build_plan(spec)
    report = grids.run_plan(plan, workers=workers, ray=ray, retries=retries, threads=threads,
                      gpus_per_task=gpus_per_task, show_progress=not quiet)
    skipped = sum(1 for s in report.states.values() if s.skipped)
    typer.echo(f"{len(report.executed)} task(s) run ({report.attempts} attempt(s)), {skipped} already done, "
               f"{report.count('failed')} failed, {report.count('blocked')} blocked, "
               f"in {_duration(report.seconds)}")
    for note in report.notes:
        typer.echo(f"note: {note}", err=True)
    if report.merged_sets:
        typer.echo(f"sets: {len(report.merged_sets)} merged into {plan.spec.out / 'sets'} "
                   f"(all of them: {plan.spec.out / 'sets' / 'manifest.csv'})")
    if report.scored_sets:
        typer.echo(f"scores: {len(report.scored_sets)} set(s) in {plan.spec.out / plan.spec.score.table}")
    if report.incomplete:
        typer.echo(f"incomplete (not merged): {', '.join(report.incomplete)}", err=True)
    for task_id, error in report.failed.items():
        typer.echo(f"failed: {task_id}: {error.splitlines()[0] if error else ''}", err=True)
    if report.failed or report.count("blocked"):
        typer.echo("rerun the same command to retry what failed; finished shards are kept", err=True)
        raise typer.Exit(1)


@grid_app.command("status")
def status_cmd(grid: GridFile,
               sets: Annotated[bool, typer.Option("--sets", help="one row per set")] = False) -> None:
    """Progress of a run (in progress or finished), read from its run folder."""
    st = grids.read_status(grids.load_grid(grid))
    c = st.counts
    img = st.images
    elapsed = (st.updated or time.time()) - st.started if st.started else None
    typer.echo(f"{st.out}: {st.phase}" + (f" on {st.executor}" if st.executor else "")
               + (f", {_duration(elapsed)} elapsed" if elapsed is not None else ""))
    typer.echo(f"tasks: {c['done']}/{st.tasks_total} done, {c['running']} running, {c['pending']} pending, "
               f"{c['failed']} failed, {c['blocked']} blocked")
    rate = img.get("per_hour")
    eta = img.get("eta_seconds") if st.phase == "running" else None
    typer.echo(f"{img['kind']} images: {img['done']}/{img['total']}"
               + (f", {rate:,.0f} images/h" if rate else "")
               + (f", about {_duration(eta)} left" if eta else ""))
    for task_id, seconds in st.running.items():
        typer.echo(f"running: {task_id} ({_duration(seconds)})")
    for task_id, error in st.failures.items():
        typer.echo(f"failed: {task_id}: {error}")
    if sets:
        from rich.console import Console
        from rich.table import Table

        table = Table()
        for col in ("kind", "set", "done", "running", "failed", "images"):
            table.add_column(col, justify="left" if col in ("kind", "set") else "right")
        for row in st.per_set:
            table.add_row(row["kind"], row["set"], f"{row['done']}/{row['tasks']}", str(row["running"]),
                          str(row["failed"]), f"{row['images_done']}/{row['images']}")
        Console().print(table)


def register(app: typer.Typer) -> None:
    app.add_typer(grid_app, name="grid")
