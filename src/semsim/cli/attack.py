"""``semsim attack``: reconstruct images from a victim's gradients and write a SemSim-layout set."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from semsim.cli.choices import ATTACKS
from semsim.cli.options import Device, Quiet, Threads
from semsim.common.checks import check_writable


def attack(
    victim: Annotated[Path, typer.Option(help="victim checkpoint folder (model.safetensors + config.json)")],
    data: Annotated[Path, typer.Option(help="dataset: CIFAR python folder, image folder or MNIST folder")],
    out: Annotated[Path, typer.Option(help="output folder: {id}_{label}_ori/_rec.png + manifest.csv")],
    attack: Annotated[str, typer.Option(help=f"one of {', '.join(ATTACKS)}")] = "invgrad",
    n: Annotated[int | None, typer.Option(min=1, help="attack n images drawn by --seed (default: all)")]
    = None,
    split: Annotated[str | None, typer.Option(help="train or test (CIFAR/MNIST; default: train if present)")]
    = None,
    defense: Annotated[str, typer.Option(help="defense on the observed gradient: none, noise-1e-3, prune-70")]
    = "none",
    client_augment: Annotated[str, typer.Option(
        help="the client transforms its image before the gradient: none, crop, ats:3-1-7, or train (the "
             "victim's training augmentation, as ATSPrivacy's and SemSim's attacks do); seeded per image")]
    = "none",
    iterations: Annotated[int | None, typer.Option(min=1, help="optimisation steps (default: the paper's)")]
    = None,
    restarts: Annotated[int | None, typer.Option(min=1, help="random restarts per image")] = None,
    lr: Annotated[float | None, typer.Option(help="step size (default: the paper's)")] = None,
    tv: Annotated[float | None, typer.Option(help="total-variation weight")] = None,
    model_mode: Annotated[str | None, typer.Option(help="BatchNorm mode of the gradient: eval or train")]
    = None,
    batch_size: Annotated[int, typer.Option(min=1, help="images attacked together in one optimisation")] = 8,
    engine: Annotated[str, typer.Option(help="how the loop runs: eager, or tf32, channels-last and one of "
                                             "compile / cudagraphs joined with '+' (GPU speed options)")]
    = "eager",
    seed: Annotated[int, typer.Option(help="base seed (image subset, random starts, defense noise)")] = 0,
    image_size: Annotated[int | None, typer.Option(min=1, help="resize an image folder to this size")] = None,
    device: Device = "cpu",
    threads: Threads = None,
    quiet: Quiet = False,
) -> None:
    """Attack images with DLG, iDLG, Inverting Gradients or GradInversion; a rerun resumes."""
    from semsim.attacks import attack_set
    from semsim.attacks.engine import EngineOptions
    from semsim.data.datasets import load_dataset

    engine_options = EngineOptions.parse(engine)
    check_writable(out, folder=True)
    dataset = load_dataset(data, image_size=image_size, split=split)
    options: dict[str, Any] = {k: v for k, v in dict(restarts=restarts, lr=lr, tv=tv, model_mode=model_mode).items()
               if v is not None}
    manifest = attack_set(victim, dataset, attack, out, n=n, seed=seed, defense=defense,
                          iterations=iterations, batch_size=batch_size, device=device, engine=engine_options,
                          client_augment=client_augment, show_progress=not quiet, **options)
    ok = manifest["status"].eq("ok")
    typer.echo(f"{manifest['set'].iloc[0]}: {int(ok.sum())} reconstructed, {int((~ok).sum())} failed; "
               f"wrote {out / 'manifest.csv'}")


def register(app: typer.Typer) -> None:
    app.command()(attack)
