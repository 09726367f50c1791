"""Pixel metrics: MSE, PSNR, SSIM and MS-SSIM, per image, batched in torch and differentiable.

**SSIM** follows Wang et al., "Image quality assessment: from error visibility to structural similarity" (IEEE
TIP 2004) with the Gaussian window of the paper (sigma 1.5, 11 pixels), population covariances, K1 = 0.01, K2 =
0.03, averaged over the map without the 5-pixel border (only windows inside the image) and over channels: the
same numbers as scikit-image's ``structural_similarity(gaussian_weights=True, use_sample_covariance=False,
data_range=..., channel_axis=...)``. The local moments are taken of centred images (the pair's sum minus its
mean, and the pair's difference; see ``_ssim_and_cs``): variances do not change under a shift, and centring
removes most of the cancellation in ``E[x^2] - E[x]^2``, so float32 results agree with a float64 computation
to about 1e-6, contrast-reduced images included.

**ssim_skimage** is the convention of the SemSim reference code (Sun et al., NeurIPS 2023), which scores SSIM as
``skimage.metrics.structural_similarity(uint8, uint8, channel_axis=-1)`` with scikit-image's defaults: a 7x7
uniform window, sample covariances (x 49/48), data range 255, on the images quantised to 8 bits.

**MS-SSIM** is Wang, Simoncelli & Bovik, "Multi-scale structural similarity for image quality assessment"
(Asilomar 2003) as in the authors' ``msssim.m``: 5 scales with the paper's exponents; between scales a 2x2 mean
with symmetric padding, then every other pixel, so an odd side keeps its last row/column (``ceil(n / 2)``
pixels); the same valid-window SSIM at each scale; the smallest side must hold one window at the coarsest scale
after halving 4 times (``min(H, W) / 16 >= 11``, 176 pixels). Negative per-scale terms are clipped to 0 (as
torchmetrics' ``normalize="relu"``) so that the fractional powers stay real.

**Colour** (``color=``) for MSE, PSNR, SSIM and MS-SSIM: ``"rgb"`` (default) compares every channel and averages
over channels; ``"gray"`` compares the luminance of MATLAB's ``rgb2gray`` (0.2989 R + 0.5870 G + 0.1140 B), on
which MATLAB and IQA-PyTorch report SSIM and MS-SSIM; ``"y"`` compares the BT.601 luma of YCbCr
(``Y = 16 + 65.481 R + 128.553 G + 24.966 B`` out of 255 for RGB in [0, 1], 16-235), IQA-PyTorch's and BasicSR's
``test_y_channel``. MATLAB rounds the converted image to uint8 when its input is uint8; the float equivalent
here: a tensor whose values all lie on the 8-bit grid (multiples of ``data_range / 255``, i.e. decoded from
8-bit files) has its converted image rounded to that grid, any other tensor is converted without rounding (as
MATLAB does for double input). The rounding passes gradients straight through.

The filters are separable: small images are filtered by two matrix products with banded matrices, larger ones
by shifted multiply-adds per axis; the pairs are processed in cache-sized chunks. This is several times faster
than a grouped convolution on the CPU.
"""

from __future__ import annotations

import functools
import math
import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from semsim.metrics.registry import COLOR_COLUMNS, check_pair, color_column

SSIM_SIGMA = 1.5
SSIM_TRUNCATE = 3.5  # window radius int(3.5 * 1.5 + 0.5) = 5, i.e. 11 pixels, as in the paper
SSIM_K1, SSIM_K2 = 0.01, 0.03
MS_SSIM_BETAS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)  # Wang et al. 2003, Table 1
SKIMAGE_WIN = 7  # scikit-image's default window side for structural_similarity
COLORS = ("rgb", "gray", "y")
GRAY_WEIGHTS = (0.2989, 0.5870, 0.1140)  # MATLAB rgb2gray (its documented coefficients)
Y_WEIGHTS, Y_OFFSET = (65.481, 128.553, 24.966), 16.0  # ITU-R BT.601 luma, out of 255, for RGB in [0, 1]
_GRID_TOL = 1e-3  # in 8-bit steps: values this close to k * data_range / 255 count as 8-bit
_MATMUL_MAX_SIDE = 48  # filter by banded matrix products up to this image side, by shifted sums beyond
_CHUNK_ELEMENTS = 100_000  # pairs per chunk ~ this many values per image; keeps the chunk in the CPU cache


# ---- colour ----------------------------------------------------------------------------------------------


def check_color(color: str) -> str:
    """``color`` if it names a colour space of :data:`COLORS`, else ``ValueError``."""
    if color not in COLORS:
        raise ValueError(f"unknown color '{color}'; use one of {', '.join(COLORS)}")
    return color


def _on_8bit_grid(t: torch.Tensor, data_range: float) -> bool:
    """Whether every value is a multiple of ``data_range / 255`` (an image decoded from an 8-bit file)."""
    q = t.detach() * (255 / data_range)
    return bool((q - q.round()).abs().max() <= _GRID_TOL)


def to_color(images: torch.Tensor, color: str = "rgb", data_range: float = 1.0) -> torch.Tensor:
    """``images`` (NCHW, 1 or 3 channels, in [0, data_range]) in the colour space ``color`` (see module doc).

    ``"rgb"`` returns the images as they are; ``"gray"`` and ``"y"`` return one channel in [0, data_range],
    rounded to the 8-bit grid when the input lies on it (MATLAB's uint8 behaviour).
    """
    check_color(color)
    if color == "rgb":
        return images
    rgb = images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images
    weights: tuple[float, ...]
    if color == "gray":
        weights, offset = GRAY_WEIGHTS, 0.0
    else:
        weights, offset = tuple(w / 255 for w in Y_WEIGHTS), Y_OFFSET / 255 * data_range
    w = torch.tensor(weights, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    out = (rgb * w).sum(1, keepdim=True) + offset
    if _on_8bit_grid(images, data_range):
        step = data_range / 255
        out = out + ((out / step).round() * step - out).detach()  # straight-through rounding
    return out


# ---- windows and filtering -------------------------------------------------------------------------------


def ssim_window_radius(sigma: float = SSIM_SIGMA) -> int:
    """Radius of the Gaussian window (scipy's ``truncate=3.5`` rule): 5 for sigma 1.5, an 11-pixel window."""
    return int(SSIM_TRUNCATE * sigma + 0.5)


@functools.lru_cache(maxsize=16)
def gaussian_taps(sigma: float = SSIM_SIGMA) -> tuple[float, ...]:
    """The normalised 1-D Gaussian window (scipy's ``gaussian_filter`` weights with ``truncate=3.5``)."""
    r = ssim_window_radius(sigma)
    x = torch.arange(-r, r + 1, dtype=torch.float64)
    w = torch.exp(-0.5 * (x / sigma) ** 2)
    return tuple((w / w.sum()).tolist())


def uniform_taps(size: int = SKIMAGE_WIN) -> tuple[float, ...]:
    """The 1-D mean filter of ``size`` pixels (scikit-image's default SSIM window, 7)."""
    return (1 / size,) * size


@functools.lru_cache(maxsize=64)
def _band_matrix(n: int, taps: tuple[float, ...], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """The valid-mode 1-D filter ``taps`` on length ``n`` as an (n - k + 1) x n banded matrix."""
    k = len(taps)
    band = torch.zeros(n - k + 1, n, dtype=torch.float64)
    for i in range(n - k + 1):
        band[i, i : i + k] = torch.tensor(taps, dtype=torch.float64)
    return band.to(device=device, dtype=dtype)


def _filter_valid(t: torch.Tensor, taps: tuple[float, ...]) -> torch.Tensor:
    """Separable filter ``taps`` x ``taps`` of (..., H, W) maps, keeping only windows inside the image.

    Up to 48 pixels a side, two matrix products with banded matrices are fastest; beyond, their cost grows
    with the side, and one shifted multiply-add per tap and axis takes over.
    """
    h, w = t.shape[-2:]
    if max(h, w) <= _MATMUL_MAX_SIDE:
        gh, gw = (_band_matrix(n, taps, t.device, t.dtype) for n in (h, w))
        return torch.matmul(torch.matmul(gh, t), gw.t())
    k = len(taps)
    cols = t[..., 0 : h - k + 1, :] * taps[0]  # down the columns first: contiguous slabs, fewer rows after
    for i in range(1, k):
        cols = cols.add_(t[..., i : i + h - k + 1, :], alpha=taps[i])  # on a fresh tensor: autograd-safe
    out = cols[..., :, 0 : w - k + 1] * taps[0]
    for i in range(1, k):
        out = out.add_(cols[..., :, i : i + w - k + 1], alpha=taps[i])
    return out


def _ssim_and_cs(
    x: torch.Tensor,
    y: torch.Tensor,
    data_range: float,
    taps: tuple[float, ...],
    k1: float,
    k2: float,
    cov_norm: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image means of the SSIM map and of the contrast-structure map (valid windows only).

    Wang et al. 2004, Eq. 13: ``SSIM = l * cs`` with luminance ``l = (2 mu_x mu_y + C1) / (mu_x^2 + mu_y^2 +
    C1)`` and contrast-structure ``cs = (2 s_xy + C2) / (s_x^2 + s_y^2 + C2)``, ``C_i = (K_i data_range)^2``;
    ``cov_norm`` scales the (co)variances (``n / (n - 1)`` for sample covariances). Computed from the local
    moments of the sum ``p = x + y`` (minus its image mean) and the difference ``q = x - y``, by the
    polarisation identities ``4 mu_x mu_y = mu_p^2 - mu_q^2``, ``2 (mu_x^2 + mu_y^2) = mu_p^2 + mu_q^2`` and
    ``2 s_xy = (var_p - var_q) / 2``, ``s_x^2 + s_y^2 = (var_p + var_q) / 2``: four filtered maps, and both
    ``p`` and ``q`` centred, so ``E[p^2] - mu_p^2`` does not cancel in float32.
    """
    n, c, h, w = x.shape
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    step = n if x.device.type != "cpu" else max(1, _CHUNK_ELEMENTS // (c * h * w))
    ssim_out, cs_out = [], []
    for i in range(0, n, step):
        a, b = x[i : i + step], y[i : i + step]
        m = a.shape[0]
        total = a + b
        shift = total.mean((2, 3), keepdim=True)
        p, q = total - shift, a - b
        stack = torch.stack([p, q, p * p, q * q]).reshape(-1, h, w)
        mu_p, mu_q, pp, qq = _filter_valid(stack, taps).reshape(4, m, c, -1).unbind(0)
        # In-place updates only on fresh intermediates whose values no backward formula keeps: autograd-safe.
        var_p, var_q = torch.addcmul(pp, mu_p, mu_p, value=-1), torch.addcmul(qq, mu_q, mu_q, value=-1)
        if cov_norm != 1.0:
            var_p, var_q = var_p.mul_(cov_norm), var_q.mul_(cov_norm)
        var_p = var_p.add_(2 * c2)
        cs = (var_p - var_q) / (var_p + var_q)  # (var_p - var_q + 2 C2) / (var_p + var_q + 2 C2)
        sq_p = (mu_p + shift.view(m, c, 1)).square().add_(2 * c1)  # the true local mean of x + y, squared, + 2 C1
        sq_q = mu_q * mu_q
        lum = (sq_p - sq_q) / (sq_p + sq_q)
        ssim_out.append((lum * cs).mean((1, 2)))
        cs_out.append(cs.mean((1, 2)))
    return torch.cat(ssim_out), torch.cat(cs_out)


def _check_size(x: torch.Tensor, min_size: int, what: str) -> None:
    h, w = x.shape[-2:]
    if h < min_size or w < min_size:
        raise ValueError(f"{what} needs images of at least {min_size}x{min_size} pixels, got {w}x{h}")


# ---- metrics ---------------------------------------------------------------------------------------------


def _prepared(
    original: torch.Tensor, reconstruction: torch.Tensor, data_range: float, color: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """The checked pair in colour space ``color``."""
    check_pair(original, reconstruction, data_range)
    return to_color(original, color, data_range), to_color(reconstruction, color, data_range)


def mse(
    original: torch.Tensor, reconstruction: torch.Tensor, data_range: float = 1.0, *, color: str = "rgb"
) -> torch.Tensor:
    """Mean squared error per image, shape (N,). Values are on the scale of ``data_range``."""
    x, y = _prepared(original, reconstruction, data_range, color)
    return (x - y).square().mean((1, 2, 3))


def psnr(
    original: torch.Tensor, reconstruction: torch.Tensor, data_range: float = 1.0, *, color: str = "rgb"
) -> torch.Tensor:
    """Peak signal-to-noise ratio per image in dB: ``10 log10(data_range^2 / MSE)`` (inf if identical)."""
    return 10 * torch.log10(data_range**2 / mse(original, reconstruction, data_range, color=color))


def ssim(
    original: torch.Tensor,
    reconstruction: torch.Tensor,
    data_range: float = 1.0,
    *,
    color: str = "rgb",
    sigma: float = SSIM_SIGMA,
    k1: float = SSIM_K1,
    k2: float = SSIM_K2,
) -> torch.Tensor:
    """Structural similarity per image, shape (N,) (Wang et al. 2004, Gaussian window; see the module doc)."""
    x, y = _prepared(original, reconstruction, data_range, color)
    _check_size(x, 2 * ssim_window_radius(sigma) + 1, "SSIM")
    return _ssim_and_cs(x, y, data_range, gaussian_taps(sigma), k1, k2)[0]


def ssim_skimage(original: torch.Tensor, reconstruction: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """SSIM as the SemSim reference code computes it: ``skimage.metrics.structural_similarity(a, b,
    channel_axis=-1)`` on the uint8 images ``a = round(255 * original / data_range)`` (7x7 uniform window,
    sample covariances, data range 255), per image, shape (N,)."""
    check_pair(original, reconstruction, data_range)
    _check_size(original, SKIMAGE_WIN, "ssim_skimage")
    x, y = ((t * (255 / data_range)).round() for t in (original, reconstruction))
    npix = SKIMAGE_WIN * SKIMAGE_WIN
    return _ssim_and_cs(x, y, 255.0, uniform_taps(), SSIM_K1, SSIM_K2, cov_norm=npix / (npix - 1))[0]


def ms_ssim_min_size(scales: int = len(MS_SSIM_BETAS), sigma: float = SSIM_SIGMA) -> int:
    """Smallest image side for MS-SSIM, ``msssim.m``'s rule ``side / 2^(scales-1) >= window`` (176 by default)."""
    return (2 * ssim_window_radius(sigma) + 1) * 2 ** (scales - 1)


def _halve(t: torch.Tensor) -> torch.Tensor:
    """``msssim.m``'s downsampling: 2x2 mean with symmetric padding, every other pixel (``ceil(n / 2)``)."""
    h, w = t.shape[-2:]
    if h % 2 or w % 2:
        t = F.pad(t, (0, w % 2, 0, h % 2), mode="replicate")  # one mirrored row/column = the edge repeated
    return F.avg_pool2d(t, 2)


def ms_ssim(
    original: torch.Tensor,
    reconstruction: torch.Tensor,
    data_range: float = 1.0,
    *,
    color: str = "rgb",
    betas: tuple[float, ...] = MS_SSIM_BETAS,
    sigma: float = SSIM_SIGMA,
    k1: float = SSIM_K1,
    k2: float = SSIM_K2,
) -> torch.Tensor:
    """Multi-scale SSIM per image (Wang et al. 2003): ``prod_j relu(cs_j)^beta_j``, SSIM at the last scale.

    Raises ``ValueError`` for images smaller than :func:`ms_ssim_min_size` (176x176 for the 5 default scales).
    """
    x, y = _prepared(original, reconstruction, data_range, color)
    _check_size(x, ms_ssim_min_size(len(betas), sigma), f"MS-SSIM with {len(betas)} scales")
    taps = gaussian_taps(sigma)
    result = torch.ones(x.shape[0], dtype=x.dtype, device=x.device)
    for j, beta in enumerate(betas):
        sim, cs = _ssim_and_cs(x, y, data_range, taps, k1, k2)
        last = j == len(betas) - 1
        result = result * (sim if last else cs).clamp(min=0).pow(beta)
        if not last:
            x, y = _halve(x), _halve(y)
    return result


COLOR_METRICS = COLOR_COLUMNS  # the registered metrics that take color=; their columns get a _gray/_y suffix


def color_options(color: str = "rgb") -> dict[str, dict[str, str]]:
    """Per-metric options putting every colour-aware metric of a panel in colour space ``color``."""
    check_color(color)
    return {} if color == "rgb" else {name: {"color": color} for name in COLOR_METRICS}


# ---- registered metrics ----------------------------------------------------------------------------------


class _PixelMetric(nn.Module):
    """A colour-aware pixel metric. Outside RGB its score-table column says the colour space (``ssim_gray``,
    ``psnr_y``), so a table never passes off a grey-image score as the RGB one."""

    cpu_threads = 1  # memory-bound: one torch thread is as fast, and leaves the other core to image decoding
    column = ""  # the registered name, set by each subclass

    def __init__(self, data_range: float = 1.0, color: str = "rgb") -> None:
        super().__init__()
        self.data_range = data_range
        self.color = check_color(color)

    def __call__(self, *args: Any, **kwargs: Any) -> torch.Tensor | dict[str, torch.Tensor]:
        value = super().__call__(*args, **kwargs)
        return value if self.color == "rgb" else {color_column(self.column, self.color): value}


class MSE(_PixelMetric):
    column = "mse"
    def forward(self, original, reconstruction, labels=None, original_keys=None) -> torch.Tensor:
        return mse(original, reconstruction, self.data_range, color=self.color)


class PSNR(_PixelMetric):
    column = "psnr"
    def forward(self, original, reconstruction, labels=None, original_keys=None) -> torch.Tensor:
        return psnr(original, reconstruction, self.data_range, color=self.color)


class SSIM(_PixelMetric):
    column = "ssim"
    min_size = 2 * ssim_window_radius() + 1  # smallest image side: one whole Gaussian window (11 pixels)

    def forward(self, original, reconstruction, labels=None, original_keys=None) -> torch.Tensor:
        return ssim(original, reconstruction, self.data_range, color=self.color)


class SSIMSkimage(nn.Module):
    cpu_threads = 1
    min_size = SKIMAGE_WIN  # smallest image side: one whole 7x7 window

    def __init__(self, data_range: float = 1.0) -> None:
        super().__init__()
        self.data_range = data_range

    def forward(self, original, reconstruction, labels=None, original_keys=None) -> torch.Tensor:
        return ssim_skimage(original, reconstruction, self.data_range)


class MSSSIM(_PixelMetric):
    column = "ms_ssim"
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
        return ms_ssim(original, reconstruction, self.data_range, color=self.color)
