"""MSE, PSNR, SSIM and MS-SSIM against scikit-image and an independent float64 scipy reference."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter
from skimage.metrics import mean_squared_error, peak_signal_noise_ratio, structural_similarity

from conftest import shared_path
from semsim.data.images import load_images
from semsim.metrics import column_direction, create, list_metrics, metric_info, ms_ssim, mse, psnr, ssim
from semsim.metrics.pixel import ms_ssim_min_size


def _cifar10(n: int, offset: int = 0) -> torch.Tensor:
    files = sorted(shared_path("cifar10_test").glob("*/*.jpg"))[offset : offset + n]
    return load_images(files)


@pytest.fixture(scope="module")
def real_pairs() -> tuple[torch.Tensor, torch.Tensor]:
    """Real CIFAR-100 reconstructions with their originals, plus CIFAR-10 test images paired with others."""
    ex = shared_path("cifar100_examples")
    ori = load_images([ex / "10_0_ori.png", ex / "1_49_ori.png"])
    rec = load_images([ex / "10_0_rec.png", ex / "1_49_rec.png"])
    a, b = _cifar10(24), _cifar10(24, offset=5000)
    noisy = (a + 0.05 * torch.randn(a.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    return torch.cat([ori, a, a]), torch.cat([rec, b, noisy])


def _hwc(t: torch.Tensor) -> np.ndarray:
    return t.permute(1, 2, 0).double().numpy()


def test_mse_psnr_ssim_match_scikit_image(real_pairs):
    x, y = real_pairs
    ours = {"mse": mse(x, y), "psnr": psnr(x, y), "ssim": ssim(x, y)}
    for i in range(len(x)):
        a, b = _hwc(x[i]), _hwc(y[i])
        ref = {
            "mse": mean_squared_error(a, b),
            "psnr": peak_signal_noise_ratio(a, b, data_range=1),
            "ssim": structural_similarity(
                a,
                b,
                gaussian_weights=True,
                sigma=1.5,
                use_sample_covariance=False,
                data_range=1,
                channel_axis=2,
            ),
        }
        for name, value in ref.items():
            assert abs(float(ours[name][i]) - value) < 1e-4, (name, i, float(ours[name][i]), value)
    # the real reconstructions are far from pixel-exact, as the SemSim paper reports
    assert float(ours["ssim"][:2].max()) < 0.5 and float(ours["ssim"][-24:].min()) > 0.3


def test_ssim_matches_scikit_image_with_other_data_range_and_size(real_pairs):
    x, y = real_pairs
    x64 = torch.nn.functional.interpolate(x[2:6], scale_factor=2, mode="bilinear").clamp(0, 1) * 255
    y64 = torch.nn.functional.interpolate(y[2:6], scale_factor=2, mode="bilinear").clamp(0, 1) * 255
    ours = ssim(x64, y64, data_range=255)
    for i in range(4):
        ref = structural_similarity(
            _hwc(x64[i]),
            _hwc(y64[i]),
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
            data_range=255,
            channel_axis=2,
        )
        assert abs(float(ours[i]) - ref) < 1e-4


def test_identical_images_score_perfectly(real_pairs):
    x = real_pairs[0][:4]
    assert torch.allclose(ssim(x, x.clone()), torch.ones(4), atol=1e-5)
    assert torch.equal(mse(x, x.clone()), torch.zeros(4))
    assert torch.isinf(psnr(x, x.clone())).all()


def _ssim_cs_reference(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """float64 SSIM and contrast-structure means by scipy's Gaussian filter, valid windows only (HWC)."""
    c1, c2 = 0.01**2, 0.03**2

    def filt(img: np.ndarray) -> np.ndarray:
        return np.stack([gaussian_filter(img[..., c], 1.5, truncate=3.5) for c in range(img.shape[-1])], -1)

    ma, mb = filt(a), filt(b)
    va, vb, cov = filt(a * a) - ma**2, filt(b * b) - mb**2, filt(a * b) - ma * mb
    cs = (2 * cov + c2) / (va + vb + c2)
    full = (2 * ma * mb + c1) / (ma**2 + mb**2 + c1) * cs
    crop = (slice(5, -5), slice(5, -5))
    return float(full[crop].mean()), float(cs[crop].mean())


def test_ms_ssim_matches_float64_reference_on_real_photos():
    files = sorted(shared_path("celeba_samples").glob("*.jpg"))[:4]
    x = load_images(files)  # 178x218 real faces, above the 176-pixel minimum
    y = torch.flip(x, dims=[0])
    ours = ms_ssim(x, y)
    betas = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
    for i in range(len(x)):
        a, b = _hwc(x[i]), _hwc(y[i])
        value = 1.0
        for j, beta in enumerate(betas):
            sim, cs = _ssim_cs_reference(a, b)
            value *= max(sim if j == len(betas) - 1 else cs, 0.0) ** beta
            h, w = a.shape[0] // 2 * 2, a.shape[1] // 2 * 2
            a = a[:h, :w].reshape(h // 2, 2, w // 2, 2, 3).mean((1, 3))
            b = b[:h, :w].reshape(h // 2, 2, w // 2, 2, 3).mean((1, 3))
        assert abs(float(ours[i]) - value) < 1e-4, (i, float(ours[i]), value)
    assert torch.allclose(ms_ssim(x, x.clone()), torch.ones(len(x)), atol=1e-5)


def test_ms_ssim_on_small_images_says_so(real_pairs):
    x, y = real_pairs
    assert ms_ssim_min_size() == 176
    with pytest.raises(ValueError, match="at least 176x176"):
        ms_ssim(x, y)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        values = create("ms_ssim")(x, y)
    assert torch.isnan(values).all() and len(values) == len(x)
    assert any("176x176" in str(w.message) and "32x32" in str(w.message) for w in caught)


def test_inputs_are_checked_loudly(real_pairs):
    x, y = real_pairs
    with pytest.raises(ValueError, match="data_range"):
        ssim(x * 255, y * 255)  # default data_range=1
    with pytest.raises(ValueError, match="differ in shape"):
        ssim(x[:2], y[:3])
    with pytest.raises(ValueError, match="float"):
        mse((x * 255).to(torch.uint8), (y * 255).to(torch.uint8))
    with pytest.raises(ValueError, match="NCHW"):
        psnr(x[0], y[0])
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim(x[:, :, :8, :8], y[:, :, :8, :8])


def test_registry_directions_and_class_forms(real_pairs):
    x, y = real_pairs
    names = {m.name for m in list_metrics()}
    assert {"mse", "psnr", "ssim", "ms_ssim"} <= names
    assert column_direction("psnr") is True and column_direction("ssim") is True
    assert column_direction("mse") is False and metric_info("ms_ssim").higher_is_more_leakage
    for name, fn in (("mse", mse), ("psnr", psnr), ("ssim", ssim)):
        assert torch.equal(create(name)(x, y), fn(x, y))


def test_batching_does_not_change_values(real_pairs):
    x, y = real_pairs
    whole = ssim(x, y)
    one_by_one = torch.cat([ssim(x[i : i + 1], y[i : i + 1]) for i in range(len(x))])
    assert torch.allclose(whole, one_by_one, atol=1e-6)
    assert not math.isclose(float(whole[0]), float(whole[1]))
