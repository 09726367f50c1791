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

import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from semsim.analysis.data import AnalysisData
from semsim.analysis.stats import aligned, auroc
from semsim.common.io import write_json
from semsim.data.labels import majority
from semsim.errors import SemsimError

CALIBRATION_FORMAT = "semsim-calibration"
CALIBRATION_VERSION = 1
METHODS = ("logistic", "isotonic")
TARGETS = ("majority", "share")


@dataclass
class Calibration:
    """A fitted map from metric columns to P(recognized); see the module docstring."""

    method: str
    features: list[str]
    directions: dict[str, bool]
    target: str
    params: dict
    feature_range: dict[str, list[float]]
    trained_on: dict = field(default_factory=dict)
    heldout: dict = field(default_factory=dict)

    def _aligned(self, table: pd.DataFrame, where: str) -> np.ndarray:
        missing = [f for f in self.features if f not in table.columns]
        if missing:
            raise SemsimError(f"{where}: the calibration needs column(s) {', '.join(missing)}; score with "
                              f"--metrics including them")
        x = table[self.features].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)
        return np.stack([aligned(x[:, k], self.directions[f]) for k, f in enumerate(self.features)], axis=1)

    def predict(self, table: pd.DataFrame, where: str = "score table") -> np.ndarray:
        """P(recognized) per row of ``table`` (NaN where a feature is missing)."""
        x = self._aligned(table, where)
        if self.method == "logistic":
            z = (x - np.asarray(self.params["mean"])) / np.asarray(self.params["scale"])
            logit = z @ np.asarray(self.params["coef"]) + self.params["intercept"]
            return 1.0 / (1.0 + np.exp(-logit))
        p = np.interp(x[:, 0], self.params["x"], self.params["y"])
        return np.where(np.isfinite(x[:, 0]), p, np.nan)

    def out_of_range(self, table: pd.DataFrame) -> dict[str, float]:
        """Share of values outside the range seen in fitting, per feature (a hint of a scale mismatch)."""
        out = {}
        for f in self.features:
            v = pd.to_numeric(table[f], errors="coerce").to_numpy(dtype=float)
            lo, hi = self.feature_range[f]
            out[f] = float(np.mean((v < lo) | (v > hi))) if len(v) else 0.0
        return out

    def to_dict(self) -> dict:
        return {"format": CALIBRATION_FORMAT, "version": CALIBRATION_VERSION, **asdict(self)}

    def save(self, path: str | os.PathLike) -> Path:
        """Write the calibration as JSON, atomically."""
        return write_json(self.to_dict(), path)


def load_calibration(path: str | os.PathLike) -> Calibration:
    """Read a calibration JSON file written by :meth:`Calibration.save`."""
    path = Path(path)
    if not path.is_file():
        raise SemsimError(f"{path}: no such file; give a calibration written by 'semsim calibrate'")
    try:
        obj = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SemsimError(f"{path}: not a JSON file ({exc}); give a calibration written by 'semsim calibrate'"
                          ) from None
    if not isinstance(obj, dict) or obj.get("format") != CALIBRATION_FORMAT:
        raise SemsimError(f"{path}: not a semsim calibration file (no \"format\": \"{CALIBRATION_FORMAT}\")")
    if obj.get("version") != CALIBRATION_VERSION:
        raise SemsimError(f"{path}: calibration version {obj.get('version')!r} is not supported (this semsim "
                          f"reads version {CALIBRATION_VERSION}); refit it with 'semsim calibrate'")
    try:
        cal = Calibration(**{k: obj[k] for k in ("method", "features", "directions", "target", "params",
                                                 "feature_range", "trained_on", "heldout")})
    except KeyError as exc:
        raise SemsimError(f"{path}: calibration file lacks the field {exc}; refit it") from None
    if cal.method not in METHODS:
        raise SemsimError(f"{path}: unknown calibration method {cal.method!r}")
    return cal


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


def expected_recognition(per_image: pd.DataFrame, cal: Calibration, n_boot: int = 1000, seed: int = 0,
                         level: float = 0.95) -> tuple[np.ndarray, pd.DataFrame]:
    """Per-image P(recognized) and, per set, the expected recognition rate with an interval.

    The interval is a percentile interval of the set's recognition rate simulated under the calibration:
    resample the set's images with replacement, draw each outcome as Bernoulli(p), take the mean. It covers
    which images were attacked and which of them people happen to recognize (not the fit's own error).
    """
    p = cal.predict(per_image)
    rng = np.random.default_rng(seed)
    rows = []
    a = (1 - level) / 2
    for name, idx in per_image.groupby("set", sort=False).indices.items():
        q = p[idx]
        q = q[np.isfinite(q)]
        row = {"set": name, "expected_recognition_rate": float(q.mean()) if len(q) else float("nan"),
               "expected_recognition_ci_low": float("nan"), "expected_recognition_ci_high": float("nan")}
        if len(q):
            draws = q[rng.integers(0, len(q), size=(n_boot, len(q)))]
            rates = (rng.random(draws.shape) < draws).mean(1)
            row["expected_recognition_ci_low"] = float(np.quantile(rates, a))
            row["expected_recognition_ci_high"] = float(np.quantile(rates, 1 - a))
        rows.append(row)
    return p, pd.DataFrame(rows)


def apply_calibration(per_image: pd.DataFrame, per_set: pd.DataFrame, cal: Calibration, n_boot: int = 1000,
                      seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """Add ``p_recognized`` to a per-image score table and, per set, ``p_recognized_mean/_median/_ci_low/
    _ci_high`` (bootstrap interval of the mean, as for every score column) and ``expected_recognition_rate``
    with ``expected_recognition_ci_low/_high`` (see :func:`expected_recognition`). Notes warn of values
    outside the fitted range (e.g. mse on another scale)."""
    from semsim.metrics.scoring import bootstrap_mean_ci

    p, expected = expected_recognition(per_image, cal, n_boot=n_boot, seed=seed)
    per_image = per_image.assign(p_recognized=p)
    rows = []
    for name, idx in per_image.groupby("set", sort=False).indices.items():
        q = p[idx]
        finite = q[np.isfinite(q)]
        lo, hi = bootstrap_mean_ci(q, n_boot, seed)
        rows.append({"set": name, "p_recognized_mean": float(finite.mean()) if len(finite) else float("nan"),
                     "p_recognized_median": float(np.median(finite)) if len(finite) else float("nan"),
                     "p_recognized_ci_low": lo, "p_recognized_ci_high": hi})
    extra = pd.DataFrame(rows).merge(expected, on="set")
    per_set = per_set.drop(columns=[c for c in extra.columns if c != "set" and c in per_set.columns])
    per_set = per_set.assign(set=per_set["set"].astype(str)).merge(extra.assign(set=extra["set"].astype(str)),
                                                                   on="set", how="left")
    notes = [f"calibration: {share:.0%} of {f} values lie outside the range it was fitted on "
             f"[{cal.feature_range[f][0]:.4g}, {cal.feature_range[f][1]:.4g}]; check that the metric is on "
             "the same scale" for f, share in cal.out_of_range(per_image).items() if share > 0.05]
    return per_image, per_set, notes
