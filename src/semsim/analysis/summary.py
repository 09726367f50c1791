"""The paper-style summary: one row per metric with its faithfulness figures, intervals and significance
against the best metric, and a per-configuration breakdown (Sun et al., NeurIPS 2023, Tables 1-2 layout)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from semsim.analysis.compare import ALPHA, best_and_ties

SET_STATS = ("spearman", "kendall", "pearson")


def _marks(comparisons: pd.DataFrame, values: pd.Series, level: str) -> pd.Series:
    """Per metric: ``best``, ``=`` (cannot be told apart from the best: Holm p >= 0.05) or ``<`` (worse)."""
    if comparisons.empty or values.isna().all():
        return pd.Series("", index=values.index)
    best, ties = best_and_ties(comparisons, values, level)
    return pd.Series(["best" if m == best else "=" if m in ties else "<" for m in values.index],
                     index=values.index)


def summary_table(correlations: pd.DataFrame, image: pd.DataFrame, comparisons: pd.DataFrame,
                  calibration: pd.DataFrame | None = None) -> pd.DataFrame:
    """Metric x (set Spearman / Kendall / Pearson with intervals, image AUROC with interval, held-out
    calibrated AUROC / Brier / ECE, marks against the best metric at each level).

    ``set_mark`` / ``image_mark``: ``best``, ``=`` (not distinguishable from the best, Holm-adjusted p >=
    0.05: Williams' test for set Spearman, DeLong for AUROC) or ``<`` (significantly below the best).
    """
    c = correlations.set_index("metric")
    i = image.set_index("metric")
    out = pd.DataFrame(index=pd.Index(c.index, name="metric"))
    for s in SET_STATS:
        for suffix in ("", "_ci_low", "_ci_high"):
            out[f"set_{s}{suffix}"] = c[f"{s}{suffix}"]
    out["set_spearman_p_holm"] = c["spearman_p_holm"]
    out["set_mark"] = _marks(comparisons, c["spearman"], "set")
    for suffix in ("", "_ci_low", "_ci_high"):
        out[f"image_auroc{suffix}"] = i[f"auroc{suffix}"]
    out["image_mark"] = _marks(comparisons, i["auroc"], "image")
    if calibration is not None and {"metric", "auroc", "brier", "ece"} <= set(calibration.columns):
        cal = calibration.set_index("metric")
        for col in ("auroc", "brier", "ece"):
            out[f"calibrated_{col}"] = cal[col].reindex(out.index)
    out["set_ci_resamples"] = c["ci_resamples"]
    out["image_ci_resamples"] = i["ci_resamples"]
    return out.reset_index()


def by_configuration(per_set: pd.DataFrame, image_by_set: pd.DataFrame) -> pd.DataFrame:
    """Per configuration (rows, sorted by name): images, majority recognition rate and each metric's AUROC
    within the configuration (columns)."""
    pivot = image_by_set.pivot(index="set", columns="metric", values="auroc")
    pivot = pivot[list(dict.fromkeys(image_by_set["metric"]))]
    pivot.columns = [f"auroc_{m}" for m in pivot.columns]
    base = per_set.set_index("set")[["n", "recognition_rate"]]
    return base.join(pivot).sort_index().reset_index()


def indistinguishable(comparisons: pd.DataFrame, level: str, alpha: float = ALPHA) -> list[tuple[str, str]]:
    """Pairs of metrics whose difference at ``level`` is not significant after Holm's adjustment."""
    rows = comparisons[comparisons["level"] == level]
    keep = ~(np.isfinite(rows["p_holm"]) & (rows["p_holm"] < alpha))
    return list(zip(rows.loc[keep, "a"], rows.loc[keep, "b"], strict=True))


def model_recognition_table(table: pd.DataFrame, majority: np.ndarray) -> pd.DataFrame:
    """Model-based recognition against people (the MR versus human-in-the-loop comparison): per recognizer
    with a ``<c>_correct`` column and its ``clean_<c>_correct`` partner (the same model on the originals):
    clean accuracy, accuracy on the reconstructions, relative accuracy (accuracy / clean accuracy, as
    ``mr_relative``), the people's majority rate, and how often the model's verdict equals the majority's."""
    rows = []
    for col in table.columns:
        if not (col.endswith("_correct") and f"clean_{col}" in table.columns):
            continue
        right = table[col].to_numpy(dtype=float)
        clean = float(np.nanmean(table[f"clean_{col}"].to_numpy(dtype=float)))
        ok = np.isfinite(right)
        acc = float(right[ok].mean())
        rows.append({"recognizer": col[: -len("_correct")], "n": int(ok.sum()), "clean_accuracy": clean,
                     "accuracy": acc, "relative": acc / clean if clean else float("nan"),
                     "human_majority_rate": float(majority[ok].mean()),
                     "agrees_with_majority": float(np.mean((right[ok] > 0.5) == majority[ok]))})
    return pd.DataFrame(rows)
