"""Per-set summaries of a per-image score table: mean, median and percentile-bootstrap interval per column."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd


def set_table_path(out: str | os.PathLike) -> Path:
    """Where the per-set table goes: ``results.parquet`` -> ``results_sets.parquet``."""
    out = Path(out)
    return out.with_name(f"{out.stem}_sets{out.suffix}")


def bootstrap_mean_ci(values: np.ndarray, n_bootstrap: int = 1000, seed: int = 0, level: float = 0.95
                      ) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean (Efron & Tibshirani, 1993); NaN for fewer than 2 values."""
    return _bootstrap_ci(values, n_bootstrap, seed, level, {})


def _bootstrap_ci(values: np.ndarray, n_bootstrap: int, seed: int, level: float,
                  draws: dict[int, np.ndarray]) -> tuple[float, float]:
    """:func:`bootstrap_mean_ci`, reusing the resampling indices in ``draws`` (by sample size; the same seed
    draws the same indices, so columns of one table share them)."""
    values = values[np.isfinite(values)]
    if len(values) < 2:
        return float("nan"), float("nan")
    if len(values) not in draws:
        rng = np.random.default_rng(seed)
        draws[len(values)] = rng.integers(0, len(values), size=(n_bootstrap, len(values)))
    means = values[draws[len(values)]].mean(1)
    alpha = (1 - level) / 2
    return float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha))


IDENTICAL_AT_INF = ("psnr",)  # columns that are +inf exactly for identical pairs (MSE 0)


def summarize_set(set_name: str, table: pd.DataFrame, set_values: dict[str, float], n_bootstrap: int = 1000,
                  seed: int = 0) -> dict:
    """One row per set: n, then mean / median / 95% bootstrap interval of every per-image column.

    The mean and its interval are over the finite values; the median is over every value that is not NaN, so
    it keeps infinities. PSNR is +inf for an identical pair, the most-leaking reconstruction there is: the
    mean leaves such pairs out, so ``psnr_n_identical`` counts them beside it, and the median includes them
    (it is inf when more than half the pairs are identical).
    """
    row: dict = {"set": set_name, "n": len(table)}
    draws: dict[int, np.ndarray] = {}
    for col in table.columns:
        if col in ("set", "image_id") or not pd.api.types.is_numeric_dtype(table[col]):
            continue
        v = table[col].to_numpy(dtype=float)
        finite, present = v[np.isfinite(v)], v[~np.isnan(v)]
        lo, hi = _bootstrap_ci(v, n_bootstrap, seed, 0.95, draws)
        row[f"{col}_mean"] = float(finite.mean()) if len(finite) else float("nan")
        row[f"{col}_median"] = float(np.median(present)) if len(present) else float("nan")
        row[f"{col}_ci_low"], row[f"{col}_ci_high"] = lo, hi
        if col in IDENTICAL_AT_INF:
            row[f"{col}_n_identical"] = int(np.isposinf(v).sum())
    row.update(set_values)
    return row
