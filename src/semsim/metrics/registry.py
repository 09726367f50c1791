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
import importlib
import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from semsim.errors import SemsimError

if TYPE_CHECKING:  # the registry itself needs no torch: listing metrics and their directions stays light
    import torch
    from torch import nn

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
    """What the registry knows about a metric without building it (or importing its module).

    ``factory`` is a callable or ``"module:attribute"`` naming one, imported only when the metric is built;
    ``options`` are keyword arguments bound at creation (``create`` arguments override them).
    """

    name: str
    higher_is_more_leakage: bool
    level: str  # "image" or "set"
    description: str
    factory: str | Callable[..., Any] = field(repr=False, compare=False)
    columns: dict[str, bool] = field(default_factory=dict)  # column -> higher_is_more_leakage
    needs_labels: bool = False
    default: bool = True  # part of the default panel
    options: dict[str, Any] = field(default_factory=dict, repr=False)

    def build(self, **kwargs: Any) -> nn.Module:
        """Import the factory and call it with the bound options, overridden by ``kwargs``."""
        factory = self.factory
        if isinstance(factory, str):
            module, _, attr = factory.partition(":")
            factory = getattr(importlib.import_module(module), attr)
        return factory(**{**self.options, **kwargs})


def _builtin(name: str, factory: str, higher_is_more_leakage: bool, description: str, *, level: str = "image",
             columns: dict[str, bool] | None = None, needs_labels: bool = False, default: bool = True,
             **options: Any) -> MetricInfo:
    return MetricInfo(name, higher_is_more_leakage, level, description, f"semsim.metrics.{factory}",
                      columns or {name: higher_is_more_leakage}, needs_labels, default, options)


_MR_COLUMNS = {"mr_prob": True, "mr_correct": True, "mr_top5": True, "mr_accuracy": True,
               "mr_accuracy_ci_low": True, "mr_accuracy_ci_high": True, "mr_top5_accuracy": True,
               "mr_relative": True}
_IIP_COLUMNS = {f"iip_{v}{s}": True for s in ("", "_precision") for v in ("pixel", "lpips", "feature")}
_LPIPS = "LPIPS v0.1 with {} (Zhang et al. 2018); needs {}"

# The built-in metrics, in the order of the default panel and of score-table columns (pixel metrics first).
# The weight file names and the MS-SSIM size are checked against their modules in tests/test_architecture.py.
BUILTIN_METRICS: tuple[MetricInfo, ...] = (
    _builtin("mse", "pixel:MSE", False, "mean squared error (scale of data_range)"),
    _builtin("psnr", "pixel:PSNR", True, "peak signal-to-noise ratio, dB"),
    _builtin("ssim", "pixel:SSIM", True, "structural similarity, Gaussian window (Wang et al. 2004; = scikit-image)"),
    _builtin("ssim_skimage", "pixel:SSIMSkimage", True, "SSIM as the SemSim reference code scores it: "
             "scikit-image defaults on uint8 images (7x7 uniform window, sample covariance)", default=False),
    _builtin("ms_ssim", "pixel:MSSSIM", True, "multi-scale SSIM (Wang et al. 2003); images of at least 176px, "
             "blank (NaN, with a warning) for smaller ones"),
    _builtin("lpips_alex", "lpips:LPIPS", False, _LPIPS.format("AlexNet", "alexnet-owt-7be5be79.pth"), net="alex"),
    _builtin("lpips_vgg", "lpips:LPIPS", False, _LPIPS.format("VGG16", "vgg16-397923af.pth"), net="vgg"),
    _builtin("lpips_squeeze", "lpips:LPIPS", False, _LPIPS.format("SqueezeNet 1.1", "squeezenet1_1-b8a52dc0.pth"),
             net="squeeze"),
    _builtin("lpips_squeeze_raw256", "lpips:LPIPS", False, "LPIPS-squeeze as the SemSim reference code scores it: "
             "[0, 1] images fed without the [-1, 1] mapping, resized to 256 px", net="squeeze", map_to_pm1=False,
             resize=256, default=False),
    _builtin("semsim", "semsim_metric:SemSimMetric", False,
             "SemSim: L2 distance of learned embeddings (needs a model from `semsim train`)", default=False),
    _builtin("fid", "fid:FID", False, "Fréchet Inception Distance per set (Heusel et al. 2017); needs "
             "pt_inception-2015-12-05-6726825d.pth; biased on small sets", level="set"),
    _builtin("kid", "fid:KID", False, "Kernel Inception Distance per set (Binkowski et al. 2018, as torchmetrics): "
             "unbiased MMD^2, cubic polynomial kernel, mean and std over subsets", level="set",
             columns={"kid": False, "kid_std": False}, default=False),
    _builtin("mr", "model_based:ModelRecognition", True, "model-based recognition: an evaluation classifier's "
             "accuracy on the reconstructions", level="set", columns=_MR_COLUMNS, needs_labels=True,
             default=False),
    _builtin("iip", "model_based:ImageIdentifiability", True, "image identifiability precision: share of "
             "reconstructions whose nearest candidate is their own original (pixel / LPIPS / evaluator features)",
             level="set", columns=_IIP_COLUMNS, default=False),
    _builtin("feature_distance", "model_based:FeatureDistance", False,
             "L2 and cosine distance between the evaluator's penultimate features",
             columns={"feature_l2": False, "feature_cosine": False}, default=False),
)

_REGISTRY: dict[str, MetricInfo] = {m.name: m for m in BUILTIN_METRICS}


def register_metric(name: str, *, higher_is_more_leakage: bool, description: str, level: str = "image",
                    columns: dict[str, bool] | None = None, needs_labels: bool = False, default: bool = True,
                    **factory_kwargs: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator registering a metric class or factory (of your own) under ``name`` (``factory_kwargs``
    bound at creation). Built-in metrics are listed in :data:`BUILTIN_METRICS` instead."""
    if level not in ("image", "set"):
        raise ValueError(f"level must be 'image' or 'set', not {level!r}")

    def decorator(factory: Callable[..., Any]) -> Callable[..., Any]:
        if name in _REGISTRY:
            raise ValueError(f"metric '{name}' is registered twice")
        _REGISTRY[name] = MetricInfo(name, higher_is_more_leakage, level, description, factory,
                                     columns or {name: higher_is_more_leakage}, needs_labels, default,
                                     factory_kwargs)
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


def create(name: str, **kwargs: Any) -> nn.Module:
    """Build the metric registered as ``name``; ``kwargs`` override its defaults."""
    return metric_info(name).build(**kwargs)


def aligned(values: Any, higher_is_more_leakage: bool) -> np.ndarray:
    """Values oriented so that larger means more leakage."""
    values = np.asarray(values, dtype=float)
    return values if higher_is_more_leakage else -values


COLOR_COLUMNS = ("mse", "psnr", "ssim", "ms_ssim")  # pixel metrics that also score the grey or Y image
COLOR_SUFFIXES = ("gray", "y")


def color_column(column: str, color: str) -> str:
    """The score-table column of a pixel metric computed in colour space ``color`` (``ssim_gray``)."""
    return column if color == "rgb" else f"{column}_{color}"


def column_direction(column: str) -> bool | None:
    """``higher_is_more_leakage`` of a score-table column, or None when no registered metric writes it."""
    for info in _REGISTRY.values():
        if column in info.columns:
            return info.columns[column]
    base, _, suffix = column.rpartition("_")
    if suffix in COLOR_SUFFIXES and base in COLOR_COLUMNS:
        return column_direction(base)
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
    """Raise ``ValueError`` unless both are float32/64 NCHW tensors of one shape, 1 or 3 channels, with values
    in [0, data_range] (NaN refused); warn when all values lie in [0, 1] but ``data_range`` is 2 or more."""
    import torch

    for name, t in (("original", original), ("reconstruction", reconstruction)):
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            raise ValueError(f"{name}: expected a float tensor, got {getattr(t, 'dtype', type(t))}")
        if t.dtype in (torch.float16, torch.bfloat16):
            raise ValueError(f"{name}: {t.dtype} is too coarse for these metrics (SSIM errs by 0.01-0.2); "
                             "pass float32 or float64 (tensor.float())")
        if t.ndim != 4:
            raise ValueError(f"{name}: expected NCHW (4 dimensions), got shape {tuple(t.shape)}")
        if t.shape[1] not in (1, 3):
            raise ValueError(f"{name}: {t.shape[1]} channels; metrics take 1 (grey) or 3 (RGB) channels "
                             "(drop an alpha channel: images[:, :3])")
    if original.shape != reconstruction.shape:
        raise ValueError(f"original {tuple(original.shape)} and reconstruction {tuple(reconstruction.shape)} "
                         "differ in shape")
    if _RANGE_KNOWN.get():
        return
    tol = 1e-4 * data_range
    highs = []
    for name, t in (("original", original), ("reconstruction", reconstruction)):
        lo, hi = (float(v) for v in torch.aminmax(t.detach()))
        if math.isnan(lo) or math.isnan(hi):
            raise ValueError(f"{name}: {int(torch.isnan(t).sum())} NaN pixel value(s); metrics need finite "
                             "images (replace or drop the image)")
        if lo < -tol or hi > data_range + tol:
            raise ValueError(f"{name}: values span [{lo:.4g}, {hi:.4g}] but data_range is {data_range}; "
                             "scale images to [0, data_range] or pass the right data_range")
        highs.append(hi)
    if data_range >= 2 and max(highs) <= 1 + 1e-4:
        warnings.warn(f"all values lie in [0, 1] but data_range is {data_range}: scores will look near-perfect; "
                      "pass data_range=1 for [0, 1] images", stacklevel=3)

