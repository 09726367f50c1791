"""Load over loopback: 20 annotators submit 500 answers each concurrently to a real server process, which is
killed with SIGKILL mid-load and restarted; every acknowledged answer must be stored exactly once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select

from annotation_util import held_socket, make_set, server_process
from semsim.annotation import add_annotators, init_project
from semsim.annotation.db import Annotator, Answer, Database

N_ANNOTATORS = 20
PER_ANNOTATOR = 500
PER_ITEM = 5
N_ITEMS = N_ANNOTATORS * PER_ANNOTATOR // PER_ITEM  # 2000 items x 5 judges = 20 queues of 500
KILL_AFTER = 3000  # acknowledged answers before the SIGKILL
DEADLINE_S = 240.0


class Client(threading.Thread):
    """One annotator: answers the next item of their queue until 500 answers are acknowledged, retrying the
    same answer after connection failures (a retry of an answer stored before the crash is a duplicate)."""

    def __init__(self, index: int, token: str, port: int, acked: list, stop: threading.Event):
        super().__init__(daemon=True)
        self.index, self.token, self.port, self.acked, self.stop = index, token, port, acked, stop
        self.mine: dict[int, int] = {}
        self.errors = 0
        self.duplicates = 0
        self.failure: str | None = None

    def run(self) -> None:
        try:
            self._run()
        except Exception as exc:  # reported by the test
            self.failure = f"{type(exc).__name__}: {exc}"

    def _run(self) -> None:
        base = f"http://127.0.0.1:{self.port}"
        headers = {"Authorization": f"Bearer {self.token}"}
        client = httpx.Client(base_url=base, headers=headers, timeout=30)
        item = None
        while len(self.mine) < PER_ANNOTATOR and not self.stop.is_set():
            try:
                if item is None:
                    item = client.get("/api/next").raise_for_status().json()["item_id"]
                    if item is None:
                        break
                value = (item + self.index) % 3
                reply = client.post("/api/answer", json={"item_id": item, "value": value,
                                                         "submit_id": f"{self.index}-{item}"})
                reply.raise_for_status()
                body = reply.json()
            except httpx.TransportError:  # the server is down: wait a little, then send the same answer again
                self.errors += 1
                time.sleep(0.2)
                continue
            assert body["item_id"] == item and item not in self.mine
            self.mine[item] = value
            self.duplicates += body["duplicate"]
            self.acked.append(1)
            item = body["next_item_id"]
        client.close()


@pytest.mark.slow
def test_concurrent_load_survives_sigkill(tmp_path):
    make_set(tmp_path / "set", N_ITEMS, size=4)
    db_path = tmp_path / "load.sqlite"
    init_project(db_path, [tmp_path / "set"], per_item=PER_ITEM, study="load", classes=["a", "b", "c"])
    db = Database(db_path)
    tokens = add_annotators(db, [f"p{k:02d}" for k in range(N_ANNOTATORS)])
    sock = held_socket()  # the port stays ours across the kill; the restarted server serves the same socket
    port = sock.getsockname()[1]
    server = server_process(db_path, sock)
    acked: list = []
    stop = threading.Event()
    clients = [Client(k, tokens[f"p{k:02d}"], port, acked, stop) for k in range(N_ANNOTATORS)]
    start = time.monotonic()
    try:
        for c in clients:
            c.start()
        while (len(acked) < KILL_AFTER and time.monotonic() - start < DEADLINE_S
               and any(c.is_alive() for c in clients)):
            time.sleep(0.01)
        at_kill = len(acked)
        os.kill(server.pid, signal.SIGKILL)
        server.wait(timeout=30)
        server = server_process(db_path, sock)
        for c in clients:
            c.join(timeout=max(1.0, DEADLINE_S - (time.monotonic() - start)))
        stop.set()
    finally:
        stop.set()
        server.send_signal(signal.SIGKILL)
        server.wait(timeout=30)
        sock.close()
    assert all(c.failure is None for c in clients), [c.failure for c in clients if c.failure]
    assert all(not c.is_alive() for c in clients), "clients did not finish before the deadline"
    assert 0 < at_kill < N_ANNOTATORS * PER_ANNOTATOR, "the kill did not happen mid-load"
    assert sum(c.errors for c in clients) > 0, "no client saw the server die"

    with db.read() as s:
        ids = {name: i for i, name in s.execute(select(Annotator.id, Annotator.name)).all()}
        stored = s.execute(select(Answer.annotator_id, Answer.item_id, Answer.value)).all()
        twice = s.execute(select(Answer.annotator_id, Answer.item_id)
                          .group_by(Answer.annotator_id, Answer.item_id).having(func.count() > 1)).all()
    assert twice == []
    assert len(stored) == N_ANNOTATORS * PER_ANNOTATOR
    by_person: dict[int, dict[int, int]] = {}
    for person, item, value in stored:
        by_person.setdefault(person, {})[item] = value
    for k, c in enumerate(clients):
        assert len(c.mine) == PER_ANNOTATOR
        assert by_person[ids[f"p{k:02d}"]] == c.mine  # every acknowledged answer and its value, once
    per_item: dict[int, int] = {}
    for _, item, _ in stored:
        per_item[item] = per_item.get(item, 0) + 1
    assert set(per_item.values()) == {PER_ITEM} and len(per_item) == N_ITEMS


def _group(pgid: int) -> list[int]:
    """Pids of the live processes of process group ``pgid``."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            pids.append(int(stat.parent.name))
    return pids


def test_two_workers_serve_and_die_with_their_parent(tmp_path):
    make_set(tmp_path / "set", 40, size=4)
    db_path = tmp_path / "w.sqlite"
    init_project(db_path, [tmp_path / "set"], per_item=1, study="w", classes=["a", "b", "c"])
    tokens = add_annotators(Database(db_path), ["p0", "p1"])
    sock = held_socket()
    code = "import sys; from semsim.annotation.app import serve; serve(sys.argv[1], fd=int(sys.argv[2]), workers=2)"
    parent = subprocess.Popen([sys.executable, "-c", code, str(db_path), str(sock.fileno())],
                              pass_fds=(sock.fileno(),), start_new_session=True, stderr=subprocess.PIPE)
    try:
        base = f"http://127.0.0.1:{sock.getsockname()[1]}"
        deadline = time.monotonic() + 120
        while len(_group(parent.pid)) < 3 or not _healthy(base):
            assert time.monotonic() < deadline and parent.poll() is None, parent.stderr.read().decode()[-2000:]
            time.sleep(0.2)
        stored = 0
        for token in tokens.values():
            with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=30) as c:
                item = c.get("/api/next").json()["item_id"]
                while item is not None:
                    reply = c.post("/api/answer", json={"item_id": item, "value": 0}).json()
                    stored += reply["stored"]
                    item = reply["next_item_id"]
        assert stored == 40
        os.kill(parent.pid, signal.SIGKILL)  # only the parent: its workers notice and exit
        parent.wait(timeout=30)
        deadline = time.monotonic() + 30
        while _group(parent.pid):
            assert time.monotonic() < deadline, "workers outlived their parent"
            time.sleep(0.2)
    finally:
        for pid in _group(parent.pid):
            os.kill(pid, signal.SIGKILL)
        sock.close()
    with Database(db_path).read() as s:
        assert s.scalar(select(func.count()).select_from(Answer)) == 40


def _healthy(base: str) -> bool:
    try:
        return httpx.get(f"{base}/healthz", timeout=5).status_code == 200
    except httpx.TransportError:
        return False
