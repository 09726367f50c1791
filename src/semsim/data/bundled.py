"""Small real datasets that ship inside installed packages, for the demo and offline examples.

* ``digits``: scikit-learn's 1,797 handwritten digits (UCI optical digits, 8x8, 10 classes), upsampled
  (bilinear) to ``image_size`` and expanded to three channels.
* ``faces``: scikit-image's LFW subset (100 faces and 100 non-face patches, 25x25), unlabelled faces only.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from semsim.data.image_dataset import ImageDataset
from semsim.errors import SemsimError

BUNDLED = ("digits", "faces")


def _to_uint8_rgb(gray: np.ndarray, image_size: int) -> torch.Tensor:
    """(N, H, W) float images in [0, 1] -> uint8 (N, 3, S, S), bilinear resampling."""
    t = torch.from_numpy(gray.astype(np.float32)).unsqueeze(1)
    t = F.interpolate(t, size=(image_size, image_size), mode="bilinear", align_corners=False)
    return t.clamp(0, 1).mul(255).round().to(torch.uint8).expand(-1, 3, -1, -1).contiguous()


def load_bundled(name: str, image_size: int = 32) -> ImageDataset:
    """Load a bundled dataset by name (see :data:`BUNDLED`)."""
    try:
        if name == "digits":
            from sklearn.datasets import load_digits

            d = load_digits()
            return ImageDataset(_to_uint8_rgb(d.images / 16.0, image_size), torch.from_numpy(d.target),
                                [str(c) for c in d.target_names], "digits",
                                {"source": "scikit-learn load_digits (UCI optical digits)"})
        if name == "faces":
            from skimage.data import lfw_subset

            faces = lfw_subset()[:100]
            return ImageDataset(_to_uint8_rgb(faces, image_size), torch.full((len(faces),), -1), [], "faces",
                                {"source": "scikit-image lfw_subset (Labeled Faces in the Wild)"})
    except ImportError as exc:
        raise SemsimError(f"bundled dataset '{name}' needs {exc.name}; install semsim with its dependencies "
                          "(make demo does)") from None
    raise SemsimError(f"unknown bundled dataset '{name}'; choose one of {', '.join(BUNDLED)}")
