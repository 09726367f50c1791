"""The analysis on the SemSim authors' 8,400 real CIFAR-100 human judgments (skipped when absent)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from sklearn.metrics import roc_auc_score

from conftest import shared_path
from semsim.analysis import (
    SEMSIM_CIFAR100_DIRECTIONS,
    contradiction_matrix,
    human_ceiling,
    image_level,
    import_semsim_cifar100,
    join_scores_labels,
    set_level,
)
from semsim.errors import SemsimError


@pytest.fixture(scope="module")
def raw() -> pd.DataFrame:
    return pd.read_csv(shared_path("cifar100_human_labels", "labels.csv"))


@pytest.fixture(scope="module")
def data():
    scores, labels = import_semsim_cifar100(shared_path("cifar100_human_labels", "labels.csv"))
    return join_scores_labels(scores, labels, directions=SEMSIM_CIFAR100_DIRECTIONS)


def test_import_matches_the_raw_table(raw, data) -> None:
    t = data.table
    assert len(t) == 8400 and t["set"].nunique() == 14 and (t.groupby("set").size() == 600).all()
    assert (t["label_source"] == "import:semsim-cifar100").all() and (t["n_judges"] == 5).all()
    np.testing.assert_allclose(np.round(t["recognized"] * 5), raw["n_correct"])
    # the README's orientation figures: 55.4% recognized by a majority; 25% to 89% per configuration
    maj = raw["n_correct"] >= 3
    assert (t["recognized"] > 0.5).mean() == pytest.approx(maj.mean()) == pytest.approx(0.554, abs=0.001)
    rates = maj.groupby(raw["config"]).mean()
    assert rates.min() == pytest.approx(0.25, abs=0.005) and rates.max() == pytest.approx(0.885, abs=0.005)
    # judges: 1 = true class, -1 = can't tell, 0 = another class
    judges = t[[f"judge_{k}" for k in range(1, 6)]].to_numpy()
    ann = raw[[f"ann{k}" for k in range(1, 6)]].to_numpy()
    np.testing.assert_array_equal(judges == 1, ann == raw["fine_label"].to_numpy()[:, None])
    np.testing.assert_array_equal(judges == -1, ann == -1)
    assert set(t["set"]) >= {"cifar100/ResNet20-4/crop/noise-1e-3/invgrad",
                             "cifar100/ConvNet/aug/none/invgrad"}


def test_import_rejects_an_inconsistent_table(raw, tmp_path) -> None:
    bad = raw.head(20).copy()
    bad.loc[3, "n_correct"] = 0 if bad.loc[3, "n_correct"] else 5
    bad.to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(SemsimError, match="row 5 says n_correct"):
        import_semsim_cifar100(tmp_path / "bad.csv")
    raw.head(5).drop(columns="dreamsim").to_csv(tmp_path / "short.csv", index=False)
    with pytest.raises(SemsimError, match="missing column"):
        import_semsim_cifar100(tmp_path / "short.csv")


def test_set_level_on_real_labels_matches_scipy(raw, data) -> None:
    per_set, corr = set_level(data, n_boot=100)
    g = raw.assign(maj=raw["n_correct"] >= 3).groupby("config")
    ref = pd.DataFrame({"rate": g["maj"].mean(), **{m: g[m].mean() for m in SEMSIM_CIFAR100_DIRECTIONS}})
    assert sorted(per_set["recognition_rate"]) == pytest.approx(sorted(ref["rate"]))
    row = corr.set_index("metric")
    for m, higher in SEMSIM_CIFAR100_DIRECTIONS.items():
        sign = 1 if higher else -1
        assert row.loc[m, "spearman"] == pytest.approx(sign * stats.spearmanr(ref[m], ref["rate"])[0])
        assert row.loc[m, "kendall"] == pytest.approx(sign * stats.kendalltau(ref[m], ref["rate"])[0])
        assert row.loc[m, "pearson_p"] == pytest.approx(stats.pearsonr(ref[m], ref["rate"])[1])
    # PSNR is a per-image function of MSE, so both agree with people alike at the image level; the set means
    # differ (mean of a log), so their set-level correlations need not be equal.
    assert row.loc["psnr", "spearman"] > 0 and row.loc["mse", "spearman"] > 0


def test_image_level_on_real_labels_matches_sklearn(raw, data) -> None:
    overall, _ = image_level(data, n_boot=0)
    row = overall.set_index("metric")
    maj = raw["n_correct"] >= 3
    for m, higher in SEMSIM_CIFAR100_DIRECTIONS.items():
        s = raw[m] if higher else -raw[m]
        assert row.loc[m, "auroc"] == pytest.approx(roc_auc_score(maj, s))
        assert row.loc[m, "spearman_n_recognized"] == pytest.approx(stats.spearmanr(s, raw["n_correct"])[0])
    assert row.loc["mse", "auroc"] == pytest.approx(row.loc["psnr", "auroc"])


def test_human_ceiling_and_contradictions_on_real_labels(raw, data) -> None:
    ceiling = human_ceiling(data)
    truth = raw["fine_label"].to_numpy()[:, None]
    correct = raw[[f"ann{k}" for k in range(1, 6)]].to_numpy() == truth
    for k in range(5):
        target = np.delete(correct, k, axis=1).sum(1) >= 3
        row = ceiling[(ceiling["predictor"] == "human") & (ceiling["slot"] == f"judge_{k + 1}")].iloc[0]
        assert row["image_auroc"] == pytest.approx(roc_auc_score(target, correct[:, k]))
        assert row["image_accuracy"] == pytest.approx(np.mean(correct[:, k] == target))
    per_set, _ = set_level(data, n_boot=0)
    mat = contradiction_matrix(per_set, data.metrics, data.directions)
    assert mat.loc["mse", "psnr"] < mat.loc["ssim", "dreamsim"]  # near-duplicates agree more
    assert ((mat.to_numpy() >= 0) & (mat.to_numpy() <= 1)).all()
