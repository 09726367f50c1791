"""Applying a calibration: P(a person recognizes the reconstruction) from metric values, and per set the
expected recognition rate with an interval that says how far off that rate can be on a new configuration.

A calibration (fitted by :func:`semsim.analysis.calibration.fit_calibration`) is a JSON file, never a pickle.
It holds a monotone map from the aligned metric values (larger = more leakage) to P(recognized):

* ``logistic``: logistic regression on standardised aligned values with non-negative coefficients (Platt,
  1999; the constraint keeps a multi-metric map increasing in every metric);
* ``isotonic``: a step-wise increasing map on one metric (Zadrozny & Elkan, 2002), applied by linear
  interpolation between its breakpoints and clipped at the ends;
* ``constant``: no metric, every image gets the training sets' recognition rate (the reference a metric
  must beat).

Besides the map it stores bootstrap refits (``params["draws"]``: the fit's own uncertainty) and the
residuals ``observed - predicted`` of the training sets' recognition rates when each set was left out of
the fit in turn (``spread``: how far the map misses on a configuration it has not seen). The expected-rate
interval of a set combines the three sources of error (see :func:`rate_interval`).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from semsim.common.io import write_json
from semsim.errors import SemsimError
from semsim.metrics.registry import aligned
from semsim.metrics.summary import summarize_set

CALIBRATION_FORMAT = "semsim-calibration"
CALIBRATION_VERSION = 2
METHODS = ("logistic", "isotonic")
TARGETS = ("majority", "share")
# Share of a column's values outside the fitted range above which applying the calibration is refused.
OUT_OF_RANGE_STOP = 0.5
OUT_OF_RANGE_NOTE = 0.05


@dataclass
class Calibration:
    """A fitted map from metric columns to P(recognized); see the module docstring."""

    method: str
    features: list[str]
    directions: dict[str, bool]
    target: str
    params: dict
    feature_range: dict[str, list[float]]
    spread: dict = field(default_factory=dict)  # {"sets": [...], "residuals": [...]}, leave-one-set-out
    trained_on: dict = field(default_factory=dict)
    heldout: dict = field(default_factory=dict)

    def aligned_values(self, table: pd.DataFrame, where: str = "score table") -> np.ndarray:
        """The feature columns of ``table`` as an (n, k) float array, aligned (larger = more leakage)."""
        missing = [f for f in self.features if f not in table.columns]
        if missing:
            raise SemsimError(f"{where}: the calibration needs column(s) {', '.join(missing)}; score with "
                              f"--metrics including them")
        x = table[self.features].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)
        return np.stack([aligned(x[:, k], self.directions[f]) for k, f in enumerate(self.features)], axis=1
                        ) if self.features else np.zeros((len(table), 0))

    def map_values(self, x: np.ndarray, params: dict | None = None) -> np.ndarray:
        """P(recognized) of aligned values ``x`` (rows x features) under the fit, or under ``params`` (one
        bootstrap draw); NaN where a value is missing."""
        params = self.params if params is None else params
        if self.method == "constant":
            return np.full(len(x), float(params["rate"]))
        if self.method == "logistic":
            z = (x - np.asarray(self.params["mean"])) / np.asarray(self.params["scale"])
            return 1.0 / (1.0 + np.exp(-(z @ np.asarray(params["coef"]) + params["intercept"])))
        p = np.interp(x[:, 0], params["x"], params["y"])
        return np.where(np.isfinite(x[:, 0]), p, np.nan)

    def map_draws(self, x: np.ndarray) -> np.ndarray:
        """P(recognized) of aligned values under each bootstrap refit: (draws, rows); (0, rows) without."""
        draws = self.params.get("draws", [])
        return np.array([self.map_values(x, d) for d in draws]).reshape(len(draws), len(x))

    def predict(self, table: pd.DataFrame, where: str = "score table") -> np.ndarray:
        """P(recognized) per row of ``table`` (NaN where a feature is missing)."""
        return self.map_values(self.aligned_values(table, where))

    def predict_draws(self, table: pd.DataFrame, where: str = "score table") -> np.ndarray:
        """:meth:`map_draws` of the rows of ``table``."""
        return self.map_draws(self.aligned_values(table, where))

    def out_of_range(self, table: pd.DataFrame) -> dict[str, float]:
        """Share of the finite values outside the range seen in fitting, per feature."""
        out = {}
        for f in self.features:
            v = pd.to_numeric(table[f], errors="coerce").to_numpy(dtype=float)
            v = v[np.isfinite(v)]
            lo, hi = self.feature_range[f]
            out[f] = float(np.mean((v < lo) | (v > hi))) if len(v) else 0.0
        return out

    def check_range(self, table: pd.DataFrame, *, allow: bool = False, where: str = "score table") -> list[str]:
        """Stop when most values of a feature lie outside the fitted range (a metric on another scale gives
        every image the same probability); notes for smaller shares, or for every share with ``allow``."""
        self.aligned_values(table, where)  # the columns are there
        notes = []
        for f, share in self.out_of_range(table).items():
            if share <= OUT_OF_RANGE_NOTE:
                continue
            v = pd.to_numeric(table[f], errors="coerce")
            lo, hi = self.feature_range[f]
            msg = (f"{where}: {share:.0%} of the {f} values lie outside the range the calibration was fitted "
                   f"on ({lo:.4g} to {hi:.4g}; here {v.min():.4g} to {v.max():.4g})")
            if share > OUT_OF_RANGE_STOP and not allow:
                raise SemsimError(f"{msg}: is {f} on another scale? Score on the calibration's scale, or pass "
                                  "--allow-out-of-range to apply it anyway")
            notes.append(f"{msg}; check that {f} is on the same scale")
        return notes

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
                                                 "feature_range", "spread", "trained_on", "heldout")})
    except KeyError as exc:
        raise SemsimError(f"{path}: calibration file lacks the field {exc}; refit it") from None
    if cal.method not in (*METHODS, "constant"):
        raise SemsimError(f"{path}: unknown calibration method {cal.method!r}")
    return cal


def spread_variance(cal: Calibration) -> tuple[float, int]:
    """(variance, degrees of freedom) of a new configuration's rate around the map's prediction, from the
    left-out sets' residuals r_1..r_k: mean(r^2) * (1 + 1/k), the prediction variance of one more draw
    (bias included: the residuals are not centred); NaN with fewer than two residuals."""
    r = np.asarray(cal.spread.get("residuals", []), dtype=float)
    k = len(r)
    return (float(np.mean(r ** 2) * (1 + 1 / k)), k - 1) if k >= 2 else (float("nan"), 0)


def rate_interval(p: np.ndarray, p_draws: np.ndarray, cal: Calibration, level: float = 0.95
                  ) -> tuple[float, float, float]:
    """A set's expected recognition rate ``mean(p)`` and its interval from its images' probabilities ``p``
    and their values under the bootstrap refits ``p_draws`` (draws x images); NaN where p is NaN are dropped.

    ``rate +- t_{k-1} * sqrt(v_spread + v_fit + v_draw)``, clipped to [0, 1]: ``v_spread`` from the left-out
    sets' residuals (:func:`spread_variance`: the between-configuration spread, measured on configurations the
    map had not seen), ``v_fit`` the variance of the rate over the refits (the fit's own uncertainty) and
    ``v_draw = sum p (1 - p) / n^2`` (which of the set's images people happen to recognize). With fewer than
    two left-out sets the spread is unknown and the interval is NaN.
    """
    from scipy import stats

    ok = np.isfinite(p)
    q = p[ok]
    if not len(q):
        return float("nan"), float("nan"), float("nan")
    rate = float(q.mean())
    v_spread, dof = spread_variance(cal)
    if dof < 1:
        return rate, float("nan"), float("nan")
    v_fit = float(np.var(p_draws[:, ok].mean(1))) if len(p_draws) else 0.0
    half = float(stats.t.ppf(0.5 + level / 2, dof)) * np.sqrt(v_spread + v_fit + np.sum(q * (1 - q)) / len(q) ** 2)
    return rate, max(0.0, rate - half), min(1.0, rate + half)


def expected_recognition(per_image: pd.DataFrame, cal: Calibration, level: float = 0.95
                         ) -> tuple[np.ndarray, pd.DataFrame]:
    """Per-image P(recognized) and, per set, ``expected_recognition_rate`` with ``expected_recognition_ci_low/
    _high`` (:func:`rate_interval`)."""
    p = cal.predict(per_image)
    draws = cal.predict_draws(per_image)
    rows = []
    for name, idx in per_image.groupby("set", sort=False).indices.items():
        rate, lo, hi = rate_interval(p[idx], draws[:, idx], cal, level)
        rows.append({"set": name, "expected_recognition_rate": rate, "expected_recognition_ci_low": lo,
                     "expected_recognition_ci_high": hi})
    return p, pd.DataFrame(rows)


def apply_calibration(per_image: pd.DataFrame, per_set: pd.DataFrame, cal: Calibration, n_boot: int = 1000,
                      seed: int = 0, *, allow_out_of_range: bool = False, level: float = 0.95,
                      where: str = "score table") -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """Add ``p_recognized`` to a per-image score table and, per set, ``p_recognized_mean/_median/_ci_low/
    _ci_high`` (bootstrap interval of the mean, as for every score column) and ``expected_recognition_rate``
    with ``expected_recognition_ci_low/_high`` (see :func:`expected_recognition`).

    Refuses (:meth:`Calibration.check_range`) a table whose values lie mostly outside the fitted range
    unless ``allow_out_of_range``; the notes say what was found.
    """
    notes = cal.check_range(per_image, allow=allow_out_of_range, where=where)
    if spread_variance(cal)[1] < 1:
        notes.append("calibration: fitted on fewer than two sets, so how far it misses on a new configuration is "
                     "unknown; expected_recognition_ci_low/_high are empty")
    p, expected = expected_recognition(per_image, cal, level=level)
    per_image = per_image.assign(p_recognized=p)
    rows = [summarize_set(name, per_image.iloc[idx][["p_recognized"]], {}, n_boot, seed)
            for name, idx in per_image.groupby("set", sort=False).indices.items()]
    extra = pd.DataFrame(rows).drop(columns="n").merge(expected, on="set")
    per_set = per_set.drop(columns=[c for c in extra.columns if c != "set" and c in per_set.columns])
    per_set = per_set.assign(set=per_set["set"].astype(str)).merge(extra.assign(set=extra["set"].astype(str)),
                                                                   on="set", how="left")
    return per_image, per_set, notes


def calibrate_score_table(per_image: pd.DataFrame, cal: Calibration, *, allow_out_of_range: bool = False,
                          n_boot: int = 1000, seed: int = 0, where: str = "score table"
                          ) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """Apply ``cal`` to an existing per-image score table (no images needed): the table with
    ``p_recognized``, a per-set summary of every numeric column (as ``semsim score`` writes it) with the
    expected recognition rates, and notes. Rows whose ``status`` is not ``ok`` (skipped pairs) are dropped."""
    if "status" in per_image.columns:
        per_image = per_image[per_image["status"].fillna("ok").astype(str) == "ok"]
    for col in ("set", "image_id"):
        if col not in per_image.columns:
            raise SemsimError(f"{where}: no '{col}' column; give a per-image score table written by 'semsim score'")
    cal.check_range(per_image, allow=allow_out_of_range, where=where)  # before any work
    columns = [c for c in per_image.columns if c not in ("set", "image_id", "status")
               and pd.api.types.is_numeric_dtype(per_image[c])]
    per_set = pd.DataFrame([summarize_set(str(name), per_image.iloc[idx][columns], {}, n_boot, seed)
                            for name, idx in per_image.groupby("set", sort=False).indices.items()])
    return apply_calibration(per_image.reset_index(drop=True), per_set, cal, n_boot, seed,
                             allow_out_of_range=allow_out_of_range, where=where)
