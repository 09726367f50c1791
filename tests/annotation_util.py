"""Helpers shared by the annotation tests: tiny reconstruction sets, a logged-in test client, servers on held
sockets (a thread, or a child process that can be killed and restarted on the same port)."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import uvicorn
from fastapi.testclient import TestClient
from PIL import Image

from semsim.annotation import add_annotator, init_project
from semsim.annotation.app import create_app
from semsim.annotation.db import Database

CLASSES = ["cat", "dog", "car"]


def make_set(folder: Path, n: int, seed: int = 0, size: int = 8, n_classes: int = 3) -> Path:
    """A SemSim-layout folder of ``n`` random (original, reconstruction) pairs named ``{i}_{label}_*.png``."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        label = i % n_classes
        for kind in ("ori", "rec"):
            pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"{i}_{label}_{kind}.png")
    return folder


def make_project(tmp: Path, n_items: int = 12, per_item: int = 2, annotators: int = 3, task: str = "class",
                 gold: int = 0) -> tuple[Database, dict[str, str]]:
    """An annotation database with one set, ``annotators`` annotators and an admin; returns their tokens."""
    sets = [make_set(tmp / "setA", n_items)]
    gold_sets = [make_set(tmp / "gold", gold, seed=99)] if gold else []
    init_project(tmp / "ann.sqlite", sets, per_item=per_item, task=task, study="test",
                 classes=CLASSES if task == "class" else None, gold=gold_sets, seed=1)
    db = Database(tmp / "ann.sqlite")
    tokens = {f"a{k}": add_annotator(db, f"a{k}") for k in range(annotators)}
    tokens["admin"] = add_annotator(db, "admin", admin=True)
    return db, tokens


def login(client: TestClient, token: str) -> str:
    """Open the secret link in ``client``; return the CSRF token of the session (read off the task page)."""
    response = client.get(f"/start/{token}")
    assert response.status_code == 200, response.text
    return csrf_of(response.text)


def csrf_of(html: str) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', html)
    assert match, "no CSRF field on the page"
    return match.group(1)


def item_of(html: str) -> int:
    match = re.search(r'name="item_id" value="(\d+)"', html)
    assert match, "no item on the page"
    return int(match.group(1))


def held_socket() -> socket.socket:
    """A listening loopback socket on a free port, held by the test (no bind-then-close race); inheritable so
    a server process can serve on it, and a restarted one on the same port."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(256)
    sock.set_inheritable(True)
    return sock


class Server:
    """The app under uvicorn in a background thread, on a held loopback socket."""

    def __init__(self, db: Database, **options: object):
        self.sock = held_socket()
        self.port = self.sock.getsockname()[1]
        self.app = create_app(db.url, **options)
        self.server = uvicorn.Server(uvicorn.Config(self.app, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "server did not start"
            time.sleep(0.05)
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()


def server_process(db_path: Path, sock: socket.socket) -> subprocess.Popen:
    """``serve`` in a child process on the held socket ``sock``; returns once /healthz answers."""
    code = "import sys; from semsim.annotation.app import serve; serve(sys.argv[1], fd=int(sys.argv[2]))"
    proc = subprocess.Popen([sys.executable, "-c", code, str(db_path), str(sock.fileno())],
                            pass_fds=(sock.fileno(),), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    port = sock.getsockname()[1]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited: {proc.stderr.read().decode()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200:
                return proc
        except httpx.TransportError:
            time.sleep(0.2)
    proc.kill()
    raise AssertionError("server did not start within 60 s")
