"""The human ceiling: how well one annotator predicts the majority of the others, and where metrics stand.

Leave one annotator (judge slot) out; the target is the majority of the other judges of each image. With an
even number of others the majority can tie (2-2 of four), and how a tie counts changes the ceiling, so it is
an explicit choice (:data:`TIE_RULES`) printed with the results:

* ``exclude``: tied images are left out for that slot;
* ``not``: a tie counts as not recognized;
* ``half``: a tied image counts half as recognized and half as not (weights 1/2 and 1/2).

Each metric is scored against the same target on the same images: its AUROC, and its hit rate at the
annotator's false-positive rate (the metric's ROC curve read at the annotator's operating point), so
"a metric comes close to one person" can be checked point by point.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

from semsim.analysis.data import AnalysisData, judge_matrix
from semsim.analysis.resample import weighted_auroc
from semsim.analysis.stats import aligned
from semsim.errors import SemsimError

TIE_RULES = ("exclude", "not", "half")
CEILING_COLUMNS = ("n", "n_ties", "image_auroc", "image_accuracy", "tpr", "fpr", "tpr_at_annotator_fpr",
                   "set_spearman")


def target_weights(others: np.ndarray, ties: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Weight of each image as a positive and as a negative of the others' majority, and whether the others
    tie. ``others``: (N, k) recognitions (1/0, NaN when absent); images without another judgment get 0/0."""
    if ties not in TIE_RULES:
        raise SemsimError(f"ties {ties!r}: choose one of {', '.join(TIE_RULES)}")
    n = np.isfinite(others).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(n > 0, np.nansum(others, axis=1) / np.where(n > 0, n, 1), np.nan)
    tie = share == 0.5
    pos = (share > 0.5).astype(float)
    neg = (share < 0.5).astype(float)
    if ties == "not":
        neg[tie] = 1.0
    elif ties == "half":
        pos[tie] = neg[tie] = 0.5
    return pos, neg, tie


def weighted_roc(score: np.ndarray, pos: np.ndarray, neg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ROC curve (fpr, tpr), from (0, 0), one point per distinct threshold, with weighted positives and
    negatives (the points of :func:`sklearn.metrics.roc_curve` with ``sample_weight``)."""
    order = np.argsort(-score, kind="stable")
    s = score[order]
    last = np.r_[s[1:] != s[:-1], True]
    tp = np.cumsum(pos[order])[last]
    fp = np.cumsum(neg[order])[last]
    return np.r_[0.0, fp / fp[-1]], np.r_[0.0, tp / tp[-1]]


def roc_area(fpr: np.ndarray, tpr: np.ndarray) -> float:
    """Trapezoidal area under ROC points: the AUROC with ties counted one half (a tie group is a diagonal
    segment), so one sort serves the curve and its area."""
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1])) / 2)


def _set_spearman(pred: np.ndarray, pos: np.ndarray, neg: np.ndarray, codes: np.ndarray) -> float:
    """Spearman's rho across sets between the predictor's mean and the others' (weighted) majority rate."""
    w = pos + neg
    total = np.bincount(codes, weights=w)
    sets = total > 0
    means = np.bincount(codes, weights=w * pred)[sets] / total[sets]
    rate = np.bincount(codes, weights=pos)[sets] / total[sets]
    if sets.sum() < 3 or np.ptp(means) == 0 or np.ptp(rate) == 0:
        return float("nan")
    return float(stats.spearmanr(means, rate)[0])


def _slot_rows(data: AnalysisData, judges: np.ndarray, k: int, slot: str, ties: str,
               codes: np.ndarray) -> list[dict]:
    """The annotator in slot ``k`` and every metric, against the majority of the other slots."""
    pos, neg, tie = target_weights(np.delete(judges, k, axis=1), ties)
    judged = np.isfinite(judges[:, k]) & (np.isfinite(np.delete(judges, k, axis=1)).any(axis=1))
    keep = judged & (pos + neg > 0)
    if pos[keep].sum() == 0 or neg[keep].sum() == 0:
        return []
    own, pos, neg, codes = judges[keep, k], pos[keep], neg[keep], codes[keep]
    tpr, fpr = float(own @ pos / pos.sum()), float(own @ neg / neg.sum())
    base = {"slot": slot, "ties": ties, "n": int(keep.sum()), "n_ties": int(tie[judged].sum())}
    rows = [{**base, "predictor": "human", "image_auroc": float(weighted_auroc(own, pos, neg)),
             "image_accuracy": float((own @ pos + (1 - own) @ neg) / (pos + neg).sum()), "tpr": tpr, "fpr": fpr,
             "tpr_at_annotator_fpr": float("nan"), "set_spearman": _set_spearman(own, pos, neg, codes)}]
    for m in data.metrics:
        s = aligned(data.table[m].to_numpy(), data.directions[m])[keep]
        curve = weighted_roc(s, pos, neg)
        rows.append({**base, "predictor": m, "image_auroc": roc_area(*curve),
                     "image_accuracy": float("nan"), "tpr": float("nan"), "fpr": fpr,
                     "tpr_at_annotator_fpr": float(np.interp(fpr, *curve)),
                     "set_spearman": _set_spearman(s, pos, neg, codes)})
    return rows


def human_ceiling(data: AnalysisData, ties: str = "exclude") -> pd.DataFrame:
    """Leave-one-annotator-out ceiling, one row per (predictor, slot) plus ``slot == "mean"`` rows.

    ``human`` rows score the left-out annotator's own answer: AUROC (for a yes/no answer, its balanced
    accuracy), accuracy, hit rate ``tpr`` and false-positive rate ``fpr``. Metric rows score the metric on the
    same images and target: AUROC, and ``tpr_at_annotator_fpr``, its hit rate at the annotator's ``fpr``.
    ``set_spearman``: Spearman's rho across sets between the predictor's set mean and the others' majority
    rate. ``n``: images scored; ``n_ties``: images whose other judges tie (left out of ``n`` under
    ``exclude``). Empty without ``judge_<k>``
    columns.
    """
    judges, cols = judge_matrix(data.table)
    columns = ["predictor", "slot", "ties", *CEILING_COLUMNS]
    if not cols:
        return pd.DataFrame(columns=columns)
    codes, _ = pd.factorize(data.table["set"])
    rows = [r for k, col in enumerate(cols) for r in _slot_rows(data, judges, k, col, ties, codes)]
    out = pd.DataFrame(rows, columns=columns)
    if not len(out):
        return out
    means = out.groupby("predictor", sort=False)[list(CEILING_COLUMNS)].mean().reset_index()
    means = means.assign(slot="mean", ties=ties)
    return pd.concat([out, means[columns]], ignore_index=True)
