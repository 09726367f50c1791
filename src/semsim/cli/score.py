"""``semsim score``: per-image and per-set metric tables for reconstruction sets.

The command only parses options and prints: choosing the panel, provenance columns, calibration and skipped
pairs are :func:`semsim.metrics.scoring.score_sets`, the same workflow as ``semsim grid`` and the Python API.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, cast

import typer

from semsim.cli.options import Device, Quiet, Threads
from semsim.errors import SemsimError

if TYPE_CHECKING:
    import pandas as pd
    from rich.console import Console

    from semsim.metrics.calibrated import Calibration


def print_summary(per_set: pd.DataFrame, columns: list[str], console: Console | None = None) -> None:
    """Print one row per set: n and, per metric, the mean with its 95% bootstrap interval (and how many
    identical pairs a PSNR mean leaves out)."""
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
                identical = int(row.get(f"{col}_n_identical", 0) or 0)
                cells.append(f"{row[f'{col}_mean']:.4g} [{row[f'{col}_ci_low']:.4g}, {row[f'{col}_ci_high']:.4g}]"
                             + (f" + {identical} identical (inf)" if identical else ""))
            elif col in row:
                cells.append(f"{row[col]:.4g}")
            else:
                cells.append("-")
        table.add_row(str(row["set"]), str(row["n"]), *cells)
    console.print(table)


def score_table_given(path: Path, cal: Calibration | None) -> bool:
    """Whether ``path`` is a per-image score table (a .csv/.parquet file without a ``reconstruction`` column)
    rather than a manifest; a score table without --calibration is refused (nothing to do)."""
    from semsim.common.io import read_table

    if not (path.is_file() and path.suffix.lower() in (".csv", ".parquet")):
        return False
    if "reconstruction" in read_table(path).columns:
        return False
    if cal is None:
        raise SemsimError(f"{path}: a score table (no 'reconstruction' column), not a manifest: there is nothing "
                          "to score; give --calibration CAL to add P(recognized), or a manifest or folders")
    return True


def calibrate_table(path: Path, cal: Calibration, out: Path | None, allow_out_of_range: bool) -> None:
    """``semsim score TABLE --calibration CAL``: apply a calibration to an existing score table."""
    from semsim.common.io import read_table, write_table
    from semsim.metrics.calibrated import calibrate_score_table
    from semsim.metrics.summary import set_table_path

    per_image, per_set, notes = calibrate_score_table(read_table(path), cal, allow_out_of_range=allow_out_of_range,
                                                      where=str(path))
    for note in notes:
        typer.echo(f"note: {note}", err=True)
    print_summary(per_set, [c for c in per_image.columns if c not in ("set", "image_id", "status")])
    if out is not None:
        write_table(per_image, out)
        write_table(per_set, set_table_path(out))
        typer.echo(f"wrote {out} and {set_table_path(out)}")


def score(
    originals: Annotated[Path | None, typer.Argument(help="a set folder or manifest, a SemSim-layout folder, or "
                                                    "a folder of originals (then give RECONSTRUCTIONS)")] = None,
    reconstructions: Annotated[Path | None, typer.Argument(help="folder of reconstructions (matched by id)")] = None,
    metrics: Annotated[str | None, typer.Option(help="comma-separated metric names (default: the full panel)")] = None,
    out: Annotated[Path | None, typer.Option(help="per-image table, .parquet or .csv; the per-set table goes "
                                             "next to it as <name>_sets.<ext>")] = None,
    set_name: Annotated[str | None, typer.Option("--set", help="rename the set (one set only; default: the "
                                                 "manifest's set names, else the folder's name)")] = None,
    device: Device = "cpu",
    threads: Threads = None,
    batch_size: Annotated[int, typer.Option(min=1)] = 256,
    skip_bad: Annotated[bool, typer.Option("--skip-bad", help="record and skip unusable pairs")] = False,
    quiet: Quiet = False,
    evaluator: Annotated[Path | None, typer.Option(help="evaluation classifier checkpoint: adds mr, iip and "
                                                   "feature_distance to the panel")] = None,
    semsim_model: Annotated[Path | None, typer.Option("--semsim", help="SemSim model folder (semsim train): "
                                                      "adds the semsim column")] = None,
    calibration: Annotated[Path | None, typer.Option(help="calibration file (semsim calibrate): adds "
                                                     "p_recognized and per-set expected recognition rates"
                                                     )] = None,
    allow_out_of_range: Annotated[bool, typer.Option("--allow-out-of-range", help="apply the calibration even "
                                                     "when most values lie outside its fitted range")] = False,
    color: Annotated[str, typer.Option(help="colour space of mse, psnr, ssim and ms_ssim: rgb (every channel), "
                                       "gray (MATLAB rgb2gray, as MATLAB and IQA-PyTorch score SSIM) or y "
                                       "(BT.601 luma, IQA-PyTorch's test_y_channel)")] = "rgb",
    no_download: Annotated[bool, typer.Option("--no-download", help="never fetch pretrained weights (LPIPS, "
                                              "FID); the same as SEMSIM_OFFLINE=1")] = False,
    sets: Annotated[list[Path] | None, typer.Option("--sets", help="set folder or manifest, instead of "
                                                    "ORIGINALS; repeat for several sets in one table")] = None,
) -> None:
    """Score reconstructions against their originals with the metric panel.

    ORIGINALS may also be a per-image score table (.csv/.parquet without a 'reconstruction' column): with
    --calibration it gets p_recognized and per-set expected recognition rates, without any image.
    """
    from semsim.common.checks import check_writable
    from semsim.common.io import TABLE_SUFFIXES
    from semsim.metrics.calibrated import load_calibration

    if color not in ("rgb", "gray", "y"):
        raise SemsimError(f"--color {color}: use rgb, gray or y")
    if no_download:
        import os

        from semsim.models.weights import OFFLINE_ENV

        os.environ[OFFLINE_ENV] = "1"
    if (originals is None) == (not sets):
        raise SemsimError("give the sets to score either as ORIGINALS [RECONSTRUCTIONS] or with --sets (repeatable), "
                          "not both and not neither")
    if sets and set_name:
        raise SemsimError("--set renames the set of ORIGINALS; with --sets, each set keeps its manifest's name")
    if out is not None:
        check_writable(out, TABLE_SUFFIXES)
    cal = load_calibration(calibration) if calibration is not None else None
    if originals is not None and reconstructions is None and score_table_given(originals, cal):
        return calibrate_table(originals, cast("Calibration", cal), out, allow_out_of_range)  # cal: checked
    from semsim.data.sets import ingest, ingest_sets  # torch: only when images are scored
    from semsim.metrics.pixel import color_options
    from semsim.metrics.scoring import score_sets

    manifest, skipped = (ingest_sets(sets, skip_bad=skip_bad) if sets else
                         ingest(cast(Path, originals), reconstructions, set_name=set_name, skip_bad=skip_bad))
    result = score_sets(manifest, [m.strip() for m in metrics.split(",")] if metrics else None,
                        evaluator=evaluator, semsim=semsim_model, calibration=cal, skipped=skipped, device=device,
                        options=color_options(color),
                        batch_size=batch_size, skip_bad=skip_bad, show_progress=not quiet,
                        allow_out_of_range=allow_out_of_range)
    if color != "rgb":
        result.notes.append(f"mse, psnr, ssim and ms_ssim are computed on the {color} image (--color {color}): "
                            f"their columns are named mse_{color}, psnr_{color}, ...")
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
