"""``semsim demo``: the whole assessment on bundled data, ending in an HTML report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from semsim.cli.choices import DEMO_N_IMAGES
from semsim.cli.options import Device, Quiet, Threads
from semsim.cli.score import print_summary
from semsim.common.checks import check_writable

SUMMARY_COLUMNS = ("psnr", "ssim", "mr_correct", "iip_pixel", "semsim")


def demo(
    out: Annotated[Path, typer.Option(help="output folder (report.html, sets, scores, models)")] = Path("semsim-demo"),
    n_images: Annotated[int, typer.Option("--n", "--n-images", min=2, help="reconstructions per configuration")
                        ] = DEMO_N_IMAGES,
    device: Device = "cpu",
    threads: Threads = None,
    quiet: Quiet = False,
) -> None:
    """Train a victim with and without a defense, attack it, score, analyse, and write a report."""
    from semsim.demo import DemoConfig, run_demo

    check_writable(out, folder=True)
    result = run_demo(DemoConfig(out=out, n_images=n_images, device=device, show_progress=not quiet))
    columns = [c for c in SUMMARY_COLUMNS if c in result.per_image.columns]
    print_summary(result.per_set, columns)
    for note in result.notes:
        typer.echo(f"note: {note}", err=True)
    typer.echo(f"total {sum(result.seconds.values()):.0f} s; report: {result.report.resolve()}")


def register(app: typer.Typer) -> None:
    app.command()(demo)
