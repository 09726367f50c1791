"""Checks made before long work starts: the torch device exists here, the output can be written.

Each failure is a :class:`SemsimError` naming the value and what to do instead, so a typo costs seconds, not
the hours of an attack or training run that would fail only when it tries to save.
"""

from __future__ import annotations

import errno
import os
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path

from semsim.errors import SemsimError

_DEVICE = re.compile(r"^(cpu|mps|cuda)(:(\d+))?$")
_ALIASES = {"gpu": "cuda", "nvidia": "cuda", "cuda0": "cuda:0", "metal": "mps"}


def check_device(name: str, option: str = "--device") -> str:
    """Return ``name`` (stripped, lower case) if torch can compute on that device here.

    Raises :class:`SemsimError` for a name torch does not know (``gpu`` -> use ``cuda``), for ``cuda`` on a
    machine or torch build without a usable CUDA GPU, for ``cuda:N`` beyond the GPUs present, and for ``mps``
    where Apple's Metal backend is absent. ``option`` is how the user gave it (``--device``, a grid file's
    ``device:``), for the message.
    """
    value = str(name).strip().lower()
    m = _DEVICE.match(value)
    if m is None:
        hint = f"; did you mean {_ALIASES[value]}?" if value in _ALIASES else ""
        raise SemsimError(f"{option} {name}: not a torch device; use cpu, cuda, cuda:N or mps{hint}")
    kind, index = m[1], m[3]
    if kind == "cpu":
        return value
    import torch

    if kind == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise SemsimError(f"{option} {name}: Apple's Metal (mps) backend is not available here; use "
                              f"{option} cpu")
        return value
    if not torch.cuda.is_available():
        build = f"torch {torch.__version__} built without CUDA" if torch.version.cuda is None else (
            f"torch {torch.__version__} (CUDA {torch.version.cuda}) finds no usable GPU")
        raise SemsimError(f"{option} {name}: no CUDA GPU here ({build}); use {option} cpu, or install a "
                          "CUDA build of torch on a machine with an NVIDIA GPU")
    count = torch.cuda.device_count()
    if index is not None and int(index) >= count:
        raise SemsimError(f"{option} {name}: this machine has {count} CUDA GPU(s) (cuda:0..cuda:{count - 1}); "
                          "pick one of those")
    return value


def check_writable(path: str | os.PathLike, suffixes: Sequence[str] | None = None, *, folder: bool = False,
                   what: str = "--out") -> Path:
    """Check that ``path`` can be written: a known format (``suffixes``, for files) and a writable folder.

    ``folder=True`` means ``path`` is an output folder (it may exist; it must not be a file). Nothing is
    left behind: a nameless temporary file in the nearest existing parent proves it can be written.
    """
    path = Path(path)
    if suffixes is not None and not folder and path.suffix.lower() not in suffixes:
        known = ", ".join(suffixes)
        raise SemsimError(f"{what} {path}: unknown output format '{path.suffix or '(none)'}'; use a file name "
                          f"ending in {known}")
    if folder and path.is_file():
        raise SemsimError(f"{what} {path}: is a file, but a folder is written here; give a folder name")
    if not folder and path.is_dir():
        raise SemsimError(f"{what} {path}: is a folder, but a file is written here; give a file name")
    target = path if folder and path.is_dir() else path.parent
    parent = target
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise SemsimError(f"{what} {path}: {parent} is a file, not a folder; choose another location")
    try:  # a real write: permissions, read-only file systems and quotas all show
        with tempfile.TemporaryFile(dir=parent):
            pass
    except OSError as exc:  # ENOENT from an existing folder: a pseudo file system that holds no files
        why = "no files can be created there" if exc.errno == errno.ENOENT else exc.strerror or str(exc)
        raise SemsimError(f"{what} {path}: cannot write into {parent.resolve()} ({why}); choose a folder you may "
                          "write to") from None
    return path
