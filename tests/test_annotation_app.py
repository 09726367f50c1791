"""The annotation app in-process: assignment, the task flow, security rules, gold items, the pair task."""

from __future__ import annotations

import io
import math
import re
import sqlite3
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import event, func, select

from annotation_util import csrf_of, item_of, login, make_project
from semsim.annotation import add_annotator, dashboard, set_active, submit_answer
from semsim.annotation.app import create_app
from semsim.annotation.db import Annotator, Answer, Assignment, Database, Item, WebSession
from semsim.annotation.project import NotAssigned, hash_secret, project_info
from semsim.annotation.writer import AnswerWriter


def _queues(db: Database) -> dict[int, list[int]]:
    with db.read() as s:
        rows = s.execute(select(Assignment.annotator_id, Assignment.item_id)
                         .order_by(Assignment.position)).all()
    out: dict[int, list[int]] = {}
    for person, item in rows:
        out.setdefault(person, []).append(item)
    return out


def test_assignment_distinct_balanced_and_rebalanced(tmp_path):
    db, _ = make_project(tmp_path, n_items=30, per_item=3, annotators=4)
    queues = _queues(db)
    assert sorted(len(q) for q in queues.values()) in ([22, 22, 23, 23],)  # 90 judgments over 4 people
    per_item = Counter(i for q in queues.values() for i in q)
    assert set(per_item.values()) == {3} and len(per_item) == 30
    assert all(len(q) == len(set(q)) for q in queues.values())  # nobody sees an item twice
    orders = [tuple(sorted(q, key=q.index)) for q in queues.values()]
    assert len({tuple(q) for q in queues.values()}) == len(orders)
    # the queues are not all in item order: each annotator has their own random order
    assert any(q != sorted(q) for q in queues.values())

    # a fifth annotator takes unanswered work from the others; still 3 distinct judges per item
    add_annotator(db, "late")
    queues = _queues(db)
    assert sorted(len(q) for q in queues.values()) == [18, 18, 18, 18, 18]
    assert set(Counter(i for q in queues.values() for i in q).values()) == {3}

    # deactivating one returns their unanswered items to the others
    set_active(db, "late", False)
    queues = _queues(db)
    assert len(queues) == 4 and set(Counter(i for q in queues.values() for i in q).values()) == {3}


def test_task_flow_progress_undo_and_double_submit(tmp_path):
    db, tokens = make_project(tmp_path, n_items=6, per_item=1, annotators=1)
    client = TestClient(create_app(db.url))
    csrf = login(client, tokens["a0"])
    page = client.get("/task").text
    assert "0 / 6" in page
    first = item_of(page)
    form = {"item_id": first, "value": 1, "csrf": csrf, "submit_id": "s1"}
    assert client.post("/answer", data=form).status_code == 200
    # the same form submitted again (double click, resent request) stores nothing new
    again = client.post("/answer", data=form)
    assert again.status_code == 200 and "1 / 6" in again.text
    with db.read() as s:
        assert s.scalar(select(func.count()).select_from(Answer)) == 1
        assert s.scalar(select(Answer.value)) == 1
    second = item_of(again.text)
    assert second != first
    # undo brings the first item back
    page = client.post("/undo", data={"csrf": csrf}).text
    assert "0 / 6" in page and item_of(page) == first
    with db.read() as s:
        assert s.scalar(select(func.count()).select_from(Answer)) == 0
    # finish the queue
    for _ in range(6):
        page = client.get("/task").text
        client.post("/answer", data={"item_id": item_of(page), "value": -1, "csrf": csrf})
    done = client.get("/task").text
    assert "All done" in done and "6 / 6" in done
    # an invalid value is refused with a message, not stored
    with pytest.raises(Exception, match="not a valid choice"):
        submit_answer(db, project_info(db), 1, first, 7)


def test_security_rules(tmp_path):
    db, tokens = make_project(tmp_path, n_items=8, per_item=1, annotators=2)
    app = create_app(db.url)
    anon, alice, bob, boss = (TestClient(app) for _ in range(4))

    # tokens and session ids are stored only as sha256 digests
    with db.read() as s:
        hashes = set(s.scalars(select(Annotator.token_hash)))
        sessions_before = s.scalar(select(func.count()).select_from(WebSession))
    assert all(t not in hashes and hash_secret(t) in hashes for t in tokens.values())
    assert sessions_before == 0

    csrf_a = login(alice, tokens["a0"])
    login(bob, tokens["a1"])
    boss.get(f"/start/{tokens['admin']}")
    with db.read() as s:
        session_hashes = set(s.scalars(select(WebSession.session_hash)))
    assert alice.cookies.get("semsim_session") not in session_hashes
    assert hash_secret(alice.cookies.get("semsim_session")) in session_hashes

    # nobody without a valid session, and no annotator, reaches the admin pages or exports
    for client in (anon, alice):
        for url in ("/admin", "/admin/export/labels.csv", "/admin/export/labelstudio.json"):
            assert client.get(url).status_code == 403, url
        assert client.post("/admin/annotators", data={"name": "x", "csrf": csrf_a}).status_code == 403
    assert anon.get("/task").status_code == 403
    assert anon.get("/start/not-a-token").status_code == 403
    assert boss.get("/admin").status_code == 200

    queues = _queues(db)
    with db.read() as s:
        ids = {a.name: a.id for a in s.scalars(select(Annotator))}
    mine, theirs = queues[ids["a0"]], queues[ids["a1"]]
    # images: only items of one's own queue, only the reconstruction in the class task, never by path
    assert alice.get(f"/img/{mine[0]}/rec").status_code == 200
    assert alice.get(f"/img/{theirs[0]}/rec").status_code == 403
    assert alice.get(f"/img/{mine[0]}/ori").status_code == 403
    assert alice.get("/img/99999/rec").status_code == 403
    for evil in ("/img/..%2F..%2Fetc%2Fpasswd/rec", "/img/1/..%2F..%2Fann.sqlite", "/static/..%2Fstore.py",
                 "/static/../store.py"):
        response = alice.get(evil)
        assert response.status_code in (403, 404, 422) and "sqlalchemy" not in response.text, evil
    assert boss.get(f"/img/{theirs[0]}/ori").status_code == 200

    # an answer for someone else's item is refused and not stored
    refused = alice.post("/answer", data={"item_id": theirs[0], "value": 0, "csrf": csrf_a})
    assert refused.status_code == 403
    with pytest.raises(NotAssigned):
        submit_answer(db, project_info(db), ids["a0"], theirs[0], 0)
    # CSRF: a form without the session's token (or with another session's) is refused
    assert alice.post("/answer", data={"item_id": mine[0], "value": 0, "csrf": "forged"}).status_code == 403
    assert alice.post("/answer", data={"item_id": mine[0], "value": 0}).status_code in (403, 422)
    csrf_b = csrf_of(bob.get("/task").text)
    assert alice.post("/answer", data={"item_id": mine[0], "value": 0, "csrf": csrf_b}).status_code == 403
    assert alice.post("/undo", data={"csrf": "forged"}).status_code == 403
    with db.read() as s:
        assert s.scalar(select(func.count()).select_from(Answer)) == 0

    # the API: bearer token only, own items only; a repeated submit is acknowledged once
    api = TestClient(app)
    assert api.get("/api/next").status_code == 403
    auth = {"Authorization": f"Bearer {tokens['a0']}"}
    first = api.post("/api/answer", json={"item_id": mine[0], "value": 2}, headers=auth).json()
    repeat = api.post("/api/answer", json={"item_id": mine[0], "value": 2}, headers=auth).json()
    assert first["stored"] and repeat["duplicate"] and not repeat["stored"]
    assert api.post("/api/answer", json={"item_id": theirs[0], "value": 2}, headers=auth).status_code == 403
    # an annotator's pages never show another annotator's answers
    api.post("/api/answer", json={"item_id": theirs[0], "value": 1}, headers={"Authorization":
                                                                                f"Bearer {tokens['a1']}"})
    page = alice.get("/task").text
    visible = re.sub(r'(value|content)="[^"]*"', "", page)  # random CSRF tokens may contain "a1" by chance
    assert not re.search(r"\ba1\b", visible) and "1 / 4" in page
    headers = alice.get("/task").headers
    assert "frame-ancestors 'none'" in headers["content-security-policy"]


def test_images_upscaled_nearest_neighbour(tmp_path):
    db, tokens = make_project(tmp_path, n_items=2, per_item=1, annotators=1)
    client = TestClient(create_app(db.url))
    login(client, tokens["a0"])
    item = item_of(client.get("/task").text)
    with db.read() as s:
        source = np.asarray(Image.open(s.get(Item, item).reconstruction).convert("RGB"))
    shown = np.asarray(Image.open(io.BytesIO(client.get(f"/img/{item}/rec").content)))
    assert shown.shape == (256, 256, 3)  # 8x8 -> 32x per side
    assert np.array_equal(shown[::32, ::32], source)  # every block is one source pixel
    assert np.array_equal(shown, np.repeat(np.repeat(source, 32, axis=0), 32, axis=1))
    with db.read() as s:
        Path(s.get(Item, item).reconstruction).unlink()
    assert client.get(f"/img/{item}/rec").status_code == 404  # a file gone missing: a clean 404


def test_gold_accuracy_and_dashboard(tmp_path):
    db, tokens = make_project(tmp_path, n_items=6, per_item=2, annotators=2, gold=3)
    info = project_info(db)
    with db.read() as s:
        gold = {i.id: i.gold_answer for i in s.scalars(select(Item).where(Item.gold))}
        ids = {a.name: a.id for a in s.scalars(select(Annotator))}
    queues = _queues(db)
    assert all(set(gold) <= set(q) for q in queues.values())  # gold items go to everybody
    # a0 answers every gold item right, a1 gets one of three right
    for k, (item, answer) in enumerate(sorted(gold.items())):
        submit_answer(db, info, ids["a0"], item, answer)
        submit_answer(db, info, ids["a1"], item, answer if k == 0 else (answer + 1) % 3)
    # on the regular items a0 and a1 agree perfectly
    for item in queues[ids["a0"]]:
        if item not in gold:
            submit_answer(db, info, ids["a0"], item, 0)
            submit_answer(db, info, ids["a1"], item, 0)
    d = dashboard(db)
    acc = {a["name"]: a["gold_accuracy"] for a in d["annotators"]}
    assert acc["a0"] == 1.0 and acc["a1"] == pytest.approx(1 / 3)
    assert d["n_answers"] == 12 and d["sets"][0]["complete"] == 6
    assert math.isnan(d["overall"]["answers_krippendorff_alpha"])  # everybody chose one category: undefined
    client = TestClient(create_app(db.url))
    client.get(f"/start/{tokens['admin']}")
    page = client.get("/admin").text
    assert "1.00" in page and "0.33" in page and "setA" in page


def test_pair_task(tmp_path):
    db, tokens = make_project(tmp_path, n_items=4, per_item=1, annotators=1, task="pair")
    client = TestClient(create_app(db.url))
    csrf = login(client, tokens["a0"])
    page = client.get("/task").text
    assert "recognizably the same as the left" in page
    item = item_of(page)
    assert client.get(f"/img/{item}/ori").status_code == 200  # the original is part of the question here
    assert 'data-key="y"' in page and 'data-key="n"' in page and 'data-key="u"' in page
    client.post("/answer", data={"item_id": item, "value": 1, "csrf": csrf})
    assert client.post("/answer", data={"item_id": item_of(client.get("/task").text), "value": 5,
                                        "csrf": csrf}).status_code == 400
    with db.read() as s:
        assert list(s.scalars(select(Answer.value))) == [1]


def test_group_commit_writer(tmp_path):
    db, _ = make_project(tmp_path, n_items=40, per_item=2, annotators=3)
    info = project_info(db)
    p0, mine = sorted(_queues(db).items())[0]
    other = next(i for i in range(1, 41) if i not in mine)
    commits = []
    event.listen(db.write_engine, "commit", lambda conn: commits.append(1))
    writer = AnswerWriter(db, info)
    try:
        # hold SQLite's write lock while the answers queue up: the writer stores them in at most two commits
        blocker = sqlite3.connect(db.url.split("///", 1)[1], isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        futures = [writer.enqueue(p0, item, 1, f"s{item}") for item in mine]
        futures.append(writer.enqueue(p0, mine[0], 2))  # a double submit within the same batch
        futures.append(writer.enqueue(p0, other, 1))  # not in this queue
        blocker.execute("ROLLBACK")
        blocker.close()
        results = [f.result(timeout=60) for f in futures]
    finally:
        writer.close()
    assert results[:-2] == [True] * len(mine)
    assert results[-2] is False and isinstance(results[-1], NotAssigned)
    assert 1 <= len(commits) <= 2
    with db.read() as s:
        stored = dict(s.execute(select(Answer.item_id, Answer.value).where(Answer.annotator_id == p0)).all())
    assert stored == dict.fromkeys(mine, 1)
