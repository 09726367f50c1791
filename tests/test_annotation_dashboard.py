"""The dashboard: the per-set cells show numbers, flags and skips are counted apart and left out of agreement."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from annotation_util import make_project
from semsim.annotation import dashboard, submit_answer
from semsim.annotation.agreement import agreement
from semsim.annotation.app import create_app
from semsim.annotation.db import Annotator, Assignment
from semsim.annotation.project import FLAG, SKIP, project_info


def test_flags_and_skips_are_not_judgments(tmp_path):
    db, tokens = make_project(tmp_path, n_items=6, per_item=2, annotators=2)
    info = project_info(db)
    with db.read() as s:
        ids = {a.name: a.id for a in s.scalars(select(Annotator))}
        items = sorted(set(s.scalars(select(Assignment.item_id))))
    units = []
    for k, item in enumerate(items):
        first = k % 3
        second = FLAG if k == 0 else SKIP if k == 1 else (first + (k == 2)) % 3
        submit_answer(db, info, ids["a0"], item, first)
        submit_answer(db, info, ids["a1"], item, second)
        units.append([first] + ([] if second in (FLAG, SKIP) else [second]))
    d = dashboard(db)
    expected = agreement(units)  # the same statistic on the judgments alone, built independently
    assert d["overall"]["answers_fleiss_kappa"] == pytest.approx(expected["fleiss_kappa"])
    assert d["overall"]["answers_krippendorff_alpha"] == pytest.approx(expected["krippendorff_alpha"])
    assert d["n_answers"] == 10
    row = d["sets"][0]
    assert (row["items"], row["answers"], row["flagged"], row["skipped"], row["complete"]) == (6, 10, 1, 1, 4)
    a1 = next(a for a in d["annotators"] if a["name"] == "a1")
    assert (a1["done"], a1["flagged"], a1["skipped"]) == (6, 1, 1)
    assert [(x["item_id"], x["by"]) for x in d["flagged"]] == [(items[0], "a1")]

    client = TestClient(create_app(db.url))
    client.get(f"/start/{tokens['admin']}")
    page = client.get("/admin").text
    assert "built-in method" not in page
    assert "<tr><td>setA</td><td>6</td><td>10</td><td>12</td><td>4</td><td>1</td><td>1</td>" in page
    assert 'id="flagged"' in page


def test_a_failed_reassignment_shows_on_the_dashboard(tmp_path, monkeypatch):
    import time

    import semsim.annotation.writer as writer

    db, tokens = make_project(tmp_path, n_items=4, per_item=2, annotators=2)

    def broken_assign(db, move=False):
        raise RuntimeError("reassignment broke")

    monkeypatch.setattr(writer, "assign", broken_assign)
    app = create_app(db.url)
    client = TestClient(app)
    client.get(f"/start/{tokens['admin']}")
    assert 'id="top-up-errors"' not in client.get("/admin").text
    top_up = app.state.writer.top_up
    top_up.wake()
    deadline = time.monotonic() + 10
    while not top_up.errors and time.monotonic() < deadline:
        time.sleep(0.01)
    page = client.get("/admin").text
    assert 'id="top-up-errors"' in page and "RuntimeError: reassignment broke" in page
