"""``semsim analyze``, ``semsim import-labels``: agreement of metrics with people (``semsim calibrate``:
:mod:`semsim.cli.calibrate`)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from semsim.common.checks import check_writable
from semsim.errors import SemsimError

if TYPE_CHECKING:
    import pandas as pd
    from rich.table import Table

IMPORT_FORMATS = ("semsim-cifar100",)
# Kept here so that `semsim analyze --help` imports no analysis code; tests/test_analysis_report.py checks that
# they equal semsim.metrics.calibrated.METHODS and semsim.analysis.ceiling.TIE_RULES.
METHODS = ("logistic", "isotonic")
TIE_RULES = ("exclude", "not", "half")

ScoresArg = Annotated[Path | None, typer.Argument(help="per-image score table (.csv/.parquet), semsim score")]
LabelsOpt = Annotated[Path | None, typer.Option("--labels", help="label table; omit when SCORES holds both")]
DirectionOpt = Annotated[list[str] | None, typer.Option(
    "--direction", help="COLUMN=higher|lower for a metric column the registry does not know (repeatable); "
                        "higher: larger values mean more leakage")]
ImportOpt = Annotated[Path | None, typer.Option(
    "--import-semsim-cifar100", help="analyse the SemSim authors' CIFAR-100 human-label table instead of "
                                     "SCORES/--labels (directions are built in)")]
VlmOpt = Annotated[Path | None, typer.Option(
    "--vlm", help="with --import-semsim-cifar100 / import-labels: the CLIP predictions table of the same images "
                  "(vlm_predictions.csv), added as model-based recognition columns mr_clip_<model>")]
AllowMissingOpt = Annotated[bool, typer.Option(
    "--allow-missing", help="analyse the images both tables share when a join on (set, image_id) loses some "
                            "(default: stop and say how many)")]
HoldoutOpt = Annotated[str | None, typer.Option(
    help="regex of set names held out of the calibration fit, e.g. ConvNet (default: each set in turn)")]
MethodOpt = Annotated[str, typer.Option(help=f"calibration map: {' or '.join(METHODS)}")]


def _inputs(scores: Path | None, labels: Path | None, imported: Path | None, direction: list[str] | None, *,
            vlm: Path | None = None, allow_missing: bool = False
            ) -> tuple[pd.DataFrame | Path, pd.DataFrame | Path | None, dict[str, bool]]:
    """The score and label inputs (paths, or the imported tables) and the metric directions."""
    from semsim.analysis.data import import_semsim_cifar100, imported_directions, parse_directions

    explicit = parse_directions(direction)
    if imported is not None:
        if scores is not None or labels is not None:
            raise SemsimError("--import-semsim-cifar100 replaces SCORES and --labels; give one or the other")
        score_df, label_df = import_semsim_cifar100(imported, vlm, allow_missing=allow_missing)
        return score_df, label_df, {**imported_directions(score_df), **explicit}
    if vlm is not None:
        raise SemsimError("--vlm adds CLIP predictions to --import-semsim-cifar100; give that table too")
    if scores is None:
        raise SemsimError("no score table given; pass SCORES (and --labels) or --import-semsim-cifar100 PATH")
    return scores, labels, explicit


def _provenance(scores: Path | None, labels: Path | None, imported: Path | None, vlm: Path | None
                ) -> dict[str, str]:
    """How the report names its inputs (in import mode, the imported files rather than "a data frame")."""
    if imported is None:
        return {"scores": str(scores), "labels": str(labels) if labels else "none (SCORES holds the labels)"}
    clip = f" with CLIP predictions from {vlm}" if vlm else ""
    return {"scores": f"{imported} (imported as semsim-cifar100){clip}", "labels": f"{imported} (imported)"}


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
    vlm: VlmOpt = None,
    ties: Annotated[str, typer.Option(help="human ceiling: how a tied majority of the other annotators counts: "
                                           f"{', '.join(TIE_RULES)}")] = "exclude",
    allow_missing: AllowMissingOpt = False,
    quiet: Annotated[bool, typer.Option("--quiet", help="no progress bar")] = False,
) -> None:
    """How well does each metric agree with human judgments? CSV tables and a self-contained HTML report."""
    from rich.console import Console

    from semsim.analysis.report import analyze

    if method not in METHODS:
        raise SemsimError(f"--method {method!r}: choose one of {', '.join(METHODS)}")
    if ties not in TIE_RULES:
        raise SemsimError(f"--ties {ties!r}: choose one of {', '.join(TIE_RULES)}")
    check_writable(out, folder=True)
    score_in, label_in, dirs = _inputs(scores, labels, import_semsim_cifar100, direction, vlm=vlm,
                                       allow_missing=allow_missing)
    report = analyze(score_in, label_in, out, metrics=_split(metrics), directions=dirs, n_boot=bootstrap,
                     seed=seed, holdout=holdout, calibration_method=method, ties=ties, allow_missing=allow_missing,
                     inputs=_provenance(scores, labels, import_semsim_cifar100, vlm), show_progress=not quiet)
    for note in report.notes:
        typer.echo(f"note: {note}", err=True)
    Console().print(_summary_table(report.tables["summary"]))
    typer.echo(f"human ceiling: ties among the other annotators counted as '{ties}' (--ties)")
    typer.echo(f"wrote {report.html_path} and {len(report.tables)} tables to {out}")


def _summary_table(summary: pd.DataFrame) -> Table:
    """The summary as a console table (marks: best, = cannot be told apart from it, < below it)."""
    from rich.table import Table

    table = Table(title="agreement with the labels (aligned: positive = agrees; = not distinguishable from best)")
    for col in ("metric", "set Spearman [95% CI]", "set Kendall", "image AUROC [95% CI]"):
        table.add_column(col, justify="left" if col == "metric" else "right")
    for _, r in summary.iterrows():
        table.add_row(str(r["metric"]),
                      f"{r['set_spearman']:+.3f} [{r['set_spearman_ci_low']:+.3f}, {r['set_spearman_ci_high']:+.3f}] "
                      f"{r['set_mark']}", f"{r['set_kendall']:+.3f}",
                      f"{r['image_auroc']:.3f} [{r['image_auroc_ci_low']:.3f}, {r['image_auroc_ci_high']:.3f}] "
                      f"{r['image_mark']}")
    return table


def import_labels_cmd(
    source: Annotated[Path, typer.Argument(help="the table to import")],
    out: Annotated[Path, typer.Option(help="folder for scores.csv and labels.csv")] = Path("imported"),
    fmt: Annotated[str, typer.Option("--format", help=f"format of SOURCE: {', '.join(IMPORT_FORMATS)}")
                   ] = "semsim-cifar100",
    vlm: VlmOpt = None,
    allow_missing: AllowMissingOpt = False,
) -> None:
    """Turn a published human-label table into a score table and a label table (docs/contracts.md); each
    judge's chosen class is kept (judge_<k>_class) next to its 1/0/-1 code."""
    from semsim.analysis.data import import_semsim_cifar100, imported_directions
    from semsim.common.io import write_table
    from semsim.data.labels import write_labels

    if fmt not in IMPORT_FORMATS:
        raise SemsimError(f"--format {fmt!r}: supported formats are {', '.join(IMPORT_FORMATS)}")
    check_writable(out, folder=True)
    score_df, label_df = import_semsim_cifar100(source, vlm, allow_missing=allow_missing)
    write_table(score_df, out / "scores.csv")
    write_labels(label_df, out / "labels.csv")
    flags = " ".join(f"--direction {c}={'higher' if d else 'lower'}"
                     for c, d in imported_directions(score_df).items())
    typer.echo(f"wrote {out / 'scores.csv'} and {out / 'labels.csv'} ({len(label_df)} images, "
               f"{label_df['set'].nunique()} sets)")
    typer.echo(f"analyse with: semsim analyze {out / 'scores.csv'} --labels {out / 'labels.csv'} {flags}")


def register(app: typer.Typer) -> None:
    app.command("analyze")(analyze_cmd)
    app.command("import-labels")(import_labels_cmd)
