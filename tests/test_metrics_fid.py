"""FID against a float64 numpy/scipy computation (scipy.linalg.sqrtm) on the same features."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import scipy.linalg
import torch

from helpers import shared_path
from semsim.data.images import load_images
from semsim.metrics import MetricUnavailable, create, fid_from_features, metric_info
from semsim.metrics.fid import FID, INCEPTION_FILES, KID, frechet_distance, kid_from_features
from semsim.metrics.scoring import build_metrics, score_manifest
from semsim.models.backbones import InceptionV3Features


def reference_fid(f1: np.ndarray, f2: np.ndarray) -> float:
    """Heusel et al. 2017, computed as pytorch-fid does: float64 moments and scipy's matrix square root."""
    f1, f2 = f1.astype(np.float64), f2.astype(np.float64)
    mu1, mu2 = f1.mean(0), f2.mean(0)
    s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # singular covariances on few images
        covmean = scipy.linalg.sqrtm(s1 @ s2)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean).real)


def reference_fid_few_images(f1: np.ndarray, f2: np.ndarray) -> float:
    """The same with fewer images than dimensions, cheaply: tr((S1 S2)^(1/2)) = tr(sqrtm(M M^T)) for
    M = A1 A2^T, A_i the centred features / sqrt(n_i - 1) (S1 S2 and M M^T share their nonzero eigenvalues);
    scipy's matrix square root of the small n1 x n1 matrix instead of the 2048 x 2048 one."""
    f1, f2 = f1.astype(np.float64), f2.astype(np.float64)
    a1 = (f1 - f1.mean(0)) / np.sqrt(len(f1) - 1)
    a2 = (f2 - f2.mean(0)) / np.sqrt(len(f2) - 1)
    m = a1 @ a2.T
    trace_sqrt = np.trace(scipy.linalg.sqrtm(m @ m.T)).real
    diff = f1.mean(0) - f2.mean(0)
    return float(diff @ diff + (a1**2).sum() + (a2**2).sum() - 2 * trace_sqrt)


def test_fid_with_fewer_images_than_dimensions_equals_the_full_computation():
    rng = np.random.default_rng(0)
    f1, f2 = rng.normal(size=(40, 200)), 1.3 * rng.normal(size=(30, 200)) + 0.2
    full = reference_fid(f1, f2)
    assert fid_from_features(f1, f2) == pytest.approx(full, rel=1e-6)
    assert reference_fid_few_images(f1, f2) == pytest.approx(full, rel=1e-6)
    mu1, mu2, s1, s2 = f1.mean(0), f2.mean(0), np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(full, rel=1e-6)  # the moments API


def _cifar(n: int, offset: int) -> torch.Tensor:
    return load_images(sorted(shared_path("cifar10_test").glob("*/*.jpg"))[offset : offset + n])


class Projection(torch.nn.Module):
    """A small user-given feature extractor: 4x4 average pooling then a fixed random projection to 24-d."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(3 * 8 * 8, 24)
        torch.nn.init.normal_(self.proj.weight, generator=torch.Generator().manual_seed(0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.proj(torch.nn.functional.adaptive_avg_pool2d(x, 8).flatten(1)))


def test_fid_with_user_extractor_equals_scipy_on_real_images():
    x, y = _cifar(150, 0), _cifar(150, 5000)
    noisy = (x + 0.1 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1))).clamp(0, 1)
    extractor = Projection()
    metric = create("fid", feature_extractor=extractor, batch_size=64)
    with torch.no_grad():
        fx, fy, fn = extractor(x).numpy(), extractor(y).numpy(), extractor(noisy).numpy()
    for other, f_other in ((y, fy), (noisy, fn)):
        metric.reset()
        metric.update(x[:100], other[:100])
        metric.update(x[100:], other[100:])
        value = metric.compute()["fid"]
        ref = reference_fid(fx, f_other)
        assert value == pytest.approx(ref, rel=1e-3), (value, ref)
        assert fid_from_features(fx, f_other) == pytest.approx(ref, rel=1e-3)
    # noise keeps the images (and so their statistics) closer than unrelated images
    metric.reset()
    metric.update(x, noisy)
    close = metric.compute()["fid"]
    metric.reset()
    metric.update(x, y)
    assert close < metric.compute()["fid"]
    assert fid_from_features(fx, fx) == pytest.approx(0, abs=1e-6)


def test_fid_inception_loads_torchvision_format_and_matches_scipy(tmp_path, monkeypatch):
    torch.manual_seed(0)
    net = InceptionV3Features("fid").eval()
    for m in net.modules():  # keep activations from vanishing through 90 random layers
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(m.weight)
    state = {**net.state_dict(), "fc.weight": torch.zeros(1008, 2048), "fc.bias": torch.zeros(1008)}
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}  # as in the real file
    torch.save(state, tmp_path / INCEPTION_FILES[0])
    monkeypatch.setenv("SEMSIM_WEIGHTS_DIR", str(tmp_path))
    ex = shared_path("cifar100_examples")
    x = load_images([ex / "10_0_ori.png", ex / "1_49_ori.png"])
    y = load_images([ex / "10_0_rec.png", ex / "1_49_rec.png"])
    metric = create("fid")
    assert metric.extractor.variant == "fid"
    metric.update(x, y)
    with pytest.warns(UserWarning, match="biased"):
        value = metric.compute()["fid"]
    with torch.no_grad():  # the saved network itself, not the loaded copy
        fx, fy = net(torch.cat([x, y])).double().numpy().reshape(2, 2, 2048)
    assert fx.std() > 1e-3
    assert value == pytest.approx(reference_fid_few_images(fx, fy), rel=1e-3)
    assert value > 0


def test_fid_missing_weights_and_small_sets(tmp_path, monkeypatch):
    monkeypatch.setenv("SEMSIM_WEIGHTS_DIR", str(tmp_path))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(MetricUnavailable, match=f"put {INCEPTION_FILES[0]} in {tmp_path}"):
        create("fid")
    info = metric_info("fid")
    assert info.level == "set" and info.higher_is_more_leakage is False
    metric = FID(feature_extractor=Projection())
    with pytest.raises(ValueError, match="no images"):
        metric.compute()
    x = _cifar(1, 0)
    metric.update(x, x)
    with pytest.warns(UserWarning, match="at least 2 pairs"):
        assert np.isnan(metric.compute()["fid"])


def test_fid_in_score_manifest_caches_shared_originals(tmp_path):
    cats = sorted(shared_path("cifar10_test", "cat").glob("*.jpg"))[:40]
    dogs = sorted(shared_path("cifar10_test", "dog").glob("*.jpg"))[:40]
    rows = [
        {"set": s, "image_id": f.stem, "original": str(f), "reconstruction": str(r)}
        for s, recs in (("a", cats), ("b", dogs))
        for f, r in zip(cats, recs, strict=True)
    ]
    calls = []

    class Counting(Projection):
        def forward(self, x):
            calls.append(len(x))
            return super().forward(x)

    metrics, notes = build_metrics(["psnr", "fid"], fid={"feature_extractor": Counting()})
    result = score_manifest(pd.DataFrame(rows), metrics, batch_size=16, show_progress=False)
    assert not notes and list(result.per_set["set"]) == ["a", "b"]
    assert result.per_set.loc[0, "fid"] == pytest.approx(0, abs=1e-6)  # set a: reconstruction == original
    assert result.per_set.loc[1, "fid"] > 0.1
    assert sum(calls) == 40 + 80  # the 40 shared originals went through the extractor once, not twice


def reference_mmd2(f1: np.ndarray, f2: np.ndarray) -> float:
    """Unbiased MMD^2 with k(x, y) = (x.y / d + 1)^3, written as the three double sums (Gretton et al. 2012):
    the mean of k over distinct pairs within each side minus twice the mean over all cross pairs."""
    f1, f2 = f1.astype(np.float64), f2.astype(np.float64)
    d = f1.shape[1]

    def k(a, b):
        return (np.einsum("id,jd->ij", a, b) / d + 1.0) ** 3

    m = len(f1)
    off = ~np.eye(m, dtype=bool)
    return float(k(f1, f1)[off].mean() + k(f2, f2)[off].mean() - 2 * k(f1, f2).mean())


def test_kid_equals_float64_reference_and_torchmetrics_on_real_images():
    from torchmetrics.image.kid import KernelInceptionDistance

    x, y = _cifar(120, 0), _cifar(120, 5000)
    extractor = Projection()
    with torch.no_grad():
        fx, fy = extractor(x).double().numpy(), extractor(y).double().numpy()
    # subsets as large as the set: one deterministic estimate
    metric = create("kid", feature_extractor=extractor, subset_size=1000)
    assert isinstance(metric, KID) and metric_info("kid").level == "set" and not metric_info("kid").default
    metric.update(x[:70], y[:70])
    metric.update(x[70:], y[70:])
    out = metric.compute()
    assert out["kid"] == pytest.approx(reference_mmd2(fx, fy), rel=1e-6) and out["kid_std"] == 0.0

    class Identity(torch.nn.Module):
        def forward(self, f):
            return f

    tm = KernelInceptionDistance(feature=Identity(), subsets=2, subset_size=120)
    tm.update(torch.from_numpy(fx), real=True)
    tm.update(torch.from_numpy(fy), real=False)
    assert out["kid"] == pytest.approx(float(tm.compute()[0]), rel=1e-6)
    # random subsets: the same draws written out here (numpy default_rng(seed), originals then reconstructions)
    mean, std = kid_from_features(fx, fy, subsets=5, subset_size=50, seed=3)
    rng = np.random.default_rng(3)
    draws = []
    for _ in range(5):
        i, j = rng.choice(120, 50, replace=False), rng.choice(120, 50, replace=False)
        draws.append(reference_mmd2(fx[i], fy[j]))
    assert mean == pytest.approx(np.mean(draws), rel=1e-9) and std == pytest.approx(np.std(draws), rel=1e-9)
    assert std > 0
    noisy = (x + 0.1 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1))).clamp(0, 1)
    with torch.no_grad():
        fn = extractor(noisy).double().numpy()
    assert kid_from_features(fx, fn)[0] < out["kid"]  # noise keeps the statistics closer than unrelated images
    assert kid_from_features(fx, fx)[0] < 0  # unbiased: a set against itself lies below 0, not clamped


def test_fid_is_clamped_at_zero_and_refuses_nan_features():
    x = _cifar(40, 0)
    with torch.no_grad():
        f = Projection()(x).double().numpy()
    mu, cov = f.mean(0), np.cov(f, rowvar=False)
    assert frechet_distance(mu, cov, mu, cov) == 0.0  # rounding would give about -1e-15
    assert fid_from_features(f, f) >= 0.0
    bad = f.copy()
    bad[[3, 7], 0] = np.nan
    for fn in (fid_from_features, kid_from_features):
        with pytest.raises(ValueError, match="2 of 40 second feature rows hold NaN or inf") as err:
            fn(f, bad)
        assert "\n" not in str(err.value)

    class Broken(Projection):
        def forward(self, images):
            out = super().forward(images)
            out[0, 0] = float("nan")
            return out

    for cls in (FID, KID):
        metric = cls(feature_extractor=Broken())
        metric.update(x, x)
        with pytest.raises(ValueError, match="NaN or inf"):
            metric.compute()
