"""Training-time augmentations of victim classifiers, on float32 NCHW [0, 1] batches, in plain torch.

* ``none``: the images unchanged.
* ``crop``: the standard CIFAR augmentation: zero-pad by 4 pixels, take a random crop of the original size,
  flip horizontally with probability 1/2 (independently per image).
* ``ats:<i>-<j>-<k>[+<l>-<m>-<n>...]``: the automatic-transformation policies of ATSPrivacy (Gao et al.,
  "Privacy-preserving Collaborative Learning with Automatic Transformation Search", CVPR 2021), as the SemSim
  study (Sun et al., NeurIPS 2023) trains its victims with them. An index names one of ATSPrivacy's 50
  published sub-policies (:data:`ATS_POLICIES`: operation, probability, magnitude index); the magnitude index
  picks a value from the operation's range (:data:`ATS_RANGES`). ``3-1-7`` first applies the usual random
  crop (pad 4) and horizontal flip, then sub-policies 3, 1 and 7 in that order to every training image.
  As in ATSPrivacy's code: the stored probability is not used (every listed operation is applied); the sign
  of a signed operation (shear, translate, colour/contrast/brightness/sharpness factor ``1 +- m``) is drawn
  per image; shears and translations fill with black, rotations with grey 128 (ATSPrivacy's
  ``rotate_with_fill``), rotations turn counter-clockwise by the magnitude (no sign). Policies joined by
  ``+`` form a hybrid: each image gets one of them, chosen uniformly at random.

ATSPrivacy applies these operations with PIL to 8-bit images; here they act on float tensors (on any
device) and every operation's result is brought to the 256 grey levels as PIL does (PIL's bicubic kernel,
truncating blends), so each operation matches PIL's output to one grey level (tests compare all 50).

Every random choice comes from the ``torch.Generator`` passed in (a CPU generator), so training is
reproducible and a resumed run repeats an uninterrupted one.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from semsim.errors import SemsimError

#: An operation: ``op(images, magnitude, sign)`` with one sign (+1/-1, a CPU tensor) per image; unsigned
#: operations ignore the sign.
Op = Callable[[torch.Tensor, float, torch.Tensor], torch.Tensor]

_LUMA = (0.299, 0.587, 0.114)  # ITU-R 601 luma, as PIL's convert("L")
_GREY_FILL = 128 / 255  # ATSPrivacy's rotate_with_fill composites onto (128, 128, 128)


def _levels(x: torch.Tensor) -> torch.Tensor:
    """Round to the 256 levels of an 8-bit image (what PIL stores after every operation)."""
    return x.clamp(0.0, 1.0).mul(255.0).round().div(255.0)


def _per_image(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return v.to(device=x.device, dtype=x.dtype).view(-1, 1, 1, 1)


def _gray(x: torch.Tensor) -> torch.Tensor:
    w = torch.tensor(_LUMA, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * w).sum(dim=1, keepdim=True)


def _floor_levels(x: torch.Tensor) -> torch.Tensor:
    """Truncate to the 256 levels, as PIL's blend and lookup tables do (``(UINT8) value``)."""
    return x.mul(255.0).add(1e-3).floor().clamp(0.0, 255.0).div(255.0)


def _blend(base: torch.Tensor, x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """``base + factor * (x - base)`` per image, truncated to 8 bits (PIL ``Image.blend``, which
    ImageEnhance uses: factor 1 = unchanged)."""
    return _floor_levels(base + _per_image(factor, x) * (x - base))


def _cubic_weights(t: torch.Tensor) -> torch.Tensor:
    """Weights of the 4 taps at offsets -1, 0, 1, 2 for a fractional position ``t`` in [0, 1): Keys' cubic
    convolution kernel with ``a = -1``, the one PIL's affine BICUBIC uses (torch's bicubic has ``a = -0.75``)."""
    a = -1.0
    d = torch.stack([1 + t, t, 1 - t, 2 - t], dim=-1)
    near = (a + 2) * d**3 - (a + 3) * d**2 + 1
    far = a * d**3 - 5 * a * d**2 + 8 * a * d - 4 * a
    return torch.where(d <= 1, near, far)


def _bicubic(x: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Sample ``x`` at ``grid`` (normalised, ``align_corners=False``) with PIL's bicubic, edges repeated."""
    n, c, h, w = x.shape
    px = ((grid[..., 0] + 1) * w - 1) / 2  # source position in pixel-index units (centres at integers)
    py = ((grid[..., 1] + 1) * h - 1) / 2
    x0, y0 = px.floor(), py.floor()
    wx, wy = _cubic_weights(px - x0), _cubic_weights(py - y0)  # (n, H, W, 4)
    taps = torch.arange(-1, 3, device=x.device)
    ix = (x0.long()[..., None] + taps).clamp(0, w - 1)
    iy = (y0.long()[..., None] + taps).clamp(0, h - 1)
    idx = (iy[..., :, None] * w + ix[..., None, :]).reshape(n, 1, -1).expand(n, c, -1)
    vals = x.reshape(n, c, h * w).gather(2, idx).reshape(n, c, *grid.shape[1:3], 4, 4)
    return (vals * wy[:, None, ..., :, None] * wx[:, None, ..., None, :]).sum(dim=(-1, -2))


def _sample(x: torch.Tensor, theta: torch.Tensor, mode: str, fill: float) -> torch.Tensor:
    """Resample with per-image 2x3 matrices ``theta`` (output -> input, normalised coordinates).

    As PIL does, a pixel whose source point lies outside the image (in [0, size) pixel units) gets ``fill``;
    the others are interpolated (``nearest`` or PIL's ``bicubic``) with the edge pixels repeated.
    """
    grid = F.affine_grid(theta.to(device=x.device, dtype=x.dtype), list(x.shape), align_corners=False)
    if mode == "bicubic":
        out = _floor_levels(_bicubic(x, grid))
    else:
        out = F.grid_sample(x, grid, mode="nearest", padding_mode="border", align_corners=False)
    inside = F.grid_sample(torch.ones_like(x[:, :1]), grid, mode="nearest", padding_mode="zeros",
                           align_corners=False)
    return out * inside + fill * (1 - inside)


def _theta(x: torch.Tensor, rows: Sequence[Sequence[torch.Tensor | float]]) -> torch.Tensor:
    n = x.shape[0]
    return torch.stack([torch.stack([torch.as_tensor(v, dtype=torch.float64).expand(n) for v in row], -1)
                        for row in rows], 1)


def shear_x(x: torch.Tensor, m: float, sign: torch.Tensor) -> torch.Tensor:
    """PIL ``transform(AFFINE, (1, s, 0, 0, 1, 0))``: source x = x + s * y (origin top-left), bicubic, black."""
    h, w = x.shape[-2:]
    s = sign.double() * m * h / w
    return _sample(x, _theta(x, [[1.0, s, s], [0.0, 1.0, 0.0]]), "bicubic", 0.0)


def shear_y(x: torch.Tensor, m: float, sign: torch.Tensor) -> torch.Tensor:
    """PIL ``transform(AFFINE, (1, 0, 0, s, 1, 0))``: source y = s * x + y (origin top-left), bicubic, black."""
    h, w = x.shape[-2:]
    s = sign.double() * m * w / h
    return _sample(x, _theta(x, [[1.0, 0.0, 0.0], [s, 1.0, s]]), "bicubic", 0.0)


def translate_x(x: torch.Tensor, m: float, sign: torch.Tensor) -> torch.Tensor:
    """PIL ``transform(AFFINE, (1, 0, t, 0, 1, 0))`` with ``t = m * width * sign``: nearest, black fill."""
    t = 2.0 * m * sign.double()  # a shift of t pixels is 2 t / width in normalised coordinates
    return _sample(x, _theta(x, [[1.0, 0.0, t], [0.0, 1.0, 0.0]]), "nearest", 0.0)


def translate_y(x: torch.Tensor, m: float, sign: torch.Tensor) -> torch.Tensor:
    """PIL ``transform(AFFINE, (1, 0, 0, 0, 1, t))`` with ``t = m * height * sign``: nearest, black fill."""
    t = 2.0 * m * sign.double()
    return _sample(x, _theta(x, [[1.0, 0.0, 0.0], [0.0, 1.0, t]]), "nearest", 0.0)


def rotate(x: torch.Tensor, degrees: float, sign: torch.Tensor) -> torch.Tensor:
    """PIL ``rotate(degrees)`` (counter-clockwise about the centre, nearest) composited onto grey 128."""
    del sign  # ATSPrivacy rotates by the magnitude itself
    h, w = x.shape[-2:]
    a = -math.radians(degrees)
    theta = [[math.cos(a), math.sin(a) * h / w, 0.0], [-math.sin(a) * w / h, math.cos(a), 0.0]]
    return _sample(x, _theta(x, theta), "nearest", _GREY_FILL)


def brightness(x: torch.Tensor, m: float, sign: torch.Tensor) -> torch.Tensor:
    """PIL ``ImageEnhance.Brightness(1 + m * sign)``: blend with black."""
    return _blend(torch.zeros_like(x), x, 1 + m * sign)


def contrast(x: torch.Tensor, m: float, sign: torch.Tensor) -> torch.Tensor:
    """PIL ``ImageEnhance.Contrast(1 + m * sign)``: blend with the image's mean grey level (rounded)."""
    mean = _gray(x).mean(dim=(1, 2, 3), keepdim=True).mul(255).round().div(255)
    return _blend(mean.expand_as(x), x, 1 + m * sign)


def color(x: torch.Tensor, m: float, sign: torch.Tensor) -> torch.Tensor:
    """PIL ``ImageEnhance.Color(1 + m * sign)``: blend with the grey-level image."""
    return _blend(_levels(_gray(x)).expand_as(x), x, 1 + m * sign)


def sharpness(x: torch.Tensor, m: float, sign: torch.Tensor) -> torch.Tensor:
    """PIL ``ImageEnhance.Sharpness(1 + m * sign)``: blend with the SMOOTH-filtered image (3x3 kernel,
    centre 5, others 1, /13; borders kept)."""
    k = torch.ones(3, 3, dtype=x.dtype, device=x.device)
    k[1, 1] = 5.0
    k = (k / k.sum()).expand(x.shape[1], 1, 3, 3)
    smooth = x.clone()
    smooth[..., 1:-1, 1:-1] = _levels(F.conv2d(x, k, groups=x.shape[1]))
    return _blend(smooth, x, 1 + m * sign)


def posterize(x: torch.Tensor, bits: float, sign: torch.Tensor) -> torch.Tensor:
    """PIL ``ImageOps.posterize(bits)``: keep the ``bits`` highest bits of every 8-bit value."""
    shift = 8 - int(bits)
    q = x.mul(255).round().to(torch.int32)
    return ((q >> shift) << shift).to(x.dtype) / 255.0


def solarize(x: torch.Tensor, threshold: float, sign: torch.Tensor) -> torch.Tensor:
    """PIL ``ImageOps.solarize(threshold)``: invert every 8-bit value ``>= threshold``."""
    q = x.mul(255).round()
    return torch.where(q >= threshold, 255 - q, q) / 255.0


def invert(x: torch.Tensor, m: float, sign: torch.Tensor) -> torch.Tensor:
    """PIL ``ImageOps.invert``."""
    return 1.0 - x


def autocontrast(x: torch.Tensor, m: float, sign: torch.Tensor) -> torch.Tensor:
    """PIL ``ImageOps.autocontrast``: per channel, level ``v`` maps to ``int((v - lo) * 255 / (hi - lo))``
    (``lo``/``hi`` the lowest/highest level present); a constant channel is kept."""
    q = x.mul(255).round()
    lo = q.amin(dim=(2, 3), keepdim=True)
    hi = q.amax(dim=(2, 3), keepdim=True)
    span = hi - lo
    scale = 255.0 / span.clamp_min(1)
    stretched = (q * scale - lo * scale).add(1e-3).floor().clamp(0, 255)
    return torch.where(span > 0, stretched, q) / 255.0


def equalize(x: torch.Tensor, m: float, sign: torch.Tensor) -> torch.Tensor:
    """PIL ``ImageOps.equalize`` per image and channel: with ``step = (pixels - count of the highest level
    present) // 255``, level ``i`` maps to ``(step // 2 + pixels below i) // step``; a channel with one level,
    or ``step = 0``, is left unchanged."""
    n, c, h, w = x.shape
    q = x.mul(255).round().long().reshape(n * c, h * w)
    hist = torch.zeros(n * c, 256, dtype=torch.long, device=x.device).scatter_add_(1, q, torch.ones_like(q))
    top = 255 - (hist.flip(1) > 0).long().argmax(dim=1)  # highest level present
    step = (h * w - hist.gather(1, top[:, None])) // 255
    below = hist.cumsum(dim=1) - hist
    lut = (step // 2 + below) // step.clamp_min(1)
    keep = (step == 0) | ((hist > 0).sum(dim=1, keepdim=True) <= 1)
    out = torch.where(keep, q, lut.clamp(max=255).gather(1, q))
    return out.view(n, c, h, w).to(x.dtype) / 255.0


OPS: dict[str, Op] = {
    "shear_x": shear_x, "shear_y": shear_y, "translate_x": translate_x, "translate_y": translate_y,
    "rotate": rotate, "color": color, "posterize": posterize, "solarize": solarize, "contrast": contrast,
    "sharpness": sharpness, "brightness": brightness, "autocontrast": autocontrast, "equalize": equalize,
    "invert": invert,
}
SIGNED = frozenset({"shear_x", "shear_y", "translate_x", "translate_y", "color", "contrast", "sharpness",
                    "brightness"})


def _linspace(start: float, stop: float) -> tuple[float, ...]:
    return tuple(start + (stop - start) * i / 9 for i in range(10))


_ENHANCE = _linspace(0.0, 0.5)  # the factor is 1 +- m
#: ATSPrivacy's magnitude ranges (10 values per operation, indexed by a sub-policy's magnitude index).
#: Shears are slopes, translations fractions of the side (150/331 of it at most), rotations degrees,
#: posterize the bits kept, solarize the 8-bit threshold; enhancement operations use the factor ``1 +- m``.
ATS_RANGES: dict[str, tuple[float, ...]] = {
    "shear_x": _linspace(0.0, 0.3), "shear_y": _linspace(0.0, 0.3),
    "translate_x": _linspace(0.0, 150 / 331), "translate_y": _linspace(0.0, 150 / 331),
    "rotate": _linspace(0.0, 30.0), "color": _ENHANCE, "contrast": _ENHANCE, "sharpness": _ENHANCE,
    "brightness": _ENHANCE, "posterize": tuple(float(round(v)) for v in _linspace(8.0, 4.0)),
    "solarize": _linspace(256.0, 0.0), "autocontrast": (0.0,) * 10, "equalize": (0.0,) * 10,
    "invert": (0.0,) * 10,
}


@dataclass(frozen=True)
class SubPolicy:
    """One of ATSPrivacy's sub-policies: an operation, its (unused) probability and a magnitude index."""

    op: str
    probability: float
    magnitude_index: int

    @property
    def magnitude(self) -> float:
        return ATS_RANGES[self.op][self.magnitude_index]


_TABLE = """
invert .1 7      contrast .2 6     rotate .7 2       translate_x .3 9  sharpness .8 1
sharpness .9 3   shear_y .5 2      translate_y .7 2  autocontrast .5 5 equalize .9 2
shear_y .2 5     posterize .3 5    color .4 3        brightness .6 5   sharpness .3 9
brightness .7 9  equalize .6 5     equalize .5 1     contrast .6 7     sharpness .6 5
color .7 5       translate_x .5 5  equalize .3 7     autocontrast .4 8 translate_y .4 3
sharpness .2 6   brightness .9 6   color .2 8        solarize .5 0     invert 0 0
equalize .2 0    autocontrast .6 0 equalize .2 8     equalize .6 4     color .9 5
equalize .6 5    autocontrast .8 4 solarize .2 4     brightness .1 3   color .7 0
solarize .4 1    autocontrast .9 0 translate_y .9 3  translate_y .7 3  autocontrast .9 1
solarize .8 1    equalize .8 5     invert .1 0       translate_y .7 3  autocontrast .9 1
"""
_WORDS = _TABLE.split()
#: ATSPrivacy's published list of 50 sub-policies (its ``policy.py``), five per line above in index order:
#: ``ats:3-1-7`` is translate_x 9, contrast 6, translate_y 2.
ATS_POLICIES: tuple[SubPolicy, ...] = tuple(
    SubPolicy(_WORDS[i], float(_WORDS[i + 1]), int(_WORDS[i + 2])) for i in range(0, len(_WORDS), 3))

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


def apply_subpolicy(x: torch.Tensor, sub: SubPolicy, generator: torch.Generator) -> torch.Tensor:
    """Apply one sub-policy to every image (a random sign per image for a signed operation)."""
    n = x.shape[0]
    sign = torch.ones(n)
    if sub.op in SIGNED:
        sign = torch.randint(0, 2, (n,), generator=generator).float() * 2 - 1
    return _levels(OPS[sub.op](x, sub.magnitude, sign))


def apply_policy(x: torch.Tensor, policy: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """Apply the sub-policies ``ATS_POLICIES[i]`` for ``i`` in ``policy``, in order (no crop/flip here)."""
    for i in policy:
        x = apply_subpolicy(x, ATS_POLICIES[i], generator)
    return x


@dataclass(frozen=True)
class Augmentation:
    """A parsed augmentation spec; call it on a float NCHW batch with a CPU generator."""

    spec: str
    kind: str
    policies: tuple[tuple[int, ...], ...] = ()

    @property
    def label(self) -> str:
        """The spec as a set-name part: ``none``, ``crop``, ``ats-3-1-7``, ``ats-3-1-7+43-18-18``."""
        return self.spec.replace(":", "-")

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if self.kind == "none":
            return x
        x = random_crop_flip(x, generator)
        if self.kind == "crop":
            return x
        if len(self.policies) == 1:
            return apply_policy(x, self.policies[0], generator)
        choice = torch.randint(0, len(self.policies), (x.shape[0],), generator=generator).to(x.device)
        out = x.clone()
        for i, policy in enumerate(self.policies):
            mask = choice == i
            if bool(mask.any()):
                out[mask] = apply_policy(x[mask], policy, generator)
        return out


def parse_augment(spec: str | None) -> Augmentation:
    """Parse ``none``, ``crop`` or ``ats:<i>-<j>-<k>[+...]`` (indices into :data:`ATS_POLICIES`).

    ``ats-3-1-7`` (the set-name spelling) is accepted too.
    """
    text = (spec or "none").strip().lower()
    if text in ("none", "crop"):
        return Augmentation(text, text)
    if text.startswith(("ats:", "ats-")):
        parts = text[4:].split("+")
        if not all(_POLICY.match(p) for p in parts):
            raise SemsimError(f"augmentation '{spec}': write policies as ats:3-1-7 or ats:3-1-7+43-18-18")
        policies = tuple(tuple(int(i) for i in p.split("-")) for p in parts)
        bad = [i for p in policies for i in p if i >= len(ATS_POLICIES)]
        if bad:
            raise SemsimError(f"augmentation '{spec}': sub-policy index {bad[0]} out of range; "
                              f"ATSPrivacy's indices go from 0 to {len(ATS_POLICIES) - 1}")
        return Augmentation("ats:" + "+".join(parts), "ats", policies)
    raise SemsimError(f"augmentation '{spec}': unknown; use none, crop or ats:<i>-<j>-<k> (e.g. ats:3-1-7)")
