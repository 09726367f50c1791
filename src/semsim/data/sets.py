"""Reconstruction sets: pairs of (original, reconstruction) of one victim configuration.

A set travels as a *manifest* (see docs/contracts.md): one row per pair with ``set, image_id, original,
reconstruction[, label, status, ...]``. Pairs are matched by id, never by listing order. Three inputs are
understood:

* the SemSim layout: ``{id}_{label}_ori.png`` next to ``{id}_{label}_rec.png`` in one folder, or the originals
  in a sibling ``<folder>_ori`` folder;
* two folders whose files are matched by file stem (or by the SemSim id when both use the SemSim names);
* a manifest CSV/Parquet.

A set's name is a property of the set, not of how it is passed: a folder holding a ``manifest.csv`` is read
through it (names, labels and ``status`` from the manifest), so the folder form and the manifest form give the
same ``set`` values. Only a folder without a manifest is named after the folder. An explicit name renames a
single set and is refused for a manifest holding several.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import cast

import numpy as np
import pandas as pd
from PIL import UnidentifiedImageError

from semsim.common.io import TABLE_SUFFIXES, read_table, write_table
from semsim.data.images import IMAGE_SUFFIXES, image_size
from semsim.errors import SemsimError

MANIFEST_COLUMNS = ("set", "image_id", "original", "reconstruction")
#: columns holding image paths (relative to the manifest's folder in the file); ``untransformed``: the dataset's
#: image when the client transformed it before its gradient (``original`` is then the transformed image)
PATH_COLUMNS = ("original", "reconstruction", "untransformed")
MANIFEST_NAME = "manifest.csv"  # a set folder's own manifest (written by semsim attack and grid merges)
SIDE_FILE_SUFFIXES = TABLE_SUFFIXES + (".json", ".yaml", ".yml", ".md", ".txt", ".log", ".tmp")
SEMSIM_NAME = re.compile(r"^(?P<idx>-?\d+)_(?P<label>-?\d+)_(?P<kind>ori|rec)$")


def _image_files(folder: Path) -> dict[str, Path]:
    """Map stem -> path for the images of ``folder``; refuse empty folders and stray non-image files."""
    if not folder.is_dir():
        raise SemsimError(f"{folder}: no such folder; give a folder of images or a manifest .csv/.parquet")
    files: dict[str, Path] = {}
    with os.scandir(folder) as entries:  # names sorted as strings: the order of sorted Paths, and cheaper
        names = sorted(e.name for e in entries if not e.name.startswith(".") and not e.is_dir())
    for path in map(folder.joinpath, names):
        suffix = path.suffix.lower()
        if suffix in SIDE_FILE_SUFFIXES:
            continue
        if suffix not in IMAGE_SUFFIXES:
            raise SemsimError(f"{path}: not an image file; move it out of {folder}")
        if path.stem in files:
            raise SemsimError(f"{path}: two images share the stem '{path.stem}' in {folder}; keep one")
        files[path.stem] = path
    if not files:
        raise SemsimError(f"{folder}: no image files found; point to the folder that holds the images")
    return files


def _semsim_parts(stem: str) -> tuple[str, int, str] | None:
    m = SEMSIM_NAME.match(stem)
    if m is None:
        return None
    return f"{m['idx']}_{m['label']}", int(m["label"]), m["kind"]


def _pair_rows(originals: dict[str, Path], reconstructions: dict[str, Path]) -> list[dict]:
    """Pair by SemSim id (when every name follows the layout) or by file stem."""
    ori_parts = {s: _semsim_parts(s) for s in originals}
    rec_parts = {s: _semsim_parts(s) for s in reconstructions}
    semsim_layout = all(p and p[2] == "ori" for p in ori_parts.values()) and all(
        p and p[2] == "rec" for p in rec_parts.values()
    )
    rows = []
    if semsim_layout:
        ori_named = cast("dict[str, tuple[str, int, str]]", ori_parts)  # all parsed: the SemSim layout
        rec_named = cast("dict[str, tuple[str, int, str]]", rec_parts)
        ori_by_id = {ori_named[s][0]: p for s, p in originals.items()}
        rec_by_id = {rec_named[s][0]: (p, rec_named[s][1]) for s, p in reconstructions.items()}
        for image_id, (rec_path, label) in rec_by_id.items():
            rows.append({"image_id": image_id, "original": ori_by_id.get(image_id), "reconstruction": rec_path,
                         "label": label})
        orphans = sorted(set(ori_by_id) - set(rec_by_id))
        rows += [{"image_id": i, "original": ori_by_id[i], "reconstruction": None,
                  "label": int(i.split("_")[1])} for i in orphans]
    else:
        for stem in sorted(set(originals) | set(reconstructions)):
            rows.append({"image_id": stem, "original": originals.get(stem),
                         "reconstruction": reconstructions.get(stem)})
    return rows


def _check_pair(row: dict) -> str | None:
    """Return why a pair is unusable (missing partner, unreadable file, size mismatch), or None."""
    if row["original"] is None:
        return f"{row['reconstruction']}: no original with id '{row['image_id']}'; add it or remove the reconstruction"
    if row["reconstruction"] is None:
        return f"{row['original']}: no reconstruction with id '{row['image_id']}'; add it or remove the original"
    sizes = []
    for key in ("original", "reconstruction"):
        path = Path(row[key])
        try:
            sizes.append(image_size(path))
        except FileNotFoundError:
            return f"{path}: no such file (image '{row['image_id']}'); fix the path"
        except (UnidentifiedImageError, OSError) as exc:
            return f"{path}: not a readable image ({exc}); replace the file"
    if sizes[0] != sizes[1]:
        return (f"{row['reconstruction']}: size {sizes[1][0]}x{sizes[1][1]} differs from its original's "
                f"{sizes[0][0]}x{sizes[0][1]}; resize one of them")
    return None


def _finish(rows: list[dict], skip_bad: bool) -> tuple[pd.DataFrame, pd.DataFrame]:
    good, bad = [], []
    for row in rows:
        reason = _check_pair(row)
        if reason is None:
            good.append(row)
        elif skip_bad:
            bad.append({**row, "status": f"skipped: {reason}"})
        else:
            raise SemsimError(reason + " (or pass --skip-bad to record and skip it)")
    if not good:
        raise SemsimError("no usable (original, reconstruction) pairs were found")
    cols = ["set", "image_id", "original", "reconstruction"]
    df = pd.DataFrame(good)
    for c in ("original", "reconstruction"):
        df[c] = df[c].map(lambda p: str(p) if p is not None else None)
    skipped = pd.DataFrame(bad, columns=[*cols, "label", "status"]) if bad else pd.DataFrame(columns=[*cols, "status"])
    for c in ("original", "reconstruction"):
        skipped[c] = skipped[c].map(lambda p: str(p) if p is not None else None)
    return df, skipped


def ingest(
    source: str | os.PathLike,
    reconstructions: str | os.PathLike | None = None,
    set_name: str | None = None,
    skip_bad: bool = False,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Build a manifest from a manifest file, a set folder, a SemSim-layout folder, or two folders.

    A folder holding a ``manifest.csv`` is read through that manifest (its set names, labels and ``status``);
    ``set_name`` renames a source of one set and is refused for a manifest of several.
    Returns ``(manifest, skipped)``: the usable pairs (absolute paths) and, with ``skip_bad``, the pairs left
    out with the reason in ``status``. Without ``skip_bad`` the first bad pair raises :class:`SemsimError`.
    """
    source = Path(source)
    if reconstructions is None and (source / MANIFEST_NAME).is_file():
        source = source / MANIFEST_NAME  # the set's own manifest carries its name, labels and status
    if source.suffix.lower() in TABLE_SUFFIXES:
        if reconstructions is not None:
            raise SemsimError(f"{source}: a manifest already names the reconstructions; pass it alone")
        manifest = rename_set(read_manifest(source), set_name, source)
        ok = manifest["status"].fillna("ok").eq("ok") if "status" in manifest else pd.Series(True, manifest.index)
        failed = manifest[~ok]
        rows = manifest[ok].to_dict("records")
        df, skipped = _finish(rows, skip_bad)
        return df, pd.concat([failed, skipped], ignore_index=True) if len(failed) else skipped

    if reconstructions is None:
        rec_folder = source
        files = _image_files(source)
        ori = {s: p for s, p in files.items() if s.endswith("_ori")}
        rec = {s: p for s, p in files.items() if s.endswith("_rec")}
        sibling = source.parent / f"{source.name}_ori"
        if not ori and sibling.is_dir():
            ori = _image_files(sibling)
        if not rec:
            raise SemsimError(f"{source}: no '*_rec' images; give ORIGINALS and RECONSTRUCTIONS folders, "
                              "or a folder in the SemSim layout ({id}_{label}_ori.png / {id}_{label}_rec.png)")
        if not ori:
            raise SemsimError(f"{source}: no '*_ori' images here nor in {sibling}; add the originals")
    else:
        rec_folder = Path(reconstructions)
        ori, rec = _image_files(source), _image_files(rec_folder)
    rows = _pair_rows(ori, rec)
    name = set_name or rec_folder.resolve().name
    for row in rows:
        row["set"] = name
    df, skipped = _finish(rows, skip_bad)
    order = [c for c in ("set", "image_id", "original", "reconstruction", "label") if c in df.columns]
    return df[order].reset_index(drop=True), skipped


def ingest_sets(sources: Sequence[str | os.PathLike], skip_bad: bool = False) -> tuple[pd.DataFrame, pd.DataFrame]:
    """:func:`ingest` several set folders or manifests into one manifest; a set name given by two of them is
    an error (their rows would merge into one set)."""
    if not sources:
        raise SemsimError("no sets given; pass a set folder or manifest (repeat --sets for several)")
    manifests: list[pd.DataFrame] = []
    skipped: list[pd.DataFrame] = []
    seen: dict[str, str | os.PathLike] = {}
    for source in sources:
        manifest, bad = ingest(source, skip_bad=skip_bad)
        for name in dict.fromkeys(manifest["set"]):
            if name in seen:
                raise SemsimError(f"{source}: set '{name}' also comes from {seen[name]}; give each set once, and "
                                  "different sets different names (the set column of their manifests)")
            seen[name] = source
        manifests.append(manifest)
        skipped += [bad] if len(bad) else []
    return (pd.concat(manifests, ignore_index=True),
            pd.concat(skipped, ignore_index=True) if skipped else pd.DataFrame(columns=["set", "image_id", "status"]))


def rename_set(manifest: pd.DataFrame, set_name: str | None, source: str | os.PathLike) -> pd.DataFrame:
    """Give the one set of ``manifest`` the name ``set_name`` (None: keep it); refuse a manifest of several."""
    if not set_name:
        return manifest
    names = list(dict.fromkeys(manifest["set"]))
    if len(names) > 1:
        shown = ", ".join(f"'{n}'" for n in names[:3]) + (", ..." if len(names) > 3 else "")
        raise SemsimError(f"{source}: holds {len(names)} sets ({shown}) but a set name (--set {set_name}) renames "
                          "one; leave the name out to keep theirs, or pass a manifest of one set")
    return manifest.assign(set=set_name)


def resolve_paths(df: pd.DataFrame, base: str | os.PathLike) -> pd.DataFrame:
    """Make relative paths (:data:`PATH_COLUMNS`) absolute against ``base`` (the manifest's folder)."""
    base = Path(base).resolve()
    out = df.copy()
    for col in PATH_COLUMNS:
        if col in out:
            out[col] = out[col].map(lambda p: p if pd.isna(p) else str((base / str(p)) if not os.path.isabs(p) else p))
    return out


def read_manifest(path: str | os.PathLike) -> pd.DataFrame:
    """Read a manifest (or the ``manifest.csv`` of a set folder) and resolve its paths against its folder."""
    path = Path(path)
    if path.is_dir() and (path / MANIFEST_NAME).is_file():
        path = path / MANIFEST_NAME
    df = read_table(path, required=MANIFEST_COLUMNS)
    for col in ("set", "image_id"):
        blank = df[col].isna() | df[col].astype(str).str.strip().eq("")
        if blank.any():
            raise SemsimError(f"{_row(path, blank)}: blank '{col}'; every pair needs a {col}: fill it in or "
                              "delete the row")
        df[col] = df[col].astype(str)
    if "label" in df and df["label"].isna().all():
        df = df.drop(columns="label")  # an empty label column: an unlabelled set
    elif "label" in df:
        df["label"] = _integer_labels(df["label"], path)
    dupes = df.duplicated(["set", "image_id"])
    if dupes.any():
        row = df[dupes].iloc[0]
        raise SemsimError(
            f"{path}: image_id '{row['image_id']}' appears twice in set '{row['set']}'; ids must be unique"
        )
    return resolve_paths(df, path.parent)


def _row(path: Path, bad: pd.Series) -> str:
    """``path, line N`` (CSV: the file's line, header = line 1) or ``path, row N`` of the first True in ``bad``."""
    i = int(np.flatnonzero(bad.to_numpy())[0])
    return f"{path}, line {i + 2}" if path.suffix.lower() == ".csv" else f"{path}, row {i + 1}"


def _integer_labels(labels: pd.Series, path: Path) -> pd.Series:
    """The ``label`` column as int64; a blank, text or fraction is an error naming the row."""
    values = pd.to_numeric(labels, errors="coerce")
    bad = values.isna() | (values != values.round())
    if bad.any():
        value = labels[bad].iloc[0]
        what = "blank" if pd.isna(value) else f"{value}"
        raise SemsimError(f"{_row(path, bad)}: label {what} is not a class index; labels are whole numbers "
                          "(0, 1, ...): fix the row, or leave the whole column empty for an unlabelled set")
    return values.astype(np.int64)


def write_manifest(df: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write a manifest atomically, storing paths relative to its folder where they lie below it."""
    path = Path(path)
    base = path.parent.resolve()
    out = df.copy()
    for col in PATH_COLUMNS:
        if col in out:
            out[col] = out[col].map(lambda p: p if pd.isna(p) else _relative(Path(p), base))
    return write_table(out, path)


def _relative(p: Path, base: Path) -> str:
    try:
        return str(p.resolve().relative_to(base))
    except ValueError:
        return str(p.resolve())
