"""Fixtures only (helpers live in tests/helpers.py): the real data in ../shared/data (tests skip with a reason when
it is absent)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from helpers import SHARED_DATA

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
os.environ.setdefault("SEMSIM_OFFLINE", "1")  # tests never fetch weights; tests/test_weights_download.py turns it off


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The project's real data folder; skips the test when it is not there."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is absent (set SEMSIM_SHARED_DATA to its path)")
    return SHARED_DATA.resolve()


@pytest.fixture
def one_thread():
    """One torch thread for tiny problems: avoids OpenMP oversubscription on a shared 2-core CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
