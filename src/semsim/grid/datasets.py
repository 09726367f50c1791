"""Datasets loaded once per worker process (a worker runs many shards of the same dataset)."""

from __future__ import annotations

from typing import Any

_DATASETS: dict[tuple[str, int | None, str | None], Any] = {}


def cached_dataset(path: str, image_size: int | None = None, split: str | None = None) -> Any:
    """``load_dataset`` once per worker process (a worker runs many shards of the same dataset)."""
    from semsim.data.datasets import load_dataset

    key = (path, image_size, split)
    if key not in _DATASETS:
        if len(_DATASETS) >= 4:
            _DATASETS.pop(next(iter(_DATASETS)))
        _DATASETS[key] = load_dataset(path, image_size=image_size or None, split=split)
    return _DATASETS[key]
