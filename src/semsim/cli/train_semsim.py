"""``semsim train``: learn the SemSim metric from recognizability labels."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from semsim.cli.options import Device, Quiet, Threads
from semsim.common.checks import check_writable
from semsim.errors import SemsimError


def parse_floats(text: str | None, default: tuple[float, ...], what: str) -> tuple[float, ...]:
    """``"0.5,0.5,0.5"`` -> ``(0.5, 0.5, 0.5)``; a clear error for anything else."""
    if text is None:
        return default
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise SemsimError(f"--{what} {text!r}: give comma-separated numbers, e.g. 0.5,0.5,0.5") from None


def train(
    labels: Annotated[
        list[Path],
        typer.Option(
            help="label table (.csv/.parquet, e.g. the annotation app's "
            "export) or SemSim release folder (train_with_ori/); repeatable"
        ),
    ],
    out: Annotated[Path, typer.Option(help="model folder to write (model.safetensors + config.json)")],
    manifest: Annotated[
        list[Path] | None,
        typer.Option(help="set manifest(s) giving image paths to a label table that has none; repeatable"),
    ] = None,
    label_source: Annotated[
        str | None,
        typer.Option(
            help="label_source for release folders (default "
            "import:semsim-release; human:<study> only if it is)"
        ),
    ] = None,
    architecture: Annotated[str, typer.Option("--arch", "--architecture", help="backbone "
                                              "(semsim.models.ARCHITECTURES)")] = "resnet18",
    width: Annotated[int | None, typer.Option(help="width of the convnet backbone")] = None,
    image_size: Annotated[int, typer.Option(min=8, help="input size the images are resized to")] = 32,
    mean: Annotated[
        str | None, typer.Option(help="normalisation mean, e.g. 0.5,0.5,0.5 (default CIFAR)")
    ] = None,
    std: Annotated[str | None, typer.Option(help="normalisation std (default CIFAR)")] = None,
    epochs: Annotated[int, typer.Option(min=1)] = 100,
    batch_size: Annotated[int, typer.Option(min=1, help="triplets per step")] = 64,
    lr: Annotated[float, typer.Option(help="SGD learning rate (Nesterov, momentum 0.9)")] = 0.05,
    weight_decay: Annotated[float, typer.Option()] = 5e-4,
    margin: Annotated[float, typer.Option(help="triplet margin")] = 1.0,
    anchor: Annotated[
        str, typer.Option(help="'original' (paper) or 'all' (every image is an anchor)")
    ] = "original",
    soft: Annotated[
        bool, typer.Option("--soft", help="weight triplets by the judges' shares (soft labels)")
    ] = False,
    augment: Annotated[str, typer.Option(help="'none' or 'flip'")] = "none",
    val_fraction: Annotated[float, typer.Option("--val-split", "--val-fraction", min=0.0, max=0.99,
                                                help="share of ORIGINALS held out for validation")] = 0.2,
    seed: Annotated[int, typer.Option()] = 0,
    device: Device = "cpu",
    threads: Threads = None,
    restart: Annotated[bool, typer.Option("--restart", help="ignore a saved training state")] = False,
    quiet: Quiet = False,
) -> None:
    """Train SemSim (triplet loss on recognized vs unrecognized reconstructions); resumes when interrupted."""
    from semsim.data.label_import import load_labels
    from semsim.learned.train import TrainConfig, train_semsim
    from semsim.models.classifiers import CIFAR_MEAN, CIFAR_STD

    check_writable(out, folder=True)
    table = load_labels(labels, manifests=manifest or (), label_source=label_source)
    config = TrainConfig(
        architecture=architecture,
        arch_kwargs={"width": width} if width else {},
        image_size=image_size,
        mean=parse_floats(mean, CIFAR_MEAN, "mean"),
        std=parse_floats(std, CIFAR_STD, "std"),
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        weight_decay=weight_decay,
        margin=margin,
        anchor=anchor,
        label_mode="soft" if soft else "majority",
        augment=augment,
        val_fraction=val_fraction,
        seed=seed,
    )
    result = train_semsim(table, out, config, device=device, show_progress=not quiet, resume=not restart)
    v = result["validation"]
    typer.echo(
        f"wrote {out}: best epoch {v.get('epoch')}, validation "
        + json.dumps({k: (round(x, 4) if isinstance(x, float) else x) for k, x in v.items() if k != "epoch"})
    )
    if v.get("val_auroc") is None:
        chosen = "validation triplet accuracy" if v.get("val_triplet_accuracy") is not None else "training loss"
        typer.echo("note: val_auroc is null: the held-out originals' pairs are all recognized or all not (or "
                   f"there are none), so AUROC is undefined; the best epoch was chosen by {chosen}. Raise "
                   "--val-split or give labels of both kinds to get an AUROC", err=True)
    if not result["human_labels"]:
        typer.echo(
            f"note: trained on labels from {', '.join(result['label_sources'])}, not human judgments",
            err=True,
        )


def register(app: typer.Typer) -> None:
    app.command()(train)
