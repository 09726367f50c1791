"""``semsim analyze``, ``semsim import-labels``: agreement of metrics with people (``semsim calibrate``:
:mod:`semsim.cli.calibrate`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import pandas as pd
import typer
from rich.console import Console
from rich.table import Table

from semsim.analysis import (
    SEMSIM_CIFAR100_DIRECTIONS,
    analyze,
    import_semsim_cifar100,
    parse_directions,
)
from semsim.analysis.calibration import METHODS
from semsim.common.io import write_table
from semsim.data.labels import write_labels
from semsim.errors import SemsimError

IMPORT_FORMATS = ("semsim-cifar100",)

ScoresArg = Annotated[Path | None, typer.Argument(help="per-image score table (.csv/.parquet), semsim score")]
LabelsOpt = Annotated[Path | None, typer.Option("--labels", help="label table; omit when SCORES holds both")]
DirectionOpt = Annotated[list[str] | None, typer.Option(
    "--direction", help="COLUMN=higher|lower for a metric column the registry does not know (repeatable); "
                        "higher: larger values mean more leakage")]
ImportOpt = Annotated[Path | None, typer.Option(
    "--import-semsim-cifar100", help="analyse the SemSim authors' CIFAR-100 human-label table instead of "
                                     "SCORES/--labels (directions are built in)")]
HoldoutOpt = Annotated[str | None, typer.Option(
    help="regex of set names held out of the calibration fit, e.g. ConvNet (default: each set in turn)")]
MethodOpt = Annotated[str, typer.Option(help=f"calibration map: {' or '.join(METHODS)}")]


def _inputs(scores: Path | None, labels: Path | None, imported: Path | None, direction: list[str] | None
            ) -> tuple[pd.DataFrame | Path, pd.DataFrame | Path | None, dict[str, bool]]:
    explicit = parse_directions(direction)
    if imported is not None:
        if scores is not None or labels is not None:
            raise SemsimError("--import-semsim-cifar100 replaces SCORES and --labels; give one or the other")
        score_df, label_df = import_semsim_cifar100(imported)
        return score_df, label_df, {**SEMSIM_CIFAR100_DIRECTIONS, **explicit}
    if scores is None:
        raise SemsimError("no score table given; pass SCORES (and --labels) or --import-semsim-cifar100 PATH")
    return scores, labels, explicit


def _split(value: str | None) -> list[str] | None:
    return [m.strip() for m in value.split(",") if m.strip()] if value else None


def analyze_cmd(
    scores: ScoresArg = None,
    labels: LabelsOpt = None,
    out: Annotated[Path, typer.Option(help="output folder: CSV tables and report.html")] = Path("report"),
    metrics: Annotated[str | None, typer.Option(help="comma-separated metric columns (default: all)")] = None,
    direction: DirectionOpt = None,
    holdout: HoldoutOpt = None,
    method: MethodOpt = "logistic",
    bootstrap: Annotated[int, typer.Option(min=0, help="bootstrap replicates (0: no intervals)")] = 1000,
    seed: int = 0,
    import_semsim_cifar100: ImportOpt = None,
    quiet: Annotated[bool, typer.Option("--quiet", help="no progress bar")] = False,
) -> None:
    """How well does each metric agree with human judgments? CSV tables and a self-contained HTML report."""
    if method not in METHODS:
        raise SemsimError(f"--method {method!r}: choose one of {', '.join(METHODS)}")
    score_in, label_in, dirs = _inputs(scores, labels, import_semsim_cifar100, direction)
    report = analyze(score_in, label_in, out, metrics=_split(metrics), directions=dirs, n_boot=bootstrap,
                     seed=seed, holdout=holdout, calibration_method=method, show_progress=not quiet)
    for note in report.notes:
        typer.echo(f"note: {note}", err=True)
    corr = report.tables["set_correlations"].set_index("metric")
    img = report.tables["image_level"].set_index("metric")
    table = Table(title="agreement with people (aligned: positive = agrees)")
    for col in ("metric", "set Spearman [95% CI]", "set Kendall", "image AUROC [95% CI]"):
        table.add_column(col, justify="left" if col == "metric" else "right")
    for m in corr.index:
        c, i = corr.loc[m], img.loc[m]
        table.add_row(m, f"{c['spearman']:+.3f} [{c['spearman_ci_low']:+.3f}, {c['spearman_ci_high']:+.3f}]",
                      f"{c['kendall']:+.3f}",
                      f"{i['auroc']:.3f} [{i['auroc_ci_low']:.3f}, {i['auroc_ci_high']:.3f}]")
    Console().print(table)
    typer.echo(f"wrote {report.html_path} and {len(report.tables)} tables to {out}")


def import_labels_cmd(
    source: Annotated[Path, typer.Argument(help="the table to import")],
    out: Annotated[Path, typer.Option(help="folder for scores.csv and labels.csv")] = Path("imported"),
    fmt: Annotated[str, typer.Option("--format", help=f"format of SOURCE: {', '.join(IMPORT_FORMATS)}")
                   ] = "semsim-cifar100",
) -> None:
    """Turn a published human-label table into a score table and a label table (docs/contracts.md)."""
    if fmt not in IMPORT_FORMATS:
        raise SemsimError(f"--format {fmt!r}: supported formats are {', '.join(IMPORT_FORMATS)}")
    score_df, label_df = import_semsim_cifar100(source)
    write_table(score_df, out / "scores.csv")
    write_labels(label_df, out / "labels.csv")
    flags = " ".join(f"--direction {c}={'higher' if d else 'lower'}"
                     for c, d in SEMSIM_CIFAR100_DIRECTIONS.items())
    typer.echo(f"wrote {out / 'scores.csv'} and {out / 'labels.csv'} ({len(label_df)} images, "
               f"{label_df['set'].nunique()} sets)")
    typer.echo(f"analyse with: semsim analyze {out / 'scores.csv'} --labels {out / 'labels.csv'} {flags}")


def register(app: typer.Typer) -> None:
    app.command("analyze")(analyze_cmd)
    app.command("import-labels")(import_labels_cmd)
