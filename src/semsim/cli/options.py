"""Options shared by the commands, so that every command names and checks them the same way.

``Device`` is checked as the command line is parsed (:func:`semsim.common.checks.check_device`), before any
data is read; ``Threads`` sets torch's CPU thread count for the command. Torch is imported only when one of
them needs it.
"""

from __future__ import annotations

from typing import Annotated

import typer

from semsim.common.checks import check_device


def _device(value: str) -> str:
    return check_device(value)


def _threads(value: int | None) -> int | None:
    if value is not None:
        import torch

        torch.set_num_threads(value)
    return value


Device = Annotated[str, typer.Option(callback=_device, help="torch device: cpu, cuda, cuda:N or mps (checked "
                                                            "before any work starts)")]
Threads = Annotated[int | None, typer.Option(min=1, callback=_threads, help="torch CPU threads (default: "
                                             "torch's choice; 1 on a busy shared machine)")]
Quiet = Annotated[bool, typer.Option("--quiet", help="no progress bar")]
