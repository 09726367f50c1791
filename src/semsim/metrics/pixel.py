"""Pixel metrics: MSE and PSNR, per image, batched."""

from __future__ import annotations

import torch
from torch import nn

from semsim.metrics.registry import check_pair, register_metric


def mse(original: torch.Tensor, reconstruction: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Mean squared error per image, shape (N,). Values are on the scale of ``data_range``."""
    check_pair(original, reconstruction, data_range)
    return (original - reconstruction).pow(2).flatten(1).mean(1)


def psnr(original: torch.Tensor, reconstruction: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Peak signal-to-noise ratio per image in dB: ``10 log10(data_range^2 / MSE)`` (inf for identical images)."""
    return 10 * torch.log10(data_range**2 / mse(original, reconstruction, data_range))


@register_metric("mse", higher_is_more_leakage=False, description="mean squared error (scale of data_range)")
class MSE(nn.Module):
    def __init__(self, data_range: float = 1.0) -> None:
        super().__init__()
        self.data_range = data_range

    def forward(self, original, reconstruction, labels=None, original_keys=None) -> torch.Tensor:
        return mse(original, reconstruction, self.data_range)


@register_metric("psnr", higher_is_more_leakage=True, description="peak signal-to-noise ratio, dB")
class PSNR(MSE):
    def forward(self, original, reconstruction, labels=None, original_keys=None) -> torch.Tensor:
        return psnr(original, reconstruction, self.data_range)
