"""Applying a calibration file: metric values -> P(a person recognizes the reconstruction).

A calibration (fitted by :func:`semsim.analysis.calibration.fit_calibration`, written by ``semsim calibrate``)
is a monotone map from aligned metric values (larger = more leakage) to P(recognized):

* ``logistic``: logistic regression on standardised aligned values (Platt scaling; Platt, 1999);
* ``isotonic``: a step-wise increasing map (Zadrozny & Elkan, 2002) stored as its breakpoints and applied by
  linear interpolation, clipped at the ends.

This module reads such a JSON file (never a pickle) and adds ``p_recognized`` and per-set expected recognition
rates to score tables; it needs no statistics package, so scoring can apply a calibration without importing
the analysis stage.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from semsim.common.io import write_json
from semsim.errors import SemsimError
from semsim.metrics.registry import aligned
from semsim.metrics.summary import summarize_set

CALIBRATION_FORMAT = "semsim-calibration"
CALIBRATION_VERSION = 1
METHODS = ("logistic", "isotonic")


@dataclass
class Calibration:
    """A fitted map from metric columns to P(recognized); see the module docstring."""

    method: str
    features: list[str]
    directions: dict[str, bool]
    target: str
    params: dict[str, Any]
    feature_range: dict[str, list[float]]
    trained_on: dict[str, Any] = field(default_factory=dict)
    heldout: dict[str, Any] = field(default_factory=dict)

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

    def to_dict(self) -> dict[str, Any]:
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
    p, expected = expected_recognition(per_image, cal, n_boot=n_boot, seed=seed)
    per_image = per_image.assign(p_recognized=p)
    rows = [summarize_set(name, per_image.iloc[idx][["p_recognized"]], {}, n_boot, seed)
            for name, idx in per_image.groupby("set", sort=False).indices.items()]
    extra = pd.DataFrame(rows).drop(columns="n").merge(expected, on="set")
    per_set = per_set.drop(columns=[c for c in extra.columns if c != "set" and c in per_set.columns])
    per_set = per_set.assign(set=per_set["set"].astype(str)).merge(extra.assign(set=extra["set"].astype(str)),
                                                                   on="set", how="left")
    notes = [f"calibration: {share:.0%} of {f} values lie outside the range it was fitted on "
             f"[{cal.feature_range[f][0]:.4g}, {cal.feature_range[f][1]:.4g}]; check that the metric is on "
             "the same scale" for f, share in cal.out_of_range(per_image).items() if share > 0.05]
    return per_image, per_set, notes
