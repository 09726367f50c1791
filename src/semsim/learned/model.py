"""The SemSim embedding network (Sun et al., NeurIPS 2023): a CNN backbone whose penultimate features, resized
input and L2-normalised output give an embedding; SemSim(x, x') = ||f(x) - f(x')||_2.

The default backbone is the CIFAR-style ResNet-18 of :mod:`semsim.models` (3x3 stem, no max-pool, 512-d
features) at 32x32 with CIFAR statistics, as in the paper; any architecture of ``semsim.models.ARCHITECTURES``
can be used instead.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from semsim.errors import SemsimError
from semsim.models import create_model
from semsim.models.checkpoint import load_checkpoint, load_state_into
from semsim.models.classifiers import CIFAR_MEAN, CIFAR_STD

KIND = "semsim"


class SemSimNet(nn.Module):
    """Backbone features of images in [0, 1], resized to ``image_size``, optionally L2-normalised."""

    def __init__(
        self,
        architecture: str = "resnet18",
        image_size: int = 32,
        mean: Sequence[float] = CIFAR_MEAN,
        std: Sequence[float] = CIFAR_STD,
        normalize_embeddings: bool = True,
        arch_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.architecture, self.image_size = architecture, int(image_size)
        self.normalize_embeddings = normalize_embeddings
        self.arch_kwargs = dict(arch_kwargs or {})
        self.backbone = create_model(
            architecture,
            num_classes=1,
            image_size=self.image_size,
            mean=tuple(mean),
            std=tuple(std),
            **self.arch_kwargs,
        )
        self.backbone.head = nn.Identity()  # only the features are used
        self.embedding_dim = int(self.backbone.feature_dim)
        self.mean, self.std = [float(v) for v in mean], [float(v) for v in std]

    def resize(self, x: torch.Tensor) -> torch.Tensor:
        """Bring images to the network's input size (bilinear, antialiased when shrinking)."""
        if x.shape[-2:] == (self.image_size, self.image_size):
            return x
        return F.interpolate(
            x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False, antialias=True
        ).clamp_(0, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Embeddings (N, embedding_dim) of NCHW images in [0, 1] of any size."""
        z = self.backbone.features(self.resize(x))
        return F.normalize(z, dim=1) if self.normalize_embeddings else z

    def config(self) -> dict[str, Any]:
        """The checkpoint config entries that rebuild this network (docs/contracts.md, section 4)."""
        return {
            "kind": KIND,
            "architecture": self.architecture,
            "arch_kwargs": self.arch_kwargs,
            "image_size": self.image_size,
            "mean": self.mean,
            "std": self.std,
            "embedding_dim": self.embedding_dim,
            "normalize_embeddings": self.normalize_embeddings,
        }


def build_semsim(config: dict[str, Any]) -> SemSimNet:
    """Build the network a SemSim checkpoint config describes (weights not loaded)."""
    return SemSimNet(
        config["architecture"],
        image_size=int(config.get("image_size", 32)),
        mean=config.get("mean", CIFAR_MEAN),
        std=config.get("std", CIFAR_STD),
        normalize_embeddings=bool(config.get("normalize_embeddings", True)),
        arch_kwargs=config.get("arch_kwargs", {}),
    )


def load_semsim(
    folder: str | os.PathLike, device: str | torch.device = "cpu"
) -> tuple[SemSimNet, dict[str, Any]]:
    """Load a SemSim model folder written by ``semsim train``; returns ``(network in eval mode, config)``."""
    folder = Path(folder)
    state, config = load_checkpoint(folder)
    if config.get("kind") != KIND:
        raise SemsimError(
            f"{folder}: not a SemSim model (config.json kind is {config.get('kind')!r}); "
            "give a folder written by `semsim train`"
        )
    net = load_state_into(build_semsim(config), state, str(folder))
    return net.to(device).eval(), config
