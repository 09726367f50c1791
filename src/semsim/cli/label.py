"""``semsim label --by-model``: a label table judged by an evaluation classifier instead of people."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from semsim.cli.options import Device, Quiet, Threads
from semsim.common.checks import check_writable


def label(
    by_model: Annotated[Path, typer.Option("--by-model", help="evaluator checkpoint folder "
                                           "(semsim train-evaluator) that judges each reconstruction")],
    sets: Annotated[list[Path], typer.Option("--sets", help="a manifest or SemSim-layout folder; repeat for "
                                             "several sets")],
    out: Annotated[Path, typer.Option(help="label table to write, .csv or .parquet")],
    soft: Annotated[bool, typer.Option("--soft", help="recognized = the evaluator's probability of the true "
                                       "class instead of 1/0 from its top-1")] = False,
    device: Device = "cpu",
    threads: Threads = None,
    batch_size: Annotated[int, typer.Option(min=1)] = 256,
    skip_bad: Annotated[bool, typer.Option("--skip-bad", help="leave out unusable pairs instead of "
                                           "stopping")] = False,
    quiet: Quiet = False,
) -> None:
    """Write a label table judged by an evaluator (recognized: its top-1 is the true class)."""
    from semsim.common.io import TABLE_SUFFIXES
    from semsim.data.labels import write_labels
    from semsim.data.sets import ingest_sets
    from semsim.metrics.labeler import label_by_model

    check_writable(out, TABLE_SUFFIXES)
    manifest, skipped = ingest_sets(sets, skip_bad=skip_bad)
    for set_name, n in skipped.groupby("set", sort=False).size().items():
        typer.echo(f"note: {set_name}: {n} pair(s) skipped (unusable or failed; not labelled)", err=True)
    table = label_by_model(manifest, by_model, soft=soft, batch_size=batch_size, device=device,
                           show_progress=not quiet)
    write_labels(table, out)
    summary = table.groupby("set", sort=False)["recognized"].agg(["size", "mean"])
    for set_name, row in summary.iterrows():
        typer.echo(f"{set_name}: {int(row['size'])} images, recognized {row['mean']:.3f}")
    typer.echo(f"wrote {out} ({len(table)} labels, source {table['label_source'].iloc[0]})")


def register(app: typer.Typer) -> None:
    app.command()(label)
