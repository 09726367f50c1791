"""LPIPS, the learned perceptual image patch similarity of Zhang et al., "The Unreasonable Effectiveness of
Deep Features as a Perceptual Metric" (CVPR 2018), version 0.1.

``d(x, y) = sum_l mean_hw || w_l * (f_l(x) / |f_l(x)| - f_l(y) / |f_l(y)|) ||^2``: backbone activations at 5
(AlexNet, VGG16) or 7 (SqueezeNet 1.1) layers, unit-normalised along channels, squared differences weighted by
the learned 1x1 linear heads, averaged over space and summed over layers. Inputs are scaled to [-1, 1] and
shifted/scaled per channel as in the reference implementation.

The ImageNet backbones come from torchvision-format files (see :mod:`semsim.models.weights`); the linear heads from
``lpips/v0.1/{net}.pth`` (the files of the reference implementation, plain state dicts).
"""

from __future__ import annotations

import functools
import os

import torch
from torch import nn

from semsim.metrics.registry import check_pair
from semsim.models.backbones import LPIPS_CHANNELS, lpips_backbone
from semsim.models.weights import find_weights, load_into, load_state_dict

BACKBONE_FILES = {
    "alex": ("alexnet-owt-7be5be79.pth", "alexnet-owt-4df8aa71.pth", "alexnet.safetensors"),
    "vgg": ("vgg16-397923af.pth", "vgg16.safetensors"),
    "squeeze": ("squeezenet1_1-b8a52dc0.pth", "squeezenet1_1-f364aa15.pth", "squeezenet1_1.safetensors"),
}
# The reference implementation's input scaling (applied after mapping [0, 1] to [-1, 1]).
_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)
_EPS = 1e-10


def lin_file_names(net: str, version: str = "0.1") -> tuple[str, ...]:
    """Where the linear heads of ``net`` are looked up, relative to each weights folder."""
    return (f"lpips/v{version}/{net}.pth", f"lpips/v{version}/{net}.safetensors")


def unit_normalize(feature: torch.Tensor) -> torch.Tensor:
    """Divide each spatial position's feature vector by its Euclidean norm (Zhang et al. 2018, Eq. 1)."""
    return feature / (feature.pow(2).sum(1, keepdim=True).sqrt() + _EPS)


class LPIPS(nn.Module):
    """LPIPS distance per image pair (lower = more similar).

    ``weights``: the backbone file (or a folder holding it); ``lin_weights``: the linear-head file (or
    folder); both are otherwise looked up in ``$SEMSIM_WEIGHTS_DIR`` and the torch hub cache. Raises
    :class:`~semsim.errors.MetricUnavailable` when a file is missing.
    """

    def __init__(
        self,
        net: str = "alex",
        weights: str | os.PathLike | None = None,
        lin_weights: str | os.PathLike | None = None,
        data_range: float = 1.0,
    ) -> None:
        super().__init__()
        if net not in BACKBONE_FILES:
            raise ValueError(f"unknown LPIPS backbone '{net}'; use one of {', '.join(BACKBONE_FILES)}")
        self.net_name = net
        self.data_range = data_range
        self.net = lpips_backbone(net)
        backbone_file = find_weights(BACKBONE_FILES[net], f"LPIPS-{net} backbone", weights)
        load_into(self.net, load_state_dict(backbone_file), backbone_file, ignore_prefixes=("classifier.",))
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in LPIPS_CHANNELS[net])
        lin_file = find_weights(lin_file_names(net), f"LPIPS-{net} linear heads", lin_weights)
        state = {
            k.replace(".model.1.", ".").replace("lin", "", 1): v for k, v in load_state_dict(lin_file).items()
        }
        load_into(self.lins, state, lin_file)
        self.register_buffer("shift", torch.tensor(_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(_SCALE).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Unit-normalised backbone activations of [0, data_range] images at every LPIPS layer."""
        x = (images * (2 / self.data_range) - 1 - self.shift) / self.scale
        return [unit_normalize(f) for f in self.net(x)]

    def forward(
        self, original: torch.Tensor, reconstruction: torch.Tensor, labels=None, original_keys=None
    ) -> torch.Tensor:
        check_pair(original, reconstruction, self.data_range)
        n = original.shape[0]
        feats = self.features(torch.cat([original, reconstruction]))
        total = torch.zeros(n, dtype=original.dtype, device=original.device)
        for f, lin in zip(feats, self.lins, strict=True):
            total = total + lin((f[:n] - f[n:]).pow(2)).mean((1, 2, 3))
        return total


@functools.lru_cache(maxsize=8)
def _cached(net: str, device: str, weights: str | None, lin_weights: str | None) -> LPIPS:
    return LPIPS(net, weights, lin_weights).to(device)


def lpips(
    original: torch.Tensor,
    reconstruction: torch.Tensor,
    net: str = "alex",
    data_range: float = 1.0,
    weights: str | os.PathLike | None = None,
    lin_weights: str | os.PathLike | None = None,
) -> torch.Tensor:
    """Functional LPIPS per pair, shape (N,); the network is built once per (net, device, files)."""
    model = _cached(
        net,
        str(original.device),
        None if weights is None else str(weights),
        None if lin_weights is None else str(lin_weights),
    )
    check_pair(original, reconstruction, data_range)
    return model(original / data_range, reconstruction / data_range)
