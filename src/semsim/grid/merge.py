"""Merge published shards into what the rest of semsim reads.

* Reconstruction sets: ``sets/<set>/`` in the SemSim layout (``{id}_{label}_ori.png`` / ``_rec.png``, files
  hard-linked from the shards where the file system allows, else copied) with its ``manifest.csv``, and
  ``sets/manifest.csv`` listing every merged set: input for ``semsim score``, ``semsim train``,
  ``semsim analyze``.
* Scores: one per-image table and one per-set table (``scores.parquet``, ``scores_sets.parquet``) in the
  format of ``semsim score``; set-level metrics (FID, ...) come from their whole-set task, never from shards.

Only complete sets are merged. Merging is idempotent: a set whose shards did not change is left as it is.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pandas as pd

from semsim.common.io import atomic_folder, read_table
from semsim.data.sets import PATH_COLUMNS, read_manifest, write_manifest
from semsim.errors import SemsimError
from semsim.grid.plan import Plan, Task, is_done, safe_path
from semsim.metrics.calibrated import load_calibration
from semsim.metrics.scoring import ScoreResult, finish_tables, merge_skipped, set_table_path
from semsim.metrics.summary import summarize_set

MERGED_FILE = ".merged.json"


def _link(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _complete_sets(plan: Plan, kind: str) -> tuple[dict[str, list[Task]], list[str]]:
    """Sets whose ``kind`` tasks are all published, and the names of the incomplete ones."""
    by_set: dict[str, list[Task]] = {}
    for t in plan.tasks:
        if t.kind == kind:
            by_set.setdefault(str(t.set), []).append(t)
    complete = {s: ts for s, ts in by_set.items() if all(is_done(t) for t in ts)}
    return complete, sorted(set(by_set) - set(complete))


def merge_set(set_name: str, shards: list[Task], folder: Path) -> pd.DataFrame:
    """Merge the attack shards of one set into ``folder`` (replaced atomically); returns its manifest."""
    keys = [t.key for t in shards]
    marker = folder / MERGED_FILE
    if marker.is_file() and json.loads(marker.read_text()).get("keys") == keys:
        return read_manifest(folder / "manifest.csv")
    with atomic_folder(folder) as tmp:
        frames = []
        for t in shards:
            df = read_manifest(Path(t.out) / "manifest.csv")
            failed = (df["status"].fillna("ok").ne("ok") if "status" in df
                      else pd.Series(False, index=df.index))
            for col in (c for c in PATH_COLUMNS if c in df):  # the images, and the untransformed ones if kept
                new: list[str | None] = []
                for p, bad in zip(df[col], failed, strict=True):
                    if pd.isna(p) or (bad and not Path(p).exists()):  # a failed image may have no files
                        new.append(None)
                        continue
                    dst = tmp / Path(p).name
                    if dst.exists():
                        raise SemsimError(f"{p}: two shards of set '{set_name}' hold a file named "
                                          f"{dst.name}; the grid's image shards overlap")
                    _link(Path(p), dst)
                    new.append(str(dst))
                df[col] = new
            frames.append(df)
        manifest = pd.concat(frames, ignore_index=True)
        manifest["set"] = set_name
        write_manifest(manifest, tmp / "manifest.csv")
        (tmp / MERGED_FILE).write_text(json.dumps({"set": set_name, "keys": keys}) + "\n")
    return read_manifest(folder / "manifest.csv")


def merge_sets(plan: Plan) -> tuple[list[str], list[str]]:
    """Merge every complete attack set; returns (merged, incomplete) set names."""
    root = plan.spec.out
    complete, incomplete = _complete_sets(plan, "attack")
    manifests = [merge_set(name, shards, root / "sets" / safe_path(name))
                 for name, shards in complete.items()]
    if manifests:
        write_manifest(pd.concat(manifests, ignore_index=True), root / "sets" / "manifest.csv")
    return list(complete), incomplete


def score_table_paths(plan: Plan) -> tuple[Path, Path]:
    """The merged per-image and per-set score tables (``<table>`` and ``<stem>_sets<suffix>``)."""
    out = plan.spec.out / plan.spec.scoring.table
    return out, set_table_path(out)


def merge_scores(plan: Plan) -> tuple[list[str], list[str], list[str]]:
    """Merge score shards of complete sets into the two tables; returns (merged, incomplete, notes)."""
    if plan.spec.score is None:
        return [], [], []
    image_sets, image_missing = _complete_sets(plan, "score")
    set_sets, set_missing = _complete_sets(plan, "score-set")
    names = list(dict.fromkeys([*image_sets, *set_sets]))
    incomplete = sorted(set(image_missing) | set(set_missing))
    names = [n for n in names if n not in incomplete]
    per_image, per_set, skipped, notes, annotations = [], [], [], set(), {}
    for name in names:
        tables, set_values = [], {}
        for t in image_sets.get(name, []) + set_sets.get(name, []):
            folder = Path(t.out)
            table = read_table(folder / "scores.parquet")
            extra = json.loads((folder / "set_values.json").read_text())
            notes.update(extra.get("notes", []))
            annotations.update(extra.get("annotations", {}))
            if t.kind == "score-set":
                set_values.update(extra["set_values"])
            tables.append((t.kind, table))
            if (folder / "skipped.parquet").is_file():
                skipped.append(read_table(folder / "skipped.parquet"))
        image_part = pd.concat([tb for k, tb in tables if k == "score"], ignore_index=True) if any(
            k == "score" for k, _ in tables) else None
        set_part = next((tb for k, tb in tables if k == "score-set"), None)
        if image_part is None:
            table = set_part
        elif set_part is not None and len(set_part.columns) > 2:
            table = image_part.merge(set_part, on=["set", "image_id"], how="outer")
        else:
            table = image_part
        table["image_id"] = table["image_id"].astype(str)
        per_image.append(table)
        per_set.append(summarize_set(name, table, set_values))
    if not per_image:
        return [], incomplete, sorted(notes)
    if plan.skipped is not None and len(plan.skipped):
        skipped.append(plan.skipped[["set", "image_id", "status"]].astype(str))
    cal = plan.spec.score.calibration
    result = finish_tables(ScoreResult(pd.concat(per_image, ignore_index=True), pd.DataFrame(per_set),
                                       merge_skipped(*skipped)), annotations,
                           load_calibration(cal) if cal else None)
    result.write(score_table_paths(plan)[0])
    return names, incomplete, sorted(notes | set(result.notes))
