"""The analysis on the SemSim authors' 8,400 real CIFAR-100 human judgments (skipped when absent)."""

from __future__ import annotations

import krippendorff
import numpy as np
import pandas as pd
import pytest
from scipy import stats
from sklearn.metrics import roc_auc_score
from statsmodels.stats.inter_rater import aggregate_raters, fleiss_kappa
from statsmodels.stats.multitest import multipletests

from helpers import shared_path
from semsim.analysis import (
    SEMSIM_CIFAR100_DIRECTIONS,
    contradiction_matrix,
    human_ceiling,
    image_level,
    import_semsim_cifar100,
    imported_directions,
    join_scores_labels,
    metric_comparisons,
    per_original_contradiction,
    set_level,
)
from semsim.analysis.agreement import agreement_table, annotator_rates
from semsim.analysis.data import CIFAR100_CLASSES, _set_name
from semsim.analysis.resample import cluster_counts, clustered_auroc, set_draws, weighted_auroc
from semsim.analysis.stats import auroc_replicates
from semsim.analysis.summary import model_recognition_table
from semsim.errors import SemsimError
from semsim.metrics.registry import aligned


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
    # training-time defenses and "aug" without a policy (no augmentation) filed as semsim names them
    # (the attacked image is the client's training transform of the test image: client-<augmentation>)
    assert set(t["set"]) >= {"cifar100/resnet20-4/crop+train-noise-1e-3/client-crop/invgrad-8000",
                             "cifar100/convnet/none/none/invgrad-8000",
                             "cifar100/convnet/ats-3-1-7/client-ats-3-1-7/invgrad-8000"}
    assert (t[[f"judge_{k}_class" for k in range(1, 6)]].to_numpy() == ann).all()  # the chosen classes


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
    ceiling = human_ceiling(data, ties="not")
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


VLM = ("cifar100_human_labels", "vlm_predictions.csv")


@pytest.fixture(scope="module")
def full():
    """The real labels with the CLIP predictions, as `semsim analyze --import-semsim-cifar100 --vlm` joins them."""
    scores, labels = import_semsim_cifar100(shared_path("cifar100_human_labels", "labels.csv"), shared_path(*VLM))
    return join_scores_labels(scores, labels, directions=imported_directions(scores))


def test_configuration_bootstrap_interval_on_real_labels(raw, data) -> None:
    """DreamSim's set-level interval resamples the 14 configurations (issue: [-0.44, 0.86]), recomputed with
    scipy in a loop over the same draws."""
    per_set, corr = set_level(data, n_boot=1000, seed=0)
    ref = raw.assign(maj=raw["n_correct"] >= 3).groupby(raw["config"].map(_set_name)).agg(
        rate=("maj", "mean"), dreamsim=("dreamsim", "mean")).sort_index()
    x, rate = -ref["dreamsim"].to_numpy(), ref["rate"].to_numpy()
    draws = set_draws(14, 1000, np.random.default_rng(0))
    loop = np.array([stats.spearmanr(x[d], rate[d])[0] for d in draws if np.ptp(x[d]) and np.ptp(rate[d])])
    row = corr.set_index("metric").loc["dreamsim"]
    assert row["spearman_ci_low"] == pytest.approx(np.quantile(loop, 0.025), abs=1e-9)
    assert row["spearman_ci_high"] == pytest.approx(np.quantile(loop, 0.975), abs=1e-9)
    assert row["spearman_ci_low"] < -0.25 and row["spearman_ci_high"] > 0.8
    np.testing.assert_allclose(corr[["spearman_p_holm", "kendall_p_holm", "pearson_p_holm"]].to_numpy().ravel(),
                               multipletests(corr[["spearman_p", "kendall_p", "pearson_p"]].to_numpy().ravel(),
                                             method="holm")[1], atol=1e-12)
    kept = corr.set_index("metric")[["spearman_p_holm", "kendall_p_holm", "pearson_p_holm"]] < 0.05
    assert kept.to_numpy().sum() >= 1 and not kept.loc["dreamsim"].any()


def test_clustered_auroc_interval_widens_on_real_labels(data) -> None:
    """Originals repeat in all 14 configurations: resampling them gives wider intervals than resampling images."""
    reps, unit = auroc_replicates(data, 300, 0)
    assert unit.startswith("originals")
    t = data.table
    y = (t["recognized"] > 0.5).to_numpy()
    iid = cluster_counts(len(t), 300, np.random.default_rng(9))
    for k, m in enumerate(data.metrics[:4]):
        s = aligned(t[m].to_numpy(), data.directions[m])
        iid_reps = weighted_auroc(s, iid * y, iid * ~y)
        assert np.std(reps[:, k]) > 1.1 * np.std(iid_reps), m
    codes, _ = pd.factorize(t["image_id"])
    counts = cluster_counts(600, 3, np.random.default_rng(1))
    s = -t["dreamsim"].to_numpy()
    got = clustered_auroc(s, y, codes, counts)
    for b in range(3):
        assert got[b] == pytest.approx(roc_auc_score(y, s, sample_weight=counts[b, codes]), abs=1e-9)


def _delong_reference(a: np.ndarray, b: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """DeLong's z from the explicit pairwise kernel psi(x, z) = [x > z] + [x = z] / 2, float64, in chunks."""
    comps = []
    for s in (a, b):
        pos, neg = s[y], s[~y]
        v10 = np.concatenate([((p[:, None] > neg) + 0.5 * (p[:, None] == neg)).mean(1)
                              for p in np.array_split(pos, 20)])
        v01 = np.concatenate([((pos[:, None] > q) + 0.5 * (pos[:, None] == q)).mean(0)
                              for q in np.array_split(neg, 20)])
        comps.append((v10, v01))
    s10 = np.cov(comps[0][0], comps[1][0])
    s01 = np.cov(comps[0][1], comps[1][1])
    var = (s10[0, 0] + s10[1, 1] - 2 * s10[0, 1]) / y.sum() + (s01[0, 0] + s01[1, 1] - 2 * s01[0, 1]) / (~y).sum()
    z = (comps[0][0].mean() - comps[1][0].mean()) / np.sqrt(var)
    return z, 2 * stats.norm.sf(abs(z))


def test_metric_comparisons_on_real_labels(raw, data) -> None:
    per_set, _ = set_level(data, n_boot=0)
    comp = metric_comparisons(data, per_set)
    img = comp[comp["level"] == "image"].set_index(["a", "b"])
    y = (raw["n_correct"] >= 3).to_numpy()
    z, p = _delong_reference(-raw["lpips_squeeze"].to_numpy(), -raw["dreamsim"].to_numpy(), y)
    row = img.loc[("lpips_squeeze", "dreamsim")]
    assert row["test_statistic"] == pytest.approx(z, rel=1e-9) and row["p"] == pytest.approx(p, rel=1e-9)
    assert row["p"] == pytest.approx(0.074, abs=0.001)  # the "DreamSim is best" margin
    ref_diff = roc_auc_score(y, -raw["lpips_squeeze"]) - roc_auc_score(y, -raw["dreamsim"])
    assert row["difference"] == pytest.approx(ref_diff)
    # Williams' t (Steiger 1980, eq. 7) from the determinant of the 3x3 correlation matrix, here via numpy
    st = comp[comp["level"] == "set"].set_index(["a", "b"]).loc[("psnr", "semsim")]
    x1, x2 = per_set["psnr_mean"].to_numpy(), -per_set["semsim_mean"].to_numpy()
    r = stats.spearmanr(np.c_[per_set["recognition_rate"], x1, x2])[0]
    det, n = np.linalg.det(r), 14
    rbar = (r[0, 1] + r[0, 2]) / 2
    t_ref = (r[0, 1] - r[0, 2]) * np.sqrt((n - 1) * (1 + r[1, 2]) / (2 * det * (n - 1) / (n - 3)
                                                                      + rbar ** 2 * (1 - r[1, 2]) ** 3))
    assert st["test_statistic"] == pytest.approx(t_ref, rel=1e-9)
    assert st["p"] == pytest.approx(2 * stats.t.sf(abs(t_ref), n - 3), rel=1e-9)
    for level in ("set", "image"):
        part = comp[(comp["level"] == level) & comp["p"].notna()]  # NaN: undefined test (identical rankings)
        np.testing.assert_allclose(part["p_holm"], multipletests(part["p"], method="holm")[1], atol=1e-12)


def test_agreement_on_real_labels(raw, data) -> None:
    """Fleiss' kappa (statsmodels) and Krippendorff's alpha (krippendorff package): 0.5791 / 0.5792 with
    "can't tell" as a category; and the other codings."""
    table = agreement_table(data).set_index(["coding", "cant_tell"])
    ann = raw[[f"ann{k}" for k in range(1, 6)]].to_numpy()
    assert table.loc[("chosen class", "own category"), "fleiss_kappa"] == pytest.approx(
        fleiss_kappa(aggregate_raters(ann)[0]), abs=1e-12)
    assert table.loc[("chosen class", "own category"), "fleiss_kappa"] == pytest.approx(0.5791, abs=5e-5)
    # "can't tell" recoded as class 100 and the value domain given: the same alpha, 4x faster in the package
    ref = krippendorff.alpha(reliability_data=np.where(ann == -1, 100, ann).T.astype(float),
                             level_of_measurement="nominal", value_domain=np.arange(101.0))
    assert table.loc[("chosen class", "own category"), "krippendorff_alpha"] == pytest.approx(ref, abs=1e-9)
    assert table.loc[("chosen class", "own category"), "krippendorff_alpha"] == pytest.approx(0.5792, abs=5e-5)
    rec = (ann == raw["fine_label"].to_numpy()[:, None]).astype(float)
    assert table.loc[("recognized / not", "not recognized"), "krippendorff_alpha"] == pytest.approx(
        krippendorff.alpha(reliability_data=rec.T, level_of_measurement="nominal"), abs=1e-9)
    assert table.loc[("recognized / not", "not recognized"), "fleiss_kappa"] == pytest.approx(
        fleiss_kappa(aggregate_raters(rec)[0]), abs=1e-12)
    rec_missing = np.where(ann == -1, np.nan, rec)
    assert table.loc[("recognized / not", "missing"), "krippendorff_alpha"] == pytest.approx(
        krippendorff.alpha(reliability_data=rec_missing.T, level_of_measurement="nominal"), abs=1e-9)
    rates = annotator_rates(data).set_index("slot")
    assert rates.loc["judge_1", "cant_tell"] == pytest.approx(np.mean(ann[:, 0] == -1))


def test_per_original_contradiction_on_real_labels(raw, data) -> None:
    """Against a self-join of the raw table on the original: every pair of its 14 reconstructions."""
    got = per_original_contradiction(data).set_index(["a", "b"])
    r = raw.reset_index()
    pairs = r.merge(r, on="cifar100_test_idx_1based")
    pairs = pairs[pairs["index_x"] < pairs["index_y"]]
    assert len(pairs) == 600 * 91 == got["n_pairs"].iloc[0]
    ssim = np.sign(pairs["ssim_x"] - pairs["ssim_y"])
    dream = -np.sign(pairs["dreamsim_x"] - pairs["dreamsim_y"])
    people = np.sign(pairs["n_correct_x"] - pairs["n_correct_y"])
    row = got.loc[("ssim", "dreamsim")]
    assert row["discordant"] == pytest.approx(np.mean(ssim * dream < 0))
    assert row["concordant"] == pytest.approx(np.mean(ssim * dream > 0))
    assert row["tied"] == pytest.approx(np.mean((ssim == 0) | (dream == 0)))
    hum = got.loc[("dreamsim", "humans")]
    assert hum["tied"] == pytest.approx(np.mean(people == 0)) and hum["tied"] > 0.2
    assert hum["discordant_untied"] == pytest.approx(np.sum(dream * people < 0) / np.sum(dream * people != 0))


def test_tie_handled_ceiling_on_real_labels(raw, data) -> None:
    """Excluding 2-2 ties the single-annotator figure is 0.784, counting them as not recognized 0.734; every
    annotator's hit rate is above every metric's at the same false-positive rate."""
    correct = raw[[f"ann{k}" for k in range(1, 6)]].to_numpy() == raw["fine_label"].to_numpy()[:, None]
    means = {}
    for ties in ("exclude", "not"):
        c = human_ceiling(data, ties=ties)
        ref = []
        for k in range(5):
            others = np.delete(correct, k, axis=1).sum(1)
            keep = others != 2 if ties == "exclude" else np.ones(len(raw), bool)
            ref.append(roc_auc_score(others[keep] >= 3, correct[keep, k]))
        human = c[(c["predictor"] == "human") & (c["slot"] != "mean")]
        np.testing.assert_allclose(human["image_auroc"], ref, atol=1e-12)
        means[ties] = c[(c["predictor"] == "human") & (c["slot"] == "mean")]["image_auroc"].iloc[0]
        assert (c[(c["predictor"] == "human") & (c["slot"] != "mean")]["ties"] == ties).all()
    assert means["exclude"] == pytest.approx(0.784, abs=5e-4) and means["not"] == pytest.approx(0.734, abs=5e-4)
    c = human_ceiling(data, ties="exclude").query("slot != 'mean'")
    tpr = c[c["predictor"] == "human"].set_index("slot")["tpr"]
    metric_rows = c[c["predictor"] != "human"]
    assert (metric_rows["tpr_at_annotator_fpr"].to_numpy() < tpr.loc[metric_rows["slot"]].to_numpy()).all()


def test_clip_predictions_join_as_model_recognition(full) -> None:
    """The README's figures for ViT-L/14, recomputed from the raw CSVs with pandas."""
    raw = pd.read_csv(shared_path("cifar100_human_labels", "labels.csv"))
    vlm = pd.read_csv(shared_path(*VLM))
    assert set(vlm["ori_pred"]) | set(vlm["rec_pred"]) <= set(CIFAR100_CLASSES) and len(set(CIFAR100_CLASSES)) == 100
    vit = raw.merge(vlm[vlm["vlm"] == "ViT-L/14"], on=["config", "cifar100_test_idx_1based", "fine_label"])
    truth = vit["fine_label"].map(dict(enumerate(CIFAR100_CLASSES)))
    mr = model_recognition_table(full.table, (full.table["recognized"] > 0.5).to_numpy()).set_index("recognizer")
    row = mr.loc["mr_clip_vitl_14"]
    assert row["clean_accuracy"] == pytest.approx((vit["ori_pred"] == truth).mean()) == pytest.approx(0.838, abs=5e-4)
    assert row["accuracy"] == pytest.approx((vit["rec_pred"] == truth).mean()) == pytest.approx(0.143, abs=5e-4)
    agree = ((vit["rec_pred"] == truth) == (vit["n_correct"] >= 3)).mean()
    assert row["agrees_with_majority"] == pytest.approx(agree) == pytest.approx(0.556, abs=5e-4)
    assert len(mr) == 8 and "mr_clip_vitl_14" in full.metrics and "clean_mr_clip_vitl_14_correct" not in full.metrics
    signed = np.where(vit["rec_pred"] == truth, 1, -1) * vit["rec_conf"]
    ids = (vit["cifar100_test_idx_1based"] - 1).astype(str) + "_" + vit["fine_label"].astype(str)  # 0-based
    key = vit["config"].map(_set_name) + "/" + ids
    mine = full.table.assign(key=full.table["set"] + "/" + full.table["image_id"]).set_index("key")
    np.testing.assert_allclose(mine.loc[key, "mr_clip_vitl_14"], signed)
    assert (full.table[[f"judge_{k}_class" for k in range(1, 6)]].to_numpy()
            == raw[[f"ann{k}" for k in range(1, 6)]].to_numpy()).all()  # same row order as the raw table


def test_clip_import_stops_on_missing_predictions(tmp_path) -> None:
    vlm = pd.read_csv(shared_path(*VLM))
    vlm.iloc[5:].to_csv(tmp_path / "vlm.csv", index=False)
    labels = shared_path("cifar100_human_labels", "labels.csv")
    with pytest.raises(SemsimError, match="have no prediction of .*--allow-missing"):
        import_semsim_cifar100(labels, tmp_path / "vlm.csv")
    scores, labels_df = import_semsim_cifar100(labels, tmp_path / "vlm.csv", allow_missing=True)
    data = join_scores_labels(scores, labels_df, directions=imported_directions(scores))
    assert len(data.table) < 8400 and any("missing metric value" in n for n in data.notes)
