"""Metrics that score a reconstruction against its original (see :mod:`semsim.metrics.registry`).

``create(name)`` builds one, ``list_metrics()`` lists them with their direction (``higher_is_more_leakage``).
"""

# Registration order is the order of the default panel and of score-table columns: pixel metrics first.
from semsim.metrics import pixel  # noqa: F401  (mse, psnr, ssim, ms_ssim)

# isort: split
from semsim.metrics import lpips  # noqa: F401  (lpips_alex, lpips_vgg, lpips_squeeze)

# isort: split
from semsim.metrics import semsim_metric  # noqa: F401  (semsim)

# isort: split
from semsim.errors import MetricUnavailable
from semsim.metrics import (
    fid,  # noqa: F401  (fid)
    model_based,  # noqa: F401  (mr, iip, feature_distance)
)
from semsim.metrics.fid import fid_from_features, frechet_distance
from semsim.metrics.lpips import LPIPS
from semsim.metrics.pixel import ms_ssim, mse, psnr, ssim
from semsim.metrics.registry import (
    MetricInfo,
    check_pair,
    column_direction,
    create,
    list_metrics,
    metric_info,
    register_metric,
)

__all__ = ["LPIPS", "MetricInfo", "MetricUnavailable", "check_pair", "column_direction", "create",
           "fid_from_features", "frechet_distance", "list_metrics", "metric_info", "ms_ssim", "mse", "psnr",
           "register_metric", "ssim"]
