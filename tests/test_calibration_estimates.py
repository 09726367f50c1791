"""Recognition rates from a few human labels: PPI / PPI++ against the published formulas, estimate_rates,
the label budget, ``semsim estimate``, and, on the real CIFAR-100 judgments, coverage of the intervals on
configurations held out of the calibration."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from statistics import NormalDist

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from helpers import make_sets, shared_path, synthetic
from semsim.analysis.calibration import (
    estimate_rates,
    fit_calibration,
    heldout_evaluation,
    label_budget,
    ppi_mean,
    wilson_interval,
)
from semsim.cli import app
from semsim.data.labels import write_labels
from semsim.errors import SemsimError


def ppi_reference(y, f_lab, f_unl, lam, level=0.95):
    """The published estimator, written out term by term in float64 (math.fsum): Angelopoulos et al.
    (Science 2023) for lam = 1; PPI++ (Angelopoulos, Duchi & Zrnic 2023) otherwise."""
    y, f_lab, f_unl = ([float(v) for v in a] for a in (y, f_lab, f_unl))
    n, big_n = len(y), len(f_unl)
    mean_unl = math.fsum(f_unl) / big_n
    rect = [yi - lam * fi for yi, fi in zip(y, f_lab, strict=True)]
    mean_rect = math.fsum(rect) / n
    theta = lam * mean_unl + mean_rect
    var_unl = math.fsum((f - mean_unl) ** 2 for f in f_unl) / (big_n - 1)
    var_rect = math.fsum((r - mean_rect) ** 2 for r in rect) / (n - 1)
    se = math.sqrt(lam * lam * var_unl / big_n + var_rect / n)
    z = NormalDist().inv_cdf(0.5 + level / 2)
    return theta, theta - z * se, theta + z * se, se


def tuned_lambda(y, f_lab, f_unl):
    """PPI++'s power-tuning weight for a mean: Cov(Y, f) / ((1 + n/N) Var(f)), clipped to [0, 1]."""
    n, big_n = len(y), len(f_unl)
    my, mf = math.fsum(y) / n, math.fsum(f_lab) / n
    cov = math.fsum((a - my) * (b - mf) for a, b in zip(y, f_lab, strict=True)) / (n - 1)
    f_all = [*f_lab, *f_unl]
    m_all = math.fsum(f_all) / len(f_all)
    var = math.fsum((f - m_all) ** 2 for f in f_all) / (len(f_all) - 1)
    return min(1.0, max(0.0, cov / ((1 + n / big_n) * var)))


def population(m: int = 600, seed: int = 0, quality: float = 1.0):
    """A set of m images: true P(recognized) q, outcomes y, and a calibrated guess f that follows q."""
    rng = np.random.default_rng(seed)
    q = 1 / (1 + np.exp(-rng.normal(0.3, 1.2, m)))
    y = (rng.random(m) < q).astype(float)
    f = np.clip(quality * q + (1 - quality) * rng.random(m) + 0.08, 0, 1)  # biased on purpose
    return q, y, f


@pytest.mark.parametrize("lam", [1.0, 0.0, 0.37, None])
def test_ppi_matches_the_published_estimator_and_variance(lam) -> None:
    _, y, f = population(seed=1)
    rng = np.random.default_rng(2)
    lab = rng.choice(len(y), 50, replace=False)
    unl = np.setdiff1d(np.arange(len(y)), lab)
    got = ppi_mean(y[lab], f[lab], f[unl], level=0.9, lam=lam)
    weight = tuned_lambda(y[lab], f[lab], f[unl]) if lam is None else lam
    theta, lo, hi, se = ppi_reference(y[lab], f[lab], f[unl], weight, level=0.9)
    assert got.lam == pytest.approx(weight, rel=1e-12)
    assert (got.estimate, got.ci_low, got.ci_high, got.se) == pytest.approx((theta, lo, hi, se), rel=1e-10)
    if lam == 0.0:  # no weight on the predictions: the labels' mean and its normal interval
        assert got.estimate == pytest.approx(y[lab].mean())


def test_ppi_variance_formula_matches_repeated_sampling() -> None:
    """Over many label draws the estimator's spread equals its stated SE, and the interval covers; a useless
    predictor gets weight ~0 and an interval no wider than the labels' own."""
    _, y, f = population(m=20000, seed=3)
    rng = np.random.default_rng(4)
    n, reps = 60, 400
    est, ses, cover = [], [], []
    for _ in range(reps):
        lab = rng.choice(len(y), n, replace=False)
        mask = np.zeros(len(y), bool)
        mask[lab] = True
        r = ppi_mean(y[mask], f[mask], f[~mask])
        est.append(r.estimate)
        ses.append(r.se)
        cover.append(r.ci_low <= y.mean() <= r.ci_high)
    assert np.std(est) == pytest.approx(np.mean(ses), rel=0.15)
    assert np.mean(cover) > 0.9
    _, y, junk = population(m=3000, seed=5, quality=0.0)
    lab = np.arange(100)
    r = ppi_mean(y[lab], junk[lab], junk[100:])
    lo, hi = wilson_interval(int(y[lab].sum()), 100)
    assert r.lam < 0.3 and r.ci_high - r.ci_low < 1.1 * (hi - lo)


def test_wilson_matches_its_formula() -> None:
    z = NormalDist().inv_cdf(0.975)
    k, n = 17, 50
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    assert wilson_interval(k, n) == pytest.approx((centre - half, centre + half), rel=1e-9)


def test_estimate_rates_methods_and_refusals() -> None:
    _, y, f = population(m=200, seed=6)
    per_image = pd.DataFrame({"set": np.repeat(["a", "b", "c", "d"], 50), "image_id": [str(i) for i in range(200)],
                              "p_recognized": f})
    labels = pd.DataFrame({"set": per_image["set"], "image_id": per_image["image_id"], "recognized": y})
    pick = (labels["set"] == "a") & (np.arange(200) % 50 < 25)  # 25 of a's 50 images
    pick |= (labels["set"] == "b") & (np.arange(200) % 50 < 4)  # too few for PPI
    pick |= labels["set"] == "c"  # every image labelled
    est = estimate_rates(per_image, labels[pick]).set_index("set")
    assert list(est.columns[:6]) == ["n_images", "n_labeled", "estimate", "ci_low", "ci_high", "method"]
    assert est.loc["a", "method"] == "PPI++" and est.loc["a", "n_labeled"] == 25
    a = (per_image["set"] == "a").to_numpy()
    lab_a = a & pick.to_numpy()
    ref = ppi_mean(y[lab_a], f[lab_a], f[a & ~pick.to_numpy()])
    assert est.loc["a", "estimate"] == pytest.approx(ref.estimate)
    assert est.loc["b", "method"] == "labels only (Wilson)" and est.loc["c", "method"] == "labels only (Wilson)"
    assert est.loc["c", "estimate"] == pytest.approx(y[100:150].mean())
    assert est.loc["d", "method"] == "model only, no labels" and np.isnan(est.loc["d", "ci_low"])
    assert est.loc["d", "estimate"] == pytest.approx(f[150:].mean())
    stray = pd.DataFrame({"set": ["a"], "image_id": ["nope"], "recognized": [1.0]})
    with pytest.raises(SemsimError, match="1 labelled image.*not in the per-image table"):
        estimate_rates(per_image, stray)


def test_label_budget_solves_the_variance_equation() -> None:
    z = NormalDist().inv_cdf(0.975)
    rho, rate, h, m = 0.5, 0.4, 0.05, 1000

    def half(n: int, with_ppi: bool) -> float:  # PPI++ at its best weight, N = m - n unlabelled
        shrink = rho ** 2 * (m - n) / m if with_ppi else 0.0
        return z * math.sqrt(rate * (1 - rate) / n * (1 - shrink))

    ppi, alone = label_budget(h, rho, rate=rate, n_images=m)
    assert half(ppi, True) <= h < half(ppi - 1, True)
    assert half(alone, False) <= h < half(alone - 1, False)
    assert ppi < alone
    inf_ppi, inf_alone = label_budget(h, rho, rate=rate)
    assert inf_alone == math.ceil(z * z * rate * (1 - rate) / h ** 2) and inf_ppi < ppi


def test_estimate_cli_and_annotate_sample(tmp_path) -> None:
    manifest, labels = make_sets(tmp_path, n=30)
    runner = CliRunner()
    assert runner.invoke(app, ["score", str(manifest), "--metrics", "psnr", "--out", str(tmp_path / "s.csv"),
                               "--quiet"]).exit_code == 0
    res = runner.invoke(app, ["calibrate", str(tmp_path / "s.csv"), "--labels", str(labels), "--metrics", "psnr",
                              "--holdout", "gamma", "--out", str(tmp_path / "cal.json")])
    assert res.exit_code == 0, res.output
    all_labels = pd.read_csv(labels)
    sample = all_labels[(all_labels["set"] == "gamma") & (all_labels["image_id"].astype(int) % 2 == 0)]
    write_labels(sample, tmp_path / "few.csv")
    res = runner.invoke(app, ["estimate", str(tmp_path / "s.csv"), "--calibration", str(tmp_path / "cal.json"),
                              "--labels", str(tmp_path / "few.csv"), "--out", str(tmp_path / "est.csv"),
                              "--half-width", "0.1"])
    assert res.exit_code == 0, res.output
    est = pd.read_csv(tmp_path / "est.csv").set_index("set")
    assert est.loc["gamma", "method"] == "PPI++" and est.loc["gamma", "n_labeled"] == 15
    assert est.loc["alpha", "method"] == "model only, no labels"
    assert est.loc["alpha", "ci_high"] > est.loc["alpha", "ci_low"]  # the calibration's expected-rate interval
    assert "with PPI++" in res.output and "with labels alone" in res.output


def test_annotate_init_draws_a_random_sample_of_each_set(tmp_path) -> None:
    from semsim.annotation.loading import sample_per_set

    manifest = pd.DataFrame({"set": np.repeat(["a", "b", "c"], [40, 40, 3]), "image_id": np.arange(83).astype(str)})
    one, again, other = (sample_per_set(manifest, 10, seed) for seed in (1, 1, 2))
    assert one.equals(again) and not one.equals(other)
    assert one.groupby("set").size().to_dict() == {"a": 10, "b": 10, "c": 3}
    assert one.index.is_monotonic_increasing and set(one.index) <= set(manifest.index)
    path, _ = make_sets(tmp_path, n=20)
    res = CliRunner().invoke(app, ["annotate", "init", "--db", str(tmp_path / "ann.sqlite"), "--sets", str(path),
                                   "--sample", "5", "--seed", "3", "--per-item", "1", "--task", "pair"])
    assert res.exit_code == 0, res.output
    assert "loaded 15 item(s) from 3 set(s)" in res.output


def test_statistics_commands_do_not_import_torch(tmp_path) -> None:
    """calibrate, score TABLE --calibration and estimate work on tables: no torch (issue 12's import rule)."""
    scores, labels = synthetic(n_sets=3, n=40, seed=1)
    scores.to_csv(tmp_path / "s.csv", index=False)
    write_labels(labels, tmp_path / "l.csv")
    commands = [["calibrate", "s.csv", "--labels", "l.csv", "--metrics", "psnr", "--direction", "psnr=higher",
                 "--out", "cal.json"],
                ["score", "s.csv", "--calibration", "cal.json", "--out", "p.csv"],
                ["estimate", "p.csv", "--labels", "l.csv", "--out", "e.csv"]]
    code = ("import json, sys\nfrom semsim.cli import main\nfor argv in json.loads(sys.argv[1]):\n"
            "    sys.argv = ['semsim', *argv]\n    try:\n        main()\n    except SystemExit as e:\n"
            "        assert e.code in (0, None), (argv, e.code)\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\n")
    res = subprocess.run([sys.executable, "-c", code, json.dumps(commands)], capture_output=True, text=True,
                         timeout=180, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    assert (tmp_path / "e.csv").is_file()


# ------------------------------------------------------------------------------- real human judgments


@pytest.fixture(scope="module")
def cifar100():
    from semsim.analysis import import_semsim_cifar100, join_scores_labels
    from semsim.analysis.data import SEMSIM_CIFAR100_DIRECTIONS

    scores, labels = import_semsim_cifar100(shared_path("cifar100_human_labels", "labels.csv"))
    return join_scores_labels(scores, labels, directions=SEMSIM_CIFAR100_DIRECTIONS)


def test_base_rate_ece_is_no_longer_a_pooling_artefact(cifar100) -> None:
    """Pooled over leave-one-out folds the base rate's nearly equal constants fall in one bin and its ECE was
    0.000; scored within each held-out configuration it is the mean |true rate - training rate|."""
    from semsim.analysis.calibration import expected_calibration_error, heldout_summary

    t = cifar100.table
    y = (t["recognized"] > 0.5).to_numpy(float)
    sets = t["set"].to_numpy()
    pooled = np.full(len(t), np.nan)
    for s in dict.fromkeys(sets):
        pooled[sets == s] = y[sets != s].mean()
    assert expected_calibration_error(pooled, y) < 0.01
    base = heldout_summary(cifar100, []).set_index("metric").loc["base rate"]
    assert base["ece"] > 0.1 and base["ece"] == pytest.approx(base["rate_error"])


@pytest.mark.parametrize("holdout", ["ConvNet", "ResNet"])
def test_expected_rate_intervals_cover_held_out_configurations(cifar100, holdout) -> None:
    per_set, _ = heldout_evaluation(cifar100, ["lpips_squeeze", "dreamsim"], holdout=holdout, intervals=True)
    assert len(per_set) == 7 and per_set["covered"].sum() >= 6
    assert (per_set["abs_rate_error"] > 0.05).any()  # the metrics alone do miss: the width is not for show


def test_ppi_with_50_labels_covers_and_beats_wilson(cifar100) -> None:
    """50 random labels per configuration, the calibration fitted on the other 13 configurations: the PPI++
    intervals cover each configuration's true rate in >= 93% of repeated draws, narrower than Wilson's."""
    t = cifar100.table
    rng = np.random.default_rng(0)
    per_image = []
    for name in dict.fromkeys(t["set"]):
        m = (t["set"] == name).to_numpy()
        cal = fit_calibration(t[~m], ["lpips_squeeze", "dreamsim"], cifar100.directions, n_draws=0, spread=False,
                              warn=False)
        per_image.append(t[m][["set", "image_id", "recognized"]].assign(p_recognized=cal.predict(t[m])))
    per_image = pd.concat(per_image, ignore_index=True)
    truth = (per_image["recognized"] > 0.5).groupby(per_image["set"]).mean()
    cover, width, wilson = [], [], []
    for _ in range(60):
        labels = per_image.groupby("set", group_keys=False).sample(50, random_state=rng)
        est = estimate_rates(per_image, labels).set_index("set")
        assert (est["method"] == "PPI++").all()
        true = truth.loc[est.index]
        cover.append((est["ci_low"] <= true) & (true <= est["ci_high"]))
        width.append(est["ci_high"] - est["ci_low"])
        wilson.append(est["labels_only_ci_high"] - est["labels_only_ci_low"])
    assert np.mean(cover) >= 0.93
    assert np.mean(width) <= np.mean(wilson)
