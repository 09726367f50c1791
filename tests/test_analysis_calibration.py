"""Calibration: the fitted maps against scikit-learn, the scores, JSON files, and the CLI round trip."""

from __future__ import annotations

import json
import pickle
import sys

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import brier_score_loss, roc_auc_score
from typer.testing import CliRunner

from semsim.analysis import (
    cross_validate,
    evaluate_probabilities,
    expected_calibration_error,
    expected_recognition,
    fit_calibration,
    join_scores_labels,
    load_calibration,
)
from semsim.cli import app, main
from semsim.data.labels import write_labels
from semsim.errors import SemsimError
from test_analysis_stats import DIRS, synthetic


@pytest.fixture(scope="module")
def data():
    scores, labels = synthetic(n_sets=6, n=60, seed=4)
    return join_scores_labels(scores, labels, directions=DIRS)


def test_logistic_map_matches_sklearn(data) -> None:
    t = data.table
    cal = fit_calibration(t, ["mse"], data.directions)
    x = -t[["mse"]].to_numpy()  # aligned: lower mse = more leakage
    ref = LogisticRegression(C=1e4, max_iter=1000).fit((x - x.mean(0)) / x.std(0), t["recognized"] > 0.5)
    np.testing.assert_allclose(cal.predict(t), ref.predict_proba((x - x.mean(0)) / x.std(0))[:, 1], atol=1e-4)
    p = cal.predict(t)
    order = np.argsort(t["mse"].to_numpy())
    assert (np.diff(p[order]) <= 1e-12).all()  # monotone: more mse, less recognition
    two = fit_calibration(t, ["psnr", "mse"], data.directions)
    assert two.predict(t).shape == (len(t),) and len(two.params["coef"]) == 2


def test_isotonic_map_matches_sklearn(data) -> None:
    t = data.table
    cal = fit_calibration(t, ["psnr"], data.directions, method="isotonic")
    ref = IsotonicRegression(y_min=0, y_max=1, out_of_bounds="clip").fit(t["psnr"], t["recognized"] > 0.5)
    probe = pd.DataFrame({"psnr": np.linspace(t["psnr"].min() - 1, t["psnr"].max() + 1, 200)})
    np.testing.assert_allclose(cal.predict(probe), ref.predict(probe["psnr"]), atol=1e-12)
    with pytest.raises(SemsimError, match="isotonic calibration takes one metric"):
        fit_calibration(t, ["psnr", "mse"], data.directions, method="isotonic")


def test_share_target_weights_each_judge(data) -> None:
    t = data.table
    cal = fit_calibration(t, ["psnr"], data.directions, target="share")
    x = t[["psnr"]].to_numpy()
    z = (x - x.mean(0)) / x.std(0)
    share = t["recognized"].to_numpy()
    ref = LogisticRegression(C=1e4, max_iter=1000).fit(
        np.vstack([z, z]), np.r_[np.ones(len(t)), np.zeros(len(t))], sample_weight=np.r_[share, 1 - share])
    np.testing.assert_allclose(cal.predict(t), ref.predict_proba(z)[:, 1], atol=1e-4)


def test_scores_match_independent_formulas(data) -> None:
    rng = np.random.default_rng(5)
    p = rng.random(500)
    y = (rng.random(500) < p).astype(float)
    bins = np.minimum((p * 10).astype(int), 9)
    ece = sum(abs(y[bins == b].mean() - p[bins == b].mean()) * (bins == b).sum()
              for b in np.unique(bins)) / 500
    assert expected_calibration_error(p, y) == pytest.approx(ece)
    assert expected_calibration_error(np.full(4, 0.25), np.array([1.0, 0, 0, 0])) == pytest.approx(0.0)
    table = pd.DataFrame({"set": np.repeat(["a", "b"], 250), "recognized": y})
    scores = evaluate_probabilities(p, table)
    assert scores["brier"] == pytest.approx(brier_score_loss(y, p))
    assert scores["auroc"] == pytest.approx(roc_auc_score(y, p))
    mae = np.mean([abs(p[:250].mean() - y[:250].mean()), abs(p[250:].mean() - y[250:].mean())])
    assert scores["set_mae"] == pytest.approx(mae)


def test_cross_validation_splits_by_set(data) -> None:
    t = data.table
    p, scores = cross_validate(data, ["psnr"], holdout="set[45]")
    held = t["set"].isin(["set4", "set5"]).to_numpy()
    assert np.isfinite(p[held]).all() and np.isnan(p[~held]).all()
    ref = fit_calibration(t[~held], ["psnr"], data.directions).predict(t[held])
    np.testing.assert_allclose(p[held], ref)
    assert scores["n_sets"] == 2 and scores["auroc"] > 0.7 and scores["split"] == "holdout /set[45]/"
    p_loso, loso = cross_validate(data, ["psnr"])
    assert np.isfinite(p_loso).all() and loso["n_sets"] == 6 and loso["split"] == "leave-one-set-out"
    with pytest.raises(SemsimError, match="matches no set"):
        cross_validate(data, ["psnr"], holdout="nothing")


def test_expected_recognition_intervals(data) -> None:
    cal = fit_calibration(data.table, ["psnr"], data.directions)
    p, per_set = expected_recognition(data.table, cal, n_boot=400)
    row = per_set.set_index("set").loc["set3"]
    rate = row["expected_recognition_rate"]
    assert rate == pytest.approx(p[(data.table["set"] == "set3").to_numpy()].mean())
    assert row["expected_recognition_ci_low"] < rate < row["expected_recognition_ci_high"]
    assert (per_set["expected_recognition_ci_high"] - per_set["expected_recognition_ci_low"] < 0.5).all()


def test_calibration_file_round_trip_and_refusals(data, tmp_path) -> None:
    cal = fit_calibration(data.table, ["psnr"], data.directions, method="isotonic")
    cal.save(tmp_path / "cal.json")
    back = load_calibration(tmp_path / "cal.json")
    np.testing.assert_array_equal(back.predict(data.table), cal.predict(data.table))
    assert back.trained_on["n_images"] == len(data.table)
    (tmp_path / "cal.pkl").write_bytes(pickle.dumps({"format": "semsim-calibration"}))
    with pytest.raises(SemsimError, match="not a JSON file"):
        load_calibration(tmp_path / "cal.pkl")
    (tmp_path / "other.json").write_text(json.dumps({"format": "something"}))
    with pytest.raises(SemsimError, match="not a semsim calibration"):
        load_calibration(tmp_path / "other.json")
    with pytest.raises(SemsimError, match="needs column"):
        back.predict(pd.DataFrame({"mse": [1.0]}))


def make_sets(root, n: int = 12, seed: int = 0) -> tuple:
    """Three sets of real image files (noise of rising strength), their manifest and a label table."""
    rng = np.random.default_rng(seed)
    rows, labels = [], []
    for s, set_name in enumerate(("alpha", "beta", "gamma")):
        for i in range(n):
            ori = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
            sigma = 10 + 60 * ((i + s * n / 3) % n) / n - 3 * s
            rec = np.clip(ori + rng.normal(0, sigma, ori.shape), 0, 255).astype(np.uint8)
            folder = root / set_name
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(ori).save(folder / f"{i}_0_ori.png")
            Image.fromarray(rec).save(folder / f"{i}_0_rec.png")
            rows.append({"set": set_name, "image_id": str(i), "original": f"{set_name}/{i}_0_ori.png",
                         "reconstruction": f"{set_name}/{i}_0_rec.png"})
            recognized = float(sigma < 40) if i % 5 else float(sigma >= 40)  # mostly, not always, agree
            labels.append({**rows[-1], "recognized": recognized, "n_judges": 1, "label_source": "human:test"})
    manifest = root / "manifest.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    write_labels(pd.DataFrame(labels), root / "labels.csv")
    return manifest, root / "labels.csv"


def test_calibrate_then_score_with_calibration_cli(tmp_path) -> None:
    manifest, labels = make_sets(tmp_path)
    runner = CliRunner()
    res = runner.invoke(app, ["score", str(manifest), "--metrics", "psnr", "--out", str(tmp_path / "s.csv"),
                              "--quiet"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["calibrate", str(tmp_path / "s.csv"), "--labels", str(labels), "--metrics",
                              "psnr", "--holdout", "beta", "--out", str(tmp_path / "cal.json")])
    assert res.exit_code == 0, res.output
    cal = load_calibration(tmp_path / "cal.json")
    assert cal.trained_on["sets"] == ["alpha", "gamma"]
    assert cal.heldout["n_sets"] == 1 and "auroc" in cal.heldout
    res = runner.invoke(app, ["score", str(manifest), "--metrics", "psnr", "--calibration",
                              str(tmp_path / "cal.json"), "--out", str(tmp_path / "scored.csv"), "--quiet"])
    assert res.exit_code == 0, res.output
    scored = pd.read_csv(tmp_path / "scored.csv")
    np.testing.assert_allclose(scored["p_recognized"], cal.predict(scored))
    assert scored["p_recognized"].between(0, 1).all()
    assert np.corrcoef(scored["psnr"], scored["p_recognized"])[0, 1] > 0.9  # monotone increasing in psnr
    sets = pd.read_csv(tmp_path / "scored_sets.csv").set_index("set")
    for name, group in scored.groupby("set"):
        assert sets.loc[name, "p_recognized_mean"] == pytest.approx(group["p_recognized"].mean())
        assert sets.loc[name, "expected_recognition_rate"] == pytest.approx(group["p_recognized"].mean())
        assert sets.loc[name, "expected_recognition_ci_low"] <= sets.loc[name, "expected_recognition_ci_high"]


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


def test_calibration_table_has_a_base_rate_baseline(data) -> None:
    from semsim.analysis import calibration_table

    table, probs = calibration_table(data, holdout="set[45]")
    base = table.set_index("metric").loc["(base rate)"]
    held = data.table["set"].isin(["set4", "set5"]).to_numpy()
    y = (data.table["recognized"] > 0.5).to_numpy(float)
    rate = y[~held].mean()
    assert base["brier"] == pytest.approx(np.mean((rate - y[held]) ** 2)) and np.isnan(base["auroc"])
    assert table.set_index("metric").loc["psnr", "brier"] < base["brier"]
    assert list(probs.columns) == ["p_psnr", "p_mse", "p_noise"]
