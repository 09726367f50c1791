"""``semsim evaluate``: the SemSim paper's generalization protocol (train on some sets, test on others)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from semsim.cli.choices import EVALUATE_BASELINES
from semsim.cli.options import Device, Quiet, Threads
from semsim.common.checks import check_writable


def evaluate(
    labels: Annotated[list[Path], typer.Option(help="label table(s) or SemSim release folder(s)")],
    train_sets: Annotated[str, typer.Option(help="sets to train on: names or patterns, e.g. 'cifar100/*'")],
    out: Annotated[Path, typer.Option(help="output folder: model/, evaluation.csv, evaluation_sets.csv")],
    test_sets: Annotated[str | None, typer.Option(help="sets to test on (default: all the others)")] = None,
    manifest: Annotated[list[Path] | None, typer.Option(help="manifests for a table without paths")] = None,
    model: Annotated[Path | None, typer.Option(help="use this SemSim model instead of training one")] = None,
    baselines: Annotated[str, typer.Option(help="metrics to compare with")] = ",".join(EVALUATE_BASELINES),
    disjoint_originals: Annotated[
        bool, typer.Option("--disjoint-originals", help="test only on originals unseen in training")
    ] = False,
    architecture: Annotated[str, typer.Option("--arch", "--architecture", help="backbone")] = "resnet18",
    width: Annotated[int | None, typer.Option(help="width of the convnet backbone")] = None,
    image_size: Annotated[int, typer.Option(min=8)] = 32,
    epochs: Annotated[int, typer.Option(min=1)] = 100,
    batch_size: Annotated[int, typer.Option(min=1, help="triplets per step")] = 64,
    lr: Annotated[float, typer.Option()] = 0.05,
    seed: Annotated[int, typer.Option()] = 0,
    device: Device = "cpu",
    threads: Threads = None,
    quiet: Quiet = False,
) -> None:
    """Train SemSim on some sets and compare it with PSNR, SSIM and LPIPS on the others (AUROC, Spearman)."""
    from rich.console import Console
    from rich.table import Table

    from semsim.analysis.evaluate_semsim import evaluate_generalization
    from semsim.common.io import write_table
    from semsim.data.label_import import load_labels
    from semsim.learned.train import TrainConfig

    check_writable(out, folder=True)
    table = load_labels(labels, manifests=manifest or ())
    config = TrainConfig(architecture=architecture, arch_kwargs={"width": width} if width else {},
                         image_size=image_size, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed)
    result = evaluate_generalization(
        table, out, train_sets=train_sets, test_sets=test_sets, model=model, config=config,
        baselines=[b.strip() for b in baselines.split(",") if b.strip()],
        disjoint_originals=disjoint_originals, device=device, show_progress=not quiet)
    for note in result.notes:
        typer.echo(f"note: {note}", err=True)
    view = Table(title=f"held-out sets ({result.summary['n_sets'].iloc[0]}), "
                 f"{result.summary['n_pairs'].max()} pairs: agreement with the labels")
    for col in ("metric column", "image-level AUROC", "set-level Spearman", "pairs"):
        view.add_column(col, justify="left" if col == "metric column" else "right")
    for _, row in result.summary.iterrows():
        view.add_row(row["column"], f"{row['auroc']:.3f}", f"{row['spearman_sets']:.3f}", str(row["n_pairs"]))
    Console().print(view)
    write_table(result.summary, out / "evaluation.csv")
    write_table(result.per_set, out / "evaluation_sets.csv")
    typer.echo(f"wrote {out / 'evaluation.csv'} and {out / 'evaluation_sets.csv'}")


def register(app: typer.Typer) -> None:
    app.command()(evaluate)
