"""``semsim calibrate``: fit P(recognized) from metric values and say how far off it is on unseen configurations."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from semsim.cli.analyze import (
    AllowMissingOpt,
    DirectionOpt,
    HoldoutOpt,
    ImportOpt,
    LabelsOpt,
    MethodOpt,
    ScoresArg,
    _inputs,
    _split,
)
from semsim.common.checks import check_writable
from semsim.errors import SemsimError

if TYPE_CHECKING:
    import pandas as pd


def _fmt(x: float, spec: str = ".3f") -> str:
    return "-" if x != x else format(x, spec)  # NaN -> "-"


def print_heldout(per_set: pd.DataFrame, summary: dict, base: dict, level: float) -> None:
    """One row per held-out configuration, its ECE bin counts, then the mean and the base-rate reference."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"held out ({summary['split']}): true recognition rate against the expected rate "
                        f"[{level:.0%} interval]")
    for col in ("set", "n", "true", "expected [interval]", "covered", "bias", "AUROC", "Brier", "ECE"):
        table.add_column(col, justify="left" if col == "set" else "right")
    for _, r in per_set.iterrows():
        table.add_row(r["set"], str(r["n_images"]), _fmt(r["rate"]),
                      f"{r['predicted']:.3f} [{_fmt(r['ci_low'])}, {_fmt(r['ci_high'])}]",
                      "yes" if r["covered"] else "NO", f"{r['bias']:+.3f}", _fmt(r["auroc"]), _fmt(r["brier"]),
                      _fmt(r["ece"]))
    Console(width=None if sys.stdout.isatty() else 200).print(table)  # files, pipes: no cramped columns
    typer.echo("ECE bin counts (10 equal-width bins of P(recognized)): "
               + "; ".join(f"{r['set']}: {r['ece_bins']}" for _, r in per_set.iterrows()))
    for row in (summary, base):
        typer.echo(f"mean over {row['n_sets']} held-out configuration(s), {row['metric']}: AUROC "
                   f"{_fmt(row['auroc'])}, Brier {row['brier']:.3f}, ECE {row['ece']:.3f}, bias {row['bias']:+.3f}, "
                   f"|rate error| {row['rate_error']:.3f}, interval coverage {row['coverage']:.0%}")


def calibrate_cmd(
    scores: ScoresArg = None,
    labels: LabelsOpt = None,
    metrics: Annotated[str, typer.Option(help="metric column(s) to calibrate, comma-separated")] = "semsim",
    out: Annotated[Path, typer.Option(help="calibration file (.json)")] = Path("calibration.json"),
    method: MethodOpt = "logistic",
    target: Annotated[str, typer.Option(help="majority (recognized by most judges) or share (of judges)")
                      ] = "majority",
    holdout: HoldoutOpt = None,
    direction: DirectionOpt = None,
    import_semsim_cifar100: ImportOpt = None,
    level: Annotated[float, typer.Option(min=0.5, max=0.999, help="level of the expected-rate intervals")
                     ] = 0.95,
    seed: Annotated[int, typer.Option(help="seed of the bootstrap refits")] = 0,
    allow_missing: AllowMissingOpt = False,
) -> None:
    """Fit a monotone map from metric values to P(a person recognizes the reconstruction); JSON out.

    The check holds out whole configurations (sets): each in turn, or with --holdout those the regex names
    (the map is then fitted on the others only). Per held-out configuration it prints the true recognition
    rate against the expected rate and its interval, AUROC, Brier and ECE, with the base rate for reference.
    """
    from semsim.analysis import join_scores_labels
    from semsim.analysis.calibration import (
        METHODS,
        TARGETS,
        fit_calibration,
        heldout_evaluation,
        split_name,
        split_sets,
        summarize_heldout,
    )

    if method not in METHODS:
        raise SemsimError(f"--method {method!r}: choose one of {', '.join(METHODS)}")
    if target not in TARGETS:
        raise SemsimError(f"--target {target!r}: choose one of {', '.join(TARGETS)}")
    if out.suffix.lower() != ".json":
        raise SemsimError(f"{out}: calibration files are JSON; give a name ending in .json")
    check_writable(out, (".json",))
    features = _split(metrics)
    if not features:
        raise SemsimError("--metrics: name at least one metric column to calibrate")
    score_in, label_in, dirs = _inputs(scores, labels, import_semsim_cifar100, direction,
                                       allow_missing=allow_missing)
    data = join_scores_labels(score_in, label_in, metrics=features, directions=dirs, allow_missing=allow_missing)
    for note in data.notes:
        typer.echo(f"note: {note}", err=True)
    train = data.table
    if holdout:
        (_, test), = split_sets(data.table["set"], holdout)
        train = data.table[~test]
    cal = fit_calibration(train, features, data.directions, method=method, target=target, seed=seed)
    kw: dict[str, Any] = {"method": method, "target": target, "holdout": holdout, "intervals": True, "level": level}
    per_set, _ = heldout_evaluation(data, features, **kw)
    base_per_set, _ = heldout_evaluation(data, [], **kw)
    summary = summarize_heldout(per_set, ", ".join(features), split_name(holdout))
    base = summarize_heldout(base_per_set, "base rate", split_name(holdout))
    cal.heldout = {**summary, "level": level, "per_set": per_set.to_dict("records"), "base_rate": base}
    cal.save(out)
    print_heldout(per_set, summary, base, level)
    typer.echo(f"{method} calibration of {', '.join(features)} on {cal.trained_on['n_images']} images "
               f"({len(cal.trained_on['sets'])} sets); on held-out configurations its {level:.0%} "
               f"expected-rate intervals covered {per_set['covered'].sum()} of {len(per_set)}, mean width "
               f"{(per_set['ci_high'] - per_set['ci_low']).mean():.2f}: label some images of a new "
               "configuration and use 'semsim estimate' for a tighter answer")
    typer.echo(f"wrote {out}")


def register(app: typer.Typer) -> None:
    app.command("calibrate")(calibrate_cmd)
