"""Faithfulness statistics against independent references (scipy, scikit-learn, plain loops)."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from sklearn.metrics import roc_auc_score, roc_curve
from statsmodels.stats.multitest import multipletests

from helpers import DIRS, synthetic
from semsim.analysis import (
    contradiction_matrix,
    human_ceiling,
    image_level,
    join_scores_labels,
    metric_comparisons,
    parse_directions,
    resolve_directions,
    set_level,
)
from semsim.analysis.data import judge_matrix
from semsim.analysis.resample import cluster_counts, clustered_auroc, set_draws, weighted_auroc
from semsim.analysis.stats import auroc_rows, holm, kendall_rows, pearson_rows, spearman_rows
from semsim.analysis.summary import summary_table
from semsim.errors import SemsimError


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


def test_set_bootstrap_resamples_configurations(data) -> None:
    """The interval comes from sets drawn with replacement: a loop with scipy over the same draws agrees,
    and images within a set do not matter (one image per set gives a non-degenerate interval)."""
    per_set, corr = set_level(data, n_boot=200, seed=3)
    x = -per_set["mse_mean"].to_numpy()
    rate = per_set["recognition_rate"].to_numpy()
    draws = set_draws(len(rate), 200, np.random.default_rng(3))
    loop = [stats.spearmanr(x[d], rate[d])[0] if np.ptp(x[d]) and np.ptp(rate[d]) else np.nan for d in draws]
    loop = np.array(loop)[np.isfinite(loop)]
    row = corr.set_index("metric").loc["mse"]
    assert row["spearman_ci_low"] == pytest.approx(np.quantile(loop, 0.025), abs=1e-12)
    assert row["spearman_ci_high"] == pytest.approx(np.quantile(loop, 0.975), abs=1e-12)
    assert row["ci_resamples"].endswith("over sets (victim configurations)")
    single = join_scores_labels(data.table.groupby("set").head(1), None, directions=DIRS)
    r = set_level(single, n_boot=50)[1].set_index("metric").loc["psnr"]
    assert r["spearman_ci_low"] < r["spearman_ci_high"]


def test_holm_matches_statsmodels() -> None:
    p = np.array([0.01, 0.04, 0.03, 0.2, np.nan, 0.001, 0.04])
    ok = np.isfinite(p)
    got = holm(p)
    assert np.isnan(got[~ok]).all()
    np.testing.assert_allclose(got[ok], multipletests(p[ok], method="holm")[1], atol=1e-15)


def test_clustered_auroc_equals_weighted_sklearn() -> None:
    """Both resampling paths give, per replicate, sklearn's AUROC with the bootstrap counts as weights."""
    rng = np.random.default_rng(4)
    n, clusters = 900, 60
    codes = rng.integers(0, clusters, n)
    score = np.round(rng.normal(size=n), 1)  # ties
    y = rng.random(n) < 0.45
    counts = cluster_counts(clusters, 30, rng)
    fast = clustered_auroc(score, y, codes, counts)
    weights = counts[:, codes]
    direct = weighted_auroc(score, weights * y, weights * ~y)
    for b in range(30):
        ref = roc_auc_score(y, score, sample_weight=weights[b])
        assert fast[b] == pytest.approx(ref, abs=1e-9) and direct[b] == pytest.approx(ref, abs=1e-12)


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
    count_sub = np.round(sub["recognized"] * sub["n_judges"])
    ref = stats.spearmanr(sub["psnr"], count_sub)
    assert got["spearman_n_recognized"] == pytest.approx(ref[0]) and got["spearman_p"] == pytest.approx(ref[1])
    assert row.loc["mse", "spearman_p"] == pytest.approx(stats.spearmanr(-t["mse"], count)[1])
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
    t = data.table
    votes = t[[f"judge_{k}" for k in range(1, 6)]].to_numpy()
    own = votes[:, 1] == 1  # slot 2
    n_others = (np.delete(votes, 1, axis=1) == 1).sum(1)
    tie = n_others == 2  # 2 of 4
    for ties, keep, target in (("not", np.ones(len(t), bool), n_others > 2), ("exclude", ~tie, n_others > 2)):
        ceiling = human_ceiling(data, ties=ties)
        row = ceiling[(ceiling["predictor"] == "human") & (ceiling["slot"] == "judge_2")].iloc[0]
        assert row["n"] == keep.sum() and row["n_ties"] == tie.sum() and row["ties"] == ties
        assert row["image_accuracy"] == pytest.approx(np.mean(own[keep] == target[keep]))
        assert row["image_auroc"] == pytest.approx(roc_auc_score(target[keep], own[keep]))
        met = ceiling[(ceiling["predictor"] == "psnr") & (ceiling["slot"] == "judge_2")].iloc[0]
        assert met["image_auroc"] == pytest.approx(roc_auc_score(target[keep], t["psnr"][keep]))
        fpr = np.mean(own[keep][~target[keep]])
        curve = roc_curve(target[keep], t["psnr"][keep])
        assert met["tpr_at_annotator_fpr"] == pytest.approx(np.interp(fpr, curve[0], curve[1]))
    mean = ceiling[(ceiling["predictor"] == "human") & (ceiling["slot"] == "mean")].iloc[0]
    slots = ceiling[(ceiling["predictor"] == "human") & (ceiling["slot"] != "mean")]
    assert mean["image_auroc"] == pytest.approx(slots["image_auroc"].mean()) and len(slots) == 5
    # half: a tied image is a positive and a negative of weight 1/2 each (sklearn on the expanded sample)
    half = human_ceiling(data, ties="half")
    row = half[(half["predictor"] == "psnr") & (half["slot"] == "judge_2")].iloc[0]
    ys = np.r_[target & ~tie, np.ones(tie.sum(), bool), np.zeros(tie.sum(), bool)]
    xs = np.r_[t["psnr"].to_numpy(), t["psnr"].to_numpy()[tie], t["psnr"].to_numpy()[tie]]
    w = np.r_[np.where(tie, 0.0, 1.0), np.full(2 * tie.sum(), 0.5)]
    assert row["image_auroc"] == pytest.approx(roc_auc_score(ys, xs, sample_weight=w))
    with pytest.raises(SemsimError, match="ties 'maybe'"):
        human_ceiling(data, ties="maybe")


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


def test_join_stops_when_rows_are_lost_unless_allowed() -> None:
    scores, labels = synthetic(n_sets=2, n=10)
    scores.loc[5, "psnr"] = np.nan
    scores = pd.concat([scores, scores.iloc[:1].assign(image_id="extra")], ignore_index=True)
    labels = pd.concat([labels.iloc[1:], labels.iloc[:1].assign(image_id="unscored")], ignore_index=True)
    with pytest.raises(SemsimError, match=r"^2 scored image\(s\) of score table have no match \(set 'set0' image "
                                          r"'img0'.*; 1 labelled image\(s\) of label table have no match \(set "
                                          r"'set0' image 'unscored'.*--allow-missing to analyse only the 19"):
        join_scores_labels(scores, labels, directions=DIRS)
    data = join_scores_labels(scores, labels, directions=DIRS, allow_missing=True)
    assert len(data.table) == 18
    assert any("no match" in n and "--allow-missing" in n for n in data.notes)
    assert any("missing metric value" in n for n in data.notes)
    with pytest.raises(SemsimError, match="no \\(set, image_id\\) pair"):
        join_scores_labels(scores.assign(set=scores["set"] + "x"), labels, directions=DIRS, allow_missing=True)
    with pytest.raises(SemsimError, match="no metric column"):
        join_scores_labels(scores, labels, metrics=["lpips"], directions=DIRS, allow_missing=True)


def test_infinite_values_keep_their_rank() -> None:
    scores, labels = synthetic(n_sets=3, n=10)
    scores.loc[4, "psnr"] = np.inf  # an identical pair
    data = join_scores_labels(scores, labels, directions=DIRS)
    assert len(data.table) == 30 and np.isfinite(data.table["psnr"]).all()
    assert data.table.loc[4, "psnr"] == data.table["psnr"].max()
    assert any("infinite 'psnr'" in n for n in data.notes)


def test_summary_marks_follow_the_holm_adjusted_tests(data) -> None:
    """best = highest value; '=' when its difference from the best is not significant after Holm; '<' else."""
    per_set, corr = set_level(data, n_boot=0)
    overall, _ = image_level(data, n_boot=0)
    comp = metric_comparisons(data, per_set)
    summary = summary_table(corr, overall, comp).set_index("metric")
    image = comp[comp["level"] == "image"]
    best = overall.set_index("metric")["auroc"].idxmax()
    assert summary.loc[best, "image_mark"] == "best" and (summary["image_mark"] == "best").sum() == 1
    for m in data.metrics:
        if m == best:
            continue
        row = image[((image["a"] == m) & (image["b"] == best)) | ((image["a"] == best) & (image["b"] == m))].iloc[0]
        assert summary.loc[m, "image_mark"] == ("<" if row["p_holm"] < 0.05 else "=")
    assert summary.loc["noise", "image_mark"] == "<"  # the synthetic noise column is far below psnr / mse
