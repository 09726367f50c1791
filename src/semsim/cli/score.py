"""``semsim score``: per-image and per-set metric tables for reconstruction sets."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import pandas as pd
import typer
from rich.console import Console
from rich.table import Table

from semsim.analysis.calibration import apply_calibration, load_calibration
from semsim.common.io import write_table
from semsim.data.sets import ingest
from semsim.errors import SemsimError
from semsim.metrics.model_based import EVALUATOR_METRICS
from semsim.metrics.scoring import build_metrics, default_metric_names, score_manifest
from semsim.metrics.semsim_metric import annotate_provenance


def set_table_path(out: Path) -> Path:
    """Where the per-set table goes: ``results.parquet`` -> ``results_sets.parquet``."""
    return out.with_name(f"{out.stem}_sets{out.suffix}")


def print_summary(per_set: pd.DataFrame, columns: list[str], console: Console | None = None) -> None:
    """Print one row per set: n and, per metric, the mean with its 95% bootstrap interval."""
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
    cal = load_calibration(calibration) if calibration is not None else None
    manifest, skipped = ingest(originals, reconstructions, set_name=set_name, skip_bad=skip_bad)
    names = [m.strip() for m in metrics.split(",")] if metrics else default_metric_names()
    if evaluator is not None and not metrics:
        names += [n for n in EVALUATOR_METRICS if n not in names]
    metric_kwargs = {n: {"evaluator": evaluator} for n in EVALUATOR_METRICS} if evaluator is not None else {}
    if semsim_model is not None:
        names += [] if "semsim" in names else ["semsim"]
        metric_kwargs["semsim"] = {"model": semsim_model}
    built, notes = build_metrics(names, device=device, **metric_kwargs)
    if "semsim" in built and built["semsim"].provenance_note():
        notes.append(built["semsim"].provenance_note())
    if not built:
        raise SemsimError("none of the requested metrics can run here: " + "; ".join(notes))
    result = score_manifest(manifest, built, device=device, batch_size=batch_size, skip_bad=skip_bad,
                            show_progress=not quiet)
    if "semsim" in built:  # the per-set table says whose judgments the semsim column reproduces
        result.per_set = annotate_provenance(result.per_set, built["semsim"])
    if cal is not None:  # per-image P(recognized), per-set expected recognition rate
        result.per_image, result.per_set, cal_notes = apply_calibration(result.per_image, result.per_set, cal)
        notes += cal_notes
    parts = [s for s in (skipped, result.skipped) if len(s)]
    skipped = pd.concat(parts, ignore_index=True) if parts else skipped
    for note in notes:
        typer.echo(f"note: {note}", err=True)
    if len(skipped):
        typer.echo(f"note: {len(skipped)} pair(s) skipped; see the 'status' column", err=True)
    columns = [c for c in result.per_image.columns if c not in ("set", "image_id")]
    print_summary(result.per_set, columns)
    if out is not None:
        per_image = result.per_image
        if len(skipped):
            per_image = pd.concat([per_image.assign(status="ok"), skipped[["set", "image_id", "status"]]],
                                  ignore_index=True)
        write_table(per_image, out)
        write_table(result.per_set, set_table_path(out))
        typer.echo(f"wrote {out} and {set_table_path(out)}")


def register(app: typer.Typer) -> None:
    app.command()(score)
