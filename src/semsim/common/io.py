"""Atomic file output and table I/O (CSV or Parquet, chosen by suffix).

Everything the toolkit writes goes through :func:`atomic_write`: the data lands in a temporary file in the
destination folder and is renamed into place, so an interrupted run never leaves a half-written file.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd

from semsim.errors import SemsimError

TABLE_SUFFIXES = (".csv", ".parquet", ".pq")
KEY_COLUMNS = ("set", "image_id")  # join keys: always strings (a CSV id "0001" must not become 1)
_UMASK = os.umask(0)
os.umask(_UMASK)


def normal_permissions(path: Path) -> None:
    """Give ``path`` the permissions ``open()`` / ``mkdir`` would (0666 / 0777 less the umask).

    Temporary files and folders (``mkstemp``, ``mkdtemp``, safetensors' writer) are private (0600 / 0700);
    results renamed from them into place should be as readable as any other file the user writes.
    """
    os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~_UMASK)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        normal_permissions(tmp_path)  # after the block: writers such as safetensors replace the file
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def replace_folder(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Put the finished folder ``src`` in the place of ``dst``, replacing a folder already there.

    Readers see the old folder or the new one, never a mix (two renames; the old one is then deleted).
    """
    src, dst = Path(src), Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    old = None
    if dst.exists():
        old = dst.parent / f".{dst.name}.old-{uuid.uuid4().hex[:8]}"  # unique: publishers may race
        os.replace(dst, old)
    os.replace(src, dst)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return dst


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder next to ``path``; if the block succeeds it replaces ``path`` whole
    (:func:`replace_folder`); if it fails, ``path`` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        yield tmp
        for entry in (tmp, *tmp.rglob("*")):
            normal_permissions(entry)  # mkdtemp creates 0700, safetensors writes 0600
        replace_folder(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _table_format(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return "csv"
    if suffix in (".parquet", ".pq"):
        return "parquet"
    raise SemsimError(f"{path}: unknown table format '{suffix}'; use a .csv or .parquet file name")


def write_table(df: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write ``df`` atomically as CSV or Parquet (by the suffix of ``path``)."""
    path = Path(path)
    fmt = _table_format(path)
    with atomic_write(path) as tmp:
        if fmt == "csv":
            df.to_csv(tmp, index=False)
        else:
            df.to_parquet(tmp, index=False)
    return path


def read_table(path: str | os.PathLike, required: tuple[str, ...] = ()) -> pd.DataFrame:
    """Read a CSV or Parquet table and check that ``required`` columns are present."""
    path = Path(path)
    if not path.is_file():
        raise SemsimError(f"{path}: no such file; give the path of a .csv or .parquet table")
    fmt = _table_format(path)
    try:
        df = pd.read_csv(path, dtype=dict.fromkeys(KEY_COLUMNS, str)) if fmt == "csv" else pd.read_parquet(path)
    except Exception as exc:  # pandas raises many types for malformed files
        raise SemsimError(f"{path}: cannot be read as {fmt} ({exc.__class__.__name__}: {exc})") from None
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise SemsimError(
            f"{path}: missing column(s) {', '.join(missing)}; the table needs {', '.join(required)}"
        )
    return df


def write_json(obj: Any, path: str | os.PathLike) -> Path:
    """Write ``obj`` as indented JSON, atomically."""
    path = Path(path)
    with atomic_write(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")
    return path
