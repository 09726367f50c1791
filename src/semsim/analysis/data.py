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
from semsim.data.set_names import attack_set_name, gradient_part, image_id, training_part
from semsim.errors import SemsimError
from semsim.metrics.registry import column_direction

# Columns of score / label / manifest tables that are never metrics.
NON_METRIC_COLUMNS = frozenset({
    "set", "image_id", "status", "label", "original", "reconstruction", "recognized", "n_judges",
    "label_source", "config", "n_recognized", "majority",
})
NON_METRIC_PREFIXES = ("judge_", "clean_")

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
    """Numeric columns of ``df`` that hold metric values: everything but ids, labels, judges (``judge_*``)
    and a recognizer's result on the original (``clean_*``, docs/contracts.md)."""
    return [c for c in df.columns if c not in NON_METRIC_COLUMNS and not c.startswith(NON_METRIC_PREFIXES)
            and pd.api.types.is_numeric_dtype(df[c])]


def _as_table(obj: pd.DataFrame | str | os.PathLike, what: str) -> tuple[pd.DataFrame, str, Path | None]:
    """A table, the name to use in messages, and the folder relative paths in it are resolved against."""
    if isinstance(obj, pd.DataFrame):
        return obj.copy(), what, None
    path = Path(obj)
    return read_table(path), str(path), path.resolve().parent


def _read_scores(scores: pd.DataFrame | str | os.PathLike) -> tuple[pd.DataFrame, str, Path | None]:
    """The score table with string ``set`` / ``image_id``; fails when either column is missing."""
    df, where, folder = _as_table(scores, "score table")
    for col in ("set", "image_id"):
        if col not in df.columns:
            raise SemsimError(f"{where}: missing column '{col}'; a score table needs set, image_id and "
                              "metric columns (see docs/contracts.md)")
    df["set"] = df["set"].astype(str)
    df["image_id"] = df["image_id"].astype(str)
    return df, where, folder


def _drop_failed(df: pd.DataFrame, notes: list[str]) -> pd.DataFrame:
    """Rows whose ``status`` is not ``ok`` (failed attacks or scoring), left out with a note."""
    if "status" not in df.columns:
        return df
    bad = df["status"].fillna("ok").astype(str) != "ok"
    if bad.any():
        notes.append(f"{int(bad.sum())} scored row(s) without status 'ok' left out")
    return df[~bad]


def _first_key(df: pd.DataFrame) -> str:
    row = df.iloc[0]
    return f"set '{row['set']}' image '{row['image_id']}'"


def check_join(n_left: int, n_right: int, n_joined: int, left: tuple[str, str, pd.DataFrame],
               right: tuple[str, str, pd.DataFrame], allow_missing: bool, notes: list[str]) -> None:
    """Stop when a join on (set, image_id) loses rows, unless ``allow_missing`` (then note the loss).

    ``left`` / ``right``: (what the rows are, e.g. "scored", the table's name, the rows that found no partner).
    """
    lost = [(n, what, name, rows) for n, (what, name, rows) in ((n_left - n_joined, left), (n_right - n_joined,
                                                                                           right)) if n]
    if not lost:
        return
    parts = [f"{n} {what} image(s) of {name} have no match ({_first_key(rows)}, ...)" for n, what, name, rows in lost]
    if not allow_missing:
        raise SemsimError(f"{'; '.join(parts)}: the (set, image_id) pairs of the tables differ; fix the set names "
                          f"or ids, or pass --allow-missing to analyse only the {n_joined} image(s) in both")
    notes += [f"{p}; left out (--allow-missing)" for p in parts]


def _merge_labels(score_df: pd.DataFrame, where: str, label_df: pd.DataFrame, lwhere: str, allow_missing: bool,
                  notes: list[str]) -> pd.DataFrame:
    """Inner join on (set, image_id). The label table is authoritative for label columns; the score table
    for metrics and the image paths the label table lacks."""
    dup = score_df.duplicated(["set", "image_id"])
    if dup.any():
        raise SemsimError(f"{where}: {_first_key(score_df[dup])} is scored twice")
    shared = [c for c in score_df.columns if c in label_df.columns and c not in ("set", "image_id")]
    own = [c for c in shared if c in LABEL_COLUMNS or c.startswith("judge_") or c in ("original", "reconstruction",
                                                                                       "label")]
    table = score_df.drop(columns=own).merge(label_df, on=["set", "image_id"], how="inner", suffixes=("", "_labels"))
    if not len(table):
        raise SemsimError(f"{where} and {lwhere}: no (set, image_id) pair is in both tables; check that the set "
                          "names and image ids match")
    keys = pd.MultiIndex.from_frame(table[["set", "image_id"]])
    unlabelled = score_df[~pd.MultiIndex.from_frame(score_df[["set", "image_id"]]).isin(keys)]
    unscored = label_df[~pd.MultiIndex.from_frame(label_df[["set", "image_id"]]).isin(keys)]
    check_join(len(score_df), len(label_df), len(table), ("scored", where, unlabelled),
               ("labelled", lwhere, unscored), allow_missing, notes)
    return table


def _select_metrics(table: pd.DataFrame, metrics: list[str] | None, where: str, notes: list[str]) -> list[str]:
    """The analysed metric columns, as numbers: ``metrics`` as given, or every numeric metric column with a
    value (all-empty columns, e.g. MS-SSIM on small images, are left out with a note)."""
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
        notes.append(f"metric column(s) {', '.join(empty)} have no values (e.g. MS-SSIM on small images) and are "
                     "left out")
        cols = [c for c in cols if c not in empty]
    return list(cols)


def _drop_incomplete(table: pd.DataFrame, cols: list[str], where: str, notes: list[str]) -> pd.DataFrame:
    """Images without a value for every analysed metric, left out with a note."""
    present = ~np.isnan(table[cols].to_numpy(dtype=float)).any(axis=1)
    if not present.all():
        notes.append(f"{int((~present).sum())} image(s) with a missing metric value left out")
        table = table[present].copy()
    if not len(table):
        raise SemsimError(f"{where}: no image has a value for every metric in {', '.join(cols)}")
    return table


def _clip_infinite(table: pd.DataFrame, cols: list[str], where: str, notes: list[str]) -> pd.DataFrame:
    """Infinite values (the PSNR of an identical pair) moved to the column's finite extreme, keeping their
    rank."""
    for c in cols:
        v = table[c].to_numpy(dtype=float)
        inf = np.isinf(v)
        if not inf.any():
            continue
        fin = v[~inf]
        if not len(fin):
            raise SemsimError(f"{where}: every value of '{c}' is infinite; leave it out with --metrics")
        table[c] = np.where(v == np.inf, fin.max(), np.where(v == -np.inf, fin.min(), v))
        notes.append(f"{int(inf.sum())} infinite '{c}' value(s) set to the column's finite extreme "
                     f"({fin.max():.4g} / {fin.min():.4g})")
    return table


def join_scores_labels(scores: pd.DataFrame | str | os.PathLike,
                       labels: pd.DataFrame | str | os.PathLike | None = None, *,
                       metrics: list[str] | None = None, directions: dict[str, bool] | None = None,
                       allow_missing: bool = False) -> AnalysisData:
    """Join a per-image score table with a label table on (set, image_id); ``labels=None``: one table has
    both.

    A join that loses images (scored but unlabelled, or labelled but unscored) raises :class:`SemsimError`
    naming how many and why, unless ``allow_missing``. Rows whose ``status`` is not ``ok`` and rows with a
    missing value in an analysed metric are dropped (counted in ``notes``); infinite values become the
    column's finite extreme. ``metrics`` picks columns (default: every numeric metric column).
    """
    score_df, where, score_dir = _read_scores(scores)
    notes: list[str] = []
    score_df = _drop_failed(score_df, notes)
    base_dirs = [d for d in (score_dir,) if d is not None]
    if labels is None:
        table = validate_labels(score_df, where=where)
    else:
        label_df, lwhere, label_dir = _as_table(labels, "label table")
        label_df = validate_labels(label_df, where=lwhere)
        base_dirs = [d for d in (label_dir,) if d is not None] + base_dirs
        table = _merge_labels(score_df, where, label_df, lwhere, allow_missing, notes)
    cols = _select_metrics(table, metrics, where, notes)
    dirs = resolve_directions(cols, directions)
    table = _clip_infinite(_drop_incomplete(table, cols, where, notes), cols, where, notes)
    sources = sorted(table["label_source"].astype(str).unique())
    if len(sources) > 1:
        notes.append(f"labels come from several sources: {', '.join(sources)}")
    return AnalysisData(table.reset_index(drop=True), cols, dirs, notes, base_dirs)


CANT_TELL = -1


def judge_slots(table: pd.DataFrame) -> list[str]:
    """The ``judge_<k>`` columns, in slot order."""
    return sorted((c for c in table.columns if re.fullmatch(r"judge_\d+", c)), key=lambda c: int(c[6:]))


def judge_codes(table: pd.DataFrame) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(chosen classes, 1/0/-1 codes) of the judges as float (N, k) arrays, NaN for no judgment.

    Classes come from ``judge_<k>_class`` columns, or from ``judge_<k>`` when those hold class ids; codes
    (1 recognized, 0 another class, -1 can't tell; docs/contracts.md) from ``judge_<k>`` when so coded, or
    from the classes compared with ``label`` (the true class). None where the table cannot give them.
    """
    slots = judge_slots(table)
    if not slots:
        return None, None
    raw = table[slots].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)
    coded = bool(np.isin(raw[np.isfinite(raw)], (-1.0, 0.0, 1.0)).all())
    classes = None
    if all(f"{c}_class" in table.columns for c in slots):
        classes = table[[f"{c}_class" for c in slots]].apply(pd.to_numeric, errors="coerce").to_numpy(float)
    elif not coded:
        classes = raw
    codes = raw if coded else None
    if codes is None and classes is not None and "label" in table.columns:
        truth = table["label"].to_numpy(dtype=float)[:, None]
        codes = np.where(np.isnan(classes), np.nan,
                         np.where(classes == truth, 1.0, np.where(classes == CANT_TELL, -1.0, 0.0)))
    return classes, codes


def judge_matrix(table: pd.DataFrame) -> tuple[np.ndarray, list[str]]:
    """Per-judge recognition as floats (1 recognized, 0 not, NaN no judgment) from the ``judge_<k>`` columns;
    "can't tell" counts as not recognized."""
    slots = judge_slots(table)
    if not slots:
        return np.zeros((len(table), 0)), []
    _, codes = judge_codes(table)
    if codes is None:
        raise SemsimError("label table: judge_<k> columns hold class ids but there is no 'label' column with "
                          "the true class; add it or code judges as 1 (recognized), 0, -1 (can't tell)")
    return np.where(np.isnan(codes), np.nan, (codes == 1).astype(float)), slots


SEMSIM_CIFAR100_ITERATIONS = 8000  # Inverting Gradients' budget in the SemSim code (benchmark/comm.py)


def _set_name(config: str) -> str:
    """The set name semsim gives the same threat model (:mod:`semsim.data.set_names`), e.g.
    ``ResNet20-4_200_inversed_aug_auglist_3-1-7_rlabel_False`` ->
    ``cifar100/resnet20-4/ats-3-1-7/client-ats-3-1-7/invgrad-8000`` and
    ``..._crop_auglist__rlabel_False_defense_prune_70`` -> ``cifar100/convnet/crop+train-prune-70/client-crop/...``.

    In the SemSim/ATSPrivacy code ``aug`` without a policy list trains with no augmentation at all, ``aug``
    with a list applies crop + flip + the ATS policies (semsim's ``ats:``), and the defenses act on the
    training gradients (the attacked gradient is clean). The attack script (``benchmark/step2_attack.py``,
    ``preprocess(valid=True)``) transforms the attacked image with the same training transform, hence the
    ``client-<augmentation>`` gradient part (``semsim attack --client-augment train``). Unknown patterns are kept
    as they are.
    """
    m = _CONFIG_RE.match(config)
    if m is None:
        return config
    augment = ("ats-" + m["ats"] if m["ats"] else "none") if m["aug"] == "aug" else "crop"
    defense = "none" if m["defense"] is None else (
        f"noise-{m['strength']}" if m["defense"] == "gaussian" else f"prune-{m['strength']}")
    return attack_set_name("cifar100", m["arch"].lower(), training_part(augment, defense),
                           gradient_part("none", client_augment=augment), "invgrad", SEMSIM_CIFAR100_ITERATIONS)


def import_semsim_cifar100(path: str | os.PathLike, vlm: str | os.PathLike | None = None, *,
                           allow_missing: bool = False) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Turn the SemSim authors' CIFAR-100 human-label table into a (score table, label table) pair.

    The table (shared/data/cifar100_human_labels/labels.csv) has one row per reconstruction: the victim
    ``config``, the 1-based CIFAR-100 test index, the true ``fine_label``, the class each of
    five annotators chose (``ann1..5``, -1 = can't tell), ``n_correct`` and six metric values. Judges become
    ``judge_1..5`` = 1 (chose the true class), 0 (another class) or -1 (can't tell), with the chosen class
    itself in ``judge_<k>_class``. ``vlm``: the CLIP predictions table of the same folder, added as
    model-based recognition columns (:func:`vlm_recognition`). Set names and image ids are those
    ``semsim attack`` / the study grid (examples/semsim_cifar100.yaml) write for the same attack and image
    (``image_id(index - 1, fine_label)``, e.g. 1-based image 781 of class 12 -> ``780_12``), so the tables join.
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
    # the id semsim's attacks give the same image: the 0-based test index and the class (docs/contracts.md)
    ids = pd.Series([image_id(i - 1, c) for i, c in zip(raw["cifar100_test_idx_1based"].astype(int), truth,
                                                        strict=True)], index=raw.index)
    scores = pd.DataFrame({"set": sets, "image_id": ids})
    for col in SEMSIM_CIFAR100_DIRECTIONS:
        scores[col] = raw[col].astype(float)
    if vlm is not None:
        scores = pd.concat([scores, vlm_recognition(raw, vlm, allow_missing=allow_missing)], axis=1)
    labels = pd.DataFrame({
        "set": sets, "image_id": ids, "label": truth, "recognized": correct.mean(1), "n_judges": 5,
        "label_source": SEMSIM_CIFAR100_SOURCE, "config": raw["config"].astype(str),
    })
    for k in range(5):
        labels[f"judge_{k + 1}"] = np.where(correct[:, k], 1, np.where(chosen[:, k] == -1, -1, 0))
        labels[f"judge_{k + 1}_class"] = chosen[:, k]
    return scores, validate_labels(labels, where=str(path))


# CIFAR-100's fine class names in label order (Krizhevsky, 2009), with spaces for underscores as in the
# CLIP predictions table.
_CIFAR100_FINE_NAMES = (
    "apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly camel can "
    "castle caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile cup dinosaur dolphin "
    "elephant flatfish forest fox girl hamster house kangaroo keyboard lamp lawn_mower leopard lion lizard "
    "lobster man maple_tree motorcycle mountain mouse mushroom oak_tree orange orchid otter palm_tree pear "
    "pickup_truck pine_tree plain plate poppy porcupine possum rabbit raccoon ray road rocket rose sea seal "
    "shark shrew skunk skyscraper snail snake spider squirrel streetcar sunflower sweet_pepper table tank "
    "telephone television tiger tractor train trout tulip turtle wardrobe whale willow_tree wolf woman worm"
)
CIFAR100_CLASSES = tuple(name.replace("_", " ") for name in _CIFAR100_FINE_NAMES.split())
VLM_KEYS = ("config", "cifar100_test_idx_1based", "fine_label")


def vlm_column(model: str) -> str:
    """The score column of a CLIP model, e.g. ``ViT-L/14@336px`` -> ``mr_clip_vitl14_336px``."""
    return "mr_clip_" + re.sub(r"[^a-z0-9]+", "_", model.lower().replace("-", "")).strip("_")


def vlm_recognition(raw: pd.DataFrame, path: str | os.PathLike, *, allow_missing: bool = False) -> pd.DataFrame:
    """Model-based recognition by CLIP models on the reconstructions of ``raw`` (the label table's rows, same
    order), from the predictions table (shared/data/cifar100_human_labels/vlm_predictions.csv).

    Per model, with ``c = mr_clip_<model>``: ``c_correct`` = 1 when its top-1 class is the true class (the
    model "recognizes" it, as in Model-based Recognition), ``c`` = the top-1 confidence signed by correctness
    (+conf when right, -conf when wrong; higher = more leakage) and ``clean_c_correct`` = the same on the
    original (its mean is the model's clean accuracy; not a metric). Every reconstruction needs a prediction of
    every model: missing ones raise unless ``allow_missing`` (then NaN, left out by the join with a note).
    """
    vlm = read_table(Path(path), required=(*VLM_KEYS, "vlm", "rec_pred", "rec_conf", "ori_pred", "ori_conf"))
    if vlm.duplicated([*VLM_KEYS, "vlm"]).any():
        row = vlm[vlm.duplicated([*VLM_KEYS, "vlm"])].iloc[0]
        raise SemsimError(f"{path}: model {row['vlm']} predicts image {row['cifar100_test_idx_1based']} of "
                          f"{row['config']} twice")
    names = np.array(CIFAR100_CLASSES)
    keys = pd.MultiIndex.from_frame(raw[list(VLM_KEYS)].astype(str))
    out = {}
    for model, part in vlm.groupby("vlm", sort=True):
        part = part.set_index(pd.MultiIndex.from_frame(part[list(VLM_KEYS)].astype(str))).reindex(keys)
        missing = part["rec_pred"].isna().to_numpy()
        if missing.any() and not allow_missing:
            i = int(np.flatnonzero(missing)[0])
            raise SemsimError(f"{path}: {int(missing.sum())} of {len(raw)} reconstructions have no prediction "
                              f"of {model} (first: image {raw['cifar100_test_idx_1based'].iloc[i]} of "
                              f"{raw['config'].iloc[i]}); pass --allow-missing to leave them out")
        truth = names[raw["fine_label"].to_numpy(dtype=np.int64)]
        right = (part["rec_pred"].to_numpy() == truth).astype(float)
        clean = (part["ori_pred"].to_numpy() == truth).astype(float)
        col = vlm_column(str(model))
        out[col] = np.where(missing, np.nan, np.where(right > 0, 1, -1) * part["rec_conf"].to_numpy(dtype=float))
        out[f"{col}_correct"] = np.where(missing, np.nan, right)
        out[f"clean_{col}_correct"] = np.where(part["ori_pred"].isna(), np.nan, clean)
    return pd.DataFrame(out, index=raw.index)


def imported_directions(scores: pd.DataFrame) -> dict[str, bool]:
    """Directions of every metric column of an imported SemSim CIFAR-100 score table (with CLIP columns)."""
    clip = {c: True for c in scores.columns if c.startswith("mr_clip_")}
    return {**SEMSIM_CIFAR100_DIRECTIONS, **clip}
