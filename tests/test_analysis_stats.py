"""Faithfulness statistics against independent references (scipy, scikit-learn, plain loops)."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from sklearn.metrics import roc_auc_score

from semsim.analysis import (
    contradiction_matrix,
    human_ceiling,
    image_level,
    join_scores_labels,
    parse_directions,
    resolve_directions,
    set_level,
)
from semsim.analysis.data import judge_matrix
from semsim.analysis.stats import auroc_rows, kendall_rows, pearson_rows, spearman_rows
from semsim.errors import SemsimError


def synthetic(n_sets: int = 6, n: int = 40, seed: int = 0, judges: int = 5
              ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Sets of rising leakage; psnr (higher = leakage) and mse (lower = leakage) follow it, 'noise' not."""
    rng = np.random.default_rng(seed)
    scores, labels = [], []
    for s in range(n_sets):
        latent = rng.normal(s * 0.4, 1.0, n)
        p = 1 / (1 + np.exp(-(latent - 1.0)))
        votes = (rng.random((n, judges)) < p[:, None]).astype(int)
        votes[rng.random((n, judges)) < 0.1] = -1  # some "can't tell"
        ids = [f"img{i}" for i in range(n)]
        scores.append(pd.DataFrame({"set": f"set{s}", "image_id": ids,
                                    "psnr": latent + rng.normal(0, 0.5, n),
                                    "mse": np.exp(-latent) + rng.random(n) * 0.1,
                                    "noise": rng.normal(size=n)}))
        lab = pd.DataFrame({"set": f"set{s}", "image_id": ids, "recognized": (votes == 1).mean(1),
                            "n_judges": judges, "label_source": "human:test"})
        for k in range(judges):
            lab[f"judge_{k + 1}"] = votes[:, k]
        labels.append(lab)
    return pd.concat(scores, ignore_index=True), pd.concat(labels, ignore_index=True)


DIRS = {"psnr": True, "mse": False, "noise": True}


@pytest.fixture(scope="module")
def data():
    scores, labels = synthetic()
    return join_scores_labels(scores, labels, directions=DIRS)


def test_rowwise_correlations_match_scipy() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(20, 9))
    y = x + rng.normal(size=(20, 9))
    x[3, :4] = x[3, 0]  # ties
    y[5] = np.round(y[5])
    for r in range(20):
        assert pearson_rows(x, y)[r] == pytest.approx(stats.pearsonr(x[r], y[r])[0], abs=1e-12)
        assert spearman_rows(x, y)[r] == pytest.approx(stats.spearmanr(x[r], y[r])[0], abs=1e-12)
        assert kendall_rows(x, y)[r] == pytest.approx(stats.kendalltau(x[r], y[r])[0], abs=1e-12)
    assert np.isnan(pearson_rows(np.ones((1, 5)), y[:1, :5])[0])


def test_auroc_matches_sklearn_with_ties() -> None:
    rng = np.random.default_rng(2)
    s = np.round(rng.normal(size=(10, 60)), 1)
    y = rng.random((10, 60)) < 0.4
    got = auroc_rows(s, y)
    for r in range(10):
        assert got[r] == pytest.approx(roc_auc_score(y[r], s[r]), abs=1e-12)
    assert np.isnan(auroc_rows(s[:1], np.ones((1, 60), bool))[0])


def test_set_level_matches_independent_recomputation(data) -> None:
    per_set, corr = set_level(data, n_boot=200, seed=0)
    t = data.table
    ref = t.assign(maj=t["recognized"] > 0.5).groupby("set", sort=False).agg(
        rate=("maj", "mean"), psnr=("psnr", "mean"), mse=("mse", "mean"))
    np.testing.assert_allclose(per_set["recognition_rate"], ref["rate"])
    np.testing.assert_allclose(per_set["mse_mean"], ref["mse"])
    row = corr.set_index("metric")
    # mse: lower = more leakage, so the aligned correlation is the negated raw one
    assert row.loc["mse", "spearman"] == pytest.approx(-stats.spearmanr(ref["mse"], ref["rate"])[0])
    assert row.loc["mse", "kendall_p"] == pytest.approx(stats.kendalltau(ref["mse"], ref["rate"])[1])
    assert row.loc["psnr", "pearson"] == pytest.approx(stats.pearsonr(ref["psnr"], ref["rate"])[0])
    assert row.loc["psnr", "spearman"] > 0.8 and row.loc["mse", "spearman"] > 0.8
    for m in data.metrics:
        for name in ("spearman", "kendall", "pearson"):
            assert -1 <= row.loc[m, f"{name}_ci_low"] <= row.loc[m, f"{name}_ci_high"] <= 1
    assert row[[c for c in row.columns if c.endswith("_ci_low")]].notna().all().all()


def test_bootstrap_resamples_within_sets(data) -> None:
    """With one image per set the within-set bootstrap cannot move anything: the interval is a point."""
    t = data.table.groupby("set").head(1)
    single = join_scores_labels(t, None, directions=DIRS)
    _, corr = set_level(single, n_boot=50)
    r = corr.set_index("metric").loc["psnr"]
    assert r["spearman_ci_low"] == pytest.approx(r["spearman"])
    assert r["spearman_ci_high"] == pytest.approx(r["spearman"])


def test_image_level_matches_sklearn_and_scipy(data) -> None:
    overall, by_set = image_level(data, n_boot=100)
    t = data.table
    y = t["recognized"] > 0.5
    count = np.round(t["recognized"] * t["n_judges"])
    row = overall.set_index("metric")
    assert row.loc["mse", "auroc"] == pytest.approx(roc_auc_score(y, -t["mse"]))
    assert row.loc["psnr", "spearman_n_recognized"] == pytest.approx(stats.spearmanr(t["psnr"], count)[0])
    assert row.loc["psnr", "auroc_ci_low"] < row.loc["psnr", "auroc"] < row.loc["psnr", "auroc_ci_high"]
    assert abs(row.loc["noise", "auroc"] - 0.5) < 0.1 and row.loc["psnr", "auroc"] > 0.7
    sub = t[t["set"] == "set2"]
    got = by_set[(by_set["set"] == "set2") & (by_set["metric"] == "psnr")].iloc[0]
    assert got["auroc"] == pytest.approx(roc_auc_score(sub["recognized"] > 0.5, sub["psnr"]))
    assert len(by_set) == 6 * 3


def test_contradiction_matrix_counts_discordant_pairs() -> None:
    rng = np.random.default_rng(3)
    per_set = pd.DataFrame({"a_mean": rng.normal(size=8), "b_mean": rng.normal(size=8),
                            "recognition_rate": rng.random(8)})
    mat = contradiction_matrix(per_set, ["a", "b"], {"a": True, "b": False})
    a, b = per_set["a_mean"].to_numpy(), -per_set["b_mean"].to_numpy()
    pairs = list(itertools.combinations(range(8), 2))
    loop = np.mean([(a[i] - a[j]) * (b[i] - b[j]) < 0 for i, j in pairs])
    assert mat.loc["a", "b"] == pytest.approx(loop)
    assert mat.loc["a", "b"] == pytest.approx((1 - stats.kendalltau(a, b)[0]) / 2)  # no ties
    tau = stats.kendalltau(b, per_set["recognition_rate"])[0]
    assert mat.loc["b", "humans"] == pytest.approx((1 - tau) / 2)
    assert (np.diag(mat.to_numpy()) == 0).all() and np.allclose(mat.to_numpy(), mat.to_numpy().T)


def test_human_ceiling_matches_a_direct_computation(data) -> None:
    ceiling = human_ceiling(data)
    t = data.table
    votes = t[[f"judge_{k}" for k in range(1, 6)]].to_numpy()
    own = votes[:, 1] == 1  # slot 2
    others = np.delete(votes, 1, axis=1) == 1
    target = others.sum(1) > 2  # more than half of 4
    row = ceiling[(ceiling["predictor"] == "human") & (ceiling["slot"] == "judge_2")].iloc[0]
    assert row["image_accuracy"] == pytest.approx(np.mean(own == target))
    assert row["image_auroc"] == pytest.approx(roc_auc_score(target, own))
    met = ceiling[(ceiling["predictor"] == "psnr") & (ceiling["slot"] == "judge_2")].iloc[0]
    assert met["image_auroc"] == pytest.approx(roc_auc_score(target, t["psnr"]))
    mean = ceiling[(ceiling["predictor"] == "human") & (ceiling["slot"] == "mean")].iloc[0]
    slots = ceiling[(ceiling["predictor"] == "human") & (ceiling["slot"] != "mean")]
    assert mean["image_auroc"] == pytest.approx(slots["image_auroc"].mean()) and len(slots) == 5


def test_judges_as_chosen_classes_compare_with_the_true_label() -> None:
    t = pd.DataFrame({"label": [3, 7], "judge_1": [3, 2], "judge_2": [-1, 7], "judge_3": [3, np.nan]})
    judges, cols = judge_matrix(t)
    assert cols == ["judge_1", "judge_2", "judge_3"]
    np.testing.assert_array_equal(judges, [[1, 0, 1], [0, 1, np.nan]])
    with pytest.raises(SemsimError, match="true class"):
        judge_matrix(t.drop(columns="label"))


def test_directions_explicit_registry_and_unknown() -> None:
    assert parse_directions(["dreamsim=lower", "x=HIGHER"]) == {"dreamsim": False, "x": True}
    with pytest.raises(SemsimError, match="COLUMN=higher"):
        parse_directions(["dreamsim"])
    assert resolve_directions(["psnr", "mse"]) == {"psnr": True, "mse": False}  # from the registry
    assert resolve_directions(["mse"], {"mse": True}) == {"mse": True}  # explicit wins
    with pytest.raises(SemsimError, match="--direction made_up=higher"):
        resolve_directions(["psnr", "made_up"])


def test_join_reports_unmatched_and_bad_rows() -> None:
    scores, labels = synthetic(n_sets=2, n=10)
    scores.loc[5, "psnr"] = np.nan
    scores = pd.concat([scores, scores.iloc[:1].assign(image_id="extra")], ignore_index=True)
    data = join_scores_labels(scores, labels.iloc[1:], directions=DIRS)
    assert len(data.table) == 18
    assert any("no label" in n for n in data.notes) and any("missing metric value" in n for n in data.notes)
    with pytest.raises(SemsimError, match="no \\(set, image_id\\) pair"):
        join_scores_labels(scores.assign(set=scores["set"] + "x"), labels, directions=DIRS)
    with pytest.raises(SemsimError, match="no metric column"):
        join_scores_labels(scores, labels, metrics=["lpips"], directions=DIRS)


def test_infinite_values_keep_their_rank() -> None:
    scores, labels = synthetic(n_sets=3, n=10)
    scores.loc[4, "psnr"] = np.inf  # an identical pair
    data = join_scores_labels(scores, labels, directions=DIRS)
    assert len(data.table) == 30 and np.isfinite(data.table["psnr"]).all()
    assert data.table.loc[4, "psnr"] == data.table["psnr"].max()
    assert any("infinite 'psnr'" in n for n in data.notes)
