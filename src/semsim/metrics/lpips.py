"""LPIPS, the learned perceptual image patch similarity of Zhang et al., "The Unreasonable Effectiveness of
Deep Features as a Perceptual Metric" (CVPR 2018), version 0.1.

``d(x, y) = sum_l mean_hw || w_l * (f_l(x) / |f_l(x)| - f_l(y) / |f_l(y)|) ||^2``: backbone activations at 5
(AlexNet, VGG16) or 7 (SqueezeNet 1.1) layers, unit-normalised along channels, squared differences weighted by
the learned 1x1 linear heads, averaged over space and summed over layers. Inputs are scaled to [-1, 1] and
shifted/scaled per channel as in the reference implementation; grey images are repeated to 3 channels.

``map_to_pm1=False, resize=256`` (the ``lpips_squeeze_raw256`` metric) reproduces how the SemSim reference code
(Sun et al., NeurIPS 2023) scored LPIPS: ``torchvision.transforms.Resize(256)`` then ``ToTensor()`` images, in
[0, 1], passed to ``lpips.LPIPS(net="squeeze")`` without ``normalize=True``, i.e. without the [-1, 1] mapping
the network was trained with. The resize here is torch's antialiased bilinear (the shorter side to 256, aspect
kept), within one 8-bit step of PIL's (PIL rounds its output to 8 bits; mean difference 0.001 on CIFAR images).

The ImageNet backbones are torchvision's files, the linear heads ``lpips/v0.1/{net}.pth`` (the files of the
reference implementation, plain state dicts); both are fetched from their publishers on first use when not
found (see :mod:`semsim.models.weights`).
"""

from __future__ import annotations

import functools
import os

import torch
from torch import nn

from semsim.metrics.registry import check_pair
from semsim.models.backbones import LPIPS_CHANNELS, lpips_backbone
from semsim.models.weights import Download, fetch_weights, load_into, load_state_dict

BACKBONE_FILES = {
    "alex": ("alexnet-owt-7be5be79.pth", "alexnet-owt-4df8aa71.pth", "alexnet.safetensors"),
    "vgg": ("vgg16-397923af.pth", "vgg16.safetensors"),
    "squeeze": ("squeezenet1_1-b8a52dc0.pth", "squeezenet1_1-f364aa15.pth", "squeezenet1_1.safetensors"),
}
_TORCHVISION = "https://download.pytorch.org/models"
BACKBONE_DOWNLOADS = {net: Download(f"{_TORCHVISION}/{names[0]}") for net, names in BACKBONE_FILES.items()}
# The v0.1 heads as published in the reference repository; full SHA-256 (their names carry none).
_LIN_SHA256 = {
    "alex": "df73285e35b22355a2df87cdb6b70b343713b667eddbda73e1977e0c860835c0",
    "vgg": "a78928a0af1e5f0fcb1f3b9e8f8c3a2a5a3de244d830ad5c1feddc79b8432868",
    "squeeze": "4a5350f23600cb79923ce65bb07cbf57dca461329894153e05a1346bd531cf76",
}
LIN_DOWNLOADS = {
    net: Download(f"https://github.com/richzhang/PerceptualSimilarity/raw/master/lpips/weights/v0.1/{net}.pth",
                  sha256=digest, name=f"lpips/v0.1/{net}.pth")
    for net, digest in _LIN_SHA256.items()
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
    folder); both are otherwise looked up in ``$SEMSIM_WEIGHTS_DIR`` and the torch hub cache, and downloaded
    there when absent. Raises :class:`~semsim.errors.MetricUnavailable` when a file cannot be had.
    ``map_to_pm1=False`` feeds [0, 1] images to the network unmapped and ``resize`` resizes the shorter side
    first (the SemSim reference code's convention with ``resize=256``; see the module doc).
    """

    shift: torch.Tensor  # input normalisation buffers, (1, 3, 1, 1)
    scale: torch.Tensor

    def __init__(
        self,
        net: str = "alex",
        weights: str | os.PathLike | None = None,
        lin_weights: str | os.PathLike | None = None,
        data_range: float = 1.0,
        map_to_pm1: bool = True,
        resize: int | None = None,
    ) -> None:
        super().__init__()
        if net not in BACKBONE_FILES:
            raise ValueError(f"unknown LPIPS backbone '{net}'; use one of {', '.join(BACKBONE_FILES)}")
        self.net_name = net
        self.data_range = data_range
        self.map_to_pm1 = map_to_pm1
        self.resize = resize
        self.net = lpips_backbone(net)
        what = f"LPIPS-{net} backbone"
        backbone_file = fetch_weights(BACKBONE_FILES[net], what, weights, BACKBONE_DOWNLOADS[net])
        load_into(self.net, load_state_dict(backbone_file), backbone_file, ignore_prefixes=("classifier.",))
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in LPIPS_CHANNELS[net])
        lin_file = fetch_weights(lin_file_names(net), f"LPIPS-{net} linear heads", lin_weights, LIN_DOWNLOADS[net])
        state = {
            k.replace(".model.1.", ".").replace("lin", "", 1): v for k, v in load_state_dict(lin_file).items()
        }
        load_into(self.lins, state, lin_file)
        self.register_buffer("shift", torch.tensor(_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(_SCALE).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def _resized(self, images: torch.Tensor) -> torch.Tensor:
        """The images with their shorter side resized to ``self.resize`` (aspect kept), as torchvision's
        ``Resize(size)``; unchanged when ``resize`` is None."""
        if self.resize is None:
            return images
        h, w = images.shape[-2:]
        size = (self.resize, int(self.resize * w / h)) if h <= w else (int(self.resize * h / w), self.resize)
        return nn.functional.interpolate(images, size=size, mode="bilinear", align_corners=False, antialias=True)

    def features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Unit-normalised backbone activations of [0, data_range] images at every LPIPS layer."""
        x = self._resized(images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images) / self.data_range
        x = (2 * x - 1 if self.map_to_pm1 else x) - self.shift
        return [unit_normalize(f) for f in self.net(x / self.scale)]

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
def _cached(net: str, device: str, weights: str | None, lin_weights: str | None, map_to_pm1: bool,
            resize: int | None) -> LPIPS:
    return LPIPS(net, weights, lin_weights, map_to_pm1=map_to_pm1, resize=resize).to(device)


def lpips(
    original: torch.Tensor,
    reconstruction: torch.Tensor,
    net: str = "alex",
    data_range: float = 1.0,
    weights: str | os.PathLike | None = None,
    lin_weights: str | os.PathLike | None = None,
    *,
    map_to_pm1: bool = True,
    resize: int | None = None,
) -> torch.Tensor:
    """Functional LPIPS per pair, shape (N,); the network is built once per (net, device, files, options)."""
    model = _cached(
        net,
        str(original.device),
        None if weights is None else str(weights),
        None if lin_weights is None else str(lin_weights),
        map_to_pm1,
        resize,
    )
    check_pair(original, reconstruction, data_range)
    return model(original / data_range, reconstruction / data_range)
