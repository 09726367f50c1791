"""Metrics that score a reconstruction against its original (see :mod:`semsim.metrics.registry`).

``create(name)`` builds one, ``list_metrics()`` lists them with their direction (``higher_is_more_leakage``).
"""

from semsim.metrics import pixel  # noqa: F401  (registers the metrics)
from semsim.metrics.pixel import mse, psnr
from semsim.metrics.registry import (
    MetricInfo,
    MetricUnavailable,
    check_pair,
    column_direction,
    create,
    list_metrics,
    metric_info,
    register_metric,
)

__all__ = ["MetricInfo", "MetricUnavailable", "check_pair", "column_direction", "create", "list_metrics", "metric_info", "mse", "psnr",
           "register_metric"]
