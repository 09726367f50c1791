"""FID and KID, set-level distances between the Inception features of a set's originals and reconstructions.

**FID**, the Fréchet Inception Distance of Heusel et al., "GANs Trained by a Two Time-Scale Update Rule Converge
to a Local Nash Equilibrium" (NeurIPS 2017): ``FID = |mu_1 - mu_2|^2 + tr(S_1) + tr(S_2) - 2 tr((S_1 S_2)^(1/2))``
between Gaussians fitted to the two feature sets. The trace of the matrix square root is computed in float64
from the eigenvalues of the symmetric matrix ``S_1^(1/2) S_2 S_1^(1/2)``, which has the same spectrum as
``S_1 S_2`` and stays real and stable when the covariances are singular; with fewer images than dimensions (the
usual case) it is the sum of the singular values of the small matrix ``A_1 A_2^T`` of centred features, without
forming the 2048 x 2048 covariances (:func:`fid_from_features`). FID is
a squared distance: a value below 0 can only be rounding, and is reported as 0. FID is biased on small sets
(Chong & Forsyth, "Effectively Unbiased FID", CVPR 2020): its expectation falls as the number of images grows,
so only compare sets of the same size, and prefer thousands of images.

**KID**, the Kernel Inception Distance of Binkowski et al., "Demystifying MMD GANs" (ICLR 2018), as torchmetrics
defines it: the unbiased estimator of the squared maximum mean discrepancy with the polynomial kernel
``k(x, y) = (x . y / d + 1)^3``, averaged over ``subsets`` random subsets of ``subset_size`` features drawn
without replacement from each side (mean and population standard deviation reported). Unbiased, it suits the
small sets of this field better than FID, and can be slightly negative when the two sets are alike. Here
``subset_size`` is capped at the set's size (torchmetrics refuses larger ones); at the cap every subset is the
whole set, so the estimate is computed once and its standard deviation is 0.

Features are Inception-v3 pool3 activations (2048-d) by default, or those of any extractor the user gives;
non-finite features are refused with an error.
"""

from __future__ import annotations

import functools
import os
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from semsim.common.cache import FeatureCache
from semsim.metrics.registry import check_pair
from semsim.models.backbones import InceptionV3Features
from semsim.models.weights import Download, fetch_weights, load_into, load_state_dict

INCEPTION_FILES = (
    "pt_inception-2015-12-05-6726825d.pth",
    "pt_inception-2015-12-05.safetensors",
    "inception_v3_google-0cc3c7bd.pth",
    "inception_v3_google.safetensors",
)
INCEPTION_DOWNLOAD = Download(
    "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth"
)
KID_SUBSETS, KID_SUBSET_SIZE = 100, 1000  # torchmetrics' defaults
_CACHE_LIMIT = 20_000  # originals whose features are kept between sets (2048 float32 each: 160 MB)


def load_inception(weights: str | os.PathLike | None = None) -> InceptionV3Features:
    """The FID Inception-v3 with pretrained weights: pytorch-fid's ``pt_inception`` file (the TF graph behind
    published FIDs) or, failing that, torchvision's ``inception_v3_google`` (FIDs then differ from published
    ones). The variant follows the file: 1008 output classes mean the FID graph. When none is found, the
    ``pt_inception`` file is downloaded into the torch hub cache (see :mod:`semsim.models.weights`)."""
    path = fetch_weights(INCEPTION_FILES, "FID Inception-v3", weights, INCEPTION_DOWNLOAD)
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
    """Squared Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2) (Dowson & Landau 1982; Heusel 2017),
    clamped at 0 (a negative value is rounding)."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    for name, value in (("mu1", mu1), ("sigma1", sigma1), ("mu2", mu2), ("sigma2", sigma2)):
        if not np.isfinite(value).all():
            raise ValueError(f"Fréchet distance: {name} holds NaN or inf; the features it came from are not finite")
    diff = mu1 - mu2
    value = diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * _trace_sqrt_product(sigma1, sigma2)
    return max(0.0, float(value))


def _finite_features(features: np.ndarray | torch.Tensor, side: str, what: str) -> np.ndarray:
    """(N, D) float64 features; refuses rows with NaN or inf, naming how many."""
    f = np.asarray(torch.as_tensor(features).detach().cpu().double())
    if f.ndim != 2:
        raise ValueError(f"{what}: {side} features must be (N, D), got shape {f.shape}")
    bad = int((~np.isfinite(f)).any(1).sum())
    if bad:
        raise ValueError(f"{what}: {bad} of {len(f)} {side} feature rows hold NaN or inf; check the images and "
                         "the feature extractor")
    return f


def fid_from_features(features1: np.ndarray | torch.Tensor, features2: np.ndarray | torch.Tensor) -> float:
    """FID between two (N, D) feature matrices (means and unbiased covariances in float64, as pytorch-fid).

    With fewer images than dimensions (the usual case: sets of hundreds, 2048-d features) the covariances are
    ``S_i = A_i^T A_i`` for the centred features ``A_i = (F_i - mu_i) / sqrt(N_i - 1)``; the nonzero
    eigenvalues of ``S_1 S_2`` are the squared singular values of ``A_1 A_2^T``, so ``tr((S_1 S_2)^(1/2))`` is
    the sum of those singular values and the D x D matrices are never formed (seconds become milliseconds).
    """
    f1, f2 = _finite_features(features1, "first", "FID"), _finite_features(features2, "second", "FID")
    if len(f1) < 2 or len(f2) < 2:
        raise ValueError(f"FID needs at least 2 images per side, got {len(f1)} and {len(f2)}")
    mu1, mu2 = f1.mean(0), f2.mean(0)
    if max(len(f1), len(f2)) >= f1.shape[1]:
        return frechet_distance(mu1, np.cov(f1, rowvar=False), mu2, np.cov(f2, rowvar=False))
    a1, a2 = ((f - mu) / np.sqrt(len(f) - 1) for f, mu in ((f1, mu1), (f2, mu2)))
    diff = mu1 - mu2
    trace_sqrt = np.linalg.svd(a1 @ a2.T, compute_uv=False).sum()
    return max(0.0, float(diff @ diff + (a1 * a1).sum() + (a2 * a2).sum() - 2 * trace_sqrt))


def polynomial_kernel(a: np.ndarray, b: np.ndarray, degree: int = 3, gamma: float | None = None,
                      coef: float = 1.0) -> np.ndarray:
    """``(gamma a b^T + coef)^degree`` with ``gamma = 1 / D`` by default (Binkowski et al. 2018)."""
    gamma = 1.0 / a.shape[1] if gamma is None else gamma
    return (a @ b.T * gamma + coef) ** degree


def mmd2_unbiased(k_xx: np.ndarray, k_xy: np.ndarray, k_yy: np.ndarray) -> float:
    """Unbiased squared MMD from the kernel matrices of m and m samples: the off-diagonal means of ``k_xx``
    and ``k_yy`` minus twice the mean of ``k_xy`` (Gretton et al. 2012, Eq. 3)."""
    m = len(k_xx)
    within = (k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
    return float(within - 2 * k_xy.sum() / (m * m))


def kid_from_features(
    features1: np.ndarray | torch.Tensor,
    features2: np.ndarray | torch.Tensor,
    subsets: int = KID_SUBSETS,
    subset_size: int = KID_SUBSET_SIZE,
    degree: int = 3,
    gamma: float | None = None,
    coef: float = 1.0,
    seed: int = 0,
) -> tuple[float, float]:
    """KID between two (N, D) feature matrices: (mean, population std) of the unbiased MMD^2 over ``subsets``
    random subsets of ``min(subset_size, N1, N2)`` rows per side (drawn with ``numpy.random.default_rng(seed)``:
    per subset, first the rows of ``features1``, then those of ``features2``)."""
    f1, f2 = _finite_features(features1, "first", "KID"), _finite_features(features2, "second", "KID")
    m = min(subset_size, len(f1), len(f2))
    if m < 2:
        raise ValueError(f"KID needs at least 2 images per side, got {len(f1)} and {len(f2)}")

    def mmd2(a: np.ndarray, b: np.ndarray) -> float:
        kernel = functools.partial(polynomial_kernel, degree=degree, gamma=gamma, coef=coef)
        return mmd2_unbiased(kernel(a, a), kernel(a, b), kernel(b, b))

    if m == len(f1) == len(f2):  # every subset is the whole set (the estimate does not depend on the order)
        return mmd2(f1, f2), 0.0
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(subsets):
        i = rng.choice(len(f1), m, replace=False)
        j = rng.choice(len(f2), m, replace=False)
        values.append(mmd2(f1[i], f2[j]))
    return float(np.mean(values)), float(np.std(values))


class _FeatureSetMetric(nn.Module):
    """Accumulates the features of a set's originals and reconstructions (the shared part of FID and KID).

    ``feature_extractor`` (any callable mapping NCHW [0, 1] images to (N, D) features) replaces Inception-v3;
    ``weights`` is the Inception file or a folder holding it. Originals' features are cached by
    content (:class:`~semsim.common.cache.FeatureCache`), so originals shared by several sets go through the
    network once.
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
        self._cache = FeatureCache(_CACHE_LIMIT)
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
        self._orig.append(self._cache.features(original, self._features))
        self._rec.append(self._features(reconstruction))

    def _set_features(self, what: str) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The accumulated (originals, reconstructions) features; None (with a warning) below 2 pairs."""
        if not self._rec:
            raise ValueError(f"{what}: no images were added; call update() first")
        f1, f2 = torch.cat(self._orig), torch.cat(self._rec)
        if len(f1) < 2:
            warnings.warn(f"{what.lower()} left blank (NaN): a set needs at least 2 pairs", stacklevel=3)
            return None
        return f1, f2


class FID(_FeatureSetMetric):
    """Set-level FID between a set's originals and its reconstructions (see :class:`_FeatureSetMetric`)."""

    def compute(self) -> dict[str, float]:
        """``{"fid": value}`` for the pairs added since the last ``reset``."""
        features = self._set_features("FID")
        if features is None:
            return {"fid": float("nan")}
        f1, f2 = features
        n, dim = f1.shape
        if n < dim:
            warnings.warn(
                f"fid on {n} pairs with {dim}-d features is biased upward (it falls as the set grows); "
                "compare only sets of equal size",
                stacklevel=2,
            )
        return {"fid": fid_from_features(f1, f2)}


class KID(_FeatureSetMetric):
    """Set-level KID (torchmetrics' definition, see the module doc) between a set's originals and reconstructions.

    ``subsets``, ``subset_size`` (capped at the set's size), ``degree``, ``gamma`` (default 1 / D), ``coef`` and
    ``seed`` (of the subset draws) as in :func:`kid_from_features`; other arguments as for :class:`FID`.
    """

    def __init__(self, weights: str | os.PathLike | None = None,
                 feature_extractor: Callable[[torch.Tensor], torch.Tensor] | None = None, batch_size: int = 64,
                 data_range: float = 1.0, subsets: int = KID_SUBSETS, subset_size: int = KID_SUBSET_SIZE,
                 degree: int = 3, gamma: float | None = None, coef: float = 1.0, seed: int = 0) -> None:
        super().__init__(weights, feature_extractor, batch_size, data_range)
        self.kid_options: dict[str, Any] = dict(subsets=subsets, subset_size=subset_size, degree=degree,
                                                gamma=gamma, coef=coef, seed=seed)

    def compute(self) -> dict[str, float]:
        """``{"kid": mean, "kid_std": standard deviation over subsets}`` for the pairs added since ``reset``."""
        features = self._set_features("KID")
        if features is None:
            return {"kid": float("nan"), "kid_std": float("nan")}
        mean, std = kid_from_features(*features, **self.kid_options)
        return {"kid": mean, "kid_std": std}
