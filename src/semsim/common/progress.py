"""One progress bar style for every long-running command (tqdm on stderr; silent when disabled)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from tqdm.auto import tqdm


def progress(iterable: Iterable | None = None, *, total: int | None = None, desc: str = "",
             unit: str = "it", enabled: bool = True, **kwargs: Any) -> tqdm:
    """A tqdm bar (``enabled=False`` gives a silent one with the same interface)."""
    return tqdm(iterable, total=total, desc=desc, unit=unit, disable=not enabled, dynamic_ncols=True,
                leave=False, **kwargs)
