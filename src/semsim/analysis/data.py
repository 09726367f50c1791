"""Inputs of the faithfulness analysis: joining scores with labels, metric directions, and data imports.

A score table (docs/contracts.md, section 2) and a label table (section 3) are joined on ``set`` and
``image_id``; one table holding both works too. Every analysed metric column needs a known direction
(``higher_is_more_leakage``): from the metric registry, or given explicitly; unknown columns fail loudly
rather than being guessed.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from semsim.common.io import read_table
from semsim.data.labels import LABEL_COLUMNS, validate_labels
from semsim.errors import SemsimError
from semsim.metrics import column_direction

# Columns of score / label / manifest tables that are never metrics.
NON_METRIC_COLUMNS = frozenset({
    "set", "image_id", "status", "label", "original", "reconstruction", "recognized", "n_judges",
    "label_source", "config", "n_recognized", "majority",
})

SEMSIM_CIFAR100_SOURCE = "import:semsim-cifar100"
# Directions of the metric columns of the SemSim authors' CIFAR-100 table (shared/data README): distances
# (mse on the 0-255 scale, LPIPS, DreamSim, the SemSim embedding distance) fall as leakage grows.
SEMSIM_CIFAR100_DIRECTIONS = {
    "mse": False, "ssim": True, "psnr": True, "lpips_squeeze": False, "dreamsim": False, "semsim": False,
}
_CONFIG_RE = re.compile(
    r"^(?P<arch>ResNet20-4|ConvNet)_(?P<epochs>\d+)_inversed_(?P<aug>aug|crop)_auglist_(?P<ats>[^_]*)"
    r"_rlabel_False(?:_defense_(?P<defense>gaussian|prune)_(?P<strength>[^_]+))?$"
)


@dataclass
class AnalysisData:
    """The joined per-image table plus what the analysis needs to read it."""

    table: pd.DataFrame  # set, image_id, metric columns, recognized, n_judges, label_source, judge_* ...
    metrics: list[str]
    directions: dict[str, bool]  # column -> higher_is_more_leakage
    notes: list[str] = field(default_factory=list)
    base_dirs: list[Path] = field(default_factory=list)  # where relative image paths are resolved


def parse_directions(specs: list[str] | None) -> dict[str, bool]:
    """Parse ``["dreamsim=lower", "ssim=higher"]``: the value says whether higher values mean more leakage."""
    out: dict[str, bool] = {}
    for spec in specs or []:
        col, sep, word = spec.partition("=")
        word = word.strip().lower()
        if not sep or not col.strip() or word not in ("higher", "lower"):
            raise SemsimError(f"--direction {spec!r}: expected COLUMN=higher or COLUMN=lower (higher: larger "
                              "values mean the reconstruction reveals more)")
        out[col.strip()] = word == "higher"
    return out


def resolve_directions(columns: list[str], explicit: dict[str, bool] | None = None) -> dict[str, bool]:
    """``higher_is_more_leakage`` of each column: explicit first, then the registry; unknown ones fail."""
    explicit = explicit or {}
    out, unknown = {}, []
    for col in columns:
        d = explicit.get(col, column_direction(col))
        if d is None:
            unknown.append(col)
        else:
            out[col] = bool(d)
    if unknown:
        flags = " ".join(f"--direction {c}=higher|lower" for c in unknown)
        raise SemsimError(f"metric column(s) {', '.join(unknown)} are not registered, so their direction is "
                          f"unknown; say it with {flags} (higher: larger values mean more leakage), or leave "
                          "them out with --metrics")
    return out


def metric_columns(df: pd.DataFrame) -> list[str]:
    """Numeric columns of ``df`` that hold metric values (everything but ids, labels and judges)."""
    return [c for c in df.columns if c not in NON_METRIC_COLUMNS and not c.startswith("judge_")
            and pd.api.types.is_numeric_dtype(df[c])]


def _as_table(obj: pd.DataFrame | str | os.PathLike) -> tuple[pd.DataFrame, Path | None]:
    if isinstance(obj, pd.DataFrame):
        return obj.copy(), None
    path = Path(obj)
    return read_table(path), path.resolve().parent


def join_scores_labels(scores: pd.DataFrame | str | os.PathLike,
                       labels: pd.DataFrame | str | os.PathLike | None = None, *,
                       metrics: list[str] | None = None, directions: dict[str, bool] | None = None
                       ) -> AnalysisData:
    """Join a per-image score table with a label table on (set, image_id); ``labels=None``: one table has
    both.

    Rows whose ``status`` is not ``ok`` and rows with a missing value in an analysed metric are dropped
    (counted in ``notes``); infinite values (PSNR of an identical pair) become the column's finite extreme.
    ``metrics`` picks columns (default: every numeric metric column).
    """
    score_df, score_dir = _as_table(scores)
    where = str(scores) if not isinstance(scores, pd.DataFrame) else "score table"
    for col in ("set", "image_id"):
        if col not in score_df.columns:
            raise SemsimError(f"{where}: missing column '{col}'; a score table needs set, image_id and "
                              "metric columns (see docs/contracts.md)")
    score_df["set"] = score_df["set"].astype(str)
    score_df["image_id"] = score_df["image_id"].astype(str)
    notes: list[str] = []
    if "status" in score_df.columns:
        bad = score_df["status"].fillna("ok").astype(str) != "ok"
        if bad.any():
            notes.append(f"{int(bad.sum())} scored row(s) without status 'ok' left out")
            score_df = score_df[~bad]
    base_dirs = [d for d in (score_dir,) if d is not None]
    if labels is None:
        table = validate_labels(score_df, where=where)
    else:
        label_df, label_dir = _as_table(labels)
        lwhere = str(labels) if not isinstance(labels, pd.DataFrame) else "label table"
        label_df = validate_labels(label_df, where=lwhere)
        if label_dir is not None:
            base_dirs.insert(0, label_dir)
        dup = score_df.duplicated(["set", "image_id"])
        if dup.any():
            row = score_df[dup].iloc[0]
            raise SemsimError(f"{where}: image '{row['image_id']}' of set '{row['set']}' is scored twice")
        shared = [c for c in score_df.columns if c in label_df.columns and c not in ("set", "image_id")]
        # The label table is authoritative for label columns; the score table for metrics and paths it lacks.
        score_part = score_df.drop(columns=[c for c in shared if c in LABEL_COLUMNS or c.startswith("judge_")
                                            or c in ("original", "reconstruction", "label")])
        table = score_part.merge(label_df, on=["set", "image_id"], how="inner", suffixes=("", "_labels"))
        n_unlabelled = len(score_df) - len(table)
        n_unscored = len(label_df) - len(table)
        if n_unlabelled:
            notes.append(f"{n_unlabelled} scored image(s) have no label and are left out")
        if n_unscored:
            notes.append(f"{n_unscored} labelled image(s) have no score and are left out")
        if not len(table):
            raise SemsimError(f"{where} and {lwhere}: no (set, image_id) pair is in both tables; check that "
                              "the set names and image ids match")
    cols = metrics if metrics else metric_columns(table)
    missing = [c for c in cols if c not in table.columns]
    if missing:
        raise SemsimError(f"{where}: no metric column(s) {', '.join(missing)}; available: "
                          f"{', '.join(metric_columns(table)) or 'none'}")
    if not cols:
        raise SemsimError(f"{where}: no numeric metric column to analyse")
    for c in cols:
        table[c] = pd.to_numeric(table[c], errors="coerce")
    empty = [c for c in cols if table[c].isna().all()]
    if empty and not metrics:
        notes.append(f"metric column(s) {', '.join(empty)} have no values (e.g. MS-SSIM on small images) "
                     "and are left out")
        cols = [c for c in cols if c not in empty]
    dirs = resolve_directions(cols, directions)
    present = ~np.isnan(table[cols].to_numpy(dtype=float)).any(axis=1)
    if not present.all():
        notes.append(f"{int((~present).sum())} image(s) with a missing metric value left out")
        table = table[present].copy()
    if not len(table):
        raise SemsimError(f"{where}: no image has a value for every metric in {', '.join(cols)}")
    for c in cols:  # e.g. the PSNR of an identical pair: keep the image, at the column's finite extreme
        v = table[c].to_numpy(dtype=float)
        inf = np.isinf(v)
        if inf.any():
            fin = v[~inf]
            if not len(fin):
                raise SemsimError(f"{where}: every value of '{c}' is infinite; leave it out with --metrics")
            table[c] = np.where(v == np.inf, fin.max(), np.where(v == -np.inf, fin.min(), v))
            notes.append(f"{int(inf.sum())} infinite '{c}' value(s) set to the column's finite extreme "
                         f"({fin.max():.4g} / {fin.min():.4g})")
    sources = sorted(table["label_source"].astype(str).unique())
    if len(sources) > 1:
        notes.append(f"labels come from several sources: {', '.join(sources)}")
    return AnalysisData(table.reset_index(drop=True), list(cols), dirs, notes, base_dirs)


def judge_matrix(table: pd.DataFrame) -> tuple[np.ndarray, list[str]]:
    """Per-judge recognition as floats (1 recognized, 0 not, NaN no judgment) from the ``judge_<k>`` columns.

    Judges coded 1/0/-1 (docs/contracts.md) read as recognized / not / can't tell (= not recognized). Any
    other value is a chosen class, compared with the ``label`` column (the true class).
    """
    cols = sorted((c for c in table.columns if re.fullmatch(r"judge_\d+", c)), key=lambda c: int(c[6:]))
    if not cols:
        return np.zeros((len(table), 0)), []
    raw = table[cols].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)
    present = np.isfinite(raw)
    if np.isin(raw[present], (-1.0, 0.0, 1.0)).all():
        out = (raw == 1).astype(float)
    elif "label" in table.columns:
        out = (raw == table["label"].to_numpy(dtype=float)[:, None]).astype(float)
    else:
        raise SemsimError("label table: judge_<k> columns hold class ids but there is no 'label' column with "
                          "the true class; add it or code judges as 1 (recognized), 0, -1 (can't tell)")
    out[~present] = np.nan
    return out, cols


def _set_name(config: str) -> str:
    """A readable set name, e.g. ``ResNet20-4_200_inversed_aug_auglist_3-1-7_rlabel_False`` ->
    ``cifar100/ResNet20-4/aug+ats-3-1-7/none/invgrad``; unknown patterns are kept as they are."""
    m = _CONFIG_RE.match(config)
    if m is None:
        return config
    aug = m["aug"] + (f"+ats-{m['ats']}" if m["ats"] else "")
    defense = "none" if m["defense"] is None else (
        f"noise-{m['strength']}" if m["defense"] == "gaussian" else f"prune-{m['strength']}")
    return f"cifar100/{m['arch']}/{aug}/{defense}/invgrad"


def import_semsim_cifar100(path: str | os.PathLike) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Turn the SemSim authors' CIFAR-100 human-label table into a (score table, label table) pair.

    The table (shared/data/cifar100_human_labels/labels.csv) has one row per reconstruction: the victim
    ``config``, the 1-based CIFAR-100 test index (the image id), the true ``fine_label``, the class each of
    five annotators chose (``ann1..5``, -1 = can't tell), ``n_correct`` and six metric values. Judges become
    ``judge_1..5`` = 1 (chose the true class), 0 (another class) or -1 (can't tell).
    """
    path = Path(path)
    ann = [f"ann{k}" for k in range(1, 6)]
    required = ("config", "cifar100_test_idx_1based", "fine_label", *ann, "n_correct",
                *SEMSIM_CIFAR100_DIRECTIONS)
    raw = read_table(path, required=required)
    chosen = raw[ann].to_numpy(dtype=np.int64)
    truth = raw["fine_label"].to_numpy(dtype=np.int64)
    correct = chosen == truth[:, None]
    disagree = correct.sum(1) != raw["n_correct"].to_numpy()
    if disagree.any():
        i = int(np.flatnonzero(disagree)[0])
        raise SemsimError(f"{path}: row {i + 2} says n_correct={raw['n_correct'].iloc[i]} but "
                          f"{int(correct[i].sum())} annotators chose the true class; the file is "
                          "inconsistent")
    sets = raw["config"].astype(str).map(_set_name)
    ids = raw["cifar100_test_idx_1based"].astype(int).astype(str)
    scores = pd.DataFrame({"set": sets, "image_id": ids})
    for col in SEMSIM_CIFAR100_DIRECTIONS:
        scores[col] = raw[col].astype(float)
    labels = pd.DataFrame({
        "set": sets, "image_id": ids, "label": truth, "recognized": correct.mean(1), "n_judges": 5,
        "label_source": SEMSIM_CIFAR100_SOURCE, "config": raw["config"].astype(str),
    })
    for k in range(5):
        labels[f"judge_{k + 1}"] = np.where(correct[:, k], 1, np.where(chosen[:, k] == -1, -1, 0))
    return scores, validate_labels(labels, where=str(path))
