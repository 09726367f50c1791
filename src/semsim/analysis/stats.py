"""Agreement statistics between metrics and human recognition (Sun et al., NeurIPS 2023, Sec. 3 and 5).

All metric values are first *aligned* (negated when lower values mean more leakage) so that agreement with
people is a positive correlation and an AUROC above 0.5. Row-wise versions of Pearson, Spearman, Kendall
tau-b and AUROC work on a whole stack of bootstrap replicates at once.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

from semsim.analysis.data import AnalysisData, judge_matrix
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


def _ci(values: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    values = values[np.isfinite(values)]
    if len(values) < 2:
        return float("nan"), float("nan")
    a = (1 - level) / 2
    return float(np.quantile(values, a)), float(np.quantile(values, 1 - a))


def _groups(data: AnalysisData) -> list[np.ndarray]:
    """Row indices of each set, in order of first appearance."""
    codes, _ = pd.factorize(data.table["set"])
    return [np.flatnonzero(codes == g) for g in range(codes.max() + 1)]


def _bootstrap_indices(groups: list[np.ndarray], n_boot: int, seed: int) -> list[np.ndarray]:
    """Per set, ``(n_boot, n_set)`` row indices drawn with replacement within the set."""
    rng = np.random.default_rng(seed)
    return [g[rng.integers(0, len(g), size=(n_boot, len(g)))] for g in groups]


def set_level(data: AnalysisData, n_boot: int = 1000, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The paper's protocol: per set, each metric's mean and the human recognition rate; then across sets,
    Spearman / Kendall / Pearson of the aligned means with the rate, p-values (scipy) and percentile-bootstrap
    95% intervals resampling images within each set.

    Returns (per-set table, correlation table with one row per metric).
    """
    t = data.table
    groups = _groups(data)
    rec = majority(t).to_numpy(dtype=float)
    share = t["recognized"].to_numpy(dtype=float)
    values = t[data.metrics].to_numpy(dtype=float)
    rows = []
    for g in groups:
        row = {"set": t["set"].iloc[g[0]], "n": len(g), "recognition_rate": rec[g].mean(),
               "mean_recognized_share": share[g].mean()}
        row.update({f"{m}_mean": values[g, k].mean() for k, m in enumerate(data.metrics)})
        rows.append(row)
    per_set = pd.DataFrame(rows)
    rate = per_set["recognition_rate"].to_numpy()
    boot = _bootstrap_indices(groups, n_boot, seed) if n_boot else []
    boot_rate = np.stack([rec[b].mean(1) for b in boot], axis=1) if boot else None  # (B, S)
    corr_rows = []
    for k, m in enumerate(data.metrics):
        x = aligned(per_set[f"{m}_mean"].to_numpy(), data.directions[m])
        row: dict = {"metric": m, "higher_is_more_leakage": data.directions[m], "n_sets": len(groups)}
        enough = len(groups) >= 3 and np.ptp(x) > 0 and np.ptp(rate) > 0
        tests = {"spearman": stats.spearmanr, "kendall": stats.kendalltau, "pearson": stats.pearsonr}
        boot_x = (np.stack([aligned(values[b, k], data.directions[m]).mean(1) for b in boot], axis=1)
                  if boot else None)
        rowwise = {"spearman": spearman_rows, "kendall": kendall_rows, "pearson": pearson_rows}
        for name, test in tests.items():
            if enough:
                res = test(x, rate)
                row[name], row[f"{name}_p"] = float(res[0]), float(res[1])
            else:
                row[name] = row[f"{name}_p"] = float("nan")
            lo, hi = _ci(rowwise[name](boot_x, boot_rate)) if boot and enough else (float("nan"),) * 2
            row[f"{name}_ci_low"], row[f"{name}_ci_high"] = lo, hi
        corr_rows.append(row)
    return per_set, pd.DataFrame(corr_rows)


def n_recognized(table: pd.DataFrame) -> np.ndarray:
    """How many judges recognized each image (``recognized * n_judges``, rounded)."""
    return np.round(table["recognized"].to_numpy(float) * table["n_judges"].to_numpy(float))


def image_level(data: AnalysisData, n_boot: int = 1000, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per metric: AUROC of the aligned value against the majority label (bootstrap 95% interval resampling
    images within sets) and Spearman's rho with the number of judges who recognized; then the same per set.

    Returns (overall table, per-set table).
    """
    t = data.table
    pos = majority(t).to_numpy()
    count = n_recognized(t)
    groups = _groups(data)
    boot = np.concatenate(_bootstrap_indices(groups, n_boot, seed + 1), axis=1) if n_boot else None
    overall, by_set = [], []
    for m in data.metrics:
        s = aligned(t[m].to_numpy(), data.directions[m])
        rho = stats.spearmanr(s, count) if np.ptp(count) > 0 else (np.nan, np.nan)
        lo, hi = _ci(auroc_rows(s[boot], pos[boot])) if boot is not None else (float("nan"),) * 2
        overall.append({"metric": m, "higher_is_more_leakage": data.directions[m], "n": len(t),
                        "auroc": auroc(s, pos), "auroc_ci_low": lo, "auroc_ci_high": hi,
                        "spearman_n_recognized": float(rho[0]), "spearman_p": float(rho[1])})
        for g in groups:
            varies = np.ptp(count[g]) > 0 and np.ptp(s[g]) > 0
            r = stats.spearmanr(s[g], count[g]) if varies else (np.nan,) * 2
            by_set.append({"set": t["set"].iloc[g[0]], "metric": m, "n": len(g),
                           "recognition_rate": pos[g].mean(), "auroc": auroc(s[g], pos[g]),
                           "spearman_n_recognized": float(r[0]), "spearman_p": float(r[1])})
    return pd.DataFrame(overall), pd.DataFrame(by_set)


def contradiction_matrix(per_set: pd.DataFrame, metrics: list[str], directions: dict[str, bool],
                         include_humans: bool = True) -> pd.DataFrame:
    """Share of set pairs that two metrics order in opposite ways (Sun et al., Sec. 3: metrics contradict
    each other). Entry (a, b): over all pairs of sets i < j, the fraction with sign(a_i - a_j) * sign(b_i -
    b_j) < 0, on aligned set means; a tie in either is not a contradiction. ``humans`` is the recognition
    rate. Without ties this equals (1 - Kendall's tau) / 2.
    """
    cols = {m: aligned(per_set[f"{m}_mean"].to_numpy(), directions[m]) for m in metrics}
    if include_humans:
        cols["humans"] = per_set["recognition_rate"].to_numpy(dtype=float)
    i, j = np.triu_indices(len(per_set), 1)
    signs = {k: np.sign(v[i] - v[j]) for k, v in cols.items()}
    names = list(cols)
    mat = np.full((len(names), len(names)), np.nan)
    for a, na in enumerate(names):
        for b, nb in enumerate(names):
            if len(i):
                mat[a, b] = float(np.mean(signs[na] * signs[nb] < 0))
    return pd.DataFrame(mat, index=pd.Index(names, name="metric"), columns=names)


CEILING_COLUMNS = ("n", "image_auroc", "image_accuracy", "set_spearman")


def _majority_of(judges: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Majority (> half recognized) of the present judgments per row, and how many are present."""
    n = np.isfinite(judges).sum(1)
    with np.errstate(invalid="ignore"):
        share = np.nansum(judges, axis=1) / np.where(n > 0, n, 1)
    return share > 0.5, n


def human_ceiling(data: AnalysisData) -> pd.DataFrame:
    """Leave-one-annotator-out: how well one judge predicts the majority of the others.

    For each judge slot k, the target is the majority of the other judges of each image; annotator k's own
    judgment is scored by AUROC (for a yes/no predictor, the balanced accuracy) and accuracy, and each metric
    by AUROC on the same images and target. ``set_spearman``: Spearman's rho across sets between the
    predictor's set mean (judge k's recognition rate, or the aligned metric mean) and the others' majority
    rate. Rows ``slot == "mean"`` average over slots. Empty when the table has no ``judge_<k>`` columns.
    """
    judges, cols = judge_matrix(data.table)
    if not cols:
        return pd.DataFrame(columns=["predictor", "slot", *CEILING_COLUMNS])
    t = data.table
    set_codes, _ = pd.factorize(t["set"])
    rows = []
    for k, col in enumerate(cols):
        others = np.delete(judges, k, axis=1)
        target, n_others = _majority_of(others)
        keep = np.isfinite(judges[:, k]) & (n_others > 0)
        if keep.sum() < 2:
            continue
        y = target[keep]
        codes = set_codes[keep]
        sets = np.unique(codes)
        rate = np.array([y[codes == s].mean() for s in sets])

        def set_rho(pred: np.ndarray, codes=codes, sets=sets, rate=rate) -> float:
            means = np.array([pred[codes == s].mean() for s in sets])
            if len(sets) < 3 or np.ptp(means) == 0 or np.ptp(rate) == 0:
                return float("nan")
            return float(stats.spearmanr(means, rate)[0])

        own = judges[keep, k]
        rows.append({"predictor": "human", "slot": col, "n": int(keep.sum()), "image_auroc": auroc(own, y),
                     "image_accuracy": float(np.mean((own > 0.5) == y)), "set_spearman": set_rho(own)})
        for m in data.metrics:
            s = aligned(t[m].to_numpy(), data.directions[m])[keep]
            rows.append({"predictor": m, "slot": col, "n": int(keep.sum()), "image_auroc": auroc(s, y),
                         "image_accuracy": float("nan"), "set_spearman": set_rho(s)})
    out = pd.DataFrame(rows)
    if not len(out):
        return out
    means = out.groupby("predictor", sort=False)[list(CEILING_COLUMNS)].mean()
    means = means.reset_index().assign(slot="mean")
    return pd.concat([out, means[out.columns]], ignore_index=True)
