"""Calibration: a monotone map from metric values to P(a person recognizes the reconstruction).

Two methods, both fitted on the aligned metric values (larger = more leakage) so the map always increases:

* ``logistic`` (default): logistic regression on standardised aligned values, one or a few metrics
  (Platt scaling; Platt, 1999). With several metrics the map is monotone in each metric whose fitted
  coefficient is positive; the coefficients are stored and shown.
* ``isotonic``: isotonic regression on one metric (Zadrozny & Elkan, 2002), a step-wise increasing map
  stored as its breakpoints and applied by linear interpolation, clipped at the ends.

The target is the majority label (``recognized > 0.5``; the set's expected recognition rate is then the
mean probability) or, with ``target="share"``, the share of judges who recognized (each image weighted by
its judges). Calibrations are JSON files (never pickles). Evaluation splits by set: AUROC, Brier score and
expected calibration error (10 equal-width bins; Naeini et al., 2015) on held-out sets.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from semsim.analysis.data import AnalysisData
from semsim.analysis.stats import auroc
from semsim.data.labels import majority
from semsim.errors import SemsimError

# loading and applying a calibration file belongs to scoring (semsim score --calibration); re-exported here
from semsim.metrics.calibrated import (  # noqa: F401
    CALIBRATION_FORMAT,
    CALIBRATION_VERSION,
    METHODS,
    Calibration,
    apply_calibration,
    expected_recognition,
    load_calibration,
)

TARGETS = ("majority", "share")


def _targets(table: pd.DataFrame, target: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row index, 0/1 outcome, weight) for fitting: one row per image (majority) or two (share)."""
    n = len(table)
    if target == "majority":
        return np.arange(n), majority(table).to_numpy(dtype=float), np.ones(n)
    share = table["recognized"].to_numpy(dtype=float)
    return (np.concatenate([np.arange(n), np.arange(n)]), np.concatenate([np.ones(n), np.zeros(n)]),
            np.concatenate([share, 1 - share]))


def fit_calibration(table: pd.DataFrame, features: list[str], directions: dict[str, bool], *,
                    method: str = "logistic", target: str = "majority") -> Calibration:
    """Fit a monotone map from ``features`` (aligned by ``directions``) to P(recognized) on a joined table."""
    from sklearn.isotonic import IsotonicRegression
    from sklearn.linear_model import LogisticRegression

    if method not in METHODS:
        raise SemsimError(f"calibration method {method!r}: choose one of {', '.join(METHODS)}")
    if target not in TARGETS:
        raise SemsimError(f"calibration target {target!r}: choose one of {', '.join(TARGETS)}")
    if not features:
        raise SemsimError("calibration: name at least one metric column to calibrate")
    if method == "isotonic" and len(features) != 1:
        raise SemsimError(f"isotonic calibration takes one metric, not {len(features)} "
                          f"({', '.join(features)}); use --method logistic for a combination")
    cal = Calibration(method, list(features), {f: bool(directions[f]) for f in features}, target, {},
                      {f: [float(table[f].min()), float(table[f].max())] for f in features})
    x = cal._aligned(table, "calibration data")
    rows, y, w = _targets(table, target)
    if not (w[y == 1].sum() > 0 and w[y == 0].sum() > 0):
        raise SemsimError("calibration data: no image is recognized, or every one is; calibration needs both "
                          "recognized and unrecognized images")
    if method == "logistic":
        mean, scale = x.mean(0), x.std(0)
        scale = np.where(scale > 0, scale, 1.0)
        model = LogisticRegression(C=1e4, max_iter=1000)
        model.fit((x[rows] - mean) / scale, y, sample_weight=w)
        cal.params = {"mean": mean.tolist(), "scale": scale.tolist(), "coef": model.coef_[0].tolist(),
                      "intercept": float(model.intercept_[0])}
    else:
        iso = IsotonicRegression(increasing=True, y_min=0.0, y_max=1.0, out_of_bounds="clip")
        iso.fit(x[rows, 0], y, sample_weight=w)
        cal.params = {"x": iso.X_thresholds_.tolist(), "y": iso.y_thresholds_.tolist()}
    cal.trained_on = {"sets": sorted(table["set"].astype(str).unique()), "n_images": int(len(table)),
                      "label_sources": sorted(table["label_source"].astype(str).unique())}
    return cal


def expected_calibration_error(p: np.ndarray, y: np.ndarray, bins: int = 10) -> float:
    """ECE: the bin-size-weighted mean |observed rate - mean probability| over equal-width bins of p."""
    p, y = np.asarray(p, float), np.asarray(y, float)
    idx = np.minimum((p * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        sel = idx == b
        if sel.any():
            total += sel.sum() * abs(y[sel].mean() - p[sel].mean())
    return float(total / len(p))


def evaluate_probabilities(p: np.ndarray, table: pd.DataFrame) -> dict[str, float]:
    """AUROC, Brier score and ECE of ``p`` against the majority label; ``set_mae``: mean absolute error of
    each set's mean probability against its recognition rate."""
    y = majority(table).to_numpy(dtype=float)
    sets = table["set"].to_numpy()
    frame = pd.DataFrame({"set": sets, "p": p, "y": y}).groupby("set")[["p", "y"]].mean()
    return {"n_images": int(len(y)), "n_sets": int(len(frame)), "auroc": auroc(p, y),
            "brier": float(np.mean((p - y) ** 2)), "ece": expected_calibration_error(p, y),
            "set_mae": float(np.mean(np.abs(frame["p"] - frame["y"])))}


def split_sets(sets: pd.Series, holdout: str | None) -> list[tuple[str, np.ndarray]]:
    """Folds as (name, held-out mask): sets matching the regex ``holdout`` (one fold), or, without it,
    leave-one-set-out."""
    sets = sets.astype(str).to_numpy()
    if holdout:
        try:
            test = np.array([re.search(holdout, s) is not None for s in sets])
        except re.error as exc:
            raise SemsimError(f"--holdout {holdout!r}: not a regular expression ({exc})") from None
        if test.all() or not test.any():
            raise SemsimError(f"--holdout {holdout!r} matches {'every' if test.all() else 'no'} set; it must "
                              "pick some sets to hold out and leave others to fit on")
        return [(f"holdout /{holdout}/", test)]
    names = list(dict.fromkeys(sets))
    if len(names) < 2:
        raise SemsimError("calibration check needs at least two sets (fit on some, test on others)")
    return [(name, sets == name) for name in names]


def cross_validate(data: AnalysisData, features: list[str], *, method: str = "logistic",
                   target: str = "majority", holdout: str | None = None) -> tuple[np.ndarray, dict]:
    """Held-out probabilities for every image of a held-out set (NaN elsewhere) and their scores.

    Each fold fits on the other sets and predicts its own; scores pool the held-out predictions. With no
    ``features`` every image gets the training sets' recognition rate (the baseline a metric must beat).
    """
    t = data.table
    p = np.full(len(t), np.nan)
    for _, test in split_sets(t["set"], holdout):
        train = t[~test]
        if majority(train).nunique() < 2:
            continue
        if not features:  # the baseline: every image gets the training sets' recognition rate
            p[test] = majority(train).mean() if target == "majority" else train["recognized"].mean()
            continue
        cal = fit_calibration(train, features, data.directions, method=method, target=target)
        p[test] = cal.predict(t[test])
    done = np.isfinite(p)
    if not done.any():
        raise SemsimError("calibration check: no fold had both recognized and unrecognized training images")
    scores = evaluate_probabilities(p[done], t[done])
    scores["split"] = f"holdout /{holdout}/" if holdout else "leave-one-set-out"
    return p, scores


def calibration_table(data: AnalysisData, *, method: str = "logistic", target: str = "majority",
                      holdout: str | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Held-out AUROC / Brier / ECE / set MAE of a per-metric calibration, one row per metric and a last
    ``(base rate)`` row (the training sets' recognition rate for every image); plus the held-out
    probabilities (one column ``p_<metric>`` per metric) for reliability plots."""
    rows, probs = [], {}
    for m in [*data.metrics, None]:
        p, scores = cross_validate(data, [m] if m else [], method=method, target=target, holdout=holdout)
        if not m:  # a constant ranks nothing (pooled over folds its AUROC would be an artefact)
            scores["auroc"] = float("nan")
        rows.append({"metric": m or "(base rate)", "method": method if m else "constant", "target": target,
                     **scores})
        if m:
            probs[f"p_{m}"] = p
    return pd.DataFrame(rows), pd.DataFrame(probs)
