"""Exports (label table, SemSim folders, Label Studio JSON), import, and the ``semsim annotate`` commands."""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Callable

import pandas as pd
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from typer.testing import CliRunner

from annotation_util import CLASSES, make_project, make_set
from semsim.annotation import export, import_labelstudio, init_project, label_table, submit_answer
from semsim.annotation.app import create_app
from semsim.annotation.db import Annotator, Assignment, Database, Item
from semsim.annotation.project import project_info
from semsim.cli import app
from semsim.data.labels import read_labels
from semsim.errors import SemsimError


def _answer_all(db: Database, rule: Callable[[str, Item], int]) -> None:
    """Every assignment answered with ``rule(annotator_name, item)``."""
    info = project_info(db)
    with db.read() as s:
        rows = s.execute(select(Annotator.id, Annotator.name, Item).join(Assignment, Assignment.annotator_id
                                                                         == Annotator.id)
                         .join(Item, Item.id == Assignment.item_id).order_by(Assignment.id)).all()
    for person_id, name, item in rows:
        submit_answer(db, info, person_id, item.id, rule(name, item))


def _rule(name: str, item: Item) -> int:
    # a0 always right; a1 right on even images, "can't tell" on odd ones; a2 always picks class 0
    index = int(item.image_id.split("_")[0])
    return {"a0": item.label, "a1": item.label if index % 2 == 0 else -1, "a2": 0}[name]


def test_label_table_follows_the_contract(tmp_path):
    db, _ = make_project(tmp_path, n_items=9, per_item=3, annotators=3)
    _answer_all(db, _rule)
    out = export(db, tmp_path / "labels.csv")
    table = read_labels(out)
    assert len(table) == 9 and set(table["label_source"]) == {"human:test"}
    assert (table["n_judges"] == 3).all()
    for row in table.itertuples():
        index, label = (int(x) for x in row.image_id.split("_"))
        expected = (1 + (index % 2 == 0) + (label == 0)) / 3
        assert row.recognized == pytest.approx(expected), row.image_id
        judges = sorted([row.judge_1, row.judge_2, row.judge_3])
        assert sorted([label, label if index % 2 == 0 else -1, 0]) == judges
    parquet = read_labels(export(db, tmp_path / "labels.parquet"))
    assert parquet["recognized"].tolist() == table["recognized"].tolist()


def test_semsim_folder_layout(tmp_path):
    db, _ = make_project(tmp_path, n_items=6, per_item=3, annotators=3)
    _answer_all(db, _rule)
    out = export(db, tmp_path / "folders", "folders")
    root = out / "train_with_ori"
    labels = label_table(db)
    for row in labels.itertuples():
        index = row.image_id.split("_")[0]
        assert (root / index / f"{row.image_id}_ori.png").is_file()
        rec = f"setA__{row.image_id}_rec.png"
        recognized = row.recognized > 0.5
        assert (root / index / rec).is_file() == recognized
        assert (root / f"-{index}" / rec).is_file() == (not recognized)
        copied = root / (index if recognized else f"-{index}") / rec
        assert copied.read_bytes() == open(row.reconstruction, "rb").read()
    index = pd.read_csv(out / "index.csv")
    assert len(index) == 6 and all((out / f).is_file() for f in index["file"])
    with pytest.raises(SemsimError, match="not empty"):
        export(db, out, "folders")


def test_labelstudio_round_trip_and_import(tmp_path):
    db, _ = make_project(tmp_path / "one", n_items=6, per_item=2, annotators=2)
    _answer_all(db, _rule)
    tasks_file = export(db, tmp_path / "tasks.json")
    tasks = json.loads(tasks_file.read_text())
    assert len(tasks) == 6 and sum(len(t["annotations"]) for t in tasks) == 12
    choice = tasks[0]["annotations"][0]["result"][0]["value"]["choices"][0]
    assert choice in [*CLASSES, "can't tell"]

    # a fresh database with the same set imports the answers: identical label table
    init_project(tmp_path / "two.sqlite", [tmp_path / "one" / "setA"], per_item=2, study="test",
                 classes=CLASSES)
    fresh = Database(tmp_path / "two.sqlite")
    counts = import_labelstudio(fresh, tasks_file)
    assert counts == {"added": 12, "duplicates": 0, "conflicts": 0, "unmatched": 0, "skipped": 0}
    assert import_labelstudio(fresh, tasks_file)["duplicates"] == 12  # importing twice adds nothing
    cols = ["set", "image_id", "recognized", "n_judges"]
    pd.testing.assert_frame_equal(label_table(fresh)[cols], label_table(db)[cols])

    # a Label Studio export of its own: tasks by image file, completed_by as user ids, one cancelled result
    foreign = [{"id": 1, "data": {"image": "/data/upload/1/0_0_rec.png"},
                "annotations": [{"completed_by": 7,
                                 "result": [{"type": "choices", "value": {"choices": ["cat"]}}]},
                                {"completed_by": {"email": "x@y"}, "was_cancelled": True, "result": []}]},
               {"id": 2, "data": {"image": "/elsewhere/nothing.png"}, "annotations": []}]
    (tmp_path / "ls.json").write_text(json.dumps(foreign))
    got = import_labelstudio(fresh, tmp_path / "ls.json")
    assert got == {"added": 1, "duplicates": 0, "conflicts": 0, "unmatched": 1, "skipped": 1}
    with fresh.read() as s:
        assert s.scalar(select(Annotator.imported).where(Annotator.name == "labelstudio-7"))
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(SemsimError, match="not a readable JSON"):
        import_labelstudio(fresh, tmp_path / "bad.json")


def test_cli_commands(tmp_path):
    runner = CliRunner()
    make_set(tmp_path / "setA", 4)
    db = str(tmp_path / "cli.sqlite")
    result = runner.invoke(app, ["annotate", "init", "--db", db, "--sets", str(tmp_path / "setA"),
                                 "--per-item", "1", "--classes", ",".join(CLASSES), "--study", "cli"])
    assert result.exit_code == 0, result.output
    assert "loaded 4 item(s)" in result.output
    result = runner.invoke(app, ["annotate", "add-annotator", "--db", db, "ann"])
    assert result.exit_code == 0 and "/start/" in result.output
    token = result.output.strip().rsplit("/", 1)[1]
    database = Database(db)
    with database.read() as s:
        person = s.scalar(select(Annotator).where(Annotator.name == "ann"))
    assert token not in person.token_hash
    _answer_all(database, lambda name, item: item.label)
    result = runner.invoke(app, ["annotate", "status", "--db", f"sqlite:///{db}"])  # a SQLAlchemy URL
    assert result.exit_code == 0 and "ann" in result.output and "4" in result.output
    result = runner.invoke(app, ["annotate", "export", "--db", db, "--out", str(tmp_path / "l.csv")])
    assert result.exit_code == 0 and read_labels(tmp_path / "l.csv")["recognized"].eq(1.0).all()
    # bad input: a clean SemsimError (the console entry point prints it as one `error:` line)
    result = runner.invoke(app, ["annotate", "status", "--db", str(tmp_path / "missing.sqlite")])
    assert isinstance(result.exception, SemsimError) and "semsim annotate init" in str(result.exception)
    result = runner.invoke(app, ["annotate", "init", "--db", db, "--sets", str(tmp_path / "setA")])
    assert isinstance(result.exception, SemsimError) and "already in" in str(result.exception)


def test_dashboard_downloads(tmp_path):
    db, tokens = make_project(tmp_path, n_items=4, per_item=2, annotators=2)
    client = TestClient(create_app(db.url))
    client.get(f"/start/{tokens['admin']}")
    assert client.get("/admin/export/labels.csv").status_code == 409  # nothing answered yet
    _answer_all(db, _rule)
    archive = zipfile.ZipFile(io.BytesIO(client.get("/admin/export/semsim_folders.zip").content))
    names = archive.namelist()
    assert "index.csv" in names and any(n.startswith("train_with_ori/0/") for n in names)
    assert len([n for n in names if n.endswith("_rec.png")]) == 4
    tasks = client.get("/admin/export/labelstudio.json").json()
    assert sum(len(t["annotations"]) for t in tasks) == 8
    parquet = client.get("/admin/export/labels.parquet")
    assert len(pd.read_parquet(io.BytesIO(parquet.content))) == 4
    assert client.get("/admin/export/..%2Fann.sqlite").status_code in (403, 404)
