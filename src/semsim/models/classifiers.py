"""Classifiers used as victims and evaluators, after the papers that attack them.

* ``lenet``: the sigmoid LeNet of DLG (Zhu et al., "Deep Leakage from Gradients", NeurIPS 2019); ``init="dlg"``
  draws every weight and bias from uniform(-0.5, 0.5) as DLG's code does (the setting DLG attacks untrained).
* ``convnet``: the 8-layer ConvNet of Inverting Gradients (Geiping et al., NeurIPS 2020; inversefed's
  ``ConvNet``, the SemSim study's ConvNet), width 64: conv0..conv5, 3x3 max-pool, conv6, conv7, 3x3 max-pool,
  linear; every convolution 3x3 (padding 1) followed by BatchNorm and ReLU; widths w, 2w, 2w, 4w, 4w, 4w, 4w, 4w.
* ``resnet20-4``: the CIFAR ResNet-20 of Inverting Gradients with 4x width (16*4 base channels).
* ``resnet18``: a CIFAR-style ResNet-18 (3x3 stem, no max-pool, 512-d features), as in the SemSim paper.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from semsim.errors import SemsimError
from semsim.models.checkpoint import load_checkpoint, load_state_into

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)


class Classifier(nn.Module):
    """Base: normalises [0, 1] inputs, then ``head(features(x))``."""

    feature_dim: int
    head: nn.Module  # set by each architecture (a linear layer, or nn.Identity for an embedding)
    mean: torch.Tensor  # normalisation buffers, (1, C, 1, 1)
    std: torch.Tensor
    image_size: int  # recorded by load_classifier from the checkpoint config

    def __init__(self, mean: Sequence[float] = CIFAR_MEAN, std: Sequence[float] = CIFAR_STD) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def embed(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - defined by subclasses
        raise NotImplementedError

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features of images in [0, 1], shape (N, feature_dim)."""
        return self.embed(self.normalize(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


INITS = ("default", "dlg")


def dlg_init_(model: nn.Module, generator: torch.Generator | None = None) -> nn.Module:
    """DLG's initialisation (its ``weights_init``): every weight and bias uniform in (-0.5, 0.5), in place."""
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.rand(p.shape, generator=generator, dtype=p.dtype).to(p.device) - 0.5)
    return model


class LeNet(Classifier):
    """DLG's LeNet: three 5x5 convolutions with sigmoid activations and one linear layer.

    ``init``: ``default`` (PyTorch's initialisation) or ``dlg`` (:func:`dlg_init_`, drawn from torch's global
    generator, so ``torch.manual_seed`` makes it reproducible).
    """

    def __init__(self, num_classes: int = 10, image_size: int = 32, in_channels: int = 3, init: str = "default",
                 **norm: Any) -> None:
        super().__init__(**norm)
        if init not in INITS:
            raise SemsimError(f"init '{init}': unknown; use {' or '.join(INITS)}")
        act = nn.Sigmoid
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, 12, 5, padding=2, stride=2), act(),
            nn.Conv2d(12, 12, 5, padding=2, stride=2), act(),
            nn.Conv2d(12, 12, 5, padding=2, stride=1), act(),
            nn.Flatten(),
        )
        side = math.ceil(math.ceil(image_size / 2) / 2)  # two stride-2 5x5 convolutions with padding 2
        self.feature_dim = 12 * side * side
        self.head = nn.Linear(self.feature_dim, num_classes)
        if init == "dlg":
            dlg_init_(self)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def _conv_bn(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU()]


class ConvNet(Classifier):
    """Inverting Gradients' ConvNet: conv0..conv5, max-pool 3, conv6, conv7, max-pool 3, linear (each conv
    3x3 + BatchNorm + ReLU), as inversefed's ``ConvNet``."""

    def __init__(self, num_classes: int = 10, width: int = 64, image_size: int = 32, in_channels: int = 3,
                 **norm: Any) -> None:
        super().__init__(**norm)
        w = width
        self.body = nn.Sequential(
            *_conv_bn(in_channels, w), *_conv_bn(w, 2 * w), *_conv_bn(2 * w, 2 * w), *_conv_bn(2 * w, 4 * w),
            *_conv_bn(4 * w, 4 * w), *_conv_bn(4 * w, 4 * w),
            nn.MaxPool2d(3),
            *_conv_bn(4 * w, 4 * w), *_conv_bn(4 * w, 4 * w),
            nn.MaxPool2d(3),
            nn.Flatten(),
        )
        side = image_size // 3 // 3
        self.feature_dim = 4 * w * side * side
        self.head = nn.Linear(self.feature_dim, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with an identity (or 1x1 projection) shortcut (He et al., 2016)."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class CifarResNet(Classifier):
    """ResNet for small images: 3x3 stem, no max-pool, stages of BasicBlocks, global average pool."""

    def __init__(self, num_classes: int = 10, blocks: Sequence[int] = (2, 2, 2, 2),
                 widths: Sequence[int] = (64, 128, 256, 512), in_channels: int = 3, image_size: int = 32,
                 **norm: Any) -> None:
        super().__init__(**norm)
        del image_size  # global pooling makes the network size-agnostic
        self.stem = nn.Sequential(nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False),
                                  nn.BatchNorm2d(widths[0]), nn.ReLU())
        layers, cin = [], widths[0]
        for i, (n, w) in enumerate(zip(blocks, widths, strict=True)):
            for j in range(n):
                layers.append(BasicBlock(cin, w, stride=2 if (i > 0 and j == 0) else 1))
                cin = w
        self.stages = nn.Sequential(*layers)
        self.feature_dim = cin
        self.head = nn.Linear(cin, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x)).mean(dim=(2, 3))


ARCHITECTURES: dict[str, Callable[..., Classifier]] = {
    "lenet": LeNet,
    "convnet": ConvNet,
    "resnet20-4": lambda **kw: CifarResNet(blocks=(3, 3, 3), widths=(64, 128, 256), **kw),
    "resnet18": lambda **kw: CifarResNet(blocks=(2, 2, 2, 2), widths=(64, 128, 256, 512), **kw),
}


def create_model(name: str, num_classes: int = 10, **kwargs: Any) -> Classifier:
    """Build an architecture by name (see :data:`ARCHITECTURES`) with fresh weights."""
    key = name.lower()
    if key not in ARCHITECTURES:
        raise SemsimError(f"unknown architecture '{name}'; choose one of {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[key](num_classes=num_classes, **kwargs)


def model_config(name: str, num_classes: int, image_size: int = 32, mean: Sequence[float] = CIFAR_MEAN,
                 std: Sequence[float] = CIFAR_STD, **extra: Any) -> dict[str, Any]:
    """The checkpoint config that :func:`build_model` reads back."""
    return {"architecture": name, "num_classes": num_classes, "image_size": image_size,
            "mean": list(mean), "std": list(std), **extra}


def build_model(config: dict[str, Any]) -> Classifier:
    """Build the architecture a checkpoint config describes (weights not loaded)."""
    return create_model(config["architecture"], num_classes=int(config["num_classes"]),
                        image_size=int(config.get("image_size", 32)), mean=config.get("mean", CIFAR_MEAN),
                        std=config.get("std", CIFAR_STD), **config.get("arch_kwargs", {}))


REQUIRED_CONFIG = ("architecture", "num_classes", "image_size", "mean", "std")


def load_classifier(folder: str | os.PathLike,
                    device: str | torch.device = "cpu") -> tuple[Classifier, dict[str, Any]]:
    """Load a classifier checkpoint folder (eval mode) with one-line errors for a damaged or mismatched one.

    Returns ``(model, config)``: the :class:`Classifier` with its weights, in eval mode on ``device``, and the
    checkpoint's ``config.json`` as a dict (architecture, classes, image size, normalisation, accuracies; see
    docs/contracts.md, section 4). The model carries ``image_size`` (from the config), so
    :func:`check_inputs` also checks the image size when given the model.
    """
    state, config = load_checkpoint(folder)
    missing = [k for k in REQUIRED_CONFIG if k not in config]
    if missing:
        raise SemsimError(f"{folder}: config.json lacks {', '.join(missing)}; not a classifier checkpoint")
    try:
        model = build_model(config)
    except (TypeError, ValueError) as exc:
        raise SemsimError(f"{folder}: config.json does not describe a buildable "
                          f"{config['architecture']} ({exc})") from None
    load_state_into(model, state, str(folder))
    model.image_size = int(config["image_size"])
    return model.to(device).eval(), config
