"""Setting a study up: ``init_project`` loads sets (items), gold items, examples and instructions.

Everything is read and checked before the database is created: paths are stored absolute, every image is
decoded (unreadable ones are listed and refused), and a failed first ``init`` leaves no database behind.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from sqlalchemy import select

from semsim.annotation.assignment import assign
from semsim.annotation.db import TASKS, Database, Item, Project, database_url, sqlite_path
from semsim.annotation.project import ProjectInfo
from semsim.errors import SemsimError

SHOWN_BAD = 5  # unreadable images named in the error


def _manifest(source: str | os.PathLike) -> pd.DataFrame:
    from semsim.data.sets import ingest  # imports torch: only when loading sets, not in the web server

    return ingest(source)[0]


def sample_per_set(manifest: pd.DataFrame, n: int | None, seed: int) -> pd.DataFrame:
    """``n`` images of each set drawn at random without replacement (all of a smaller set), in manifest order:
    the random subset whose labels ``semsim estimate`` turns into a set's recognition rate."""
    if n is None:
        return manifest
    if n < 1:
        raise SemsimError(f"--sample {n}: give the number of images to draw from each set (at least 1)")
    rng = np.random.default_rng(seed)
    keep = [idx if len(idx) <= n else np.sort(rng.choice(idx, n, replace=False))
            for idx in manifest.groupby("set", sort=False).indices.values()]
    return manifest.iloc[np.sort(np.concatenate(keep))]


def _label(rec: dict) -> int | None:
    label = rec.get("label")
    return None if label is None or pd.isna(label) else int(label)


def _known_answer(rec: dict, source: object, info: ProjectInfo, label: int | None) -> int:
    """The answer of a gold item or an example: its ``gold_answer`` column, else (class task) its label."""
    given = rec.get("gold_answer")
    if given is not None and not pd.isna(given):
        return info.value_of(str(int(given)) if isinstance(given, float) else str(given))
    if info.task == "class" and label is not None:
        return label
    raise SemsimError(f"{source}: gold items and examples of the pair task need a 'gold_answer' column "
                      "(yes/no or 1/0) in the manifest")


def _rows(source: str | os.PathLike, manifest: pd.DataFrame, kind: str, info: ProjectInfo) -> list[dict]:
    """Item rows of one set; ``kind`` is ``regular``, ``gold`` or ``example``."""
    rows = []
    for rec in manifest.to_dict("records"):
        label = _label(rec)
        if info.task == "class" and (label is None or not 0 <= label < len(info.classes)):
            raise SemsimError(f"{source}: image '{rec['image_id']}' has label {label!r}; the class task "
                              f"needs a true class in 0..{len(info.classes) - 1} (a 'label' column or "
                              "SemSim file names)")
        known = None if kind == "regular" else _known_answer(rec, source, info, label)
        rows.append({"set": str(rec["set"]), "image_id": str(rec["image_id"]),
                     "original": str(Path(rec["original"]).resolve()),
                     "reconstruction": str(Path(rec["reconstruction"]).resolve()),
                     "label": label, "gold": kind == "gold", "gold_answer": known, "example": kind == "example"})
    return rows


def unreadable_images(rows: list[dict]) -> list[str]:
    """``path (reason)`` of every original or reconstruction that does not decode completely."""
    from PIL import Image

    bad = []
    for path in dict.fromkeys(p for r in rows for p in (r["original"], r["reconstruction"])):
        try:
            with Image.open(path) as img:
                img.load()
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            bad.append(f"{path} ({str(exc) or type(exc).__name__})")
    return bad


def default_classes(manifests: Sequence[pd.DataFrame]) -> list[str]:
    """Class names "0".."max label" found in the sets (when no names are given)."""
    top = -1
    for manifest in manifests:
        if "label" in manifest and manifest["label"].notna().any():
            top = max(top, int(manifest["label"].max()))
    if top < 0:
        raise SemsimError("the class task needs the true classes: give sets with a 'label' column or SemSim "
                          "file names ({id}_{label}_rec.png), or use --task pair")
    return [str(i) for i in range(top + 1)]


def _existing_info(url: str) -> ProjectInfo | None:
    """The settings of an existing annotation database at ``url`` (None when there is none yet)."""
    path = sqlite_path(url)
    if path is not None and (not path.exists() or path.stat().st_size == 0):
        return None
    db = Database(url, create=path is None)
    try:
        with db.read() as s:
            project = s.scalar(select(Project).limit(1))
            if project is None:
                return None
            return ProjectInfo(project.study, project.task, project.per_item, tuple(project.classes))
    finally:
        db.dispose()


def _remove_sqlite(path: Path) -> None:
    for file in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        file.unlink(missing_ok=True)


def init_project(db_url: str | os.PathLike, sets: Sequence[str | os.PathLike], *, per_item: int = 5,
                 task: str = "class", study: str | None = None, classes: list[str] | None = None,
                 gold: Sequence[str | os.PathLike] = (), seed: int = 0, instructions: str | None = None,
                 examples: Sequence[str | os.PathLike] = (), sample: int | None = None) -> dict:
    """Create (or extend) an annotation database with the given sets; return counts of what was added.

    ``sample``: load only that many randomly drawn images of each set (seeded by ``seed``;
    :func:`sample_per_set`).

    On an existing database the project settings are kept and only new sets (and new instructions, when
    given) are added. Gold items (known answers) go to every annotator; examples are shown with their answer
    on the instructions page.
    """
    if task not in TASKS:
        raise SemsimError(f"task {task!r}: unknown; use one of {', '.join(TASKS)}")
    if per_item < 1:
        raise SemsimError(f"per-item {per_item}: must be at least 1")
    url = database_url(db_url)
    info = _existing_info(url)
    sources = [(src, "regular") for src in sets] + [(src, "gold") for src in gold] + \
        [(src, "example") for src in examples]
    manifests = [(src, kind, sample_per_set(_manifest(src), sample, seed) if kind == "regular" else _manifest(src))
                 for src, kind in sources]
    fresh = info is None
    if info is None:
        if task == "class" and not classes:
            classes = default_classes([m for _, _, m in manifests])
        info = ProjectInfo(study or Path(str(db_url)).stem, task, per_item, tuple(classes or []))
    rows = [r for src, kind, manifest in manifests for r in _rows(src, manifest, kind, info)]
    keys = [(r["set"], r["image_id"]) for r in rows]
    if len(set(keys)) != len(keys):
        twice = next(k for k in keys if keys.count(k) > 1)
        raise SemsimError(f"set '{twice[0]}': image '{twice[1]}' is given twice; pass each set once")
    bad = unreadable_images(rows)
    if bad:
        more = f" and {len(bad) - SHOWN_BAD} more" if len(bad) > SHOWN_BAD else ""
        raise SemsimError(f"{len(bad)} image(s) cannot be decoded: {'; '.join(bad[:SHOWN_BAD])}{more}; "
                          "replace or remove them (e.g. `semsim score --skip-bad` lists a set's bad pairs)")
    path = sqlite_path(url)
    created = fresh and path is not None and not path.exists()
    try:
        return _write(url, info, rows, seed, instructions, fresh)
    except BaseException:
        if created and path is not None:
            _remove_sqlite(path)
        raise


def _write(url: str, info: ProjectInfo, rows: list[dict], seed: int, instructions: str | None,
           fresh: bool) -> dict:
    db = Database(url, create=True)
    try:
        with db.write() as s:
            if fresh:
                s.add(Project(study=info.study, task=info.task, per_item=info.per_item,
                              classes=list(info.classes), seed=seed, instructions=instructions or ""))
            elif instructions is not None:
                db.project(s).instructions = instructions
            existing = set(s.execute(select(Item.set, Item.image_id)).all())
            clash = [r for r in rows if (r["set"], r["image_id"]) in existing]
            if clash:
                raise SemsimError(f"set '{clash[0]['set']}': image '{clash[0]['image_id']}' is already in "
                                  f"{db.url}; each set is loaded once")
            s.add_all(Item(**r) for r in rows)
        added = assign(db)
    finally:
        db.dispose()
    kinds = [("gold" if r["gold"] else "example" if r["example"] else "items") for r in rows]
    return {"items": kinds.count("items"), "gold": kinds.count("gold"), "examples": kinds.count("example"),
            "sets": len({r["set"] for r in rows if not r["example"]}), "assigned": added["assigned"],
            "items_short": added["items_short"]}
