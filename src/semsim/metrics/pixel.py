"""Pixel metrics: MSE, PSNR, SSIM and MS-SSIM, per image, batched in torch.

SSIM follows Wang et al., "Image quality assessment: from error visibility to structural similarity" (IEEE TIP
2004) with the Gaussian window of the paper (sigma 1.5, 11 pixels), population covariances, K1 = 0.01, K2 =
0.03, averaged over the map without the 5-pixel border (only windows inside the image) and over channels: the
same numbers as scikit-image's ``structural_similarity(gaussian_weights=True, use_sample_covariance=False,
data_range=..., channel_axis=...)``. MS-SSIM is Wang, Simoncelli & Bovik, "Multi-scale structural similarity
for image quality assessment" (Asilomar 2003): 5 scales with the paper's exponents, 2x2 average pooling
between scales, the same valid-window SSIM at each; negative per-scale terms are clipped to 0 (as
torchmetrics' ``normalize="relu"``) so that the fractional powers stay real.

The Gaussian filter is separable: small images are filtered by two matrix products with banded matrices,
larger ones by 11 shifted multiply-adds per axis; the pairs are processed in cache-sized chunks. This is
several times faster than a grouped convolution on the CPU.
"""

from __future__ import annotations

import functools
import math
import warnings

import torch
from torch import nn

from semsim.metrics.registry import check_pair, register_metric

SSIM_SIGMA = 1.5
SSIM_TRUNCATE = 3.5  # window radius int(3.5 * 1.5 + 0.5) = 5, i.e. 11 pixels, as in the paper
SSIM_K1, SSIM_K2 = 0.01, 0.03
MS_SSIM_BETAS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)  # Wang et al. 2003, Table 1
_MATMUL_MAX_SIDE = 48  # filter by banded matrix products up to this image side, by shifted sums beyond
_CHUNK_ELEMENTS = 100_000  # pairs per chunk ~ this many values per image; keeps the chunk in the CPU cache


def mse(original: torch.Tensor, reconstruction: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Mean squared error per image, shape (N,). Values are on the scale of ``data_range``."""
    check_pair(original, reconstruction, data_range)
    diff = original - reconstruction  # may be channels-last in memory (decoded images): reduce without a copy
    return torch.linalg.vector_norm(diff, dim=(1, 2, 3)).square_().div_(diff[0].numel())


def psnr(original: torch.Tensor, reconstruction: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Peak signal-to-noise ratio per image in dB: ``10 log10(data_range^2 / MSE)`` (inf if identical)."""
    return 10 * torch.log10(data_range**2 / mse(original, reconstruction, data_range))


def ssim_window_radius(sigma: float = SSIM_SIGMA) -> int:
    """Radius of the Gaussian window (scipy's ``truncate=3.5`` rule): 5 for sigma 1.5, an 11-pixel window."""
    return int(SSIM_TRUNCATE * sigma + 0.5)


def _gaussian_taps(sigma: float) -> list[float]:
    """The normalised 1-D Gaussian window (scipy's ``gaussian_filter`` weights with ``truncate=3.5``)."""
    r = ssim_window_radius(sigma)
    x = torch.arange(-r, r + 1, dtype=torch.float64)
    w = torch.exp(-0.5 * (x / sigma) ** 2)
    return (w / w.sum()).tolist()


@functools.lru_cache(maxsize=64)
def _band_matrix(n: int, sigma: float, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """The valid-mode 1-D Gaussian filter of length ``n`` as an (n - 2r) x n banded matrix."""
    taps = torch.tensor(_gaussian_taps(sigma), dtype=torch.float64)
    k = len(taps)
    band = torch.zeros(n - k + 1, n, dtype=torch.float64)
    for i in range(n - k + 1):
        band[i, i : i + k] = taps
    return band.to(device=device, dtype=dtype)


def _filter_valid(t: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian filter of (B, H, W) maps, keeping only windows inside the image.

    Up to 48 pixels a side, two matrix products with banded matrices are fastest; beyond, their cost grows
    with the side, and 11 shifted multiply-adds per axis take over.
    """
    h, w = t.shape[-2:]
    if max(h, w) <= _MATMUL_MAX_SIDE:
        gh, gw = (_band_matrix(n, sigma, t.device, t.dtype) for n in (h, w))
        return torch.matmul(torch.matmul(gh, t), gw.t())
    taps = _gaussian_taps(sigma)
    k = len(taps)
    cols = t[..., 0 : h - k + 1, :] * taps[0]  # down the columns first: contiguous slabs, fewer rows after
    for i in range(1, k):
        cols.add_(t[..., i : i + h - k + 1, :], alpha=taps[i])
    out = cols[..., :, 0 : w - k + 1] * taps[0]
    for i in range(1, k):
        out.add_(cols[..., :, i : i + w - k + 1], alpha=taps[i])
    return out


def _ssim_and_cs(
    x: torch.Tensor, y: torch.Tensor, data_range: float, sigma: float, k1: float, k2: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image means of the SSIM map and of the contrast-structure map (valid windows only)."""
    n, c, h, w = x.shape
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    step = n if x.device.type != "cpu" else max(1, _CHUNK_ELEMENTS // (c * h * w))
    ssim_out, cs_out = [], []
    for i in range(0, n, step):
        a, b = x[i : i + step], y[i : i + step]
        m = a.shape[0]
        stack = torch.stack([a, b, a * a + b * b, a * b]).reshape(-1, h, w)
        mu_a, mu_b, sq, ab = _filter_valid(stack, sigma).reshape(4, m, -1)
        mu_ab = mu_a * mu_b
        mu_sq = mu_a.square_().add_(mu_b.square_())  # mu_a^2 + mu_b^2
        # contrast-structure (2 s_ab + C2) / (s_a^2 + s_b^2 + C2), luminance (2 mu_a mu_b + C1) / (mu_sq + C1)
        cs = ab.sub_(mu_ab).mul_(2).add_(c2).div_(sq.sub_(mu_sq).add_(c2))
        lum = mu_ab.mul_(2).add_(c1).div_(mu_sq.add_(c1))
        ssim_out.append(lum.mul_(cs).mean(1))
        cs_out.append(cs.mean(1))
    return torch.cat(ssim_out), torch.cat(cs_out)


def _check_size(x: torch.Tensor, min_size: int, what: str) -> None:
    h, w = x.shape[-2:]
    if h < min_size or w < min_size:
        raise ValueError(f"{what} needs images of at least {min_size}x{min_size} pixels, got {w}x{h}")


def ssim(
    original: torch.Tensor,
    reconstruction: torch.Tensor,
    data_range: float = 1.0,
    *,
    sigma: float = SSIM_SIGMA,
    k1: float = SSIM_K1,
    k2: float = SSIM_K2,
) -> torch.Tensor:
    """Structural similarity per image, shape (N,) (Wang et al. 2004, Gaussian window; see the module doc)."""
    check_pair(original, reconstruction, data_range)
    _check_size(original, 2 * ssim_window_radius(sigma) + 1, "SSIM")
    return _ssim_and_cs(original, reconstruction, data_range, sigma, k1, k2)[0]


def ms_ssim_min_size(scales: int = len(MS_SSIM_BETAS), sigma: float = SSIM_SIGMA) -> int:
    """Smallest image side for MS-SSIM: the coarsest scale must hold one window (176 for the defaults)."""
    return (2 * ssim_window_radius(sigma) + 1) * 2 ** (scales - 1)


def ms_ssim(
    original: torch.Tensor,
    reconstruction: torch.Tensor,
    data_range: float = 1.0,
    *,
    betas: tuple[float, ...] = MS_SSIM_BETAS,
    sigma: float = SSIM_SIGMA,
    k1: float = SSIM_K1,
    k2: float = SSIM_K2,
) -> torch.Tensor:
    """Multi-scale SSIM per image (Wang et al. 2003): ``prod_j relu(cs_j)^beta_j``, SSIM at the last scale.

    Raises ``ValueError`` for images smaller than :func:`ms_ssim_min_size` (176x176 for the 5 default scales).
    """
    check_pair(original, reconstruction, data_range)
    _check_size(original, ms_ssim_min_size(len(betas), sigma), f"MS-SSIM with {len(betas)} scales")
    x, y = original, reconstruction
    result = torch.ones(x.shape[0], dtype=x.dtype, device=x.device)
    for j, beta in enumerate(betas):
        sim, cs = _ssim_and_cs(x, y, data_range, sigma, k1, k2)
        last = j == len(betas) - 1
        result = result * (sim if last else cs).clamp(min=0).pow(beta)
        if not last:
            x, y = nn.functional.avg_pool2d(x, 2), nn.functional.avg_pool2d(y, 2)
    return result


class _PixelMetric(nn.Module):
    cpu_threads = 1  # memory-bound: one torch thread is as fast, and leaves the other core to image decoding

    def __init__(self, data_range: float = 1.0) -> None:
        super().__init__()
        self.data_range = data_range


@register_metric("mse", higher_is_more_leakage=False, description="mean squared error (scale of data_range)")
class MSE(_PixelMetric):
    def forward(self, original, reconstruction, labels=None, original_keys=None) -> torch.Tensor:
        return mse(original, reconstruction, self.data_range)


@register_metric("psnr", higher_is_more_leakage=True, description="peak signal-to-noise ratio, dB")
class PSNR(_PixelMetric):
    def forward(self, original, reconstruction, labels=None, original_keys=None) -> torch.Tensor:
        return psnr(original, reconstruction, self.data_range)


@register_metric(
    "ssim",
    higher_is_more_leakage=True,
    description="structural similarity, Gaussian window (Wang et al. 2004; = scikit-image)",
)
class SSIM(_PixelMetric):
    def forward(self, original, reconstruction, labels=None, original_keys=None) -> torch.Tensor:
        return ssim(original, reconstruction, self.data_range)


@register_metric(
    "ms_ssim",
    higher_is_more_leakage=True,
    description=f"multi-scale SSIM (Wang et al. 2003); images of at least {ms_ssim_min_size()}px, "
    "blank (NaN, with a warning) for smaller ones",
)
class MSSSIM(_PixelMetric):
    """MS-SSIM; below the minimum size the column is NaN and a warning says why (never a made-up value)."""

    def forward(self, original, reconstruction, labels=None, original_keys=None) -> torch.Tensor:
        h, w = original.shape[-2:]
        need = ms_ssim_min_size()
        if min(h, w) < need:
            check_pair(original, reconstruction, self.data_range)
            warnings.warn(
                f"ms_ssim left blank (NaN) for {w}x{h} images: 5 scales of the 11-pixel window need at "
                f"least {need}x{need} pixels; use ssim for small images",
                stacklevel=4,  # the caller of the module, past torch's __call__
            )
            return torch.full((original.shape[0],), math.nan, dtype=original.dtype, device=original.device)
        return ms_ssim(original, reconstruction, self.data_range)
