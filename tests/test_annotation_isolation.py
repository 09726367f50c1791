"""A hostile annotator cannot fail another's answers: every field is checked before the shared writer, a
failing answer in a batch fails alone, bodies are limited (413) and writing requests are authenticated before
their body is read."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
from concurrent.futures import Future

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from annotation_util import Server, item_of, login, make_project
from semsim.annotation.answers import AnswerRequest, InvalidAnswer
from semsim.annotation.app import MAX_BODY, create_app
from semsim.annotation.db import Annotator, Answer, Assignment, Database
from semsim.annotation.project import project_info
from semsim.annotation.writer import AnswerWriter


def _mine(db: Database, name: str) -> tuple[int, list[int]]:
    with db.read() as s:
        person = s.scalar(select(Annotator.id).where(Annotator.name == name))
        items = list(s.scalars(select(Assignment.item_id).where(Assignment.annotator_id == person)
                               .order_by(Assignment.position)))
    return person, items


def _count(db: Database) -> int:
    with db.read() as s:
        return s.scalar(select(func.count()).select_from(Answer))


BAD_BODIES = [
    {"item_id": 2**63, "value": 0},  # SQLite's integer overflows
    {"item_id": 2**70, "value": 0},
    {"item_id": -1, "value": 0},
    {"item_id": "1", "value": 0},
    {"item_id": 1.5, "value": 0},
    {"item_id": 1, "value": 2**64},
    {"item_id": 1, "value": True},
    {"item_id": 1, "value": 0, "submit_id": "\ud800"},  # a lone surrogate cannot be encoded
    {"item_id": 1, "value": 0, "submit_id": "x" * 65},
    {"item_id": 1, "value": 0, "submit_id": 5},
    ["not", "an", "object"],
]


def test_every_bad_field_is_a_400_and_stores_nothing(tmp_path):
    db, tokens = make_project(tmp_path, n_items=4, per_item=1, annotators=1)
    client = TestClient(create_app(db.url))
    auth = {"Authorization": f"Bearer {tokens['a0']}", "Content-Type": "application/json"}
    for body in BAD_BODIES:
        reply = client.post("/api/answer", content=json.dumps(body).encode(), headers=auth)
        assert reply.status_code == 400, (body, reply.text)
        assert "error" in reply.json()
    assert client.post("/api/answer", content=b"{broken", headers=auth).status_code == 400
    assert _count(db) == 0
    # the same through the browser form
    csrf = login(client, tokens["a0"])
    for item_id, submit_id in ((2**63, "ok"), (2**64, "ok"), (1, "x" * 65), (1, "\u00e9t\u00e9")):
        reply = client.post("/answer", data={"item_id": item_id, "value": 0, "csrf": csrf, "submit_id": submit_id})
        assert reply.status_code == 400, reply.text
    item = item_of(client.get("/task").text)
    assert client.post("/answer", data={"item_id": item, "value": 0, "csrf": csrf}).status_code == 200
    assert _count(db) == 1


def test_a_failing_answer_in_a_batch_fails_alone(tmp_path):
    db, _ = make_project(tmp_path, n_items=20, per_item=2, annotators=2)
    info = project_info(db)
    (p0, mine0), (p1, mine1) = _mine(db, "a0"), _mine(db, "a1")
    writer = AnswerWriter(db, info)
    try:
        with pytest.raises(InvalidAnswer):
            writer.enqueue(p0, 2**63, 0)  # checked before it is queued
        blocker = sqlite3.connect(db.url.split("///", 1)[1], isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")  # hold the lock: everything below lands in one batch
        honest = [writer.enqueue(p, item, 1, f"{p}-{item}") for p, items in ((p0, mine0), (p1, mine1))
                  for item in items]
        poisoned: Future = Future()  # bypasses the checks: the database itself refuses it (OverflowError)
        writer._queue.put((AnswerRequest(p1, 2**64, 0, "evil"), poisoned))
        honest += [writer.enqueue(p0, mine0[0], 1)]  # a duplicate in the same batch
        blocker.execute("ROLLBACK")
        blocker.close()
        results = [f.result(timeout=60) for f in honest]
        failure = poisoned.result(timeout=60)
    finally:
        writer.close()
    assert results == [True] * (len(mine0) + len(mine1)) + [False]
    assert isinstance(failure, Exception)
    assert _count(db) == len(mine0) + len(mine1)


def test_concurrent_honest_annotators_unaffected_by_a_hostile_one(tmp_path):
    db, tokens = make_project(tmp_path, n_items=30, per_item=1, annotators=4)
    results: dict[str, list[int]] = {}

    def honest(base: str, name: str) -> None:
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {tokens[name]}"}, timeout=30) as c:
            item = c.get("/api/next").json()["item_id"]
            codes = []
            while item is not None:
                reply = c.post("/api/answer", json={"item_id": item, "value": 0, "submit_id": f"{name}-{item}"})
                codes.append(reply.status_code)
                item = reply.json().get("next_item_id")
            results[name] = codes

    def hostile(base: str, stop: threading.Event) -> None:
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {tokens['a3']}",
                                                  "Content-Type": "application/json"}, timeout=30) as c:
            k = 0
            while not stop.is_set():
                c.post("/api/answer", content=json.dumps(BAD_BODIES[k % 8]).encode())
                k += 1
            results["hostile"] = [k]

    with Server(db) as base:
        stop = threading.Event()
        bad = threading.Thread(target=hostile, args=(base, stop))
        bad.start()
        threads = [threading.Thread(target=honest, args=(base, f"a{k}")) for k in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        stop.set()
        bad.join(timeout=30)
    assert results["hostile"][0] > 0
    for k in range(3):
        assert results[f"a{k}"] and set(results[f"a{k}"]) == {200}, results[f"a{k}"]
    with db.read() as s:
        stored = s.scalar(select(func.count()).select_from(Answer).join(Annotator)
                          .where(Annotator.name != "a3"))
    assert stored == sum(len(results[f"a{k}"]) for k in range(3))


def _raw(app, method: str, path: str, headers: list[tuple[bytes, bytes]], chunks: list[bytes]) -> tuple[int, int]:
    """Call the ASGI app directly; return (status, how many body chunks the app read)."""
    read = 0
    status: list[int] = []

    async def receive() -> dict:
        nonlocal read
        read += 1
        if read > len(chunks):
            return {"type": "http.disconnect"}
        return {"type": "http.request", "body": chunks[read - 1], "more_body": read < len(chunks)}

    async def send(message: dict) -> None:
        if message["type"] == "http.response.start":
            status.append(message["status"])

    scope = {"type": "http", "method": method, "path": path, "raw_path": path.encode(), "query_string": b"",
             "headers": headers, "http_version": "1.1", "scheme": "http", "server": ("127.0.0.1", 80),
             "client": ("127.0.0.1", 5000), "root_path": ""}
    asyncio.run(app(scope, receive, send))
    return status[0], read


def test_body_limit_and_authentication_before_the_body(tmp_path):
    db, tokens = make_project(tmp_path, n_items=2, per_item=1, annotators=1)
    app = create_app(db.url)
    huge = [(b"content-length", str(400 * 2**20).encode()), (b"content-type", b"application/json")]
    # a 400 MB declared body, unauthenticated or not: 413 without reading a byte
    assert _raw(app, "POST", "/api/answer", huge, [b"x"]) == (413, 0)
    assert _raw(app, "POST", "/answer", huge, [b"x"]) == (413, 0)
    # unauthenticated writes: 403 without reading the body
    small = [(b"content-length", b"20"), (b"content-type", b"application/json")]
    assert _raw(app, "POST", "/api/answer", small, [b"{}"]) == (403, 0)
    assert _raw(app, "POST", "/answer", small, [b"item_id=1"]) == (403, 0)
    assert _raw(app, "POST", "/api/answer", [*small, (b"authorization", b"Bearer nope")], [b"{}"]) == (403, 0)
    # authenticated but streamed (no length) beyond the limit: 413 once the limit is passed
    bearer = [(b"authorization", f"Bearer {tokens['a0']}".encode()), (b"content-type", b"application/json")]
    status, read = _raw(app, "POST", "/api/answer", bearer, [b"x" * 4096] * 64)
    assert status == 413 and read == MAX_BODY // 4096 + 1
    # and through a real client: an oversized submit_id is a 413, a normal answer works
    client = TestClient(app)
    auth = {"Authorization": f"Bearer {tokens['a0']}"}
    reply = client.post("/api/answer", json={"item_id": 1, "value": 0, "submit_id": "x" * 20 * 2**20}, headers=auth)
    assert reply.status_code == 413
    item = client.get("/api/next", headers=auth).json()["item_id"]
    assert client.post("/api/answer", json={"item_id": item, "value": 0}, headers=auth).json()["stored"]
