"""Metrics that score a reconstruction against its original (see :mod:`semsim.metrics.registry`).

``create(name)`` builds one, ``list_metrics()`` lists them with their direction (``higher_is_more_leakage``).
The registry needs no torch; the metric functions and classes below are imported on first use, so
``from semsim.metrics import psnr`` loads the pixel metrics only.
"""

from semsim.common.lazy import lazy_exports
from semsim.errors import MetricUnavailable
from semsim.metrics.registry import (
    MetricInfo,
    SetMetric,
    check_pair,
    column_direction,
    create,
    list_metrics,
    metric_info,
    register_metric,
)

_LAZY = {"fid_from_features": "fid", "frechet_distance": "fid", "LPIPS": "lpips", "ms_ssim": "pixel",
         "mse": "pixel", "psnr": "pixel", "ssim": "pixel"}

__all__ = ["LPIPS", "MetricInfo", "MetricUnavailable", "SetMetric", "check_pair", "column_direction", "create",
           "fid_from_features", "frechet_distance", "list_metrics", "metric_info", "ms_ssim", "mse", "psnr",
           "register_metric", "ssim"]

__getattr__ = lazy_exports(__name__, _LAZY)
