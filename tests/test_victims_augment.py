"""Training augmentations: crop+flip, and ATSPrivacy's 50 sub-policies checked against the published list and
against PIL running ATSPrivacy's operations, on real CIFAR-10 images."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageEnhance, ImageOps

from helpers import shared_path
from semsim.errors import SemsimError
from semsim.victims.augment import (
    ATS_POLICIES,
    ATS_RANGES,
    OPS,
    SIGNED,
    apply_policy,
    apply_subpolicy,
    parse_augment,
    random_crop_flip,
)

# ATSPrivacy's policy.py, as published (Gao et al., CVPR 2021): (probability, operation, magnitude index).
PUBLISHED = [
    (0.1, "invert", 7), (0.2, "contrast", 6), (0.7, "rotate", 2), (0.3, "translateX", 9),
    (0.8, "sharpness", 1), (0.9, "sharpness", 3), (0.5, "shearY", 2), (0.7, "translateY", 2),
    (0.5, "autocontrast", 5), (0.9, "equalize", 2), (0.2, "shearY", 5), (0.3, "posterize", 5),
    (0.4, "color", 3), (0.6, "brightness", 5), (0.3, "sharpness", 9), (0.7, "brightness", 9),
    (0.6, "equalize", 5), (0.5, "equalize", 1), (0.6, "contrast", 7), (0.6, "sharpness", 5),
    (0.7, "color", 5), (0.5, "translateX", 5), (0.3, "equalize", 7), (0.4, "autocontrast", 8),
    (0.4, "translateY", 3), (0.2, "sharpness", 6), (0.9, "brightness", 6), (0.2, "color", 8),
    (0.5, "solarize", 0), (0.0, "invert", 0), (0.2, "equalize", 0), (0.6, "autocontrast", 0),
    (0.2, "equalize", 8), (0.6, "equalize", 4), (0.9, "color", 5), (0.6, "equalize", 5),
    (0.8, "autocontrast", 4), (0.2, "solarize", 4), (0.1, "brightness", 3), (0.7, "color", 0),
    (0.4, "solarize", 1), (0.9, "autocontrast", 0), (0.9, "translateY", 3), (0.7, "translateY", 3),
    (0.9, "autocontrast", 1), (0.8, "solarize", 1), (0.8, "equalize", 5), (0.1, "invert", 0),
    (0.7, "translateY", 3), (0.9, "autocontrast", 1),
]
OUR_NAME = {"shearX": "shear_x", "shearY": "shear_y", "translateX": "translate_x", "translateY": "translate_y"}
# ATSPrivacy's autoaugment.py ranges, recomputed with numpy.
RANGES = {
    "shearX": np.linspace(0, 0.3, 10), "shearY": np.linspace(0, 0.3, 10),
    "translateX": np.linspace(0, 150 / 331, 10), "translateY": np.linspace(0, 150 / 331, 10),
    "rotate": np.linspace(0, 30, 10), "color": np.linspace(0.0, 0.5, 10),
    "posterize": np.round(np.linspace(8, 4, 10), 0).astype(int), "solarize": np.linspace(256, 0, 10),
    "contrast": np.linspace(0.0, 0.5, 10), "sharpness": np.linspace(0.0, 0.5, 10),
    "brightness": np.linspace(0.0, 0.5, 10), "autocontrast": [0] * 10, "equalize": [0] * 10, "invert": [0] * 10,
}


def _rotate_with_fill(img: Image.Image, degrees: float) -> Image.Image:
    rot = img.convert("RGBA").rotate(degrees)
    return Image.composite(rot, Image.new("RGBA", rot.size, (128,) * 4), rot).convert(img.mode)


# ATSPrivacy's operations on PIL images, with the sign made explicit (its code draws random.choice([-1, 1])).
PIL_OPS = {
    "shear_x": lambda im, m, s: im.transform(im.size, Image.AFFINE, (1, m * s, 0, 0, 1, 0), Image.BICUBIC,
                                             fillcolor=(0, 0, 0)),
    "shear_y": lambda im, m, s: im.transform(im.size, Image.AFFINE, (1, 0, 0, m * s, 1, 0), Image.BICUBIC,
                                             fillcolor=(0, 0, 0)),
    "translate_x": lambda im, m, s: im.transform(im.size, Image.AFFINE, (1, 0, m * im.size[0] * s, 0, 1, 0),
                                                 fillcolor=(0, 0, 0)),
    "translate_y": lambda im, m, s: im.transform(im.size, Image.AFFINE, (1, 0, 0, 0, 1, m * im.size[1] * s),
                                                 fillcolor=(0, 0, 0)),
    "rotate": lambda im, m, s: _rotate_with_fill(im, m),
    "color": lambda im, m, s: ImageEnhance.Color(im).enhance(1 + m * s),
    "posterize": lambda im, m, s: ImageOps.posterize(im, int(m)),
    "solarize": lambda im, m, s: ImageOps.solarize(im, m),
    "contrast": lambda im, m, s: ImageEnhance.Contrast(im).enhance(1 + m * s),
    "sharpness": lambda im, m, s: ImageEnhance.Sharpness(im).enhance(1 + m * s),
    "brightness": lambda im, m, s: ImageEnhance.Brightness(im).enhance(1 + m * s),
    "autocontrast": lambda im, m, s: ImageOps.autocontrast(im),
    "equalize": lambda im, m, s: ImageOps.equalize(im),
    "invert": lambda im, m, s: ImageOps.invert(im),
}


@pytest.fixture(scope="module")
def cifar() -> np.ndarray:
    """8 real CIFAR-10 test images, uint8 HWC."""
    root = shared_path("cifar10_test")
    files = sorted(root.glob("*/*.jpg"))[::1250][:8]
    return np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])


def _tensor(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255


def test_the_fifty_sub_policies_are_atsprivacys() -> None:
    assert len(ATS_POLICIES) == len(PUBLISHED) == 50
    for i, (sub, (p, op, mag)) in enumerate(zip(ATS_POLICIES, PUBLISHED, strict=True)):
        assert (sub.op, sub.probability, sub.magnitude_index) == (OUR_NAME.get(op, op), p, mag), i
        assert sub.magnitude == pytest.approx(float(RANGES[op][mag]), abs=1e-12), i
    for op, values in RANGES.items():
        assert np.allclose(ATS_RANGES[OUR_NAME.get(op, op)], values, atol=1e-12), op
    # the SemSim study's policies, read off the paper's table
    assert ATS_POLICIES[3].op == "translate_x" and ATS_POLICIES[3].magnitude == pytest.approx(0.453, abs=5e-4)
    assert ATS_POLICIES[1].op == "contrast" and ATS_POLICIES[1].magnitude == pytest.approx(1 / 3, abs=1e-9)
    assert (ATS_POLICIES[7].op, ATS_POLICIES[7].magnitude_index) == ("translate_y", 2)
    assert (ATS_POLICIES[43].op, ATS_POLICIES[43].magnitude_index) == ("translate_y", 3)
    assert (ATS_POLICIES[18].op, ATS_POLICIES[18].magnitude_index) == ("contrast", 7)


@pytest.mark.parametrize("index", range(50))
def test_every_sub_policy_matches_pil_with_either_sign(cifar: np.ndarray, index: int) -> None:
    sub = ATS_POLICIES[index]
    x = _tensor(cifar)
    for s in (1.0, -1.0):
        ours = OPS[sub.op](x, sub.magnitude, torch.full((len(x),), s)).clamp(0, 1).mul(255).round()
        ref = np.stack([np.asarray(PIL_OPS[sub.op](Image.fromarray(im), sub.magnitude, s)) for im in cifar])
        diff = (ours - torch.from_numpy(ref).permute(0, 3, 1, 2).float()).abs()
        assert diff.max() <= 1 and diff.mean() < 0.05, (index, sub, s)  # one grey level, rarely


def test_translation_fills_black_and_shifts_by_the_published_fraction() -> None:
    white = torch.ones(2, 3, 32, 32)
    out = apply_subpolicy(white, ATS_POLICIES[3], torch.Generator().manual_seed(0))  # translateX, 9
    cols = int(np.floor(150 / 331 * 32 + 0.5))  # 15 of 32 columns are shifted in from outside
    black = (out == 0).all(dim=(1, 2))  # (N, W): columns that are entirely black
    assert (black.sum(dim=1) == cols).all() and torch.equal(out[(out != 0)], torch.ones(int((out != 0).sum())))


def test_signs_are_drawn_per_image(cifar: np.ndarray) -> None:
    x = _tensor(cifar[:1]).expand(32, -1, -1, -1).contiguous()
    sub = ATS_POLICIES[7]  # translateY, 2: up or down by the same amount
    out = apply_subpolicy(x, sub, torch.Generator().manual_seed(0)).mul(255).round()
    refs = [torch.from_numpy(np.array(PIL_OPS[sub.op](Image.fromarray(cifar[0]), sub.magnitude, s))
                             ).permute(2, 0, 1).float() for s in (1, -1)]
    which = [next(k for k, r in enumerate(refs) if torch.equal(o, r)) for o in out]
    assert 0 < sum(which) < 32  # both signs occur
    assert {"translate_y", "contrast", "shear_x"} <= SIGNED and "rotate" not in SIGNED


def test_policies_run_after_crop_and_flip_in_order(cifar: np.ndarray) -> None:
    x = _tensor(cifar)
    aug = parse_augment("ats:3-1-7")
    assert aug.kind == "ats" and aug.policies == ((3, 1, 7),) and aug.label == "ats-3-1-7"
    out = aug(x, torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(5)
    expected = random_crop_flip(x, g)
    for i in (3, 1, 7):
        expected = apply_subpolicy(expected, ATS_POLICIES[i], g)
    assert torch.equal(out, expected)
    assert not torch.equal(out, apply_policy(x, (3, 1, 7), torch.Generator().manual_seed(5)))
    hybrid = parse_augment("ats:3-1-7+43-18-18")
    out = hybrid(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and parse_augment("ats-3-1-7+43-18-18") == hybrid


def test_hybrids_give_each_image_one_of_the_policies() -> None:
    x = torch.randint(0, 256, (64, 3, 8, 8), generator=torch.Generator().manual_seed(0)).float() / 255
    out = parse_augment("ats:29+28")(x, torch.Generator().manual_seed(0))  # invert, or solarize at 256 (no-op)
    cropped = random_crop_flip(x, torch.Generator().manual_seed(0))  # the crop is drawn first
    inverted = [bool(torch.allclose(o, 1 - c, atol=1e-6)) for o, c in zip(out, cropped, strict=True)]
    kept = [bool(torch.equal(o, c)) for o, c in zip(out, cropped, strict=True)]
    assert all(a != b for a, b in zip(inverted, kept, strict=True)) and 10 < sum(inverted) < 54


def test_crop_flip_is_a_shifted_window_of_the_padded_image() -> None:
    x = torch.randint(0, 256, (6, 3, 16, 16), generator=torch.Generator().manual_seed(0)).float() / 255
    out = random_crop_flip(x, torch.Generator().manual_seed(1))
    assert out.shape == x.shape
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    flips = 0
    for i in range(len(x)):
        windows = [(oy, ox, padded[i, :, oy:oy + 16, ox:ox + 16]) for oy in range(9) for ox in range(9)]
        matches = [(oy, ox, f) for oy, ox, w in windows for f in (False, True)
                   if torch.equal(out[i], w.flip(-1) if f else w)]
        assert len(matches) == 1
        flips += matches[0][2]
    assert 0 < flips < 6  # both outcomes occur for this seed
    assert torch.equal(out, random_crop_flip(x, torch.Generator().manual_seed(1)))


@pytest.mark.parametrize("spec", ["rotate", "ats:", "ats:3-x", "ats:3-50", "ats:1--2"])
def test_bad_augmentation_specs(spec: str) -> None:
    with pytest.raises(SemsimError, match="augmentation"):
        parse_augment(spec)
