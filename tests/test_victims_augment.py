"""Training augmentations: crop+flip, the ATS-style transform pool (against PIL), policy parsing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageEnhance, ImageOps

from semsim.errors import SemsimError
from semsim.victims.augment import OPS, TRANSFORMS, apply_policy, parse_augment, random_crop_flip


def _batch(n: int = 4, size: int = 16, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), generator=g).float() / 255


def _pil(x: torch.Tensor) -> Image.Image:
    return Image.fromarray(x.mul(255).round().byte().permute(1, 2, 0).numpy())


def _from_pil(img: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255).permute(2, 0, 1)


def test_crop_flip_is_a_shifted_window_of_the_padded_image() -> None:
    x = _batch(6)
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
    again = random_crop_flip(x, torch.Generator().manual_seed(1))
    assert torch.equal(out, again)


def test_pool_has_fifty_known_operations() -> None:
    assert len(TRANSFORMS) == 50 and all(op in OPS for op, _ in TRANSFORMS)


@pytest.mark.parametrize(("op", "magnitude", "pil", "tol"), [
    ("invert", 0.0, ImageOps.invert, 0.0),
    ("posterize", 4, lambda im: ImageOps.posterize(im, 4), 0.0),
    ("solarize", 0.5, lambda im: ImageOps.solarize(im, 128), 0.0),
    ("autocontrast", 0.0, ImageOps.autocontrast, 1.01 / 255),
    ("brightness", 1.5, lambda im: ImageEnhance.Brightness(im).enhance(1.5), 1.01 / 255),
    ("color", 0.2, lambda im: ImageEnhance.Color(im).enhance(0.2), 2.01 / 255),
    ("contrast", 1.6, lambda im: ImageEnhance.Contrast(im).enhance(1.6), 3.01 / 255),
    ("sharpness", 1.9, lambda im: ImageEnhance.Sharpness(im).enhance(1.9), 2.01 / 255),
    ("grayscale", 0.0, lambda im: im.convert("L").convert("RGB"), 1.01 / 255),
])
def test_colour_operations_match_pil(op: str, magnitude: float, pil, tol: float) -> None:
    x = _batch(3)
    out = OPS[op](x, magnitude)
    for i in range(len(x)):
        ref = _from_pil(pil(_pil(x[i])))
        assert (out[i] - ref).abs().max().item() <= tol + 1e-6, op


def test_geometric_operations() -> None:
    x = _batch(2)
    shifted = OPS["translate_x"](x, 0.25)  # a quarter of 16 px: an exact 4-pixel shift to the right
    assert torch.allclose(shifted[..., 4:], x[..., :-4], atol=1e-5)
    assert torch.allclose(shifted[..., :4], torch.full_like(shifted[..., :4], 0.5))  # grey fill
    down = OPS["translate_y"](x, 0.25)
    assert torch.allclose(down[..., 4:, :], x[..., :-4, :], atol=1e-5)
    rot = OPS["rotate"](x, 90.0)
    assert torch.allclose(rot, torch.rot90(x, 1, dims=(2, 3)), atol=1e-5) or torch.allclose(
        rot, torch.rot90(x, -1, dims=(2, 3)), atol=1e-5)
    assert torch.allclose(OPS["rotate"](x, 0.0), x, atol=1e-5)
    assert torch.allclose(OPS["shear_x"](x, 0.0), x, atol=1e-5)
    assert not torch.allclose(OPS["shear_x"](x, 0.3), x, atol=1e-2)
    assert torch.equal(OPS["hflip"](x, 0), x.flip(-1))


def test_equalize_flattens_the_histogram() -> None:
    x = (_batch(2) * 0.3 + 0.2)  # a narrow range of grey levels
    out = OPS["equalize"](x, 0)
    assert out.min() == 0.0 and out.max() == 1.0
    # monotone remapping: the order of pixel values within a channel is preserved
    a, b = x[0, 0].flatten(), out[0, 0].flatten()
    order = a.argsort()
    assert bool((b[order].diff() >= 0).all())
    flat = torch.full((1, 3, 4, 4), 0.4)
    assert torch.equal(OPS["equalize"](flat, 0), flat)


def test_ats_policies_apply_in_order_and_hybrids_pick_one() -> None:
    aug = parse_augment("ats:3-1-7")
    assert aug.kind == "ats" and aug.policies == ((3, 1, 7),)
    x = _batch(8)
    expected = OPS["autocontrast"](OPS["contrast"](OPS["translate_x"](x, 0.3), 1.6), 0)
    assert torch.allclose(aug(x, torch.Generator()), expected)
    hybrid = parse_augment("ats:3-1-7+43-18-18")
    out = hybrid(x, torch.Generator().manual_seed(0))
    a, b = apply_policy(x, (3, 1, 7)), apply_policy(x, (43, 18, 18))
    which = [torch.allclose(out[i], a[i]) for i in range(8)]
    assert all(which[i] or torch.allclose(out[i], b[i]) for i in range(8))
    assert any(which) and not all(which)


@pytest.mark.parametrize("spec", ["rotate", "ats:", "ats:3-x", "ats:3-50", "ats:1--2"])
def test_bad_augmentation_specs(spec: str) -> None:
    with pytest.raises(SemsimError, match="augmentation"):
        parse_augment(spec)
