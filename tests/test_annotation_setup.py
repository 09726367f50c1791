"""Setting a study up and getting the labels out: absolute paths, every image decoded, no database left by a
failed init, a non-SQLite --db refused, links at the served address, warnings for items short of judges,
exports that do not overwrite, imports that report conflicts, one-line errors (exit 2) from the CLI."""

from __future__ import annotations

import json
import sqlite3
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from annotation_util import CLASSES, login, make_project, make_set
from semsim.annotation import add_annotator, export, import_labelstudio, init_project, label_table, submit_answer
from semsim.annotation.annotators import link, set_base_url
from semsim.annotation.app import create_app
from semsim.annotation.db import ADDED_COLUMNS, Annotator, Assignment, Database, Item
from semsim.annotation.project import FLAG, SKIP, project_info
from semsim.cli import main
from semsim.errors import SemsimError


def _cli(argv: list[str], capsys) -> tuple[int, str, str]:
    """Run the console entry point; return (exit status, stdout, stderr)."""
    old = sys.argv
    sys.argv = ["semsim", *argv]
    try:
        with pytest.raises(SystemExit) as stop:
            main()
    finally:
        sys.argv = old
    out = capsys.readouterr()
    return stop.value.code, out.out, out.err


def test_init_stores_absolute_paths(tmp_path, monkeypatch):
    make_set(tmp_path / "setA", 3)
    monkeypatch.chdir(tmp_path)
    init_project("rel.sqlite", [Path("setA")], per_item=1, classes=CLASSES)
    db = Database(tmp_path / "rel.sqlite")
    with db.read() as s:
        paths = [p for i in s.scalars(select(Item)) for p in (i.original, i.reconstruction)]
    assert paths and all(Path(p).is_absolute() and Path(p).is_file() for p in paths)
    token = add_annotator(db, "x")
    monkeypatch.chdir("/")  # served from elsewhere: every image still found
    client = TestClient(create_app(db.url))
    login(client, token)
    with db.read() as s:
        items = list(s.scalars(select(Assignment.item_id)))
    assert all(client.get(f"/img/{i}/rec").status_code == 200 for i in items)


def test_unreadable_images_are_listed_and_nothing_is_created(tmp_path, capsys, monkeypatch):
    folder = make_set(tmp_path / "setA", 3)
    broken = folder / "1_1_rec.png"
    broken.write_bytes(broken.read_bytes()[:60])  # a truncated PNG
    db_path = tmp_path / "new.sqlite"
    with pytest.raises(SemsimError, match=r"1 image\(s\) cannot be decoded: .*1_1_rec\.png"):
        init_project(db_path, [folder], per_item=1, classes=CLASSES)
    assert not db_path.exists()
    code, _, err = _cli(["annotate", "init", "--db", str(db_path), "--sets", str(folder), "--per-item", "1"],
                        capsys)
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1 and "1_1_rec.png" in err
    assert not db_path.exists() and not list(tmp_path.glob("new.sqlite*"))
    broken.unlink()
    (folder / "1_1_ori.png").unlink()
    with pytest.raises(SemsimError, match="given twice"):
        init_project(db_path, [folder, folder], per_item=1, classes=CLASSES)
    # a failure after the database was created leaves no file either

    def fail(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("disk full")

    monkeypatch.setattr("semsim.annotation.loading.assign", fail)
    with pytest.raises(RuntimeError):
        init_project(db_path, [folder], per_item=1, classes=CLASSES)
    assert not list(tmp_path.glob("new.sqlite*"))


def test_a_file_that_is_not_sqlite_is_refused(tmp_path, capsys):
    make_set(tmp_path / "setA", 2)
    notes = tmp_path / "notes.txt"
    notes.write_text("my precious notes\n")
    code, _, err = _cli(["annotate", "init", "--db", str(notes), "--sets", str(tmp_path / "setA")], capsys)
    assert code == 2 and err.count("\n") == 1 and "not a SQLite database" in err
    assert notes.read_text() == "my precious notes\n"  # untouched
    code, _, err = _cli(["annotate", "status", "--db", str(notes)], capsys)
    assert code == 2 and "not a SQLite database" in err


def test_links_follow_the_served_address_and_short_items_warn(tmp_path, capsys):
    make_set(tmp_path / "setA", 4)
    db = str(tmp_path / "s.sqlite")
    code, _, err = _cli(["annotate", "init", "--db", db, "--sets", str(tmp_path / "setA"), "--per-item", "3",
                         "--classes", ",".join(CLASSES)], capsys)
    assert code == 0 and "add at least 3 annotators" in err
    code, out, err = _cli(["annotate", "add-annotator", "--db", db, "ann", "bob"], capsys)
    assert code == 0 and out.count("http://127.0.0.1:8000/start/") == 2
    assert "4 item(s) cannot get 3 distinct judges with 2 active annotator(s)" in err
    set_base_url(Database(db), "https://study.example.org/")  # what `serve --public-url` records
    code, out, err = _cli(["annotate", "add-annotator", "--db", db, "cleo"], capsys)
    assert "https://study.example.org/start/" in out and "cannot get" not in err
    code, out, _ = _cli(["annotate", "reissue", "--db", db, "bob", "--base-url", "http://10.0.0.5:9000"], capsys)
    assert code == 0 and out.startswith("bob\thttp://10.0.0.5:9000/start/")
    assert link(Database(db), "T") == "https://study.example.org/start/T"


def test_export_refuses_to_overwrite_and_counts_flags(tmp_path, capsys):
    db, _ = make_project(tmp_path, n_items=3, per_item=2, annotators=2)
    info = project_info(db)
    with db.read() as s:
        rows = s.execute(select(Assignment.annotator_id, Assignment.item_id).order_by(Assignment.id)).all()
        label = {i.id: i.label for i in s.scalars(select(Item))}
    first = rows[0]
    for k, (person, item) in enumerate(rows):
        value = FLAG if k == 0 else SKIP if k == 1 and item != first[1] else label[item]
        submit_answer(db, info, person, item, value)
    table = label_table(db)
    flagged = table[table["n_flagged"] > 0]
    assert len(flagged) == 1 and flagged["n_judges"].iloc[0] == 1 and flagged["recognized"].iloc[0] == 1.0
    assert table["n_skipped"].sum() == (1 if rows[1][1] != first[1] else 0)
    assert not any(v in (FLAG, SKIP) for c in table.columns if c.startswith("judge_") for v in table[c].dropna())
    out = tmp_path / "labels.csv"
    export(db, out)
    before = out.read_bytes()
    with pytest.raises(SemsimError, match="exists; give a new name, or --force"):
        export(db, out)
    code, _, err = _cli(["annotate", "export", "--db", db.url, "--out", str(out)], capsys)
    assert code == 2 and "--force" in err and out.read_bytes() == before
    code, _, _ = _cli(["annotate", "export", "--db", db.url, "--out", str(out), "--force"], capsys)
    assert code == 0
    tasks = json.loads(export(db, tmp_path / "tasks.json").read_text())
    choices = [r["value"]["choices"][0] for t in tasks for a in t["annotations"] for r in a["result"]]
    assert "broken image" in choices


def test_import_reports_conflicts_and_malformed_results(tmp_path, capsys):
    make_set(tmp_path / "setA", 2)
    init_project(tmp_path / "i.sqlite", [tmp_path / "setA"], per_item=1, classes=CLASSES)
    db = Database(tmp_path / "i.sqlite")

    def task(*choices: str) -> dict:
        return {"data": {"set": "setA", "image_id": "0_0"},
                "annotations": [{"completed_by": 3, "result": [{"type": "choices", "value": {"choices": [c]}}]}
                                for c in choices]}

    (tmp_path / "a.json").write_text(json.dumps([task("cat", "dog")]))
    assert import_labelstudio(db, tmp_path / "a.json") == {"added": 1, "duplicates": 0, "conflicts": 1,
                                                           "unmatched": 0, "skipped": 0}
    (tmp_path / "b.json").write_text(json.dumps([task("cat")]))
    assert import_labelstudio(db, tmp_path / "b.json")["duplicates"] == 1
    broken = task("cat")
    del broken["annotations"][0]["result"][0]["value"]
    (tmp_path / "c.json").write_text(json.dumps([broken]))
    code, _, err = _cli(["annotate", "import", "--db", str(tmp_path / "i.sqlite"), str(tmp_path / "c.json")],
                        capsys)
    assert code == 2 and err.count("\n") == 1 and "without a 'value'" in err and "task 0, annotation 0" in err
    with db.read() as s:
        assert s.scalar(select(Annotator.imported).where(Annotator.name == "labelstudio-3"))


def test_a_database_of_the_earlier_version_is_brought_up_to_date(tmp_path):
    db, tokens = make_project(tmp_path, n_items=2, per_item=1, annotators=1)
    db.dispose()
    path = tmp_path / "ann.sqlite"
    with sqlite3.connect(path) as raw:  # the columns this version added
        for table, column in ADDED_COLUMNS:
            raw.execute(f'ALTER TABLE {table} DROP COLUMN "{column}"')
    client = TestClient(create_app(path))
    login(client, tokens["a0"])
    assert client.get("/task").status_code == 200
    with Database(path).read() as s:
        assert s.scalar(select(Item.example).limit(1)) is False
