"""Helpers shared by the annotation tests: tiny reconstruction sets and a logged-in test client."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from fastapi.testclient import TestClient
from PIL import Image

from semsim.annotation import add_annotator, init_project
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
