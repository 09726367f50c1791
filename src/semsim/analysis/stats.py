"""Agreement statistics between metrics and human recognition (Sun et al., NeurIPS 2023, Sec. 3 and 5).

All metric values are first *aligned* (negated when lower values mean more leakage) so that agreement with
people is a positive correlation and an AUROC above 0.5. Row-wise versions of Pearson, Spearman, Kendall
tau-b and AUROC work on a whole stack of bootstrap replicates at once.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

from semsim.analysis.data import AnalysisData
from semsim.analysis.resample import (
    RESAMPLES_SETS,
    cluster_counts,
    clustered_auroc,
    describe,
    image_clusters,
    percentile_interval,
    set_draws,
)
from semsim.data.labels import majority
from semsim.metrics.registry import aligned


def pearson_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pearson correlation of each row of ``x`` with the same row of ``y`` (NaN for a constant row)."""
    xc = x - x.mean(-1, keepdims=True)
    yc = y - y.mean(-1, keepdims=True)
    den = np.sqrt((xc ** 2).sum(-1) * (yc ** 2).sum(-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (xc * yc).sum(-1) / np.where(den > 0, den, 1), np.nan)


def spearman_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Spearman's rho row by row: Pearson correlation of the average ranks."""
    return pearson_rows(stats.rankdata(x, axis=-1), stats.rankdata(y, axis=-1))


def kendall_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Kendall's tau-b row by row: (concordant - discordant) / sqrt((n0 - ties_x) (n0 - ties_y))."""
    i, j = np.triu_indices(x.shape[-1], 1)
    dx = np.sign(x[..., i] - x[..., j])
    dy = np.sign(y[..., i] - y[..., j])
    n0 = len(i)
    den = np.sqrt((n0 - (dx == 0).sum(-1)) * (n0 - (dy == 0).sum(-1)).astype(float))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (dx * dy).sum(-1) / np.where(den > 0, den, 1), np.nan)


def auroc_rows(score: np.ndarray, positive: np.ndarray) -> np.ndarray:
    """Area under the ROC curve row by row, via the Mann-Whitney U statistic (ties count one half)."""
    score = np.atleast_2d(score)
    positive = np.atleast_2d(positive).astype(bool)
    ranks = stats.rankdata(score, axis=-1)
    n1 = positive.sum(-1).astype(float)
    n0 = positive.shape[-1] - n1
    u = (ranks * positive).sum(-1) - n1 * (n1 + 1) / 2
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where((n1 > 0) & (n0 > 0), u / np.where((n1 > 0) & (n0 > 0), n1 * n0, 1), np.nan)


def auroc(score: np.ndarray, positive: np.ndarray) -> float:
    """AUROC of ``score`` for the binary ``positive`` labels (NaN when only one class is present)."""
    return float(auroc_rows(np.asarray(score, float), np.asarray(positive))[0])


def holm(p: np.ndarray | list[float]) -> np.ndarray:
    """Holm's step-down adjustment of a family of p-values (Holm, 1979, "A simple sequentially rejective
    multiple test procedure"): the i-th smallest becomes max_{j <= i} min(1, (m - j + 1) p_(j)). NaN entries
    are left out of the family and stay NaN."""
    p = np.asarray(p, dtype=float)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    if not len(ok):
        return out
    order = ok[np.argsort(p[ok], kind="stable")]
    m = len(order)
    adjusted = np.maximum.accumulate(np.minimum(1.0, (m - np.arange(m)) * p[order]))
    out[order] = adjusted
    return out


def set_groups(table: pd.DataFrame) -> tuple[list[str], list[np.ndarray]]:
    """Set names sorted by name, and the row indices of each."""
    names = sorted(table["set"].astype(str).unique())
    codes = pd.Categorical(table["set"].astype(str), categories=names).codes
    order = np.argsort(codes, kind="stable")
    bounds = np.searchsorted(codes[order], np.arange(len(names) + 1))
    return names, [order[bounds[g]:bounds[g + 1]] for g in range(len(names))]


CORRELATIONS = {"spearman": (stats.spearmanr, spearman_rows), "kendall": (stats.kendalltau, kendall_rows),
                "pearson": (stats.pearsonr, pearson_rows)}


def per_set_table(data: AnalysisData) -> pd.DataFrame:
    """Per set (sorted by name): size, the majority recognition rate, the mean recognized share and each
    metric's mean."""
    t = data.table
    names, groups = set_groups(t)
    rec = majority(t).to_numpy(dtype=float)
    share = t["recognized"].to_numpy(dtype=float)
    values = t[data.metrics].to_numpy(dtype=float)
    rows = []
    for name, g in zip(names, groups, strict=True):
        row = {"set": name, "n": len(g), "recognition_rate": rec[g].mean(), "mean_recognized_share": share[g].mean()}
        row.update({f"{m}_mean": values[g, k].mean() for k, m in enumerate(data.metrics)})
        rows.append(row)
    return pd.DataFrame(rows)


def aligned_set_means(per_set: pd.DataFrame, metrics: list[str], directions: dict[str, bool]) -> np.ndarray:
    """``(n_sets, n_metrics)`` set means oriented so that larger means more leakage."""
    return np.stack([aligned(per_set[f"{m}_mean"].to_numpy(), directions[m]) for m in metrics], axis=1)


def set_replicates(per_set: pd.DataFrame, metrics: list[str], directions: dict[str, bool], n_boot: int,
                   seed: int) -> dict[str, np.ndarray]:
    """Configuration bootstrap: per correlation, ``(n_boot, n_metrics)`` replicates of the correlation
    between aligned set means and the recognition rate over sets drawn with replacement."""
    x = aligned_set_means(per_set, metrics, directions)
    rate = per_set["recognition_rate"].to_numpy(dtype=float)
    idx = set_draws(len(rate), n_boot, np.random.default_rng(seed))
    xb = np.moveaxis(x[idx], -1, 0)  # (M, B, S)
    rb = rate[idx][None]
    return {name: rows(xb, np.broadcast_to(rb, xb.shape)).T for name, (_, rows) in CORRELATIONS.items()}


def set_level(data: AnalysisData, n_boot: int = 1000, seed: int = 0,
              replicates: dict[str, np.ndarray] | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The paper's protocol: per set, each metric's mean and the majority recognition rate; then across
    sets, Spearman / Kendall / Pearson of the aligned means with the rate, p-values (scipy), Holm-adjusted
    p-values over the whole table, and 95% percentile intervals from the configuration bootstrap (sets drawn
    with replacement, :func:`set_replicates`).

    Returns (per-set table, correlation table with one row per metric).
    """
    per_set = per_set_table(data)
    rate = per_set["recognition_rate"].to_numpy()
    x = aligned_set_means(per_set, data.metrics, data.directions)
    if replicates is None and n_boot:
        replicates = set_replicates(per_set, data.metrics, data.directions, n_boot, seed)
    rows = []
    for k, m in enumerate(data.metrics):
        row: dict = {"metric": m, "higher_is_more_leakage": data.directions[m], "n_sets": len(per_set)}
        enough = len(per_set) >= 3 and np.ptp(x[:, k]) > 0 and np.ptp(rate) > 0
        for name, (test, _) in CORRELATIONS.items():
            res = test(x[:, k], rate) if enough else (float("nan"), float("nan"))
            row[name], row[f"{name}_p"] = float(res[0]), float(res[1])
            lo, hi = percentile_interval(replicates[name][:, k]) if replicates and enough else (float("nan"),) * 2
            row[f"{name}_ci_low"], row[f"{name}_ci_high"] = lo, hi
        row["ci_resamples"] = describe(RESAMPLES_SETS, n_boot if replicates else 0)
        rows.append(row)
    corr = pd.DataFrame(rows)
    p_cols = [f"{name}_p" for name in CORRELATIONS]
    adjusted = holm(corr[p_cols].to_numpy().ravel()).reshape(len(corr), len(p_cols))
    for j, c in enumerate(p_cols):
        corr.insert(corr.columns.get_loc(c) + 1, f"{c}_holm", adjusted[:, j])
    return per_set, corr


def n_recognized(table: pd.DataFrame) -> np.ndarray:
    """How many judges recognized each image (``recognized * n_judges``, rounded)."""
    return np.round(table["recognized"].to_numpy(float) * table["n_judges"].to_numpy(float))


def auroc_replicates(data: AnalysisData, n_boot: int, seed: int) -> tuple[np.ndarray, str]:
    """``(n_boot, n_metrics)`` bootstrap replicates of each metric's AUROC for the majority label, resampling
    originals (``image_id`` clusters, :func:`~semsim.analysis.resample.image_clusters`), and what was
    resampled. The same draws serve every metric, so differences between metrics are paired."""
    t = data.table
    codes, unit = image_clusters(t)
    counts = cluster_counts(int(codes.max()) + 1, n_boot, np.random.default_rng(seed + 1))
    pos = majority(t).to_numpy()
    out = np.stack([clustered_auroc(aligned(t[m].to_numpy(), data.directions[m]), pos, codes, counts)
                    for m in data.metrics], axis=1)
    return out, unit


def rank_agreement(scores: np.ndarray, positive: np.ndarray, count: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each column of ``scores`` (n, M): AUROC for ``positive`` (Mann-Whitney with average ranks) and
    Spearman's rho with ``count`` and its two-sided p (t-distribution with n - 2 degrees of freedom, as
    :func:`scipy.stats.spearmanr`); NaN where a class is missing or a column is constant."""
    ranks = stats.rankdata(scores, axis=0)
    n = len(scores)
    n1 = int(positive.sum())
    n0 = n - n1
    auc = np.full(ranks.shape[1], np.nan)
    if n1 and n0:
        auc = (ranks[positive].sum(0) - n1 * (n1 + 1) / 2) / (n1 * n0)
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = pearson_rows(ranks.T, np.broadcast_to(stats.rankdata(count), (ranks.shape[1], n)))
        dof = n - 2
        t = rho * np.sqrt(np.clip(dof / ((rho + 1.0) * (1.0 - rho)), 0, None))
    p = 2 * stats.t.sf(np.abs(t), dof) if dof > 0 else np.full_like(rho, np.nan)
    return auc, rho, np.where(np.isfinite(rho), p, np.nan)


def image_level(data: AnalysisData, n_boot: int = 1000, seed: int = 0,
                replicates: tuple[np.ndarray, str] | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per metric: AUROC of the aligned value against the majority label with a 95% interval from the
    bootstrap over originals (:func:`auroc_replicates`), and Spearman's rho with the number of judges who
    recognized (Holm-adjusted over the metrics); then AUROC and rho per set (sets sorted by name).

    Returns (overall table, per-set table).
    """
    t = data.table
    pos = majority(t).to_numpy()
    count = n_recognized(t)
    names, groups = set_groups(t)
    if replicates is None and n_boot:
        replicates = auroc_replicates(data, n_boot, seed)
    scores = np.stack([aligned(t[m].to_numpy(), data.directions[m]) for m in data.metrics], axis=1)
    auc, rho, p = rank_agreement(scores, pos, count)
    overall = pd.DataFrame({"metric": data.metrics, "n": len(t), "auroc": auc})
    overall.insert(1, "higher_is_more_leakage", [data.directions[m] for m in data.metrics])
    ci = [percentile_interval(replicates[0][:, k]) if replicates else (np.nan, np.nan) for k in range(len(auc))]
    overall["auroc_ci_low"], overall["auroc_ci_high"] = [c[0] for c in ci], [c[1] for c in ci]
    overall["ci_resamples"] = describe(replicates[1], n_boot) if replicates else describe("", 0)
    overall["spearman_n_recognized"], overall["spearman_p"] = rho, p
    overall["spearman_p_holm"] = holm(p)
    parts = []
    for name, g in zip(names, groups, strict=True):
        a, r, pr = rank_agreement(scores[g], pos[g], count[g])
        parts.append(pd.DataFrame({"set": name, "metric": data.metrics, "n": len(g),
                                   "recognition_rate": pos[g].mean(), "auroc": a, "spearman_n_recognized": r,
                                   "spearman_p": pr, "order": np.arange(len(a))}))
    by_set = pd.concat(parts, ignore_index=True).sort_values(["order", "set"], kind="stable")
    return overall, by_set.drop(columns="order").reset_index(drop=True)
