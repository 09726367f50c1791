"""Calibration: fit a monotone map from metric values to P(a person recognizes the reconstruction), judge it
on configurations it has not seen, and estimate a new configuration's recognition rate from a few labels.

Fitting (:func:`fit_calibration`; the map and its file: :mod:`semsim.metrics.calibrated`):

* ``logistic`` (default): logistic regression on standardised aligned values (larger = more leakage; Platt,
  1999) with every coefficient constrained to be >= 0, so a combination of metrics stays monotone in each;
  a metric whose weight the constraint holds at 0 is named in a warning.
* ``isotonic``: isotonic regression on one metric (Zadrozny & Elkan, 2002).

The target is the majority label (``recognized > 0.5``) or, with ``target="share"``, the share of judges
who recognized (each image weighted by its judges). Each fit also stores bootstrap refits (resampling
images within sets; the fit's own uncertainty) and the residuals of each training set's recognition rate
when that set is left out (the between-configuration spread); :func:`~semsim.metrics.calibrated.
expected_recognition` turns them into an interval for a new set's expected rate.

Evaluation holds out whole configurations (sets): each in turn (leave-one-configuration-out) or those a
regex names. Every figure is computed within one held-out configuration: AUROC, Brier score, expected
calibration error (10 equal-width bins, with their counts; Naeini et al., 2015), the signed bias and the
absolute error of the predicted rate, and whether the expected-rate interval covers the true rate; the
training sets' base rate is the reference row.

Estimation from labels (:func:`estimate_rates`): prediction-powered inference (Angelopoulos, Bates,
Fannjiang, Jordan & Zrnic, "Prediction-powered inference", Science 2023) in its power-tuned form PPI++
(Angelopoulos, Duchi & Zrnic, "PPI++: Efficient prediction-powered inference", 2023): a few images people
judged correct the calibrated probabilities of all the others; the interval is valid whatever the
calibration's quality and, with the tuned weight, about as narrow as labels alone at worst.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats
from scipy.optimize import minimize

from semsim.analysis.data import AnalysisData
from semsim.analysis.stats import auroc
from semsim.data.labels import majority
from semsim.errors import SemsimError
from semsim.metrics.calibrated import (  # noqa: F401  (loading and applying a file: re-exported here)
    METHODS,
    TARGETS,
    Calibration,
    apply_calibration,
    expected_recognition,
    load_calibration,
    rate_interval,
)

L2_C = 1e4  # inverse L2 strength of the logistic fit (as scikit-learn's C); practically unpenalised
N_DRAWS = 100  # bootstrap refits stored with a calibration
GRID = 101  # points at which bootstrap refits of an isotonic map are stored
MIN_PPI_LABELS = 10  # fewer labelled images of a set: labels alone (Wilson), the normal approximation fails


# ------------------------------------------------------------------------------------------------ fitting


def _logistic(z: np.ndarray, y: np.ndarray, w: np.ndarray) -> tuple[float, np.ndarray, list[int]]:
    """Weighted logistic regression with coefficients >= 0 (L-BFGS-B; an L2 term 1/(2C) |coef|^2 as in
    scikit-learn); returns (intercept, coef, indices of coefficients the bound holds at 0 against a
    gradient pulling them negative)."""
    k = z.shape[1]

    def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
        s = theta[0] + z @ theta[1:]
        g = w * (1.0 / (1.0 + np.exp(-s)) - y)
        value = np.sum(w * (np.logaddexp(0.0, s) - y * s)) + theta[1:] @ theta[1:] / (2 * L2_C)
        return value, np.concatenate([[g.sum()], z.T @ g + theta[1:] / L2_C])

    res = minimize(loss, np.zeros(k + 1), jac=True, method="L-BFGS-B", bounds=[(None, None)] + [(0, None)] * k,
                   options={"gtol": 1e-9, "ftol": 1e-13, "maxiter": 2000})
    grad = loss(res.x)[1][1:]
    held = [j for j in range(k) if res.x[1 + j] <= 1e-10 and grad[j] > 1e-6 * max(1.0, w.sum())]
    return float(res.x[0]), np.maximum(res.x[1:], 0.0), held


@dataclass
class Outcomes:
    """What a map is fitted to and judged against, as arrays: majority labels ``y``, judge shares ``share``
    (NaN when unknown) and each image's set (``sets``: codes into ``names``)."""

    y: np.ndarray
    share: np.ndarray
    sets: np.ndarray
    names: list[str]

    @classmethod
    def of(cls, table: pd.DataFrame) -> Outcomes:
        codes, names = pd.factorize(table["set"].astype(str))
        return cls(majority(table).to_numpy(dtype=float), table["recognized"].to_numpy(dtype=float), codes,
                   [str(n) for n in names])

    def take(self, idx: np.ndarray) -> Outcomes:
        return Outcomes(self.y[idx], self.share[idx], self.sets[idx], self.names)

    def rate(self, target: str) -> float:
        """The recognition rate as a map with this ``target`` predicts it: share recognized by a majority, or
        the mean share of judges."""
        return float(self.y.mean() if target == "majority" else self.share.mean())

    def fitting_rows(self, target: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(row index, 0/1 outcome, weight): one row per image (majority) or two weighted by the share."""
        n = len(self.y)
        if target == "majority":
            return np.arange(n), self.y, np.ones(n)
        return (np.concatenate([np.arange(n), np.arange(n)]), np.concatenate([np.ones(n), np.zeros(n)]),
                np.concatenate([self.share, 1 - self.share]))

    def has_both(self, target: str) -> bool:
        _, y, w = self.fitting_rows(target)
        return bool(w[y == 1].sum() > 0 and w[y == 0].sum() > 0)


def _fit_params(cal: Calibration, x: np.ndarray, out: Outcomes) -> tuple[dict, list[int]]:
    """The map's parameters fitted on aligned values ``x`` (and the coefficients held at 0)."""
    if cal.method == "constant":
        return {"rate": out.rate(cal.target)}, []
    rows, y, w = out.fitting_rows(cal.target)
    if cal.method == "logistic":
        z = (x - np.asarray(cal.params["mean"])) / np.asarray(cal.params["scale"])
        intercept, coef, held = _logistic(z[rows], y, w)
        return {"coef": coef.tolist(), "intercept": intercept}, held
    from sklearn.isotonic import IsotonicRegression

    iso = IsotonicRegression(increasing=True, y_min=0.0, y_max=1.0, out_of_bounds="clip")
    iso.fit(x[rows, 0], y, sample_weight=w)
    return {"x": iso.X_thresholds_.tolist(), "y": iso.y_thresholds_.tolist()}, []


def _bootstrap_draws(cal: Calibration, x: np.ndarray, out: Outcomes, n_draws: int, seed: int) -> list[dict]:
    """Refits on images resampled with replacement within each set (the fit's own uncertainty); isotonic
    refits are stored at ``GRID`` quantiles of the fitted values."""
    rng = np.random.default_rng(seed)
    groups = [np.flatnonzero(out.sets == g) for g in np.unique(out.sets)]
    grid = np.quantile(x[:, 0], np.linspace(0, 1, GRID)) if cal.method == "isotonic" else None
    draws = []
    for _ in range(n_draws):
        idx = np.concatenate([g[rng.integers(0, len(g), len(g))] for g in groups])
        params, _ = _fit_params(cal, x[idx], out.take(idx))
        if grid is not None:
            params = {"x": grid.tolist(), "y": np.interp(grid, params["x"], params["y"]).tolist()}
        draws.append(params)
    return draws


def _fit(features: list[str], directions: dict[str, bool], x: np.ndarray, out: Outcomes, *, method: str,
         target: str, n_draws: int, seed: int, spread: bool) -> tuple[Calibration, list[int]]:
    """:func:`fit_calibration` on arrays (aligned values ``x``); also returns the held-at-0 coefficients."""
    lo = np.nanmin(x, 0) if len(x) else np.zeros(x.shape[1])
    hi = np.nanmax(x, 0) if len(x) else np.zeros(x.shape[1])
    ranges = {f: [float(lo[k]), float(hi[k])] if directions[f] else [float(-hi[k]), float(-lo[k])]
              for k, f in enumerate(features)}
    cal = Calibration(method if features else "constant", list(features),
                      {f: bool(directions[f]) for f in features}, target, {}, ranges)
    if cal.method == "logistic":
        scale = x.std(0)
        cal.params = {"mean": x.mean(0).tolist(), "scale": np.where(scale > 0, scale, 1.0).tolist()}
    params, held = _fit_params(cal, x, out)
    cal.params.update(params, held_at_zero=[features[j] for j in held])
    cal.params["draws"] = _bootstrap_draws(cal, x, out, n_draws, seed) if n_draws else []
    if spread:
        cal.spread = _loso_residuals(features, directions, x, out, method=method, target=target)
    return cal, held


def _loso_residuals(features: list[str], directions: dict[str, bool], x: np.ndarray, out: Outcomes, *,
                    method: str, target: str) -> dict:
    """Observed minus predicted recognition rate of each set when the map is fitted on the other sets."""
    names, residuals = [], []
    for g in np.unique(out.sets):
        test = out.sets == g
        train = out.take(~test)
        if not train.has_both(target):
            continue
        fold, _ = _fit(features, directions, x[~test], train, method=method, target=target, n_draws=0, seed=0,
                       spread=False)
        residuals.append(out.take(test).rate(target) - float(np.nanmean(fold.map_values(x[test]))))
        names.append(out.names[g])
    return {"sets": names, "residuals": residuals}


def fit_calibration(table: pd.DataFrame, features: list[str], directions: dict[str, bool], *,
                    method: str = "logistic", target: str = "majority", n_draws: int = N_DRAWS, seed: int = 0,
                    spread: bool = True, warn: bool = True) -> Calibration:
    """Fit a monotone map from ``features`` (aligned by ``directions``) to P(recognized) on a joined table
    (``set``, the feature columns, ``recognized``).

    No ``features``: the constant base rate. ``n_draws`` bootstrap refits and (``spread``) the
    leave-one-set-out residuals are stored for the expected-rate interval. With ``warn``, a metric whose
    coefficient the monotonicity constraint holds at 0 is named in a :class:`UserWarning`.
    """
    if method not in METHODS:
        raise SemsimError(f"calibration method {method!r}: choose one of {', '.join(METHODS)}")
    if target not in TARGETS:
        raise SemsimError(f"calibration target {target!r}: choose one of {', '.join(TARGETS)}")
    if method == "isotonic" and features and len(features) != 1:
        raise SemsimError(f"isotonic calibration takes one metric, not {len(features)} "
                          f"({', '.join(features)}); use --method logistic for a combination")
    out = Outcomes.of(table)
    if not out.has_both(target):
        raise SemsimError("calibration data: no image is recognized, or every one is; calibration needs both "
                          "recognized and unrecognized images")
    probe = Calibration(method, list(features), {f: bool(directions[f]) for f in features}, target, {}, {})
    x = probe.aligned_values(table, "calibration data")
    cal, held = _fit(features, directions, x, out, method=method, target=target, n_draws=n_draws, seed=seed,
                     spread=spread)
    if warn and held:
        names = ", ".join(cal.params["held_at_zero"])
        warnings.warn(f"calibration: {names} would get a negative weight next to the other metrics (more "
                      f"leakage by {names}, lower P(recognized)); the weight is held at 0 so the map stays "
                      f"monotone, and {names} adds nothing to it", stacklevel=2)
    cal.trained_on = {"sets": sorted(set(out.names[g] for g in np.unique(out.sets))), "n_images": int(len(table)),
                      "label_sources": sorted(table["label_source"].astype(str).unique())
                      if "label_source" in table else []}
    return cal


# --------------------------------------------------------------------------------------------- evaluation


def calibration_bins(p: np.ndarray, y: np.ndarray, bins: int = 10) -> tuple[float, np.ndarray]:
    """ECE (the count-weighted mean |observed rate - mean probability| over ``bins`` equal-width bins of p;
    Naeini et al., 2015) and the number of images in each bin."""
    p, y = np.asarray(p, float), np.asarray(y, float)
    idx = np.minimum((p * bins).astype(int), bins - 1)
    counts = np.bincount(idx, minlength=bins)
    gap = np.abs(np.bincount(idx, y, bins) - np.bincount(idx, p, bins))  # per bin: n * |rate - mean p|
    return float(gap.sum() / len(p)), counts


def expected_calibration_error(p: np.ndarray, y: np.ndarray, bins: int = 10) -> float:
    """ECE of probabilities ``p`` for outcomes ``y`` (see :func:`calibration_bins`)."""
    return calibration_bins(p, y, bins)[0]


def evaluate_probabilities(p: np.ndarray, out: Outcomes, target: str = "majority") -> dict:
    """Scores of ``p`` on ONE held-out set against its majority labels: AUROC (NaN for a constant), Pearson
    correlation (what PPI++ gains from; :func:`label_budget`), Brier, ECE with its bin counts, and the
    predicted rate against the observed one (bias = predicted - observed)."""
    y = out.y
    ece, counts = calibration_bins(p, y)
    rate, predicted = out.rate(target), float(np.mean(p))
    varies = np.ptp(p) > 0
    return {"n_images": int(len(y)), "rate": rate, "predicted": predicted, "bias": predicted - rate,
            "abs_rate_error": abs(predicted - rate), "auroc": auroc(p, y) if varies else float("nan"),
            "correlation": float(np.corrcoef(p, y)[0, 1]) if varies and np.ptp(y) > 0 else float("nan"),
            "brier": float(np.mean((p - y) ** 2)), "ece": ece, "ece_bins": " ".join(map(str, counts))}


def split_sets(sets: pd.Series, holdout: str | None) -> list[tuple[str, np.ndarray]]:
    """Folds as (name, held-out mask): the sets matching the regex ``holdout`` (searched ignoring case, so
    ``ConvNet`` matches ``cifar100/convnet/...``; one fold), or, without it, each set in turn
    (leave-one-configuration-out)."""
    sets = sets.astype(str).to_numpy()
    if holdout:
        try:
            test = np.array([re.search(holdout, s, re.IGNORECASE) is not None for s in sets])
        except re.error as exc:
            raise SemsimError(f"--holdout {holdout!r}: not a regular expression ({exc})") from None
        if test.all() or not test.any():
            raise SemsimError(f"--holdout {holdout!r} matches {'every' if test.all() else 'no'} set; it must "
                              "pick some sets to hold out and leave others to fit on")
        return [(split_name(holdout), test)]
    names = list(dict.fromkeys(sets))
    if len(names) < 2:
        raise SemsimError("calibration check needs at least two sets (fit on some, test on others)")
    return [(name, sets == name) for name in names]


def split_name(holdout: str | None) -> str:
    """How the held-out figures were made: ``holdout /REGEX/`` or ``leave-one-configuration-out``."""
    return f"holdout /{holdout}/" if holdout else "leave-one-configuration-out"


def heldout_evaluation(data: AnalysisData, features: list[str], *, method: str = "logistic",
                       target: str = "majority", holdout: str | None = None, intervals: bool = False,
                       level: float = 0.95) -> tuple[pd.DataFrame, np.ndarray]:
    """One row per held-out configuration (``set`` and :func:`evaluate_probabilities`) and the held-out
    probability of every image (NaN for images never held out). No ``features``: the base rate.

    With ``intervals`` each fold's map also gets its bootstrap refits and leave-one-set-out residuals, and the
    rows give the expected-rate interval (``ci_low``, ``ci_high``; :func:`~semsim.metrics.calibrated.
    rate_interval`) and whether it ``covered`` the true rate.
    """
    t = data.table
    out = Outcomes.of(t)
    probe = Calibration(method, list(features), {f: bool(data.directions[f]) for f in features}, target, {}, {})
    x = probe.aligned_values(t, "calibration data")
    p = np.full(len(t), np.nan)
    rows = []
    for _, test in split_sets(t["set"], holdout):
        train = out.take(~test)
        if not train.has_both(target):
            continue
        cal, _ = _fit(features, data.directions, x[~test], train, method=method, target=target,
                      n_draws=N_DRAWS if intervals else 0, seed=0, spread=intervals)
        p[test] = cal.map_values(x[test])
        for g in np.unique(out.sets[test]):
            idx = np.flatnonzero(out.sets == g)
            row = {"set": out.names[g], **evaluate_probabilities(p[idx], out.take(idx), target)}
            if intervals:
                _, lo, hi = rate_interval(p[idx], cal.map_draws(x[idx]), cal, level)
                row.update(ci_low=lo, ci_high=hi, covered=bool(lo <= row["rate"] <= hi))
            rows.append(row)
    if not rows:
        raise SemsimError("calibration check: no fold had both recognized and unrecognized training images")
    return pd.DataFrame(rows), p


def summarize_heldout(per_set: pd.DataFrame, metric: str, split: str) -> dict:
    """The mean over held-out configurations of their figures (equal weight per configuration)."""
    out: dict[str, Any] = {"metric": metric}
    for col, name in (("auroc", "auroc"), ("brier", "brier"), ("ece", "ece"), ("bias", "bias"),
                      ("abs_rate_error", "rate_error")):
        out[name] = float(per_set[col].mean())
    out.update(n_sets=int(len(per_set)), n_images=int(per_set["n_images"].sum()), split=split,
               correlation=float(per_set["correlation"].mean()))
    if "covered" in per_set:
        out["coverage"] = float(per_set["covered"].mean())
    return out


def heldout_summary(data: AnalysisData, metrics: list[str] | None = None, *, method: str = "logistic",
                    target: str = "majority", holdout: str | None = None) -> pd.DataFrame:
    """Held-out AUROC, Brier, ECE, bias and |rate error| of a one-metric calibration per metric, each the
    mean over held-out configurations of its value within that configuration; a last ``base rate`` row
    (every image gets the training sets' recognition rate)."""
    return calibration_table(data, metrics, method=method, target=target, holdout=holdout)[0].drop(
        columns=["method", "target"])


def calibration_table(data: AnalysisData, metrics: list[str] | None = None, *, method: str = "logistic",
                      target: str = "majority", holdout: str | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """:func:`heldout_summary` of each metric (default: all) with ``method`` and ``target`` columns, and the
    held-out probabilities (one column ``p_<metric>`` per metric) for reliability plots."""
    rows, probs = [], {}
    for m in [*(data.metrics if metrics is None else metrics), None]:
        per_set, p = heldout_evaluation(data, [m] if m else [], method=method, target=target, holdout=holdout)
        rows.append({**summarize_heldout(per_set, m or "base rate", split_name(holdout)),
                     "method": method if m else "constant", "target": target})
        if m:
            probs[f"p_{m}"] = p
    return pd.DataFrame(rows), pd.DataFrame(probs)


# -------------------------------------------------------------------------------- estimates from labels


@dataclass
class PPIEstimate:
    """A prediction-powered estimate of a mean: point, interval, the weight of the predictions, its SE."""

    estimate: float
    ci_low: float
    ci_high: float
    lam: float
    se: float


def ppi_mean(y: np.ndarray, f_labeled: np.ndarray, f_unlabeled: np.ndarray, level: float = 0.95,
             lam: float | None = None) -> PPIEstimate:
    """Prediction-powered estimate of E[Y] from n labelled pairs (Y_i, f_i) and N unlabelled predictions.

    ``theta = lam * mean(f_unlabeled) + mean(y - lam * f_labeled)`` with standard error
    ``sqrt(lam^2 Var(f_unlabeled) / N + Var(y - lam f_labeled) / n)`` and a normal interval (Angelopoulos et
    al., Science 2023, with ``lam = 1``). ``lam=None`` tunes it (PPI++, Angelopoulos, Duchi & Zrnic, 2023):
    ``lam = Cov(Y, f) / ((1 + n/N) Var(f))`` (covariance on the labelled pairs, variance on all predictions),
    clipped to [0, 1]; ``lam = 0`` is the mean of the labels alone.
    """
    y, fl, fu = (np.asarray(a, dtype=np.float64) for a in (y, f_labeled, f_unlabeled))
    n, big_n = len(y), len(fu)
    if lam is None:
        cov = float(np.cov(y, fl)[0, 1])
        var_f = float(np.var(np.concatenate([fl, fu]), ddof=1))
        lam = float(np.clip(cov / ((1 + n / big_n) * var_f), 0.0, 1.0)) if var_f > 0 else 0.0
    estimate = lam * fu.mean() + np.mean(y - lam * fl)
    se = float(np.sqrt(lam ** 2 * np.var(fu, ddof=1) / big_n + np.var(y - lam * fl, ddof=1) / n))
    z = float(stats.norm.ppf(0.5 + level / 2))
    return PPIEstimate(float(estimate), float(estimate - z * se), float(estimate + z * se), lam, se)


def wilson_interval(successes: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (Wilson, JASA 1927), via SciPy; NaN for n = 0."""
    if n == 0:
        return float("nan"), float("nan")
    ci = stats.binomtest(int(successes), int(n)).proportion_ci(confidence_level=level, method="wilson")
    return float(ci.low), float(ci.high)


def _labels_for(per_image: pd.DataFrame, labels: pd.DataFrame) -> pd.DataFrame:
    """``per_image`` with the majority label ``y`` (NaN where unlabelled); labels of unknown images stop."""
    for col, table, what in (("p_recognized", per_image, "per-image table"),
                             ("recognized", labels, "label table")):
        missing = [c for c in ("set", "image_id", col) if c not in table.columns]
        if missing:
            raise SemsimError(f"{what}: needs column(s) {', '.join(missing)}")
    keys = ["set", "image_id"]
    per_image = per_image.assign(set=per_image["set"].astype(str), image_id=per_image["image_id"].astype(str))
    labels = labels.assign(set=labels["set"].astype(str), image_id=labels["image_id"].astype(str))
    if labels.duplicated(keys).any():
        row = labels[labels.duplicated(keys)].iloc[0]
        raise SemsimError(f"label table: image '{row['image_id']}' of set '{row['set']}' is labelled twice")
    y = labels.assign(y=majority(labels).astype(float))[[*keys, "y"]]
    if per_image.duplicated(keys).any():
        row = per_image[per_image.duplicated(keys)].iloc[0]
        raise SemsimError(f"per-image table: image '{row['image_id']}' of set '{row['set']}' appears twice")
    merged = per_image.merge(y, on=keys, how="left")
    orphans = y.merge(per_image[keys], on=keys, how="left", indicator=True).query("_merge == 'left_only'")
    if len(orphans):
        first = orphans.iloc[0]
        raise SemsimError(f"label table: {len(orphans)} labelled image(s) are not in the per-image table (first: "
                          f"image '{first['image_id']}' of set '{first['set']}'); label images of the scored sets")
    return merged


def estimate_rates(per_image: pd.DataFrame, labels: pd.DataFrame, level: float = 0.95,
                   calibration: Calibration | None = None) -> pd.DataFrame:
    """Per set, its recognition rate from calibrated probabilities plus a few human labels.

    ``per_image``: every image of the set(s) with ``set``, ``image_id``, ``p_recognized``; ``labels``: the
    judged ones (``set``, ``image_id``, ``recognized``; majority label ``recognized > 0.5``), a random
    sample of each set's images. Returns ``set, n_images, n_labeled, estimate, ci_low, ci_high, method``
    (and ``weight``, the PPI++ weight lambda of the predictions, and the Wilson interval of the labels alone):

    * ``PPI++`` (:func:`ppi_mean`, tuned weight) with ``MIN_PPI_LABELS`` labels or more, some unlabelled images
      and labels that are not all alike;
    * ``labels only (Wilson)`` otherwise, when the set has labels;
    * ``model only, no labels``: the mean probability, with the calibration's expected-rate interval when
      ``calibration`` is given (NaN otherwise); it holds only as far as the calibration transfers.
    """
    merged = _labels_for(per_image, labels)
    model = (expected_recognition(per_image.assign(set=per_image["set"].astype(str)), calibration, level)[1]
             .set_index("set") if calibration is not None else None)
    rows = []
    for name, g in merged.groupby("set", sort=False):
        f, y = g["p_recognized"].to_numpy(dtype=float), g["y"].to_numpy(dtype=float)
        lab = np.isfinite(y)
        n_lab = int(lab.sum())
        row = {"set": name, "n_images": int(len(g)), "n_labeled": n_lab}
        low, high = wilson_interval(int(y[lab].sum()), n_lab, level)
        usable = lab & np.isfinite(f)
        unl = ~lab & np.isfinite(f)
        if n_lab == 0:
            lo, hi = (model.loc[name, ["expected_recognition_ci_low", "expected_recognition_ci_high"]]
                      if model is not None else (np.nan, np.nan))
            row.update(estimate=float(np.nanmean(f)), ci_low=float(lo), ci_high=float(hi),
                       method="model only, no labels", weight=1.0)
        elif usable.sum() >= MIN_PPI_LABELS and unl.sum() >= 2 and np.ptp(y[usable]) > 0:
            est = ppi_mean(y[usable], f[usable], f[unl], level)
            row.update(estimate=est.estimate, ci_low=max(0.0, est.ci_low), ci_high=min(1.0, est.ci_high),
                       method="PPI++", weight=est.lam)
        else:
            row.update(estimate=float(y[lab].mean()), ci_low=low, ci_high=high, method="labels only (Wilson)",
                       weight=0.0)
        rows.append({**row, "labels_only_ci_low": low, "labels_only_ci_high": high})
    return pd.DataFrame(rows)


def label_budget(half_width: float, correlation: float, rate: float = 0.5, n_images: int | None = None,
                 level: float = 0.95) -> tuple[int, int]:
    """Labels needed for a ``half_width`` interval on a set's rate: (with PPI++, with labels alone).

    PPI++ with the best weight has variance ``s^2 / n * (1 - rho^2 N / (N + n))`` (s^2 = rate (1 - rate),
    rho the correlation of the calibrated probability with the label within a set, N the unlabelled images);
    labels alone ``s^2 / n``. Solving ``z^2 * variance = half_width^2`` for n (N = n_images - n; N infinite
    without ``n_images``) gives the returned counts, rounded up.
    """
    if not 0 < half_width < 1:
        raise SemsimError(f"half-width {half_width}: give a number between 0 and 1, e.g. 0.05")
    if not (np.isfinite(correlation) and 0 <= rate <= 1):
        raise SemsimError(f"label budget: correlation {correlation} and rate {rate} must be numbers, the rate in "
                          "[0, 1]")
    z2s2 = float(stats.norm.ppf(0.5 + level / 2)) ** 2 * rate * (1 - rate)
    h2, r2 = half_width ** 2, min(max(correlation, 0.0), 1.0) ** 2
    alone = max(1, int(np.ceil(z2s2 / h2)))
    if n_images is None:
        return max(1, int(np.ceil(z2s2 * (1 - r2) / h2))), alone
    # N = M - n: z^2 s^2 ((1 - rho^2) / n + rho^2 / M) = half_width^2
    m = float(n_images)
    ppi = z2s2 * (1 - r2) / (h2 - z2s2 * r2 / m) if h2 > z2s2 * r2 / m else m
    return max(1, int(min(np.ceil(ppi), n_images))), max(1, min(alone, n_images))
