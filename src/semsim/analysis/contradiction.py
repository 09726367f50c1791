"""Do two metrics (or a metric and people) order reconstructions the same way? (Sun et al., NeurIPS 2023, Sec. 3)

Two views: between sets (which victim configuration leaks more, on set means) and per original (which of two
reconstructions of the same original image leaks more: the paper's question). Ties are counted apart from
disagreements, so that a coarse predictor (people's 0-5 vote counts) is not mistaken for an agreeing one.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from semsim.analysis.data import AnalysisData
from semsim.analysis.stats import aligned, n_recognized

HUMANS = "humans"


def contradiction_matrix(per_set: pd.DataFrame, metrics: list[str], directions: dict[str, bool],
                         include_humans: bool = True) -> pd.DataFrame:
    """Share of set pairs that two metrics order in opposite ways. Entry (a, b): over all pairs of sets
    i < j, the fraction with sign(a_i - a_j) * sign(b_i - b_j) < 0, on aligned set means; a tie in either is
    not a contradiction. ``humans`` is the recognition rate. Without ties this equals (1 - Kendall's tau) / 2.
    """
    cols = {m: aligned(per_set[f"{m}_mean"].to_numpy(), directions[m]) for m in metrics}
    if include_humans:
        cols[HUMANS] = per_set["recognition_rate"].to_numpy(dtype=float)
    i, j = np.triu_indices(len(per_set), 1)
    signs = np.stack([np.sign(v[i] - v[j]) for v in cols.values()])
    mat = _pair_counts(signs)[1] / len(i) if len(i) else np.full((len(cols), len(cols)), np.nan)
    return pd.DataFrame(mat, index=pd.Index(list(cols), name="metric"), columns=list(cols))


def same_original_pairs(table: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Row indices (i, j), i < j, of every pair of reconstructions of the same original (``image_id``) in
    two different sets."""
    codes, _ = pd.factorize(table["image_id"].astype(str))
    order = np.argsort(codes, kind="stable")
    bounds = np.flatnonzero(np.r_[True, codes[order][1:] != codes[order][:-1], True])
    firsts, seconds = [], []
    for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
        if hi - lo >= 2:
            a, b = np.triu_indices(hi - lo, 1)
            firsts.append(order[lo + a])
            seconds.append(order[lo + b])
    if not firsts:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    i, j = np.concatenate(firsts), np.concatenate(seconds)
    sets = table["set"].astype(str).to_numpy()
    keep = sets[i] != sets[j]
    return i[keep], j[keep]


def _pair_counts(signs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For sign rows (predictors x pairs, values -1/0/1): counts of concordant and discordant pairs for each
    two predictors."""
    up, down = (signs > 0).astype(np.float64), (signs < 0).astype(np.float64)
    concordant = up @ up.T + down @ down.T
    discordant = up @ down.T + down @ up.T
    return concordant, discordant


def per_original_contradiction(data: AnalysisData) -> pd.DataFrame:
    """For every two predictors (the metrics and ``humans``, the number of judges who recognized): over all
    pairs of reconstructions of the same original in different sets, the share they order the same way
    (``concordant``), oppositely (``discordant``), or that either ties (``tied``, the rest), and
    ``discordant_untied`` = discordant / (concordant + discordant). One row per unordered pair.
    """
    t = data.table
    i, j = same_original_pairs(t)
    values = {m: aligned(t[m].to_numpy(), data.directions[m]) for m in data.metrics}
    values[HUMANS] = n_recognized(t)
    names = list(values)
    cols = ["a", "b", "n_pairs", "concordant", "discordant", "tied", "discordant_untied"]
    if not len(i):
        return pd.DataFrame(columns=cols)
    signs = np.stack([np.sign(v[i] - v[j]) for v in values.values()])
    concordant, discordant = _pair_counts(signs)
    rows = []
    for a in range(len(names)):
        for b in range(a + 1, len(names)):
            c, d = concordant[a, b], discordant[a, b]
            rows.append({"a": names[a], "b": names[b], "n_pairs": len(i), "concordant": c / len(i),
                         "discordant": d / len(i), "tied": 1 - (c + d) / len(i),
                         "discordant_untied": d / (c + d) if c + d else float("nan")})
    return pd.DataFrame(rows, columns=cols)


def as_matrix(pairs: pd.DataFrame, value: str = "discordant_untied") -> pd.DataFrame:
    """The long per-original table as a symmetric predictor x predictor matrix of ``value`` (0 on the
    diagonal)."""
    names = list(dict.fromkeys([*pairs["a"], *pairs["b"]]))
    mat = pd.DataFrame(0.0, index=pd.Index(names, name="metric"), columns=names)
    for a, b, v in zip(pairs["a"], pairs["b"], pairs[value], strict=True):
        mat.loc[a, b] = mat.loc[b, a] = v
    return mat
