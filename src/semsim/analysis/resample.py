"""Bootstrap resampling that matches the question, vectorised over replicates.

Two designs (Efron & Tibshirani, 1993, "An Introduction to the Bootstrap", ch. 13; Field & Welsh, 2007,
"Bootstrapping clustered data", JRSS-B 69):

* **Configurations.** A set-level correlation generalises over victim configurations, so its replicates draw
  whole sets with replacement (:func:`set_draws`).
* **Originals.** An image-level statistic pools reconstructions of the same originals across configurations;
  those are not independent, so its replicates draw originals (``image_id`` clusters) with replacement and keep
  every reconstruction of each drawn original (:func:`cluster_counts`). When no original repeats across sets,
  each image is its own cluster and this is the ordinary image bootstrap.

Every interval is a percentile interval and carries the name of what it resampled (:func:`describe`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import sparse

RESAMPLES_SETS = "sets (victim configurations)"
RESAMPLES_ORIGINALS = "originals (image_id clusters across sets)"
RESAMPLES_IMAGES = "images"


def describe(unit: str, n_boot: int) -> str:
    """How an interval was obtained, e.g. ``percentile bootstrap, 1000 replicates over sets (...)``."""
    return f"percentile bootstrap, {n_boot} replicates over {unit}" if n_boot else "no bootstrap"


def image_clusters(table: pd.DataFrame) -> tuple[np.ndarray, str]:
    """Cluster code of each row for the image-level bootstrap, and what a cluster is.

    Originals (``image_id``) are the clusters when some original appears in more than one set; otherwise
    every row is its own cluster.
    """
    codes, uniques = pd.factorize(table["image_id"].astype(str))
    if len(uniques) < len(table) and table.groupby("image_id")["set"].nunique().max() > 1:
        return codes.astype(np.int64), RESAMPLES_ORIGINALS
    return np.arange(len(table), dtype=np.int64), RESAMPLES_IMAGES


def cluster_counts(n_clusters: int, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """``(n_boot, n_clusters)`` float32: how often each cluster is drawn in each replicate (n draws with
    replacement from n clusters)."""
    draws = rng.integers(0, n_clusters, size=(n_boot, n_clusters))
    flat = draws + np.arange(n_boot)[:, None] * n_clusters
    return np.bincount(flat.ravel(), minlength=n_boot * n_clusters).reshape(n_boot, n_clusters).astype(np.float32)


def set_draws(n_sets: int, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """``(n_boot, n_sets)`` indices of sets drawn with replacement."""
    return rng.integers(0, n_sets, size=(n_boot, n_sets))


def percentile_interval(values: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of the finite replicates (NaN, NaN when fewer than two are finite)."""
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    if len(values) < 2:
        return float("nan"), float("nan")
    a = (1 - level) / 2
    return float(np.quantile(values, a)), float(np.quantile(values, 1 - a))


def bootstrap_p(differences: np.ndarray) -> float:
    """Two-sided bootstrap p-value of a difference being zero: twice the smaller tail share of replicates at
    or beyond zero, capped at 1 (NaN without finite replicates)."""
    d = np.asarray(differences, dtype=float)
    d = d[np.isfinite(d)]
    if not len(d):
        return float("nan")
    return float(min(1.0, 2 * min(np.mean(d <= 0), np.mean(d >= 0))))


def weighted_auroc(score: np.ndarray, pos_weight: np.ndarray, neg_weight: np.ndarray) -> np.ndarray:
    """AUROC with weighted positives and negatives, over the leading axes of the weights.

    ``sum_ij p_i n_j ([s_i > s_j] + [s_i = s_j] / 2) / (sum_i p_i * sum_j n_j)``: the Mann-Whitney form with
    ties counted one half (Hanley & McNeil, 1982). With 0/1 weights it is the ordinary AUROC; with bootstrap
    counts as weights, the AUROC of the resample; with fractional labels (a tie split half-half), the AUROC of
    the expanded sample. ``score`` is ``(N,)``; the weights ``(..., N)``. NaN where a class has no weight.
    """
    score = np.asarray(score, dtype=float)
    order = np.argsort(score, kind="stable")
    ordered = score[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    pos = np.add.reduceat(np.asarray(pos_weight)[..., order], starts, axis=-1)
    neg = np.add.reduceat(np.asarray(neg_weight)[..., order], starts, axis=-1)
    below = np.cumsum(neg, axis=-1, dtype=np.float64) - neg
    u = (pos * (below + 0.5 * neg)).sum(-1, dtype=np.float64)
    den = pos.sum(-1, dtype=np.float64) * neg.sum(-1, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, u / np.where(den > 0, den, 1), np.nan)


MAX_PAIR_CLUSTERS = 2000  # above this, the cluster x cluster matrix of clustered_auroc is too large


def cluster_pair_matrix(score: np.ndarray, positive: np.ndarray, codes: np.ndarray, n_clusters: int) -> np.ndarray:
    """``Psi[c, d]`` = sum over positives i of cluster c and negatives j of cluster d of ``[s_i > s_j] +
    [s_i = s_j] / 2``: the Mann-Whitney kernel summed by cluster pair, so that a resample weighting cluster c
    by k_c has U = k^T Psi k.

    Built per group of tied scores g: ``K[g, d]`` = negatives of cluster d below g plus half of those in g, then
    ``Psi = P K`` with ``P[c, g]`` the positives of cluster c in g (sparse), O(G C + N C) for G groups.
    """
    uniques, group = np.unique(score, return_inverse=True)
    n_groups = len(uniques)
    neg = ~positive
    # float32 is exact here: integer counts below 2^24 and their halves
    flat = np.zeros(n_groups * n_clusters, np.float32)
    np.add.at(flat, group[neg] * n_clusters + codes[neg], 1.0)
    kernel = flat.reshape(n_groups, n_clusters)
    below = np.cumsum(kernel, axis=0, dtype=np.float32)
    below -= 0.5 * kernel  # below each group, plus half of the tied
    counts = sparse.csr_matrix((np.ones(int(positive.sum()), np.float32), (codes[positive], group[positive])),
                               shape=(n_clusters, n_groups))
    return np.asarray(counts @ below, dtype=np.float64)


def clustered_auroc(score: np.ndarray, positive: np.ndarray, codes: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """AUROC in each of the ``(B, C)`` cluster-count resamples ``counts``: every row of cluster c weighs
    ``counts[:, c]``. Equal to :func:`weighted_auroc` with those weights; through :func:`cluster_pair_matrix`
    when there are at most :data:`MAX_PAIR_CLUSTERS` clusters (O(B C^2) instead of O(B N) per metric)."""
    score = np.asarray(score, dtype=float)
    positive = np.asarray(positive, dtype=bool)
    n_clusters = counts.shape[1]
    if n_clusters > MAX_PAIR_CLUSTERS:
        weights = counts[:, codes]
        return weighted_auroc(score, weights * positive, weights * ~positive)
    k = counts.astype(np.float64)
    # float32 products are exact here (small integer counts times half-integer kernel sums < 2^24)
    psi = cluster_pair_matrix(score, positive, codes, n_clusters).astype(np.float32)
    u = ((counts.astype(np.float32) @ psi) * counts).sum(1, dtype=np.float64)
    n1 = k @ np.bincount(codes[positive], minlength=n_clusters)
    n0 = k @ np.bincount(codes[~positive], minlength=n_clusters)
    den = n1 * n0
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, u / np.where(den > 0, den, 1), np.nan)
