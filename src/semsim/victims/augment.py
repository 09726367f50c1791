"""Training-time augmentations of victim classifiers, on float32 NCHW [0, 1] batches, in plain torch.

* ``none``: the images unchanged.
* ``crop``: the standard CIFAR augmentation: zero-pad by 4 pixels, take a random crop of the original size,
  flip horizontally with probability 1/2 (independently per image).
* ``ats:<i>-<j>-<k>[+<l>-<m>-<n>...]``: automatic-transformation policies in the style of ATSPrivacy
  (Gao et al., "Privacy-preserving Collaborative Learning with Automatic Transformation Search", CVPR 2021).
  A policy is a sequence of indices into :data:`TRANSFORMS`, a list of 50 simple image operations with
  fixed magnitudes (rotations, shears, translations, colour and tone operations); ``3-1-7`` applies
  transforms #3, #1 and #7 in that order to every training image. Several policies joined by ``+`` form a
  hybrid: each image gets one of them, chosen uniformly at random. The list follows ATSPrivacy's style (an
  AutoAugment-like pool indexed by number) but is this package's own: index ``i`` here is not the same
  operation as index ``i`` in ATSPrivacy's code.

Every random choice comes from the ``torch.Generator`` passed in (a CPU generator), so training is
reproducible and a resumed run repeats an uninterrupted one.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from semsim.errors import SemsimError

Op = Callable[[torch.Tensor, float], torch.Tensor]

_LUMA = (0.299, 0.587, 0.114)  # ITU-R 601 luma, as PIL's convert("L")


def _gray(x: torch.Tensor) -> torch.Tensor:
    w = torch.tensor(_LUMA, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * w).sum(dim=1, keepdim=True)


def _blend(base: torch.Tensor, x: torch.Tensor, factor: float) -> torch.Tensor:
    """``base + factor * (x - base)``, clamped (PIL ImageEnhance semantics: 1 = unchanged)."""
    return (base + factor * (x - base)).clamp(0.0, 1.0)


def _affine(x: torch.Tensor, theta: list[list[float]]) -> torch.Tensor:
    """Resample with the 2x3 matrix ``theta`` (output -> input, normalised coordinates); grey fill."""
    mat = torch.tensor(theta, dtype=x.dtype, device=x.device).unsqueeze(0).expand(x.shape[0], 2, 3)
    grid = F.affine_grid(mat, list(x.shape), align_corners=False)
    return F.grid_sample(x - 0.5, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + 0.5


def rotate(x: torch.Tensor, degrees: float) -> torch.Tensor:
    a = math.radians(degrees)
    return _affine(x, [[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0]])


def shear_x(x: torch.Tensor, s: float) -> torch.Tensor:
    return _affine(x, [[1.0, s, 0.0], [0.0, 1.0, 0.0]])


def shear_y(x: torch.Tensor, s: float) -> torch.Tensor:
    return _affine(x, [[1.0, 0.0, 0.0], [s, 1.0, 0.0]])


def translate_x(x: torch.Tensor, fraction: float) -> torch.Tensor:
    """Shift by ``fraction`` of the width (normalised coordinates span 2)."""
    return _affine(x, [[1.0, 0.0, -2.0 * fraction], [0.0, 1.0, 0.0]])


def translate_y(x: torch.Tensor, fraction: float) -> torch.Tensor:
    return _affine(x, [[1.0, 0.0, 0.0], [0.0, 1.0, -2.0 * fraction]])


def brightness(x: torch.Tensor, f: float) -> torch.Tensor:
    return _blend(torch.zeros_like(x), x, f)


def contrast(x: torch.Tensor, f: float) -> torch.Tensor:
    return _blend(_gray(x).mean(dim=(1, 2, 3), keepdim=True).expand_as(x), x, f)


def color(x: torch.Tensor, f: float) -> torch.Tensor:
    return _blend(_gray(x).expand_as(x), x, f)


def sharpness(x: torch.Tensor, f: float) -> torch.Tensor:
    """Blend with PIL's SMOOTH-filtered image (3x3 kernel, centre 5, others 1, /13); borders kept."""
    k = torch.ones(3, 3, dtype=x.dtype, device=x.device)
    k[1, 1] = 5.0
    k = (k / k.sum()).expand(3, 1, 3, 3)
    smooth = x.clone()
    smooth[..., 1:-1, 1:-1] = F.conv2d(x, k, groups=3)
    return _blend(smooth, x, f)


def posterize(x: torch.Tensor, bits: float) -> torch.Tensor:
    shift = 8 - int(bits)
    q = x.mul(255).round().to(torch.int32)
    return ((q >> shift) << shift).to(x.dtype) / 255.0


def solarize(x: torch.Tensor, threshold: float) -> torch.Tensor:
    return torch.where(x >= threshold, 1.0 - x, x)


def invert(x: torch.Tensor, _: float) -> torch.Tensor:
    return 1.0 - x


def autocontrast(x: torch.Tensor, _: float) -> torch.Tensor:
    """Stretch every channel of every image to the full [0, 1] range (constant channels unchanged)."""
    lo = x.amin(dim=(2, 3), keepdim=True)
    hi = x.amax(dim=(2, 3), keepdim=True)
    span = hi - lo
    return torch.where(span > 0, (x - lo) / span.clamp_min(1e-8), x)


def equalize(x: torch.Tensor, _: float) -> torch.Tensor:
    """Histogram equalisation per image and channel on the 256 grey levels (CDF remapping)."""
    n, c, h, w = x.shape
    q = x.mul(255).round().long().view(n * c, h * w)
    hist = torch.zeros(n * c, 256, dtype=x.dtype, device=x.device).scatter_add_(1, q, torch.ones_like(x).view(
        n * c, h * w))
    cdf = hist.cumsum(dim=1)
    cdf_min = torch.where(hist > 0, cdf, torch.full_like(cdf, float("inf"))).amin(dim=1, keepdim=True)
    denom = (h * w - cdf_min).clamp_min(1.0)
    lut = ((cdf - cdf_min) / denom).clamp(0.0, 1.0)
    out = lut.gather(1, q).view(n, c, h, w)
    flat = (h * w - cdf_min).view(n, c, 1, 1) <= 0  # a single grey level: leave it as it is
    return torch.where(flat, x, out)


def hflip(x: torch.Tensor, _: float) -> torch.Tensor:
    return x.flip(-1)


def vflip(x: torch.Tensor, _: float) -> torch.Tensor:
    return x.flip(-2)


def grayscale(x: torch.Tensor, _: float) -> torch.Tensor:
    return _gray(x).expand_as(x).contiguous()


OPS: dict[str, Op] = {
    "rotate": rotate, "shear_x": shear_x, "shear_y": shear_y, "translate_x": translate_x,
    "translate_y": translate_y, "brightness": brightness, "contrast": contrast, "color": color,
    "sharpness": sharpness, "posterize": posterize, "solarize": solarize, "invert": invert,
    "autocontrast": autocontrast, "equalize": equalize, "hflip": hflip, "vflip": vflip,
    "grayscale": grayscale,
}

#: The indexed pool of ATS-style transforms: (operation, magnitude). Enhancement factors follow PIL's
#: convention (1 = unchanged); shears are slopes; translations are fractions of the side; angles in degrees.
TRANSFORMS: list[tuple[str, float]] = [
    ("invert", 0.0), ("contrast", 1.6), ("rotate", 20.0), ("translate_x", 0.3), ("sharpness", 1.9),  # 0-4
    ("shear_y", 0.3), ("translate_y", -0.3), ("autocontrast", 0.0), ("equalize", 0.0), ("solarize", 0.5),
    ("color", 1.8), ("posterize", 4), ("brightness", 1.5), ("shear_x", 0.3), ("rotate", -20.0),  # 10-14
    ("contrast", 0.4), ("color", 0.2), ("brightness", 0.6), ("sharpness", 0.2), ("translate_x", -0.2),
    ("shear_x", -0.2), ("shear_y", -0.2), ("translate_y", 0.2), ("rotate", 10.0), ("posterize", 5),  # 20-24
    ("solarize", 0.75), ("hflip", 0.0), ("vflip", 0.0), ("contrast", 1.3), ("color", 1.3),
    ("brightness", 1.2), ("sharpness", 1.4), ("translate_x", 0.1), ("translate_y", -0.1), ("shear_x", 0.1),
    ("shear_y", 0.1), ("rotate", -10.0), ("posterize", 6), ("solarize", 0.9), ("contrast", 0.7),  # 35-39
    ("color", 0.6), ("brightness", 0.8), ("sharpness", 0.6), ("translate_y", 0.3), ("translate_x", -0.3),
    ("shear_y", -0.3), ("shear_x", -0.3), ("rotate", 30.0), ("posterize", 3), ("grayscale", 0.0),  # 45-49
]

_POLICY = re.compile(r"^\d+(-\d+)*$")


def random_crop_flip(x: torch.Tensor, generator: torch.Generator, padding: int = 4) -> torch.Tensor:
    """Per image: zero-pad by ``padding``, crop the original size at a random offset, flip with p=1/2."""
    n, c, h, w = x.shape
    padded = F.pad(x, (padding, padding, padding, padding))
    oy = torch.randint(0, 2 * padding + 1, (n,), generator=generator).to(x.device)
    ox = torch.randint(0, 2 * padding + 1, (n,), generator=generator).to(x.device)
    flip = (torch.rand(n, generator=generator) < 0.5).to(x.device)
    rows = oy[:, None] + torch.arange(h, device=x.device)
    cols = torch.arange(w, device=x.device).expand(n, w)
    cols = torch.where(flip[:, None], cols.flip(-1), cols) + ox[:, None]
    idx_n = torch.arange(n, device=x.device)[:, None, None, None]
    idx_c = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[idx_n, idx_c, rows[:, None, :, None], cols[:, None, None, :]]


@dataclass(frozen=True)
class Augmentation:
    """A parsed augmentation spec; call it on a float NCHW batch with a CPU generator."""

    spec: str
    kind: str
    policies: tuple[tuple[int, ...], ...] = ()

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if self.kind == "none":
            return x
        if self.kind == "crop":
            return random_crop_flip(x, generator)
        if len(self.policies) == 1:
            return apply_policy(x, self.policies[0])
        choice = torch.randint(0, len(self.policies), (x.shape[0],), generator=generator).to(x.device)
        out = x.clone()
        for i, policy in enumerate(self.policies):
            mask = choice == i
            if bool(mask.any()):
                out[mask] = apply_policy(x[mask], policy)
        return out


def apply_policy(x: torch.Tensor, policy: tuple[int, ...]) -> torch.Tensor:
    """Apply the transforms ``TRANSFORMS[i]`` for ``i`` in ``policy``, in order."""
    for i in policy:
        op, magnitude = TRANSFORMS[i]
        x = OPS[op](x, magnitude)
    return x


def parse_augment(spec: str | None) -> Augmentation:
    """Parse ``none``, ``crop`` or ``ats:<i>-<j>-<k>[+...]`` (indices into :data:`TRANSFORMS`)."""
    text = (spec or "none").strip().lower()
    if text in ("none", "crop"):
        return Augmentation(text, text)
    if text.startswith("ats:"):
        parts = text[4:].split("+")
        if not all(_POLICY.match(p) for p in parts):
            raise SemsimError(f"augmentation '{spec}': write policies as ats:3-1-7 or ats:3-1-7+43-18-18")
        policies = tuple(tuple(int(i) for i in p.split("-")) for p in parts)
        bad = [i for p in policies for i in p if i >= len(TRANSFORMS)]
        if bad:
            raise SemsimError(f"augmentation '{spec}': transform index {bad[0]} out of range; "
                              f"indices go from 0 to {len(TRANSFORMS) - 1}")
        return Augmentation(text, "ats", policies)
    raise SemsimError(f"augmentation '{spec}': unknown; use none, crop or ats:<i>-<j>-<k> (e.g. ats:3-1-7)")
