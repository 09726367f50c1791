"""The metric registry: every metric by name, with its direction and level.

A metric is a ``torch.nn.Module``. *Image-level* metrics map a batch of pairs to one value per pair:
``metric(original, reconstruction, labels=None, original_keys=None) -> Tensor[N]`` (or a dict of such columns).
*Set-level* metrics accumulate with ``update(...)`` (same arguments) and report ``compute() -> dict[str, float]``;
they may also expose per-image columns through ``per_image() -> dict[str, Tensor]``.
``original_keys`` (e.g. the original's file path) lets a metric cache per-original work across sets.

Every column a metric writes declares ``higher_is_more_leakage``: does a larger value mean the reconstruction
reveals more of the original?
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from semsim.errors import SemsimError

EVALUATOR_METRICS = ("mr", "iip", "feature_distance")  # the metrics that take evaluator=CHECKPOINT


@runtime_checkable
class SetMetric(Protocol):
    """What a set-level metric provides (the scoring pipeline calls these, per set, in this order).

    ``reset()`` forgets the previous set; ``update(...)`` adds a batch of pairs (the arguments of an image-level
    metric); ``compute()`` returns the set's values by column. A set metric may also define
    ``per_image() -> dict[str, Tensor]``: per-image columns, in the order the pairs were added.
    """

    def reset(self) -> None: ...

    def update(self, original: torch.Tensor, reconstruction: torch.Tensor, labels: torch.Tensor | None = None,
               original_keys: Sequence[str] | None = None) -> None: ...

    def compute(self) -> dict[str, float]: ...


def per_image_columns(metric: SetMetric) -> dict[str, torch.Tensor]:
    """The per-image columns of a set metric (none when it defines no ``per_image``)."""
    per_image = getattr(metric, "per_image", None)
    return per_image() if per_image is not None else {}


@dataclass(frozen=True)
class MetricInfo:
    """What the registry knows about a metric without building it."""

    name: str
    higher_is_more_leakage: bool
    level: str  # "image" or "set"
    description: str
    factory: Callable[..., torch.nn.Module] = field(repr=False, compare=False)
    columns: dict[str, bool] = field(default_factory=dict)  # column -> higher_is_more_leakage
    needs_labels: bool = False
    default: bool = True  # part of the default panel


_REGISTRY: dict[str, MetricInfo] = {}


def register_metric(name: str, *, higher_is_more_leakage: bool, description: str, level: str = "image",
                    columns: dict[str, bool] | None = None, needs_labels: bool = False, default: bool = True,
                    **factory_kwargs: Any) -> Callable:
    """Decorator registering a metric class or factory under ``name`` (``factory_kwargs`` bound at creation)."""
    if level not in ("image", "set"):
        raise ValueError(f"level must be 'image' or 'set', not {level!r}")

    def decorator(factory: Callable[..., torch.nn.Module]) -> Callable[..., torch.nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"metric '{name}' is registered twice")

        def build(**kwargs: Any) -> torch.nn.Module:
            return factory(**{**factory_kwargs, **kwargs})

        _REGISTRY[name] = MetricInfo(name, higher_is_more_leakage, level, description, build,
                                     columns or {name: higher_is_more_leakage}, needs_labels, default)
        return factory

    return decorator


def list_metrics(level: str | None = None) -> list[MetricInfo]:
    """All registered metrics (optionally of one level), in registration order."""
    return [m for m in _REGISTRY.values() if level is None or m.level == level]


def metric_info(name: str) -> MetricInfo:
    """The registry entry of ``name``; a clear error lists the known names."""
    if name not in _REGISTRY:
        raise SemsimError(f"unknown metric '{name}'; known metrics: {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


def create(name: str, **kwargs: Any) -> torch.nn.Module:
    """Build the metric registered as ``name``; ``kwargs`` override its defaults."""
    return metric_info(name).factory(**kwargs)


def aligned(values: Any, higher_is_more_leakage: bool) -> np.ndarray:
    """Values oriented so that larger means more leakage."""
    values = np.asarray(values, dtype=float)
    return values if higher_is_more_leakage else -values


def column_direction(column: str) -> bool | None:
    """``higher_is_more_leakage`` of a score-table column, or None when no registered metric writes it."""
    for info in _REGISTRY.values():
        if column in info.columns:
            return info.columns[column]
    return None


_RANGE_KNOWN: ContextVar[bool] = ContextVar("semsim_range_known", default=False)


@contextlib.contextmanager
def decoded_inputs() -> Iterator[None]:
    """Within this block, metrics skip the scan of input values: the caller guarantees images in [0, 1]
    (the scoring pipeline, whose tensors come straight from 8-bit files). Shape checks still run."""
    token = _RANGE_KNOWN.set(True)
    try:
        yield
    finally:
        _RANGE_KNOWN.reset(token)


def check_pair(original: torch.Tensor, reconstruction: torch.Tensor, data_range: float = 1.0) -> None:
    """Raise ``ValueError`` unless both are float NCHW tensors of one shape with values in [0, data_range]."""
    for name, t in (("original", original), ("reconstruction", reconstruction)):
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            raise ValueError(f"{name}: expected a float tensor, got {getattr(t, 'dtype', type(t))}")
        if t.ndim != 4:
            raise ValueError(f"{name}: expected NCHW (4 dimensions), got shape {tuple(t.shape)}")
    if original.shape != reconstruction.shape:
        raise ValueError(f"original {tuple(original.shape)} and reconstruction {tuple(reconstruction.shape)} "
                         "differ in shape")
    if _RANGE_KNOWN.get():
        return
    tol = 1e-4 * data_range
    for name, t in (("original", original), ("reconstruction", reconstruction)):
        lo, hi = (float(v) for v in torch.aminmax(t))
        if lo < -tol or hi > data_range + tol:
            raise ValueError(f"{name}: values span [{lo:.4g}, {hi:.4g}] but data_range is {data_range}; "
                             "scale images to [0, data_range] or pass the right data_range")

