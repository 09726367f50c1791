"""Calibration: the fitted maps against scikit-learn, the monotonicity constraint, the range check, the
held-out evaluation by configuration, expected-rate intervals, JSON files, and the CLI round trip."""

from __future__ import annotations

import json
import pickle
import sys

import numpy as np
import pandas as pd
import pytest
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import brier_score_loss, roc_auc_score
from typer.testing import CliRunner

from helpers import DIRS, make_sets, synthetic
from semsim.analysis import join_scores_labels
from semsim.analysis.calibration import (
    calibration_bins,
    calibration_table,
    expected_calibration_error,
    fit_calibration,
    heldout_evaluation,
    heldout_summary,
)
from semsim.cli import app, main
from semsim.errors import SemsimError
from semsim.metrics.calibrated import expected_recognition, load_calibration


@pytest.fixture(scope="module")
def data():
    scores, labels = synthetic(n_sets=6, n=60, seed=4)
    return join_scores_labels(scores, labels, directions=DIRS)


def test_logistic_map_matches_sklearn(data) -> None:
    t = data.table
    cal = fit_calibration(t, ["mse"], data.directions, n_draws=0, spread=False)
    x = -t[["mse"]].to_numpy()  # aligned: lower mse = more leakage
    ref = LogisticRegression(C=1e4, max_iter=1000).fit((x - x.mean(0)) / x.std(0), t["recognized"] > 0.5)
    np.testing.assert_allclose(cal.predict(t), ref.predict_proba((x - x.mean(0)) / x.std(0))[:, 1], atol=1e-4)
    p = cal.predict(t)
    order = np.argsort(t["mse"].to_numpy())
    assert (np.diff(p[order]) <= 1e-12).all()  # monotone: more mse, less recognition


def test_isotonic_map_matches_sklearn(data) -> None:
    t = data.table
    cal = fit_calibration(t, ["psnr"], data.directions, method="isotonic", n_draws=0, spread=False)
    ref = IsotonicRegression(y_min=0, y_max=1, out_of_bounds="clip").fit(t["psnr"], t["recognized"] > 0.5)
    probe = pd.DataFrame({"psnr": np.linspace(t["psnr"].min() - 1, t["psnr"].max() + 1, 200)})
    np.testing.assert_allclose(cal.predict(probe), ref.predict(probe["psnr"]), atol=1e-12)
    with pytest.raises(SemsimError, match="isotonic calibration takes one metric"):
        fit_calibration(t, ["psnr", "mse"], data.directions, method="isotonic")


def test_share_target_weights_each_judge(data) -> None:
    t = data.table
    cal = fit_calibration(t, ["psnr"], data.directions, target="share", n_draws=0, spread=False)
    x = t[["psnr"]].to_numpy()
    z = (x - x.mean(0)) / x.std(0)
    share = t["recognized"].to_numpy()
    ref = LogisticRegression(C=1e4, max_iter=1000).fit(
        np.vstack([z, z]), np.r_[np.ones(len(t)), np.zeros(len(t))], sample_weight=np.r_[share, 1 - share])
    np.testing.assert_allclose(cal.predict(t), ref.predict_proba(z)[:, 1], atol=1e-4)


def suppressor_table(n: int = 3000, seed: int = 0) -> pd.DataFrame:
    """Two metrics, both higher = more leakage and both correlated with recognition on their own, but given
    ``a`` the second one, ``b``, lowers the odds: an unconstrained fit gives ``b`` a negative weight."""
    rng = np.random.default_rng(seed)
    a = rng.normal(size=n)
    b = a + 0.6 * rng.normal(size=n)
    y = rng.random(n) < 1 / (1 + np.exp(-(2.0 * a - 0.8 * b)))
    return pd.DataFrame({"set": np.repeat(["s1", "s2", "s3"], n // 3), "image_id": np.arange(n).astype(str),
                         "a": a, "b": b, "recognized": y.astype(float), "label_source": "human:test"})


def test_multi_metric_map_stays_monotone_and_names_the_metric() -> None:
    t = suppressor_table()
    dirs = {"a": True, "b": True}
    z = (t[["a", "b"]] - t[["a", "b"]].mean()) / t[["a", "b"]].std(ddof=0)
    free = LogisticRegression(C=1e4, max_iter=1000).fit(z, t["recognized"] > 0.5)
    assert free.coef_[0, 1] < -0.1 and np.corrcoef(t["b"], t["recognized"])[0, 1] > 0.1  # a real suppressor
    with pytest.warns(UserWarning, match=r"calibration: b would get a negative weight.*held at 0"):
        cal = fit_calibration(t, ["a", "b"], dirs, n_draws=0, spread=False)
    assert cal.params["coef"][1] == 0.0 and cal.params["coef"][0] > 0 and cal.params["held_at_zero"] == ["b"]
    # the constrained optimum with b's weight at 0 is the fit on a alone
    only_a = LogisticRegression(C=1e4, max_iter=1000).fit(z[["a"]], t["recognized"] > 0.5)
    np.testing.assert_allclose(cal.predict(t), only_a.predict_proba(z[["a"]])[:, 1], atol=1e-4)
    # monotone in each metric: raising either one never lowers P(recognized)
    for col in ("a", "b"):
        assert (cal.predict(t.assign(**{col: t[col] + 0.5})) >= cal.predict(t) - 1e-12).all()


def test_range_check_stops_on_another_scale(data) -> None:
    t = data.table
    cal = fit_calibration(t, ["mse"], data.directions, n_draws=0, spread=False)
    lo, hi = cal.feature_range["mse"]
    rescaled = t.assign(mse=t["mse"] * 1000 + 10)
    with pytest.raises(SemsimError) as info:
        cal.check_range(rescaled, where="scores.csv")
    msg = str(info.value)
    assert "\n" not in msg and "scores.csv" in msg and "100% of the mse values" in msg
    assert f"{lo:.4g} to {hi:.4g}" in msg and f"{rescaled['mse'].min():.4g} to {rescaled['mse'].max():.4g}" in msg
    assert "--allow-out-of-range" in msg
    notes = cal.check_range(rescaled, allow=True)
    assert len(notes) == 1 and "mse" in notes[0]
    some = t.assign(mse=np.where(np.arange(len(t)) % 10 == 0, hi * 5, t["mse"]))  # 10% outside: a note only
    assert len(cal.check_range(some)) == 1 and cal.check_range(t) == []


def test_ece_and_bin_counts_match_independent_formulas() -> None:
    rng = np.random.default_rng(5)
    p = rng.random(500)
    y = (rng.random(500) < p).astype(float)
    bins = np.minimum((p * 10).astype(int), 9)
    ece = sum(abs(y[bins == b].mean() - p[bins == b].mean()) * (bins == b).sum()
              for b in np.unique(bins)) / 500
    value, counts = calibration_bins(p, y)
    assert value == pytest.approx(ece) and expected_calibration_error(p, y) == pytest.approx(ece)
    np.testing.assert_array_equal(counts, np.histogram(p, bins=10, range=(0, 1))[0])
    assert expected_calibration_error(np.full(4, 0.25), np.array([1.0, 0, 0, 0])) == pytest.approx(0.0)


def test_heldout_figures_are_computed_within_each_configuration(data) -> None:
    t = data.table
    y = (t["recognized"] > 0.5).to_numpy(float)
    sets = t["set"].to_numpy()
    per_set, p = heldout_evaluation(data, ["psnr"])
    assert list(per_set["set"]) == [f"set{k}" for k in range(6)] and np.isfinite(p).all()
    for _, row in per_set.iterrows():
        m = sets == row["set"]
        ref = fit_calibration(t[~m], ["psnr"], data.directions, n_draws=0, spread=False).predict(t[m])
        np.testing.assert_allclose(p[m], ref)
        assert row["auroc"] == pytest.approx(roc_auc_score(y[m], ref))
        assert row["brier"] == pytest.approx(brier_score_loss(y[m], ref))
        assert row["ece"] == pytest.approx(expected_calibration_error(ref, y[m]))
        assert sum(map(int, row["ece_bins"].split())) == m.sum()
        assert row["bias"] == pytest.approx(ref.mean() - y[m].mean())
    # the base rate, scored per held-out configuration: its ECE is |true rate - training rate|
    base = heldout_summary(data, []).set_index("metric").loc["base rate"]
    gaps = [abs(y[sets == s].mean() - y[sets != s].mean()) for s in dict.fromkeys(sets)]
    assert base["ece"] == pytest.approx(np.mean(gaps)) and base["rate_error"] == pytest.approx(np.mean(gaps))
    assert base["ece"] > 0.05 and np.isnan(base["auroc"])


def test_heldout_summary_columns_and_regex_split(data) -> None:
    summary = heldout_summary(data, ["psnr", "noise"], holdout="set[45]")
    assert list(summary.columns[:9]) == ["metric", "auroc", "brier", "ece", "bias", "rate_error", "n_sets",
                                         "n_images", "split"]
    assert list(summary["metric"]) == ["psnr", "noise", "base rate"]
    assert (summary["n_sets"] == 2).all() and (summary["split"] == "holdout /set[45]/").all()
    s = summary.set_index("metric")
    assert s.loc["psnr", "auroc"] > 0.7 > s.loc["noise", "auroc"] and s.loc["psnr", "brier"] < s.loc["base rate",
                                                                                                     "brier"]
    table, probs = calibration_table(data, holdout="set[45]")
    assert list(probs.columns) == ["p_psnr", "p_mse", "p_noise"] and table["metric"].iloc[-1] == "base rate"
    with pytest.raises(SemsimError, match="matches no set"):
        heldout_summary(data, ["psnr"], holdout="nothing")


def test_expected_rate_interval_combines_spread_fit_and_draws(data) -> None:
    from scipy import stats

    t = data.table
    cal = fit_calibration(t, ["psnr"], data.directions, n_draws=40)
    r = np.asarray(cal.spread["residuals"])
    assert len(r) == 6 and len(cal.params["draws"]) == 40
    p, per_set = expected_recognition(t, cal)
    draws = cal.predict_draws(t)
    m = (t["set"] == "set3").to_numpy()
    q = p[m]
    var = np.mean(r ** 2) * (1 + 1 / 6) + np.var(draws[:, m].mean(1)) + np.sum(q * (1 - q)) / m.sum() ** 2
    half = stats.t.ppf(0.975, 5) * np.sqrt(var)
    row = per_set.set_index("set").loc["set3"]
    assert row["expected_recognition_rate"] == pytest.approx(q.mean())
    assert row["expected_recognition_ci_low"] == pytest.approx(max(0, q.mean() - half))
    assert row["expected_recognition_ci_high"] == pytest.approx(min(1, q.mean() + half))
    # the residuals are the sets' own errors when left out
    for name, res in zip(cal.spread["sets"], r, strict=True):
        k = (t["set"] == name).to_numpy()
        fold = fit_calibration(t[~k], ["psnr"], data.directions, n_draws=0, spread=False)
        assert res == pytest.approx((t["recognized"][k] > 0.5).mean() - fold.predict(t[k]).mean())


def test_calibration_file_round_trip_and_refusals(data, tmp_path) -> None:
    cal = fit_calibration(data.table, ["psnr"], data.directions, method="isotonic", n_draws=5)
    cal.save(tmp_path / "cal.json")
    back = load_calibration(tmp_path / "cal.json")
    np.testing.assert_array_equal(back.predict(data.table), cal.predict(data.table))
    np.testing.assert_array_equal(back.predict_draws(data.table), cal.predict_draws(data.table))
    assert back.trained_on["n_images"] == len(data.table) and back.spread == cal.spread
    (tmp_path / "cal.pkl").write_bytes(pickle.dumps({"format": "semsim-calibration"}))
    with pytest.raises(SemsimError, match="not a JSON file"):
        load_calibration(tmp_path / "cal.pkl")
    (tmp_path / "other.json").write_text(json.dumps({"format": "something"}))
    with pytest.raises(SemsimError, match="not a semsim calibration"):
        load_calibration(tmp_path / "other.json")
    (tmp_path / "v1.json").write_text(json.dumps({"format": "semsim-calibration", "version": 1}))
    with pytest.raises(SemsimError, match="refit it"):
        load_calibration(tmp_path / "v1.json")
    with pytest.raises(SemsimError, match="needs column"):
        back.predict(pd.DataFrame({"mse": [1.0]}))


def test_calibrate_then_score_with_calibration_cli(tmp_path) -> None:
    manifest, labels = make_sets(tmp_path)
    runner = CliRunner()
    res = runner.invoke(app, ["score", str(manifest), "--metrics", "psnr", "--out", str(tmp_path / "s.csv"),
                              "--quiet"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["calibrate", str(tmp_path / "s.csv"), "--labels", str(labels), "--metrics",
                              "psnr", "--holdout", "beta", "--out", str(tmp_path / "cal.json")])
    assert res.exit_code == 0, res.output
    assert "covered" in res.output and "base rate" in res.output
    cal = load_calibration(tmp_path / "cal.json")
    assert cal.trained_on["sets"] == ["alpha", "gamma"] and cal.spread["sets"] == ["alpha", "gamma"]
    assert cal.heldout["n_sets"] == 1 and cal.heldout["per_set"][0]["set"] == "beta"
    assert cal.heldout["base_rate"]["metric"] == "base rate"
    # images and score table give the same answer
    res = runner.invoke(app, ["score", str(manifest), "--metrics", "psnr", "--calibration",
                              str(tmp_path / "cal.json"), "--out", str(tmp_path / "scored.csv"), "--quiet"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["score", str(tmp_path / "s.csv"), "--calibration", str(tmp_path / "cal.json"),
                              "--out", str(tmp_path / "from_table.csv")])
    assert res.exit_code == 0, res.output
    scored = pd.read_csv(tmp_path / "scored.csv")
    np.testing.assert_allclose(scored["p_recognized"], cal.predict(scored))
    np.testing.assert_allclose(pd.read_csv(tmp_path / "from_table.csv")["p_recognized"], scored["p_recognized"])
    assert np.corrcoef(scored["psnr"], scored["p_recognized"])[0, 1] > 0.9  # monotone increasing in psnr
    for path in ("scored_sets.csv", "from_table_sets.csv"):
        sets = pd.read_csv(tmp_path / path).set_index("set")
        for name, group in scored.groupby("set"):
            assert sets.loc[name, "expected_recognition_rate"] == pytest.approx(group["p_recognized"].mean())
            assert sets.loc[name, "expected_recognition_ci_low"] <= sets.loc[name, "expected_recognition_rate"]


def test_score_table_out_of_range_is_one_line_error(tmp_path, monkeypatch, capsys) -> None:
    manifest, labels = make_sets(tmp_path, n=6)
    runner = CliRunner()
    assert runner.invoke(app, ["score", str(manifest), "--metrics", "psnr", "--out", str(tmp_path / "s.csv"),
                               "--quiet"]).exit_code == 0
    assert runner.invoke(app, ["calibrate", str(tmp_path / "s.csv"), "--labels", str(labels), "--metrics",
                               "psnr", "--out", str(tmp_path / "cal.json")]).exit_code == 0
    s = pd.read_csv(tmp_path / "s.csv")
    s.assign(psnr=s["psnr"] / 100).to_csv(tmp_path / "other_scale.csv", index=False)
    argv = ["semsim", "score", str(tmp_path / "other_scale.csv"), "--calibration", str(tmp_path / "cal.json"),
            "--out", str(tmp_path / "o.csv")]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as exit_info:
        main()
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.startswith("error: ") and err.count("\n") == 1
    assert "psnr" in err and "--allow-out-of-range" in err and not (tmp_path / "o.csv").exists()
    monkeypatch.setattr(sys, "argv", [*argv, "--allow-out-of-range"])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 0 and (tmp_path / "o.csv").exists()


def test_score_refuses_a_bad_calibration_file(tmp_path, monkeypatch, capsys) -> None:
    manifest, _ = make_sets(tmp_path, n=3)
    (tmp_path / "cal.json").write_text("{not json")
    monkeypatch.setattr(sys, "argv", ["semsim", "score", str(manifest), "--metrics", "psnr", "--calibration",
                                      str(tmp_path / "cal.json"), "--out", str(tmp_path / "o.csv")])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "cal.json" in err and "Traceback" not in err
    assert not (tmp_path / "o.csv").exists()
