"""FID, the Fréchet Inception Distance of Heusel et al., "GANs Trained by a Two Time-Scale Update Rule
Converge to a Local Nash Equilibrium" (NeurIPS 2017), as a set-level metric.

``FID = |mu_1 - mu_2|^2 + tr(S_1) + tr(S_2) - 2 tr((S_1 S_2)^(1/2))`` between Gaussians fitted to the features
of the originals and of the reconstructions of one set. Features are Inception-v3 pool3 activations (2048-d)
by default, or those of any extractor the user gives. The trace of the matrix square root is computed in
float64 from the eigenvalues of the symmetric matrix ``S_1^(1/2) S_2 S_1^(1/2)``, which has the same spectrum
as ``S_1 S_2`` and stays real and stable when the covariances are singular (fewer images than dimensions).

FID is biased on small sets (Chong & Forsyth, "Effectively Unbiased FID", CVPR 2020): its expectation falls as
the number of images grows, so only compare sets of the same size, and prefer thousands of images.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from semsim.metrics.registry import check_pair
from semsim.models.backbones import InceptionV3Features
from semsim.models.weights import find_weights, load_into, load_state_dict

INCEPTION_FILES = (
    "pt_inception-2015-12-05-6726825d.pth",
    "pt_inception-2015-12-05.safetensors",
    "inception_v3_google-0cc3c7bd.pth",
    "inception_v3_google.safetensors",
)
_CACHE_LIMIT = 20_000  # originals whose features are kept between sets (2048 float32 each: 160 MB)


def load_inception(weights: str | os.PathLike | None = None) -> InceptionV3Features:
    """The FID Inception-v3 with pretrained weights: pytorch-fid's ``pt_inception`` file (the TF graph behind
    published FIDs) or, failing that, torchvision's ``inception_v3_google`` (FIDs then differ from published
    ones). The variant follows the file: 1008 output classes mean the FID graph."""
    path = find_weights(INCEPTION_FILES, "FID Inception-v3", weights)
    state = load_state_dict(path)
    if "fc.weight" in state:
        variant = "fid" if state["fc.weight"].shape[0] == 1008 else "torchvision"
    else:
        variant = "fid" if path.name.startswith("pt_inception") else "torchvision"
    model = InceptionV3Features(variant)
    load_into(model, state, path, ignore_prefixes=("fc.", "AuxLogits."))
    return model.eval()


def _trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """``tr((S_1 S_2)^(1/2))`` for symmetric positive semi-definite S_1, S_2 (float64, via eigenvalues)."""
    e, v = np.linalg.eigh(sigma1)
    root1 = (v * np.sqrt(np.clip(e, 0, None))) @ v.T
    m = root1 @ sigma2 @ root1
    return float(np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum())


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2) (Dowson & Landau 1982; Heusel 2017)."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * _trace_sqrt_product(sigma1, sigma2))


def fid_from_features(features1: np.ndarray | torch.Tensor, features2: np.ndarray | torch.Tensor) -> float:
    """FID between two (N, D) feature matrices (means and unbiased covariances in float64, as pytorch-fid)."""
    f1, f2 = (np.asarray(torch.as_tensor(f).detach().cpu().double()) for f in (features1, features2))
    if len(f1) < 2 or len(f2) < 2:
        raise ValueError(f"FID needs at least 2 images per side, got {len(f1)} and {len(f2)}")
    return frechet_distance(f1.mean(0), np.cov(f1, rowvar=False), f2.mean(0), np.cov(f2, rowvar=False))


class FID(nn.Module):
    """Set-level FID between a set's originals and its reconstructions.

    ``feature_extractor`` (any callable mapping NCHW [0, 1] images to (N, D) features) replaces Inception-v3;
    ``weights`` is the Inception file or a folder holding it. Originals' features are cached by
    ``original_keys`` (their paths), so originals shared by several sets go through the network once.
    """

    def __init__(
        self,
        weights: str | os.PathLike | None = None,
        feature_extractor: Callable[[torch.Tensor], torch.Tensor] | None = None,
        batch_size: int = 64,
        data_range: float = 1.0,
    ) -> None:
        super().__init__()
        extractor = feature_extractor if feature_extractor is not None else load_inception(weights)
        if isinstance(extractor, nn.Module):
            self.extractor = extractor.requires_grad_(False).eval()
        else:
            self._extract_fn = extractor
        self.batch_size = batch_size
        self.data_range = data_range
        self._cache: dict[str, torch.Tensor] = {}
        self.reset()

    def _features(self, images: torch.Tensor) -> torch.Tensor:
        fn = self.extractor if "extractor" in self._modules else self._extract_fn
        with torch.no_grad():
            out = [
                fn(images[i : i + self.batch_size] / self.data_range).flatten(1)
                for i in range(0, len(images), self.batch_size)
            ]
        return torch.cat(out).float().cpu()

    def reset(self) -> None:
        """Forget the accumulated features (call between sets)."""
        self._orig: list[torch.Tensor] = []
        self._rec: list[torch.Tensor] = []

    def update(
        self, original: torch.Tensor, reconstruction: torch.Tensor, labels=None, original_keys=None
    ) -> None:
        """Add a batch of pairs of the current set."""
        check_pair(original, reconstruction, self.data_range)
        if original_keys is None:
            self._orig.append(self._features(original))
        else:
            todo = [i for i, k in enumerate(original_keys) if k not in self._cache]
            fresh = dict(zip(todo, self._features(original[todo]), strict=True)) if todo else {}
            for i, f in fresh.items():
                if len(self._cache) < _CACHE_LIMIT:
                    self._cache[original_keys[i]] = f
            self._orig.append(
                torch.stack([fresh[i] if i in fresh else self._cache[k] for i, k in enumerate(original_keys)])
            )
        self._rec.append(self._features(reconstruction))

    def compute(self) -> dict[str, float]:
        """``{"fid": value}`` for the pairs added since the last ``reset``."""
        if not self._rec:
            raise ValueError("FID: no images were added; call update() first")
        f1, f2 = torch.cat(self._orig), torch.cat(self._rec)
        n, dim = f1.shape
        if n < 2:
            warnings.warn("fid left blank (NaN): a set needs at least 2 pairs for a covariance", stacklevel=2)
            return {"fid": float("nan")}
        if n < dim:
            warnings.warn(
                f"fid on {n} pairs with {dim}-d features is biased upward (it falls as the set grows); "
                "compare only sets of equal size",
                stacklevel=2,
            )
        return {"fid": fid_from_features(f1, f2)}
