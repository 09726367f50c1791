"""Is one metric more faithful than another? Tests of differences between dependent statistics.

* Set level: Williams' t for two correlations sharing a variable (the recognition rate), each metric's
  correlation with it and theirs with each other (Williams, 1959; Steiger, 1980, "Tests for comparing
  elements of a correlation matrix", Psych. Bull. 87, eq. 7), applied to Spearman's rho as is usual for rank
  correlations; checked by the configuration bootstrap of the difference.
* Image level: DeLong's test for two correlated AUROCs on the same images (DeLong, DeLong & Clarke-Pearson,
  1988, Biometrics 44), with the bootstrap over originals of the difference as a check (DeLong treats images
  as independent; the clustered interval does not).

Every p-value is Holm-adjusted within its level (:func:`~semsim.analysis.stats.holm`).
"""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
from scipy import stats

from semsim.analysis.data import AnalysisData
from semsim.analysis.resample import RESAMPLES_SETS, bootstrap_p, describe, percentile_interval
from semsim.analysis.stats import aligned, aligned_set_means, holm
from semsim.data.labels import majority

ALPHA = 0.05


def williams_t(r_a: float, r_b: float, r_ab: float, n: int) -> tuple[float, float]:
    """Williams' t (df = n - 3) and its two-sided p for H0: rho(a, y) = rho(b, y), given r_a = r(a, y),
    r_b = r(b, y) and r_ab = r(a, b) on n observations:
    ``t = (r_a - r_b) sqrt((n - 1)(1 + r_ab)) / sqrt(2 (n - 1)/(n - 3) |R| + rbar^2 (1 - r_ab)^3)``,
    ``|R| = 1 - r_a^2 - r_b^2 - r_ab^2 + 2 r_a r_b r_ab``, ``rbar = (r_a + r_b) / 2``."""
    if n <= 3 or not np.isfinite([r_a, r_b, r_ab]).all():
        return float("nan"), float("nan")
    det = 1 - r_a ** 2 - r_b ** 2 - r_ab ** 2 + 2 * r_a * r_b * r_ab
    rbar = (r_a + r_b) / 2
    den = 2 * (n - 1) / (n - 3) * det + rbar ** 2 * (1 - r_ab) ** 3
    if den <= 0:
        return float("nan"), float("nan")
    t = (r_a - r_b) * np.sqrt((n - 1) * (1 + r_ab)) / np.sqrt(den)
    return float(t), float(2 * stats.t.sf(abs(t), n - 3))


def delong_components(score: np.ndarray, positive: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """DeLong's structural components: for each positive, the share of negatives it outranks (ties one
    half), V10; for each negative, the share of positives that outrank it, V01. Their means are the AUROC."""
    ranks = stats.rankdata(score)
    pos_ranks = stats.rankdata(score[positive])
    neg_ranks = stats.rankdata(score[~positive])
    n1, n0 = int(positive.sum()), int((~positive).sum())
    v10 = (ranks[positive] - pos_ranks) / n0
    v01 = 1 - (ranks[~positive] - neg_ranks) / n1
    return v10, v01


def delong_covariance(scores: np.ndarray, positive: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AUROCs of the columns of ``scores`` (N, M) and their DeLong covariance matrix (M, M):
    ``S = S10 / n1 + S01 / n0`` with S10, S01 the covariances of the structural components."""
    comps = [delong_components(scores[:, k], positive) for k in range(scores.shape[1])]
    v10 = np.stack([c[0] for c in comps])
    v01 = np.stack([c[1] for c in comps])
    cov = np.atleast_2d(np.cov(v10)) / v10.shape[1] + np.atleast_2d(np.cov(v01)) / v01.shape[1]
    return v10.mean(1), cov


def delong_test(auc: np.ndarray, cov: np.ndarray, a: int, b: int) -> tuple[float, float]:
    """DeLong's z for AUROC a - AUROC b and its two-sided normal p."""
    var = cov[a, a] + cov[b, b] - 2 * cov[a, b]
    if not var > 0:
        return float("nan"), float("nan")
    z = (auc[a] - auc[b]) / np.sqrt(var)
    return float(z), float(2 * stats.norm.sf(abs(z)))


def _set_rows(per_set: pd.DataFrame, metrics: list[str], directions: dict[str, bool],
              replicates: np.ndarray | None, n_boot: int) -> list[dict]:
    """Williams' test and the configuration bootstrap for every pair of set-level Spearman correlations."""
    x = aligned_set_means(per_set, metrics, directions)
    rate = per_set["recognition_rate"].to_numpy(dtype=float)
    n = len(rate)
    ranks = stats.rankdata(np.column_stack([x, rate]), axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        spearman = np.corrcoef(ranks.T)  # Pearson of average ranks: every Spearman rho at once (NaN: constant)
    rho = spearman[-1, :-1]
    rows = []
    for a, b in itertools.combinations(range(len(metrics)), 2):
        r_ab = spearman[a, b]
        t, p = williams_t(float(rho[a]), float(rho[b]), float(r_ab), n)
        diff = replicates[:, a] - replicates[:, b] if replicates is not None else np.array([])
        lo, hi = percentile_interval(diff)
        rows.append({"level": "set", "statistic": "spearman", "a": metrics[a], "b": metrics[b],
                     "value_a": float(rho[a]), "value_b": float(rho[b]), "difference": float(rho[a] - rho[b]),
                     "ci_low": lo, "ci_high": hi, "ci_resamples": describe(RESAMPLES_SETS, n_boot if len(diff) else 0),
                     "test": "Williams t", "test_statistic": t, "p": p, "p_bootstrap": bootstrap_p(diff)})
    return rows


def _image_rows(data: AnalysisData, replicates: tuple[np.ndarray, str] | None, n_boot: int) -> list[dict]:
    """DeLong's test and the clustered bootstrap for every pair of image-level AUROCs."""
    t = data.table
    pos = majority(t).to_numpy()
    scores = np.stack([aligned(t[m].to_numpy(), data.directions[m]) for m in data.metrics], axis=1)
    n = len(data.metrics)
    auc, cov = delong_covariance(scores, pos) if 0 < pos.sum() < len(pos) else (np.full(n, np.nan),
                                                                                 np.full((n, n), np.nan))
    unit = replicates[1] if replicates is not None else ""
    rows = []
    for a, b in itertools.combinations(range(n), 2):
        z, p = delong_test(auc, cov, a, b)
        diff = replicates[0][:, a] - replicates[0][:, b] if replicates is not None else np.array([])
        lo, hi = percentile_interval(diff)
        rows.append({"level": "image", "statistic": "auroc", "a": data.metrics[a], "b": data.metrics[b],
                     "value_a": float(auc[a]), "value_b": float(auc[b]), "difference": float(auc[a] - auc[b]),
                     "ci_low": lo, "ci_high": hi, "ci_resamples": describe(unit, n_boot if len(diff) else 0),
                     "test": "DeLong z", "test_statistic": z, "p": p, "p_bootstrap": bootstrap_p(diff)})
    return rows


def metric_comparisons(data: AnalysisData, per_set: pd.DataFrame, *,
                       set_replicates: np.ndarray | None = None,
                       auroc_replicates: tuple[np.ndarray, str] | None = None, n_boot: int = 0) -> pd.DataFrame:
    """Every pair of metrics compared at set level (Spearman with the recognition rate; ``set_replicates``:
    the configuration-bootstrap Spearman replicates, (B, M)) and at image level (AUROC; ``auroc_replicates``:
    the clustered-bootstrap AUROC replicates). ``difference`` = a - b; ``p`` from Williams' t / DeLong's z,
    ``p_holm`` Holm-adjusted within the level; ``p_bootstrap`` from the bootstrap of the difference."""
    rows = _set_rows(per_set, data.metrics, data.directions, set_replicates, n_boot)
    rows += _image_rows(data, auroc_replicates, n_boot)
    out = pd.DataFrame(rows)
    if not len(out):
        return out
    out.insert(out.columns.get_loc("p") + 1, "p_holm", np.nan)
    for level in ("set", "image"):
        sel = out["level"] == level
        out.loc[sel, "p_holm"] = holm(out.loc[sel, "p"].to_numpy())
    return out


def best_and_ties(comparisons: pd.DataFrame, values: pd.Series, level: str,
                  alpha: float = ALPHA) -> tuple[str, list[str]]:
    """The metric with the highest ``values`` (set Spearman or AUROC) and the metrics that cannot be told
    apart from it at this level (Holm-adjusted p >= alpha, or no test)."""
    best = str(values.idxmax())
    rows = comparisons[(comparisons["level"] == level)
                       & ((comparisons["a"] == best) | (comparisons["b"] == best))]
    ties = [str(r["b"] if r["a"] == best else r["a"]) for _, r in rows.iterrows()
            if not (np.isfinite(r["p_holm"]) and r["p_holm"] < alpha)]
    return best, ties
