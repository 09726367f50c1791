"""The in-memory dataset type every loader returns: compact uint8 NCHW RGB images with integer labels."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class ImageDataset:
    """Images (uint8 NCHW RGB), integer labels (``-1`` = unlabelled), class names and a dataset name.

    ``info`` records the source folder, the format, the split and, for image folders, ``files``: each
    image's path relative to the folder, aligned with ``images``.
    """

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    name: str
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4 or self.images.shape[1] != 3:
            raise ValueError(f"images must be a uint8 Nx3xHxW tensor, got {self.images.dtype} "
                             f"{tuple(self.images.shape)}")
        self.labels = torch.as_tensor(self.labels, dtype=torch.int64)
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError(f"{self.images.shape[0]} images but labels of shape {tuple(self.labels.shape)}")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def image_size(self) -> int:
        """Side of the (square) images; for non-square images, the height."""
        return int(self.images.shape[2])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def labelled(self) -> bool:
        """True when every image has a class label."""
        return bool(self.classes) and bool((self.labels >= 0).all())

    def floats(self, indices: Sequence[int] | torch.Tensor | None = None) -> torch.Tensor:
        """The images (or those at ``indices``) as float32 NCHW in [0, 1]."""
        images = self.images if indices is None else self.images[torch.as_tensor(indices, dtype=torch.long)]
        return images.float().div_(255.0)

    def take(self, indices: Sequence[int] | torch.Tensor, name: str | None = None) -> ImageDataset:
        """A new dataset with the images at ``indices`` (in that order)."""
        idx = torch.as_tensor(indices, dtype=torch.long)
        info = dict(self.info)
        if "files" in info:  # keep the file list aligned with the images
            info["files"] = [info["files"][i] for i in idx.tolist()]
        return ImageDataset(self.images[idx], self.labels[idx], list(self.classes), name or self.name, info)
