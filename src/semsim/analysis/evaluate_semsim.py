"""The SemSim paper's generalization protocol (Sun et al., NeurIPS 2023, Sec. 5): train on some reconstruction
sets (datasets, victims, attacks), test on others, and compare SemSim with PSNR, SSIM and LPIPS against the
labels of the held-out sets.

Two figures per metric column, each oriented so that "more leakage" is the positive direction:

* image level: AUROC of the metric as a predictor of the majority label (recognized or not);
* set level: Spearman rank correlation, across the test sets, between the set's mean metric value and the
  share of its reconstructions that were recognized.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

from semsim.analysis.stats import aligned, auroc
from semsim.data.labels import majority
from semsim.errors import SemsimError
from semsim.learned.train import TrainConfig, train_semsim
from semsim.metrics.registry import list_metrics, metric_info
from semsim.metrics.scoring import build_panel, score_manifest

BASELINES = ("psnr", "ssim", "lpips_alex")


@dataclass
class Evaluation:
    """Per-column summary, per-set figures, and notes (skipped metrics, label provenance)."""

    summary: pd.DataFrame
    per_set: pd.DataFrame
    notes: list[str] = field(default_factory=list)


def select_sets(sets: Sequence[str], spec: str, what: str) -> list[str]:
    """Set names matching a comma-separated list of names or shell patterns (``cifar100/*,*/invgrad-*``)."""
    patterns = [p.strip() for p in spec.split(",") if p.strip()]
    chosen = [s for s in sets if any(fnmatch.fnmatchcase(s, p) for p in patterns)]
    if not chosen:
        raise SemsimError(
            f"--{what} {spec!r}: matches none of the labelled sets ({', '.join(sorted(sets)[:8])}"
            f"{', ...' if len(sets) > 8 else ''})"
        )
    return chosen


def oriented_auroc(values: np.ndarray, recognized: np.ndarray, higher_is_more_leakage: bool) -> float:
    """AUROC of a metric column predicting ``recognized``; NaN values dropped, NaN if a class is absent."""
    values = np.asarray(values, dtype=np.float64)
    keep = ~np.isnan(values)
    v = np.clip(values[keep], -1e300, 1e300)  # identical pairs give PSNR = inf
    return auroc(aligned(v, higher_is_more_leakage), np.asarray(recognized, dtype=bool)[keep])


def _set_spearman(per_set: pd.DataFrame, col: str, higher: bool) -> float:
    sub = per_set[["recognized_share", f"{col}_mean"]].dropna()
    if len(sub) < 3:
        return float("nan")
    sign = 1.0 if higher else -1.0
    return float(spearmanr(sign * sub[f"{col}_mean"], sub["recognized_share"]).statistic)


def evaluate_generalization(
    labels: pd.DataFrame,
    out_dir: str | os.PathLike,
    *,
    train_sets: str,
    test_sets: str | None = None,
    model: str | os.PathLike | None = None,
    config: TrainConfig | None = None,
    baselines: Sequence[str] = BASELINES,
    disjoint_originals: bool = False,
    device: str = "cpu",
    show_progress: bool = True,
) -> Evaluation:
    """Train SemSim on ``train_sets`` (or use ``model``), score ``test_sets`` (default: all other sets).

    ``disjoint_originals`` also drops test pairs whose original was used in training. Writes the trained model
    to ``out_dir/model``; returns the figures (the caller writes them).
    """
    out_dir = Path(out_dir)
    sets = sorted(labels["set"].unique())
    train_names = select_sets(sets, train_sets, "train-sets")
    test_names = (
        select_sets(sets, test_sets, "test-sets") if test_sets else [s for s in sets if s not in train_names]
    )
    overlap = sorted(set(train_names) & set(test_names))
    if overlap:
        raise SemsimError(
            f"set {overlap[0]!r} is selected for both training and testing; make the selections disjoint"
        )
    if not test_names:
        raise SemsimError("no set is left for testing; pass --test-sets or train on fewer sets")
    train = labels[labels["set"].isin(train_names)]
    test = labels[labels["set"].isin(test_names) & labels["original"].notna()]
    notes = []
    if disjoint_originals:
        seen = set(train["original_id"].dropna())
        test = test[~test["original_id"].isin(seen)]
        if len(test) == 0:
            raise SemsimError(
                "every test original was also used in training; drop --disjoint-originals or "
                "choose other sets"
            )
    if model is None:  # trains, or finds the finished model of an identical earlier run
        model = out_dir / "model"
        train_semsim(train, model, config, device=device, show_progress=show_progress)

    registered = {m.name for m in list_metrics()}
    names = ["semsim"] + [b for b in baselines if b in registered]
    notes += [f"{b} skipped: not available in semsim.metrics" for b in baselines if b not in registered]
    metrics, build_notes = build_panel(names, semsim=model, device=device)  # notes: skipped metrics, provenance
    notes += build_notes
    manifest = test[["set", "image_id", "original", "reconstruction"]].reset_index(drop=True)
    scores = score_manifest(manifest, metrics, device=device, show_progress=show_progress, n_bootstrap=200)
    table = scores.per_image.merge(test[["set", "image_id", "recognized"]], on=["set", "image_id"])
    y = majority(table).to_numpy()
    columns = [c for n in metrics for c in metric_info(n).columns if c in table.columns]
    per_set = (
        table.groupby("set", sort=True)
        .agg(
            n=("image_id", "size"),
            recognized_share=("recognized", lambda r: float((r > 0.5).mean())),
            **{f"{c}_mean": (c, "mean") for c in columns},
        )
        .reset_index()
    )
    rows = []
    for col in columns:
        higher = metric_info(next(n for n in metrics if col in metric_info(n).columns)).columns[col]
        values = table[col].to_numpy(dtype=float)
        per_set[f"{col}_auroc"] = [
            oriented_auroc(g[col].to_numpy(dtype=float), majority(g).to_numpy(), higher)
            for _, g in table.groupby("set", sort=True)
        ]
        rows.append(
            {
                "column": col,
                "higher_is_more_leakage": higher,
                "auroc": oriented_auroc(values, y, higher),
                "spearman_sets": _set_spearman(per_set, col, higher),
                "n_pairs": int((~np.isnan(values)).sum()),
                "n_sets": len(per_set),
            }
        )
    summary = pd.DataFrame(rows)
    summary.insert(0, "train_sets", ";".join(train_names))
    if len(per_set) < 3:
        notes.append(f"set-level Spearman needs at least 3 test sets; {len(per_set)} given, left blank")
    return Evaluation(summary, per_set, notes)
