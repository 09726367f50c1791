"""Model-based metrics (mr, iip, feature_distance) against independent numpy, sklearn and scipy references."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from scipy.stats import binomtest
from sklearn.metrics import accuracy_score, top_k_accuracy_score
from typer.testing import CliRunner

from helpers import shared_path
from semsim.cli import app
from semsim.data.images import load_image, load_images, save_image
from semsim.data.sets import ingest
from semsim.errors import SemsimError
from semsim.metrics import MetricUnavailable, column_direction, create, metric_info
from semsim.metrics import model_based as mb
from semsim.metrics.lpips import BACKBONE_FILES
from semsim.metrics.scoring import build_metrics, score_manifest
from semsim.models.backbones import lpips_backbone
from semsim.models.checkpoint import save_checkpoint
from semsim.models.classifiers import create_model, load_classifier, model_config

CLEAN_ACCURACY = 0.8


@pytest.fixture(scope="module")
def evaluator_dir(tmp_path_factory) -> Path:
    """A small LeNet evaluator with fixed random weights, recording a clean accuracy."""
    torch.manual_seed(0)
    model = create_model("lenet", num_classes=10, image_size=32)
    folder = tmp_path_factory.mktemp("ev") / "tiny-eval"
    save_checkpoint(folder, model, model_config("lenet", 10, image_size=32, clean_accuracy=CLEAN_ACCURACY))
    return folder


@pytest.fixture(scope="module")
def net(evaluator_dir):
    """The same network, loaded independently of the metric code."""
    return load_classifier(evaluator_dir)[0]


def _images(n: int, seed: int, size: int = 32) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_registry_entries_are_opt_in_with_directions() -> None:
    for name in ("mr", "iip", "feature_distance"):
        assert metric_info(name).default is False
    assert metric_info("mr").needs_labels and metric_info("mr").level == "set"
    assert metric_info("iip").level == "set"
    assert column_direction("mr_correct") is True and column_direction("mr_accuracy") is True
    assert column_direction("iip_pixel") is True and column_direction("iip_feature_precision") is True
    assert column_direction("feature_l2") is False and column_direction("feature_cosine") is False


def test_metrics_without_evaluator_are_unavailable() -> None:
    for name in ("mr", "feature_distance"):
        with pytest.raises(MetricUnavailable, match="evaluator"):
            create(name)
    with pytest.raises(MetricUnavailable, match="evaluator"):
        create("iip", variants=["feature"])
    with pytest.raises(SemsimError, match="choose from"):
        create("iip", variants=["pixels"])


@pytest.mark.parametrize(("k", "n"), [(0, 10), (3, 10), (10, 10), (57, 120), (1, 1)])
def test_wilson_interval_matches_scipy(k: int, n: int) -> None:
    ref = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    lo, hi = mb.wilson_interval(k, n)
    assert lo == pytest.approx(ref.low, abs=1e-12) and hi == pytest.approx(ref.high, abs=1e-12)


def test_mr_matches_sklearn(evaluator_dir, net) -> None:
    x, y = _images(40, 1), _images(40, 2)
    labels = torch.randint(0, 10, (40,), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        probs = net(y).double().softmax(1).numpy()
    mr = create("mr", evaluator=evaluator_dir)
    mr.reset()
    mr.update(x[:25], y[:25], labels=labels[:25])
    mr.update(x[25:], y[25:], labels=labels[25:])
    per, sets = mr.per_image(), mr.compute()
    lab = labels.numpy()
    np.testing.assert_allclose(per["mr_prob"].numpy(), probs[np.arange(40), lab], atol=1e-6)
    np.testing.assert_array_equal(per["mr_correct"].numpy(), (probs.argmax(1) == lab).astype(float))
    top5 = (np.argsort(-probs, 1)[:, :5] == lab[:, None]).any(1)
    np.testing.assert_array_equal(per["mr_top5"].numpy(), top5.astype(float))
    acc = accuracy_score(lab, probs.argmax(1))
    assert sets["mr_accuracy"] == pytest.approx(acc)
    assert sets["mr_top5_accuracy"] == pytest.approx(top_k_accuracy_score(lab, probs, k=5, labels=range(10)))
    ref = binomtest(int(round(acc * 40)), 40).proportion_ci(method="wilson")
    assert (sets["mr_accuracy_ci_low"], sets["mr_accuracy_ci_high"]) == pytest.approx((ref.low, ref.high))
    assert sets["mr_relative"] == pytest.approx(acc / CLEAN_ACCURACY)


def test_mr_resizes_other_sizes_and_rejects_foreign_labels(evaluator_dir, net) -> None:
    y = _images(6, 4, size=48)
    labels = torch.arange(6)
    with torch.no_grad():
        ref = net(F.interpolate(y, size=(32, 32), mode="bilinear", antialias=True)).softmax(1)
    mr = create("mr", evaluator=evaluator_dir)
    mr.update(y, y, labels=labels)
    np.testing.assert_allclose(mr.per_image()["mr_prob"].numpy(), ref[torch.arange(6), labels].numpy(),
                               atol=1e-5)
    with pytest.raises(SemsimError, match="label 12: outside"):
        mr.update(y, y, labels=torch.tensor([0, 1, 2, 3, 4, 12]))


def test_mr_without_labels_is_skipped_with_a_message(evaluator_dir) -> None:
    mr = create("mr", evaluator=evaluator_dir)
    mr.update(_images(3, 5), _images(3, 6), labels=None)
    with pytest.warns(UserWarning, match="mr skipped: the set has no class labels"):
        assert mr.compute() == {}
    assert mr.per_image() == {}


def _brute_force_iip(rec: np.ndarray, cands: np.ndarray, own: list[int], rec_labels, cand_labels
                     ) -> np.ndarray:
    """Loop over reconstructions: identified when the own candidate is strictly nearest among allowed ones."""
    out = []
    for i in range(len(rec)):
        best_other = np.inf
        d_own = None
        for j in range(len(cands)):
            if rec_labels is not None and cand_labels[j] >= 0 and cand_labels[j] != rec_labels[i]:
                continue
            d = np.mean((rec[i].astype(np.float64) - cands[j].astype(np.float64)) ** 2)
            if j == own[i]:
                d_own = d
            else:
                best_other = min(best_other, d)
        out.append(float(d_own < best_other))
    return np.array(out)


def _iip_case(seed: int = 7):
    """12 originals of 3 classes; reconstructions: noisy copies, some blended towards another original."""
    g = torch.Generator().manual_seed(seed)
    ori = torch.rand(12, 3, 16, 16, generator=g)
    labels = torch.arange(12) % 3
    noise = torch.rand(12, 1, 1, 1, generator=g) * 0.6
    rec = (ori + noise * (torch.rand(ori.shape, generator=g) - 0.5)).clamp(0, 1)
    rec[[1, 5, 8]] = 0.3 * ori[[1, 5, 8]] + 0.7 * ori[[4, 3, 10]]  # 4 shares 1's class, 3 and 10 do not
    return ori, rec, labels


@pytest.mark.parametrize("with_labels", [True, False])
def test_iip_pixel_matches_brute_force(with_labels: bool) -> None:
    ori, rec, labels = _iip_case()
    iip = create("iip", variants=["pixel"])
    keys = [f"o{i}" for i in range(12)]
    lab = labels if with_labels else None
    iip.update(ori[:5], rec[:5], labels=None if lab is None else lab[:5], original_keys=keys[:5])
    iip.update(ori[5:], rec[5:], labels=None if lab is None else lab[5:], original_keys=keys[5:])
    got = iip.per_image()["iip_pixel"].numpy()
    ref = _brute_force_iip(rec.numpy(), ori.numpy(), list(range(12)), None if lab is None else labels.numpy(),
                           labels.numpy())
    np.testing.assert_array_equal(got, ref)
    assert 0 < ref.sum() < 12  # the case has both outcomes
    assert iip.compute() == {"iip_pixel_precision": pytest.approx(ref.mean())}
    if with_labels:
        assert got[5] == 1 and got[1] == 0  # 5 drifted to another class: identified within its own class
    else:
        assert got[5] == 0 and got[1] == 0


def test_iip_shared_originals_and_gallery() -> None:
    ori, rec, labels = _iip_case(seed=8)

    class Gallery:  # the ImageDataset interface the metric relies on
        def __init__(self, images, labels):
            self.images, self.labels = images, labels

        def floats(self):
            return self.images

    g = torch.Generator().manual_seed(9)
    extra = torch.rand(6, 3, 16, 16, generator=g)
    extra[0] = rec[3]  # a distractor identical to reconstruction 3 steals its identification
    extra_labels = torch.tensor([int(labels[3]), 1, 2, -1, 0, 1])  # -1: unlabelled, competes with every class
    gallery = Gallery(torch.cat([ori[:2], extra]), torch.cat([labels[:2], extra_labels]))
    iip = create("iip", variants=["pixel"], gallery=gallery)
    # reconstructions 0 and 12 share original 0 (same key); copies of originals 0-1 in the gallery are dropped
    keys = [f"o{i}" for i in range(12)] + ["o0"]
    iip.update(torch.cat([ori, ori[:1]]), torch.cat([rec, ori[:1]]), labels=torch.cat([labels, labels[:1]]),
               original_keys=keys)
    got = iip.per_image()["iip_pixel"].numpy()
    cands = torch.cat([ori, extra]).numpy()
    cand_labels = torch.cat([labels, extra_labels]).numpy()
    ref = _brute_force_iip(torch.cat([rec, ori[:1]]).numpy(), cands, list(range(12)) + [0],
                           torch.cat([labels, labels[:1]]).numpy(), cand_labels)
    np.testing.assert_array_equal(got, ref)
    assert got[3] == 0 and got[12] == 1


@pytest.fixture(scope="module")
def lpips_weights_dir(tmp_path_factory) -> Path:
    """A weights folder: a random AlexNet backbone (torchvision format) and the real LPIPS linear heads."""
    heads = shared_path("lpips_linear_weights", "v0.1", "alex.pth")
    folder = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    state = {f"features.{k}": v for k, v in lpips_backbone("alex").features.state_dict().items()}
    torch.save(state, folder / BACKBONE_FILES["alex"][0])
    (folder / "lpips" / "v0.1").mkdir(parents=True)
    (folder / "lpips" / "v0.1" / "alex.pth").symlink_to(heads)
    return folder


def test_iip_lpips_variant_matches_per_pair_lpips(lpips_weights_dir, monkeypatch) -> None:
    monkeypatch.setenv("SEMSIM_WEIGHTS_DIR", str(lpips_weights_dir))
    ori, rec, labels = _iip_case(seed=10)
    ori, rec = F.interpolate(ori, size=32), F.interpolate(rec, size=32)
    iip = create("iip", variants=["lpips"])
    iip.update(ori, rec, labels=labels, original_keys=[str(i) for i in range(12)])
    got = iip.per_image()["iip_lpips"].numpy()
    lp = create("lpips_alex")
    ii, jj = torch.meshgrid(torch.arange(12), torch.arange(12), indexing="ij")
    with torch.no_grad():  # LPIPS's own forward on all 144 (candidate, reconstruction) pairs
        d = lp(ori[jj.flatten()], rec[ii.flatten()]).double().numpy().reshape(12, 12)
    same = labels.numpy()[:, None] == labels.numpy()[None]
    d_other = np.where(same & ~np.eye(12, dtype=bool), d, np.inf).min(1)
    np.testing.assert_array_equal(got, (np.diag(d) < d_other).astype(float))
    assert 0 < got.sum() < 12


def test_iip_lpips_without_weights_is_unavailable_or_left_out() -> None:
    try:
        create("lpips_alex")
    except SemsimError as exc:  # unregistered or weights missing here
        reason = str(exc)
    else:
        pytest.skip("LPIPS backbone weights are available here")
    with pytest.raises(MetricUnavailable, match="lpips"):
        create("iip", variants=["lpips"])
    with pytest.warns(UserWarning, match="lpips variant left out"):
        iip = create("iip")
    assert iip.variants == ["pixel"], reason


def test_iip_feature_variant_and_feature_distance(evaluator_dir, net) -> None:
    ori, rec, labels = _iip_case(seed=11)
    ori, rec = F.interpolate(ori, size=32), F.interpolate(rec, size=32)
    with torch.no_grad():
        fo, fr = net.features(ori).double().numpy(), net.features(rec).double().numpy()
    iip = create("iip", variants=["feature"], evaluator=evaluator_dir)
    iip.update(ori, rec, labels=labels, original_keys=[str(i) for i in range(12)])
    d = ((fr[:, None] - fo[None]) ** 2).sum(2)
    same = labels.numpy()[:, None] == labels.numpy()[None]
    d_other = np.where(same & ~np.eye(12, dtype=bool), d, np.inf).min(1)
    got = iip.per_image()["iip_feature"].numpy()
    np.testing.assert_array_equal(got, (np.diag(d) < d_other).astype(float))

    fd = create("feature_distance", evaluator=evaluator_dir)
    out = fd(ori, rec, original_keys=[str(i) for i in range(12)])
    np.testing.assert_allclose(out["feature_l2"].numpy(), np.linalg.norm(fo - fr, axis=1), rtol=1e-5)
    cos = (fo * fr).sum(1) / np.linalg.norm(fo, axis=1) / np.linalg.norm(fr, axis=1)
    np.testing.assert_allclose(out["feature_cosine"].numpy(), 1 - cos, atol=1e-6)
    again = fd(ori, ori, original_keys=[str(i) for i in range(12)])  # cached original features are reused
    np.testing.assert_allclose(again["feature_l2"].numpy(), 0, atol=1e-5)


def _write_set(folder: Path, ori: torch.Tensor, rec: torch.Tensor, labels) -> None:
    folder.mkdir(parents=True)
    for i, (o, r) in enumerate(zip(ori, rec, strict=True)):
        save_image(o, folder / f"{i}_{int(labels[i])}_ori.png")
        save_image(r, folder / f"{i}_{int(labels[i])}_rec.png")


def test_scoring_aligns_set_metric_columns_with_mixed_sizes(tmp_path, evaluator_dir, net) -> None:
    """Pairs of two sizes interleaved in one batch: per-image mr/iip values land on their own rows."""
    g = torch.Generator().manual_seed(12)
    folder = tmp_path / "mixed"
    folder.mkdir()
    labels = [3, 1, 4, 1, 5, 9, 2, 6]
    expected = {}
    for i, lab in enumerate(labels):
        size = 32 if i % 2 == 0 else 40
        o = torch.rand(3, size, size, generator=g)
        r = (o + 0.2 * torch.rand(3, size, size, generator=g)).clamp(0, 1)
        save_image(o, folder / f"{i}_{lab}_ori.png")
        save_image(r, folder / f"{i}_{lab}_rec.png")
        y = load_image(folder / f"{i}_{lab}_rec.png")[None]
        with torch.no_grad():
            p = net(F.interpolate(y, size=(32, 32), mode="bilinear", antialias=True)).softmax(1)[0, lab]
        expected[f"{i}_{lab}"] = float(p)
    manifest, _ = ingest(folder)
    metrics, notes = build_metrics(["psnr", "mr", "iip"], mr={"evaluator": evaluator_dir},
                                   iip={"variants": ["pixel"]})
    assert notes == []
    result = score_manifest(manifest, metrics, batch_size=16, show_progress=False, n_bootstrap=50)
    got = dict(zip(result.per_image["image_id"], result.per_image["mr_prob"], strict=True))
    assert got == pytest.approx(expected, abs=1e-5)
    assert set(result.per_image["iip_pixel"]) <= {0.0, 1.0}
    row = result.per_set.iloc[0]
    assert row["mr_accuracy"] == pytest.approx(result.per_image["mr_correct"].mean())
    assert row["iip_pixel_precision"] == pytest.approx(result.per_image["iip_pixel"].mean())


def test_score_cli_with_evaluator(tmp_path, evaluator_dir, shared_data) -> None:
    """`semsim score --evaluator` on real CIFAR-10 images: the model-based columns join the panel."""
    files = sorted((shared_data / "cifar10_test" / "cat").glob("*.jpg"))[:4] + sorted(
        (shared_data / "cifar10_test" / "ship").glob("*.jpg"))[:4]
    ori = load_images(files)
    rec = (ori + 0.1 * torch.randn(ori.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    _write_set(tmp_path / "set", ori, rec, [3] * 4 + [8] * 4)
    out = tmp_path / "scores.csv"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. LPIPS weights missing here
        res = CliRunner().invoke(app, ["score", str(tmp_path / "set"), "--evaluator", str(evaluator_dir),
                                       "--out", str(out), "--quiet"])
    assert res.exit_code == 0, res.output
    table = pd.read_csv(out)
    for col in ("psnr", "mr_prob", "mr_correct", "mr_top5", "iip_pixel", "iip_feature", "feature_l2"):
        assert col in table and table[col].notna().all(), col
    sets = pd.read_csv(tmp_path / "scores_sets.csv")
    assert 0 <= sets["mr_accuracy_ci_low"][0] <= sets["mr_accuracy"][0] <= sets["mr_accuracy_ci_high"][0] <= 1
    assert sets["iip_pixel_precision"][0] == pytest.approx(table["iip_pixel"].mean())


def test_unlabelled_set_skips_mr_but_scores_iip(tmp_path, evaluator_dir) -> None:
    """Two folders matched by file name carry no class labels: mr says why it is skipped, iip still runs."""
    ori, rec, _ = _iip_case(seed=13)
    for folder, images in (("ori", ori), ("rec", rec)):
        (tmp_path / folder).mkdir()
        for i, img in enumerate(images):
            save_image(img, tmp_path / folder / f"img{i:02d}.png")
    manifest, _ = ingest(tmp_path / "ori", tmp_path / "rec")
    assert "label" not in manifest
    metrics, _ = build_metrics(["mr", "iip"], mr={"evaluator": evaluator_dir}, iip={"variants": ["pixel"]})
    with pytest.warns(UserWarning, match="mr skipped: the set has no class labels"):
        result = score_manifest(manifest, metrics, show_progress=False, n_bootstrap=20)
    assert not any(c.startswith("mr_") for c in result.per_image.columns)
    assert "mr_accuracy" not in result.per_set
    x = load_images(list(manifest["original"])).numpy()
    y = load_images(list(manifest["reconstruction"])).numpy()
    ref = _brute_force_iip(y, x, list(range(12)), None, None)
    np.testing.assert_array_equal(result.per_image["iip_pixel"].to_numpy(), ref)
