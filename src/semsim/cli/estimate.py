"""``semsim estimate``: a set's recognition rate from calibrated probabilities and a few human labels (PPI++)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from semsim.common.checks import check_writable
from semsim.errors import SemsimError

if TYPE_CHECKING:
    import pandas as pd


def print_estimates(est: pd.DataFrame, level: float) -> None:
    """One row per set: the estimate, its interval and how it was made."""
    import numpy as np
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"recognition rate per set [{level:.0%} interval]")
    for col in ("set", "images", "labelled", "estimate [interval]", "labels alone", "method"):
        table.add_column(col, justify="left" if col in ("set", "method") else "right")
    for _, r in est.iterrows():
        alone = ("-" if r["n_labeled"] == 0 else
                 f"[{r['labels_only_ci_low']:.3f}, {r['labels_only_ci_high']:.3f}]")
        table.add_row(str(r["set"]), str(r["n_images"]), str(r["n_labeled"]),
                      f"{r['estimate']:.3f} " + ("(no interval)" if np.isnan(r["ci_low"]) else
                                                 f"[{r['ci_low']:.3f}, {r['ci_high']:.3f}]"), alone, r["method"])
    Console(width=None if sys.stdout.isatty() else 200).print(table)  # files, pipes: no cramped columns


def print_budget(est: pd.DataFrame, half_width: float, correlation: float, level: float) -> None:
    """Labels needed per set for a ``half_width`` interval, with PPI++ and with labels alone."""
    from semsim.analysis.calibration import label_budget

    typer.echo(f"labels for a {level:.0%} interval of +-{half_width:g} (calibration's held-out correlation with "
               f"people {correlation:.2f}):")
    for _, r in est.iterrows():
        ppi, alone = label_budget(half_width, correlation, rate=float(r["estimate"]), n_images=int(r["n_images"]),
                                  level=level)
        typer.echo(f"  {r['set']}: {ppi} with PPI++, {alone} with labels alone (has {r['n_labeled']})")


def estimate(
    scores: Annotated[Path, typer.Argument(help="per-image table of the set(s): a score table (with the "
                                           "calibration's metric columns) or one holding p_recognized")],
    calibration: Annotated[Path | None, typer.Option(help="calibration file (semsim calibrate); omit when "
                                                     "SCORES has p_recognized")] = None,
    labels: Annotated[Path | None, typer.Option(help="label table of a random sample of each set's images "
                                                "(semsim annotate init --sample N)")] = None,
    out: Annotated[Path | None, typer.Option(help="estimates table (.csv or .parquet)")] = None,
    level: Annotated[float, typer.Option(min=0.5, max=0.999, help="confidence level")] = 0.95,
    half_width: Annotated[float | None, typer.Option(help="also print how many labels each set needs for an "
                                                     "interval of +- this half-width")] = None,
    allow_out_of_range: Annotated[bool, typer.Option("--allow-out-of-range", help="apply the calibration even "
                                                     "when most values lie outside its fitted range")] = False,
) -> None:
    """Each set's recognition rate: calibrated probabilities corrected by a few human labels.

    Prediction-powered inference (PPI++; Angelopoulos et al., Science 2023; Angelopoulos, Duchi & Zrnic, 2023):
    the interval is valid whatever the calibration's quality and about as narrow as labels alone at worst.
    Without labels the answer is the calibration's alone, with its (wide) expected-rate interval.
    """
    import numpy as np
    import pandas as pd

    from semsim.analysis.calibration import estimate_rates
    from semsim.common.io import read_table, write_table
    from semsim.data.labels import read_labels
    from semsim.metrics.calibrated import load_calibration

    if out is not None and out.suffix.lower() not in (".csv", ".parquet"):
        raise SemsimError(f"{out}: give a name ending in .csv or .parquet")
    if out is not None:
        check_writable(out, (".csv", ".parquet"))
    if half_width is not None and not 0 < half_width < 1:
        raise SemsimError(f"--half-width {half_width}: give a number between 0 and 1, e.g. 0.05")
    cal = load_calibration(calibration) if calibration is not None else None
    correlation = float(cal.heldout.get("correlation", float("nan"))) if cal is not None else float("nan")
    if half_width is not None and not np.isfinite(correlation):
        raise SemsimError("--half-width needs the calibration's measured correlation with people; give "
                          "--calibration with a file written by 'semsim calibrate'")
    per_image = read_table(scores, required=("set", "image_id"))
    label_df = (read_labels(labels) if labels is not None
                else pd.DataFrame({"set": [], "image_id": [], "recognized": []}))
    if cal is not None:
        for note in cal.check_range(per_image, allow=allow_out_of_range, where=str(scores)):
            typer.echo(f"note: {note}", err=True)
        per_image = per_image.assign(p_recognized=cal.predict(per_image, where=str(scores)))
    elif "p_recognized" not in per_image.columns:
        raise SemsimError(f"{scores}: no p_recognized column; give --calibration CAL to compute it")
    est = estimate_rates(per_image, label_df, level=level, calibration=cal)
    print_estimates(est, level)
    if half_width is not None:
        print_budget(est, half_width, correlation, level)
    if out is not None:
        write_table(est, out)
        typer.echo(f"wrote {out}")


def register(app: typer.Typer) -> None:
    app.command()(estimate)
