"""``semsim score``: per-image and per-set metric tables for reconstruction sets.

The command only parses options and prints: choosing the panel, provenance columns, calibration and skipped
pairs are :func:`semsim.metrics.scoring.score_sets`, the same workflow as ``semsim grid`` and the Python API.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    import pandas as pd
    from rich.console import Console


def print_summary(per_set: pd.DataFrame, columns: list[str], console: Console | None = None) -> None:
    """Print one row per set: n and, per metric, the mean with its 95% bootstrap interval."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console(stderr=False)
    table = Table(title="per-set summary (mean [95% bootstrap CI])")
    table.add_column("set")
    table.add_column("n", justify="right")
    for col in columns:
        table.add_column(col, justify="right")
    for _, row in per_set.iterrows():
        cells = []
        for col in columns:
            if f"{col}_mean" in row:
                cells.append(f"{row[f'{col}_mean']:.4g} [{row[f'{col}_ci_low']:.4g}, {row[f'{col}_ci_high']:.4g}]")
            elif col in row:
                cells.append(f"{row[col]:.4g}")
            else:
                cells.append("-")
        table.add_row(str(row["set"]), str(row["n"]), *cells)
    console.print(table)


def score(
    originals: Annotated[Path, typer.Argument(help="folder of originals, a SemSim-layout folder, or a manifest")],
    reconstructions: Annotated[Path | None, typer.Argument(help="folder of reconstructions (matched by id)")] = None,
    metrics: Annotated[str | None, typer.Option(help="comma-separated metric names (default: the full panel)")] = None,
    out: Annotated[Path | None, typer.Option(help="per-image table, .parquet or .csv; the per-set table goes "
                                             "next to it as <name>_sets.<ext>")] = None,
    set_name: Annotated[str | None, typer.Option("--set", help="set name (default: the folder's name)")] = None,
    device: Annotated[str, typer.Option(help="torch device, e.g. cpu or cuda")] = "cpu",
    batch_size: Annotated[int, typer.Option(min=1)] = 256,
    skip_bad: Annotated[bool, typer.Option("--skip-bad", help="record and skip unusable pairs")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", help="no progress bar")] = False,
    evaluator: Annotated[Path | None, typer.Option(help="evaluation classifier checkpoint: adds mr, iip and "
                                                   "feature_distance to the panel")] = None,
    semsim_model: Annotated[Path | None, typer.Option("--semsim", help="SemSim model folder (semsim train): "
                                                      "adds the semsim column")] = None,
    calibration: Annotated[Path | None, typer.Option(help="calibration file (semsim calibrate): adds "
                                                     "p_recognized and per-set expected recognition rates"
                                                     )] = None,
) -> None:
    """Score reconstructions against their originals with the metric panel."""
    from semsim.data.sets import ingest
    from semsim.metrics.calibrated import load_calibration
    from semsim.metrics.scoring import score_sets

    cal = load_calibration(calibration) if calibration is not None else None
    manifest, skipped = ingest(originals, reconstructions, set_name=set_name, skip_bad=skip_bad)
    result = score_sets(manifest, [m.strip() for m in metrics.split(",")] if metrics else None,
                        evaluator=evaluator, semsim=semsim_model, calibration=cal, skipped=skipped, device=device,
                        batch_size=batch_size, skip_bad=skip_bad, show_progress=not quiet)
    for note in result.notes:
        typer.echo(f"note: {note}", err=True)
    if len(result.skipped):
        typer.echo(f"note: {len(result.skipped)} pair(s) skipped; see the 'status' column", err=True)
    print_summary(result.per_set, [c for c in result.per_image.columns if c not in ("set", "image_id")])
    if out is not None:
        image_path, set_path = result.write(out)
        typer.echo(f"wrote {image_path} and {set_path}")


def register(app: typer.Typer) -> None:
    app.command()(score)
