"""``semsim train-victim`` and ``semsim train-evaluator``: classifier checkpoints for attacks and for MR."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Annotated

import typer

from semsim.cli.choices import ARCHITECTURES
from semsim.cli.options import Device, Quiet, Threads
from semsim.common.checks import check_writable

ARCH_HELP = f"architecture: {', '.join(ARCHITECTURES)}"
DATA_HELP = "CIFAR-10/100 python folder, MNIST IDX folder, or image folder with one sub-folder per class"

Data = Annotated[Path, typer.Option("--data", help=DATA_HELP)]
Out = Annotated[Path, typer.Option("--out", help="checkpoint folder to write (weights + config.json)")]
Epochs = Annotated[int, typer.Option(min=1, help="training epochs")]
Split = Annotated[str | None, typer.Option(help="train or test (CIFAR, MNIST); default: train if present")]
ImageSize = Annotated[int | None, typer.Option("--image-size", min=1, help="bring images to this size")]
Fit = Annotated[str, typer.Option(help="how --image-size is reached: resize (centre crop + resample) or pad")]
N = Annotated[int | None, typer.Option("--n", min=1, help="train on a seeded subset of n images")]
PerClass = Annotated[int | None, typer.Option("--per-class", min=1, help="or on n images of every class")]
Width = Annotated[int | None, typer.Option(min=1, help="convnet width (default 64)")]
BatchSize = Annotated[int, typer.Option("--batch-size", min=2)]
Lr = Annotated[float, typer.Option("--lr", min=0.0, help="initial SGD learning rate (momentum 0.9)")]
Schedule = Annotated[str, typer.Option(help="learning-rate schedule: cosine or step")]
Seed = Annotated[int, typer.Option(help="seed of the initial weights, the subset, the split and the batches")]
Restart = Annotated[bool, typer.Option("--restart", help="ignore a saved partial run and start over")]


def _report(config: dict, out: Path) -> None:
    acc, train_acc = config.get("accuracy"), config.get("train_accuracy")
    n_val = config["training"]["n_val"]
    held_out = f", held-out accuracy {acc:.4f} ({n_val} images)" if acc is not None else ""
    trained = f"training accuracy {train_acc:.4f}" if train_acc is not None else "untrained (0 epochs)"
    typer.echo(f"wrote {out}: {config['architecture']} on {config['dataset']} "
               f"({config['training']['n_train']} images, {config['num_classes']} classes), {trained}{held_out}")
    from semsim.metrics.model_based import near_chance

    weak = near_chance(config) if config.get("role") == "evaluator" else None
    if weak is not None:
        warnings.warn(f"evaluator {out}: {weak}", stacklevel=2)


def train_victim(
    data: Data, out: Out,
    epochs: Annotated[int, typer.Option(min=0, help="training epochs (0: save the untrained model)")],
    arch: Annotated[str, typer.Option("--arch", "--architecture", help=ARCH_HELP)] = "resnet20-4",
    augment: Annotated[str, typer.Option(help="none, crop, or an ATS policy such as ats:3-1-7")] = "none",
    defense: Annotated[str, typer.Option(help="training-time gradient defense: none, noise-1e-3 or "
                                         "prune-70")] = "none",
    val_split: Annotated[float, typer.Option("--val-split", min=0.0, max=0.99,
                                             help="fraction held out to measure accuracy (0: none)")] = 0.0,
    split: Split = None, image_size: ImageSize = None, fit: Fit = "resize", n: N = None,
    per_class: PerClass = None, width: Width = None, batch_size: BatchSize = 128, lr: Lr = 0.1,
    schedule: Schedule = "cosine", seed: Seed = 0, device: Device = "cpu", threads: Threads = None,
    restart: Restart = False, quiet: Quiet = False,
    init: Annotated[str, typer.Option(help="lenet initialisation: default (PyTorch) or dlg (uniform "
                                      "(-0.5, 0.5), DLG's; use with --epochs 0 for DLG's untrained victim)")]
    = "default",
    nesterov: Annotated[bool, typer.Option("--nesterov", help="Nesterov momentum (the SemSim victims)")] = False,
    warmup: Annotated[float, typer.Option(min=0.0, max=0.99, help="linear warm-up, share of the steps")] = 0.05,
    milestones: Annotated[str, typer.Option(help="step schedule: x0.1 at these shares of the run, e.g. "
                                            "0.37,0.62,0.875 (the SemSim victims' epochs 74, 124, 175 of 200)")]
    = "0.375,0.625,0.875",
) -> None:
    """Train a victim classifier with a training variant (augmentation, training-time gradient defense)."""
    from semsim.victims.train import train_to_checkpoint

    check_writable(out, folder=True)
    try:
        shares = tuple(float(m) for m in milestones.split(","))
    except ValueError:
        raise typer.BadParameter(f"'{milestones}': give shares of the run separated by commas, e.g. "
                                 "0.375,0.625,0.875", param_hint="--milestones") from None
    config = train_to_checkpoint(out, role="victim", arch=arch, data=data, epochs=epochs, augment=augment,
                                 defense=defense, val_split=val_split, image_size=image_size, split=split,
                                 fit=fit, n=n, per_class=per_class, width=width, batch_size=batch_size, lr=lr,
                                 schedule=schedule, seed=seed, device=device, show_progress=not quiet,
                                 resume=not restart, init=init, nesterov=nesterov, warmup=warmup,
                                 milestones=shares)
    _report(config, out)


def train_evaluator(
    data: Data, out: Out, epochs: Epochs,
    arch: Annotated[str, typer.Option("--arch", "--architecture", help=ARCH_HELP)] = "resnet18",
    augment: Annotated[str, typer.Option(help="none or crop (standard augmentation of clean data)")] = "crop",
    val_split: Annotated[float, typer.Option("--val-split", min=0.01, max=0.99,
                                             help="fraction held out to measure the clean accuracy")] = 0.2,
    split: Split = None, image_size: ImageSize = None, fit: Fit = "resize", n: N = None,
    per_class: PerClass = None, width: Width = None, batch_size: BatchSize = 128, lr: Lr = 0.1,
    schedule: Schedule = "cosine", seed: Seed = 0, device: Device = "cpu", threads: Threads = None,
    restart: Restart = False, quiet: Quiet = False,
) -> None:
    """Train an evaluation classifier on clean images; its held-out (clean) accuracy goes in config.json."""
    from semsim.victims.train import train_to_checkpoint

    check_writable(out, folder=True)
    config = train_to_checkpoint(out, role="evaluator", arch=arch, data=data, epochs=epochs, augment=augment,
                                 val_split=val_split, image_size=image_size, split=split, fit=fit, n=n,
                                 per_class=per_class, width=width, batch_size=batch_size, lr=lr,
                                 schedule=schedule, seed=seed, device=device, show_progress=not quiet,
                                 resume=not restart)
    _report(config, out)


def register(app: typer.Typer) -> None:
    app.command("train-victim")(train_victim)
    app.command("train-evaluator")(train_evaluator)
