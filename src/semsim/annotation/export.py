"""Labels out of (and into) the annotation database.

* the label table (docs/contracts.md, section 3) with ``label_source = human:<study>`` and ``judge_<k>``;
* the SemSim paper's training folders: ``train_with_ori/<N>/`` holds the original of image ``N`` and the
  reconstructions people recognized, ``train_with_ori/-<N>/`` those they did not (``N`` is the image index
  of a SemSim id ``{idx}_{label}``, else the image id);
* Label Studio JSON tasks (export, and import of answers made in Label Studio).

Flagged (broken image) and skipped answers are exported as such (``n_flagged``/``n_skipped`` in the label
table, the choice "broken image" and Label Studio's own ``was_cancelled`` skip) and are never judgments.
Files are not overwritten unless asked (``force``).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import tempfile
from collections import Counter
from pathlib import Path

import pandas as pd
from sqlalchemy import select
from sqlalchemy.orm import Session

from semsim.annotation.dashboard import AnswerRow, answer_rows, judgments
from semsim.annotation.db import Annotator, Answer, Assignment, Database, Item
from semsim.annotation.project import FLAG, SKIP, ProjectInfo, hash_secret, project_info
from semsim.common.io import atomic_folder, atomic_write
from semsim.errors import SemsimError

SEMSIM_ID = re.compile(r"^(?P<idx>\d+)_-?\d+$")


def label_table(db: Database) -> pd.DataFrame:
    """One row per judged (non-gold) item: ``recognized`` = share of judges who recognized it, ``judge_<k>``
    = the k-th judgment in submission order (class index / 1, 0, or -1 for can't tell / unsure),
    ``n_flagged`` / ``n_skipped`` = how many people flagged the image as broken / skipped it."""
    from semsim.data.labels import validate_labels  # the data package imports torch: only when exporting

    info = project_info(db)
    rows = [r for r in answer_rows(db) if not r.gold]
    actions = Counter((r.item_id, r.value) for r in rows)
    values: dict[int, list[int]] = {}
    for r in judgments(rows):
        values.setdefault(r.item_id, []).append(r.value)
    with db.read() as s:
        items = {r.id: r for r in s.execute(select(Item.id, Item.set, Item.image_id, Item.original,
                                                    Item.reconstruction, Item.label)
                                             .where(~Item.gold, ~Item.example))}
    table_rows = []
    for item_id, judged in values.items():
        item = items[item_id]
        row = {"set": item.set, "image_id": item.image_id, "original": item.original,
               "reconstruction": item.reconstruction,
               "recognized": sum(info.recognized(v, item.label) for v in judged) / len(judged),
               "n_judges": len(judged), "label_source": f"human:{info.study}", "label": item.label,
               "n_flagged": actions[(item_id, FLAG)], "n_skipped": actions[(item_id, SKIP)]}
        row.update({f"judge_{k + 1}": v for k, v in enumerate(judged)})
        table_rows.append(row)
    if not table_rows:
        raise SemsimError(f"{db.url}: no answers yet; nothing to export")
    table = pd.DataFrame(table_rows).sort_values(["set", "image_id"]).reset_index(drop=True)
    judges = [c for c in table.columns if c.startswith("judge_")]
    table[judges] = table[judges].astype("Int64")
    table["label"] = table["label"].astype("Int64")
    return validate_labels(table, where="annotation labels")


def export_labels(db: Database, path: str | os.PathLike) -> Path:
    """Write the label table (CSV or Parquet by suffix)."""
    from semsim.data.labels import write_labels

    return write_labels(label_table(db), path)


def _folder_key(image_id: str) -> str:
    m = SEMSIM_ID.match(image_id)
    return m["idx"] if m else re.sub(r"[^A-Za-z0-9_.]+", "-", image_id)


def export_folders(db: Database, out: str | os.PathLike) -> Path:
    """Write the SemSim training layout under ``out/train_with_ori`` (recognized = majority of judges) and an
    ``index.csv`` naming each file's set, image id and share of judges. Built aside, then renamed."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise SemsimError(f"{out}: exists and is not empty; give a new folder")
    labels = label_table(db)
    with atomic_folder(out) as tmp:
        root = tmp / "train_with_ori"
        index = []
        for row in labels.itertuples(index=False):
            key = _folder_key(row.image_id)
            positive = root / key
            positive.mkdir(parents=True, exist_ok=True)
            ori = Path(row.original)
            ori_name = f"{row.image_id}_ori{ori.suffix}" if not ori.stem.endswith("_ori") else ori.name
            if not (positive / ori_name).exists():
                shutil.copyfile(ori, positive / ori_name)
            folder = positive if row.recognized > 0.5 else root / f"-{key}"
            folder.mkdir(parents=True, exist_ok=True)
            rec = Path(row.reconstruction)
            name = f"{re.sub(r'[^A-Za-z0-9_.]+', '-', row.set)}__{row.image_id}_rec{rec.suffix}"
            shutil.copyfile(rec, folder / name)
            index.append({"set": row.set, "image_id": row.image_id,
                          "file": str((folder / name).relative_to(tmp)), "recognized": row.recognized,
                          "n_judges": row.n_judges})
        pd.DataFrame(index).to_csv(tmp / "index.csv", index=False)
    return out


def _labelstudio_annotation(row: AnswerRow, info: ProjectInfo) -> dict:
    ann = {"id": row.answer_id, "completed_by": row.annotator_id, "created_username": row.annotator,
           "created_at": row.created + "Z"}
    if row.value == SKIP:  # Label Studio's own way of recording a skipped task
        return {**ann, "was_cancelled": True, "result": []}
    return {**ann, "result": [{"from_name": "choice", "to_name": "image", "type": "choices",
                               "value": {"choices": [info.text(row.value)]}}]}


def labelstudio_tasks(db: Database) -> list[dict]:
    """Label Studio tasks (one per item, gold items flagged) with every answer as a ``choices`` annotation
    (a flag as the choice "broken image", a skip as a cancelled annotation)."""
    info = project_info(db)
    by_item: dict[int, list[dict]] = {}
    for row in answer_rows(db):
        by_item.setdefault(row.item_id, []).append(_labelstudio_annotation(row, info))
    with db.read() as s:
        items = s.execute(select(Item.id, Item.reconstruction, Item.original, Item.set, Item.image_id,
                                 Item.label, Item.gold).where(~Item.example).order_by(Item.id)).all()
    return [{"id": item.id, "data": {"image": item.reconstruction, "original": item.original, "set": item.set,
                                     "image_id": item.image_id, "label": item.label, "gold": item.gold},
             "annotations": by_item.get(item.id, [])} for item in items]


def export_labelstudio(db: Database, path: str | os.PathLike) -> Path:
    """Write the Label Studio tasks as one compact JSON list, atomically."""
    path = Path(path)
    with atomic_write(path) as tmp:
        tmp.write_text(json.dumps(labelstudio_tasks(db), separators=(",", ":")))
    return path


def _annotator_name(ann: dict) -> str:
    if ann.get("created_username"):
        return str(ann["created_username"])
    who = ann.get("completed_by")
    if isinstance(who, dict):
        who = who.get("email") or who.get("id")
    if who is None:
        raise SemsimError("Label Studio annotation without 'completed_by'; cannot tell who answered")
    return f"labelstudio-{who}"


def _match_item(task: dict, by_key: dict, by_path: dict, by_name: dict) -> int | None:
    data = task.get("data") or {}
    if "set" in data and "image_id" in data:
        found = by_key.get((str(data["set"]), str(data["image_id"])))
        if found is not None:
            return found
    image = data.get("image")
    if image:
        image = str(image)
        return by_path.get(image) or by_name.get(Path(image.split("?")[0]).name)
    return None


def _choice(ann: dict, where: str) -> str | None:
    """The chosen text of a Label Studio annotation (None: cancelled or empty); a malformed result raises."""
    results = ann.get("result") or []
    if not isinstance(results, list):
        raise SemsimError(f"{where}: 'result' is not a list; export the tasks as Label Studio JSON")
    choices = [r for r in results if isinstance(r, dict) and r.get("type") == "choices"]
    if ann.get("was_cancelled") or not choices:
        return None
    value = choices[0].get("value")
    if not isinstance(value, dict) or not isinstance(value.get("choices", []), list):
        raise SemsimError(f"{where}: a 'choices' result without a 'value' holding 'choices'; export the tasks "
                          "as Label Studio JSON (with annotations)")
    return str(value["choices"][0]) if value.get("choices") else None


class _Importer:
    """Matches Label Studio tasks to items and adds their answers inside one write transaction."""

    def __init__(self, s: Session, info: ProjectInfo):
        self.s, self.info = s, info
        items = s.execute(select(Item.id, Item.set, Item.image_id, Item.reconstruction)).all()
        self.by_key = {(r.set, r.image_id): r.id for r in items}
        self.by_path = {r.reconstruction: r.id for r in items}
        names: dict[str, list[int]] = {}
        for r in items:
            names.setdefault(Path(r.reconstruction).name, []).append(r.id)
        self.by_name = {k: v[0] for k, v in names.items() if len(v) == 1}
        self.people = {a.name: a.id for a in s.scalars(select(Annotator))}
        self.counts = {"added": 0, "duplicates": 0, "conflicts": 0, "unmatched": 0, "skipped": 0}

    def person(self, name: str) -> int:
        if name not in self.people:
            person = Annotator(name=name, token_hash=hash_secret(secrets.token_urlsafe(32)), active=False,
                               imported=True)
            self.s.add(person)
            self.s.flush()
            self.people[name] = person.id
        return self.people[name]

    def add(self, item_id: int, person_id: int, value: int, source_id: object) -> str:
        """Store one answer; return the count it goes to (added, duplicates or conflicts)."""
        s = self.s
        assignment = s.scalar(select(Assignment).where(Assignment.annotator_id == person_id,
                                                       Assignment.item_id == item_id))
        if assignment is None:
            assignment = Assignment(annotator_id=person_id, item_id=item_id, position=0.0)
            s.add(assignment)
            s.flush()
        else:
            stored = s.scalar(select(Answer.value).where(Answer.assignment_id == assignment.id))
            if stored is not None:
                return "duplicates" if stored == value else "conflicts"
        s.add(Answer(assignment_id=assignment.id, annotator_id=person_id, item_id=item_id, value=value,
                     submit_id=f"labelstudio:{str(source_id)[:50]}"))
        return "added"

    def task(self, task: dict, where: str) -> None:
        if not isinstance(task, dict):
            raise SemsimError(f"{where}: not a JSON object; export the tasks as Label Studio JSON")
        item_id = _match_item(task, self.by_key, self.by_path, self.by_name)
        if item_id is None:
            self.counts["unmatched"] += 1
            return
        for k, ann in enumerate(task.get("annotations") or []):
            place = f"{where}, annotation {ann.get('id', k) if isinstance(ann, dict) else k}"
            if not isinstance(ann, dict):
                raise SemsimError(f"{place}: not a JSON object; export the tasks as Label Studio JSON")
            text = _choice(ann, place)
            if text is None:
                self.counts["skipped"] += 1
                continue
            value = self.info.value_of(text)
            self.counts[self.add(item_id, self.person(_annotator_name(ann)), value, ann.get("id"))] += 1


def import_labelstudio(db: Database, path: str | os.PathLike) -> dict:
    """Import the answers of a Label Studio JSON export; items are matched by ``data.set``/``data.image_id``
    or by the reconstruction file. Annotators are created as imported (they cannot log in). Importing the same
    file twice adds nothing. Returns counts: added, duplicates (the same answer already stored), conflicts (a
    different answer of the same person already stored; the stored one is kept), unmatched tasks, skipped
    (cancelled or empty). A malformed file stores nothing."""
    path = Path(path)
    try:
        tasks = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise SemsimError(f"{path}: not a readable JSON file ({exc}); export the tasks as JSON") from None
    if not isinstance(tasks, list):
        raise SemsimError(f"{path}: expected a JSON list of Label Studio tasks")
    info = project_info(db)
    with db.write() as s:
        importer = _Importer(s, info)
        for k, task in enumerate(tasks):
            where = f"{path}: task {task.get('id', k) if isinstance(task, dict) else k}"
            try:
                importer.task(task, where)
            except SemsimError as exc:
                message = str(exc)
                raise SemsimError(message if message.startswith(str(path)) else f"{where}: {message}") from None
    return importer.counts




def export(db: Database, out: str | os.PathLike, fmt: str | None = None, force: bool = False) -> Path:
    """Export by format (``labels``, ``folders``, ``labelstudio``) or, when None, by the name of ``out``.
    An existing file is replaced only with ``force`` (a non-empty folder never)."""
    out = Path(out)
    if fmt is None:
        fmt = "labelstudio" if out.suffix.lower() == ".json" else ("labels" if out.suffix else "folders")
    if fmt not in ("labels", "folders", "labelstudio"):
        raise SemsimError(f"export format {fmt!r}: unknown; use labels, folders or labelstudio")
    if fmt != "folders" and out.exists() and not force:  # a folder export never replaces a non-empty folder
        raise SemsimError(f"{out}: exists; give a new name, or --force to replace it")
    if fmt == "labels":
        return export_labels(db, out)
    if fmt == "folders":
        return export_folders(db, out)
    return export_labelstudio(db, out)


def zip_folders(db: Database, dest: str | os.PathLike) -> Path:
    """The folder layout as a zip archive (for the dashboard's download)."""
    dest = Path(dest)
    with tempfile.TemporaryDirectory() as tmp:
        folder = export_folders(db, Path(tmp) / "semsim_folders")
        with atomic_write(dest) as part:
            archive = shutil.make_archive(str(part), "zip", root_dir=folder)
            os.replace(archive, part)
    return dest
