"""LPIPS: weight loading in torchvision format, and the formula of Zhang et al. (2018) computed independently.

Tests run offline (the ImageNet backbones cannot be downloaded here), so each test saves a randomly initialised
backbone under the torchvision file name in a temporary folder; the linear heads are the real LPIPS v0.1 files
(shared data). Fetching on first use is tested in tests/test_weights_download.py.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from helpers import shared_path
from semsim.data.images import load_images
from semsim.metrics import MetricUnavailable, create, metric_info
from semsim.metrics.lpips import BACKBONE_FILES, LPIPS, lpips
from semsim.metrics.scoring import build_metrics
from semsim.models.backbones import lpips_backbone


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory) -> Path:
    """A $SEMSIM_WEIGHTS_DIR with random torchvision-format backbones and links to the real linear heads."""
    folder = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    for net, names in BACKBONE_FILES.items():
        state = {f"features.{k}": v for k, v in lpips_backbone(net).features.state_dict().items()}
        state["classifier.1.weight"] = torch.zeros(4, 4)  # torchvision files carry the classifier too
        torch.save(state, folder / names[0])
        (folder / "lpips" / "v0.1").mkdir(parents=True, exist_ok=True)
        os.symlink(
            shared_path("lpips_linear_weights", "v0.1", f"{net}.pth"),
            folder / "lpips" / "v0.1" / f"{net}.pth",
        )
    return folder


@pytest.fixture(scope="module")
def pairs() -> tuple[torch.Tensor, torch.Tensor]:
    ex = shared_path("cifar100_examples")
    files = sorted(shared_path("cifar10_test").glob("*/*.jpg"))
    x = torch.cat([load_images([ex / "10_0_ori.png", ex / "1_49_ori.png"]), load_images(files[:3])])
    y = torch.cat([load_images([ex / "10_0_rec.png", ex / "1_49_rec.png"]), load_images(files[3000:3003])])
    return x, y


def _reference_features(net: str, state: dict[str, torch.Tensor], x: torch.Tensor) -> list[torch.Tensor]:
    """The layers LPIPS taps, written out with torch.nn.functional straight from the state dict."""

    def conv(h, i, **kw):
        return F.relu(F.conv2d(h, state[f"features.{i}.weight"], state[f"features.{i}.bias"], **kw))

    def fire(h, i):
        s = conv(h, f"{i}.squeeze")
        return torch.cat([conv(s, f"{i}.expand1x1"), conv(s, f"{i}.expand3x3", padding=1)], 1)

    taps = []
    if net == "alex":
        h = conv(x, 0, stride=4, padding=2)
        taps.append(h)
        h = conv(F.max_pool2d(h, 3, 2), 3, padding=2)
        taps.append(h)
        h = conv(F.max_pool2d(h, 3, 2), 6, padding=1)
        taps.append(h)
        h = conv(h, 8, padding=1)
        taps.append(h)
        taps.append(conv(h, 10, padding=1))
    elif net == "vgg":
        h, i = x, 0
        for block in (2, 2, 3, 3, 3):
            for _ in range(block):
                h = conv(h, i, padding=1)
                i += 2
            taps.append(h)
            h = F.max_pool2d(h, 2, 2)
            i += 1
    else:
        h = conv(x, 0, stride=2)
        taps.append(h)
        h = fire(fire(F.max_pool2d(h, 3, 2, ceil_mode=True), 3), 4)
        taps.append(h)
        h = fire(fire(F.max_pool2d(h, 3, 2, ceil_mode=True), 6), 7)
        taps.append(h)
        h = fire(F.max_pool2d(h, 3, 2, ceil_mode=True), 9)
        taps.append(h)
        for i in (10, 11, 12):
            h = fire(h, i)
            taps.append(h)
    return taps


def _reference_lpips(net: str, folder: Path, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Zhang et al. 2018, Eq. 1: unit-normalise channels, squared difference, 1x1 linear weights, spatial
    mean, sum over layers; inputs mapped to [-1, 1] and scaled as in the reference code."""
    state = torch.load(folder / BACKBONE_FILES[net][0], weights_only=True)
    heads = torch.load(folder / "lpips" / "v0.1" / f"{net}.pth", weights_only=True, map_location="cpu")
    shift = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)
    fx = _reference_features(net, state, ((2 * x - 1) - shift) / scale)
    fy = _reference_features(net, state, ((2 * y - 1) - shift) / scale)
    total = torch.zeros(len(x), dtype=torch.float64)
    for k, (a, b) in enumerate(zip(fx, fy, strict=True)):
        a, b = a.double(), b.double()
        a = a / (a.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        b = b / (b.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        w = heads[f"lin{k}.model.1.weight"].double().view(1, -1, 1, 1)
        total += ((a - b).pow(2) * w).sum(1).mean((1, 2))
    return total


@pytest.mark.parametrize("net", ["alex", "vgg", "squeeze"])
def test_lpips_equals_the_formula(net, weights_dir, pairs, monkeypatch):
    monkeypatch.setenv("SEMSIM_WEIGHTS_DIR", str(weights_dir))
    x, y = pairs
    metric = create(f"lpips_{net}")
    ours = metric(x, y)
    ref = _reference_lpips(net, weights_dir, x, y)
    assert ours.shape == (len(x),)
    assert torch.allclose(ours.double(), ref, rtol=1e-4, atol=1e-6), (ours, ref)
    assert float(ref.min()) > 0
    assert torch.allclose(metric(x, x.clone()), torch.zeros(len(x)), atol=1e-6)
    assert metric_info(f"lpips_{net}").higher_is_more_leakage is False


def test_functional_form_and_explicit_paths(weights_dir, pairs):
    x, y = pairs
    backbone = weights_dir / BACKBONE_FILES["alex"][0]
    heads = weights_dir / "lpips" / "v0.1" / "alex.pth"
    by_class = LPIPS("alex", weights=backbone, lin_weights=heads)(x, y)
    assert torch.allclose(lpips(x, y, "alex", weights=backbone, lin_weights=heads), by_class)
    assert torch.allclose(
        lpips(x * 255, y * 255, "alex", data_range=255, weights=backbone, lin_weights=heads),
        by_class,
        atol=1e-5,
    )
    with pytest.raises(ValueError, match="data_range"):
        by_class = LPIPS("alex", weights=backbone, lin_weights=heads)(x * 255, y * 255)


def test_missing_weights_say_which_file_goes_where(tmp_path, monkeypatch):
    monkeypatch.setenv("SEMSIM_WEIGHTS_DIR", str(tmp_path))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(
        MetricUnavailable,
        match=f"put alexnet-owt-7be5be79.pth in {tmp_path} or {tmp_path / 'torch' / 'hub' / 'checkpoints'}",
    ):
        create("lpips_alex")
    metrics, notes = build_metrics(["psnr", "lpips_vgg"])
    assert list(metrics) == ["psnr"]
    assert notes[0].startswith("lpips_vgg skipped: ") and "vgg16-397923af.pth" in notes[0]


def test_torch_hub_cache_is_searched(weights_dir, tmp_path, monkeypatch, pairs):
    monkeypatch.delenv("SEMSIM_WEIGHTS_DIR", raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    hub = tmp_path / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    os.symlink(weights_dir / BACKBONE_FILES["squeeze"][0], hub / BACKBONE_FILES["squeeze"][0])
    with pytest.raises(MetricUnavailable, match="lpips/v0.1/squeeze.pth"):  # backbone found, heads not yet
        create("lpips_squeeze")
    os.symlink(weights_dir / "lpips", hub / "lpips")
    x, y = pairs
    assert create("lpips_squeeze")(x, y).shape == (len(x),)


def test_wrong_or_unsafe_files_are_refused(weights_dir, tmp_path, pairs):
    heads = weights_dir / "lpips" / "v0.1" / "alex.pth"
    vgg_as_alex = tmp_path / "alexnet-owt-7be5be79.pth"
    os.symlink(weights_dir / BACKBONE_FILES["vgg"][0], vgg_as_alex)
    with pytest.raises(MetricUnavailable, match="does not match"):
        LPIPS("alex", weights=vgg_as_alex, lin_weights=heads)
    pickled = tmp_path / "evil.pth"
    torch.save({"features.0.weight": torch.zeros(1), "payload": Path("/tmp")}, pickled)
    with pytest.raises(MetricUnavailable, match="cannot be read as a weight file"):
        LPIPS("alex", weights=pickled, lin_weights=heads)
    with pytest.raises(MetricUnavailable, match="no such weight file"):
        LPIPS("alex", weights=tmp_path / "absent.pth", lin_weights=heads)


def test_safetensors_and_folder_paths(weights_dir, tmp_path, pairs):
    from safetensors.torch import save_file

    x, y = pairs
    state = torch.load(weights_dir / BACKBONE_FILES["alex"][0], weights_only=True)
    save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "alexnet.safetensors")
    heads = weights_dir / "lpips" / "v0.1" / "alex.pth"
    from_safetensors = LPIPS("alex", weights=tmp_path / "alexnet.safetensors", lin_weights=heads)(x, y)
    from_folder = LPIPS("alex", weights=tmp_path, lin_weights=weights_dir)(x, y)  # folders are searched
    from_pth = LPIPS("alex", weights=weights_dir / BACKBONE_FILES["alex"][0], lin_weights=heads)(x, y)
    assert torch.equal(from_safetensors, from_pth) and torch.equal(from_folder, from_pth)


def test_unmapped_256_convention_matches_the_reference_code_pipeline(weights_dir, pairs):
    """The SemSim reference code: PIL Resize(256) + ToTensor() images in [0, 1], fed to LPIPS-squeeze without
    the [-1, 1] mapping. Reference written here: PIL resizing of the 8-bit images, then the formula."""
    from PIL import Image

    x, y = pairs[0][:3], pairs[1][:3]
    backbone = weights_dir / BACKBONE_FILES["squeeze"][0]
    heads = weights_dir / "lpips" / "v0.1" / "squeeze.pth"
    raw = LPIPS("squeeze", weights=backbone, lin_weights=heads, map_to_pm1=False, resize=256)
    ours = raw(x, y)

    def pil_resized(t: torch.Tensor) -> torch.Tensor:
        arrays = [(img.permute(1, 2, 0).numpy() * 255).round().astype("uint8") for img in t]
        resized = [torch.from_numpy(np.asarray(Image.fromarray(a).resize((256, 256), Image.BILINEAR)).copy())
                   for a in arrays]
        return torch.stack(resized).permute(0, 3, 1, 2).float() / 255

    state = torch.load(backbone, weights_only=True)
    lin = torch.load(heads, weights_only=True, map_location="cpu")
    shift = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)
    fx, fy = (_reference_features("squeeze", state, (pil_resized(t) - shift) / scale) for t in (x, y))
    ref = torch.zeros(len(x), dtype=torch.float64)
    for k, (a, b) in enumerate(zip(fx, fy, strict=True)):
        a, b = a.double(), b.double()
        a = a / (a.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        b = b / (b.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        ref += ((a - b).pow(2) * lin[f"lin{k}.model.1.weight"].double().view(1, -1, 1, 1)).sum(1).mean((1, 2))
    assert torch.allclose(ours.double(), ref, rtol=1e-2), (ours, ref)  # PIL rounds its resized pixels (0.2% here)
    registered = create("lpips_squeeze_raw256", weights=backbone, lin_weights=heads)
    assert not registered.map_to_pm1 and registered.resize == 256 and not metric_info("lpips_squeeze_raw256").default
    standard = LPIPS("squeeze", weights=backbone, lin_weights=heads)(x, y)
    assert float(((ours - standard).abs() / standard).max()) > 0.05  # a different convention, not a rounding
    assert torch.allclose(lpips(x, y, "squeeze", weights=backbone, lin_weights=heads, map_to_pm1=False,
                                resize=256), ours)
    plain = LPIPS("squeeze", weights=backbone, lin_weights=heads)
    grey, rgb = x[:, :1], x[:, :1].expand(-1, 3, -1, -1)  # a grey image is scored as its RGB repetition
    assert torch.allclose(plain(grey, y[:, :1]), plain(rgb, y[:, :1].expand(-1, 3, -1, -1)))
