"""Image files <-> tensors. The library's convention is float32 NCHW RGB in [0, 1]; this is the edge.

Grayscale is expanded to three channels; an alpha channel is dropped with a warning.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.util
import os
import threading
import warnings
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, cast

import numpy as np
from PIL import Image, UnidentifiedImageError

from semsim.common.io import atomic_write
from semsim.errors import SemsimError

if TYPE_CHECKING:  # reading images to arrays needs no torch; the tensor edge imports it when used
    import torch

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


def read_array(path: str | os.PathLike) -> np.ndarray:
    """Decode an image file to a uint8 HxWx3 RGB array."""
    path = Path(path)
    try:
        with Image.open(path) as img:
            if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
                warnings.warn(f"{path}: alpha channel dropped", stacklevel=3)
            if img.mode != "RGB":
                img = img.convert("RGB")
            arr = np.asarray(img, dtype=np.uint8)
    except FileNotFoundError:
        raise SemsimError(f"{path}: no such image file; check the path or the manifest row") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise SemsimError(
            f"{path}: not a readable image ({exc}); replace or remove the file"
        ) from None
    return arr


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(width, height) of an image file from its header: PNG's IHDR is read directly, other formats by PIL.

    Raises ``FileNotFoundError`` or ``OSError`` (PIL's ``UnidentifiedImageError``) for unusable files.
    """
    fd = os.open(path, os.O_RDONLY)  # unbuffered: only 24 bytes are needed
    try:
        head = os.read(fd, 24)
    finally:
        os.close(fd)
    if head[:8] == _PNG_SIGNATURE and head[12:16] == b"IHDR":
        width, height = int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
        if width > 0 and height > 0:
            return width, height
    with Image.open(path) as img:
        return img.size


def to_tensor(arrays: np.ndarray | Sequence[np.ndarray]) -> torch.Tensor:
    """uint8 HxWx3 array(s) -> float32 (N)CHW tensor in [0, 1]."""
    import torch

    stacked = np.stack(arrays) if not isinstance(arrays, np.ndarray) else arrays
    t = torch.from_numpy(np.ascontiguousarray(stacked))
    t = t.permute(0, 3, 1, 2) if t.ndim == 4 else t.permute(2, 0, 1)
    return t.float().div_(255.0)


def load_image(path: str | os.PathLike) -> torch.Tensor:
    """Load one image as a float32 CHW tensor in [0, 1]."""
    return to_tensor(read_array(path))


def read_arrays(paths: Sequence[str | os.PathLike], workers: int | None = None) -> list[np.ndarray]:
    """Decode many files in parallel threads (PIL releases the GIL while decoding)."""
    workers = workers or min(8, os.cpu_count() or 1)
    if workers <= 1 or len(paths) < 16:
        return [read_array(p) for p in paths]
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(read_array, paths, chunksize=max(1, len(paths) // (4 * workers))))


def _read_all(paths: Sequence[str | os.PathLike]) -> np.ndarray | list[np.ndarray]:
    """Decode in a worker process; same-sized images travel back as one array (one pickle, not hundreds)."""
    arrays = [read_array(p) for p in paths]
    return np.stack(arrays) if len({a.shape for a in arrays}) == 1 else arrays


_WORKERS: dict[int, tuple[int, ProcessPoolExecutor]] = {}  # workers -> (owning pid, pool), kept for reuse
_WORKERS_LOCK = threading.Lock()


def _worker_pool(workers: int) -> ProcessPoolExecutor:
    """A forked pool of ``workers`` processes, started on first use and reused by later calls of this process.

    Forking a process that has torch loaded costs tens of milliseconds, as much as decoding a few hundred
    small images, so the workers are kept (idle, until the program exits) rather than started per call.
    """
    with _WORKERS_LOCK:
        pid, pool = _WORKERS.get(workers, (None, None))
        stopped = pool is None or getattr(pool, "_broken", False) or getattr(pool, "_shutdown_thread", False)
        if stopped or pid != os.getpid():
            pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"))
            pool.submit(int).result()  # fork the workers now, from the calling thread
            # stopped at exit, also in a multiprocessing child, which would otherwise wait for them forever
            multiprocessing.util.Finalize(pool, pool.shutdown, exitpriority=10)
            _WORKERS[workers] = (os.getpid(), pool)
        return cast(ProcessPoolExecutor, pool)


class DecodePool:
    """Decode image files on ``workers`` CPU cores, e.g. while the caller scores the previous batch.

    PIL spends most of its time on a small image in Python, holding the GIL, so decoding threads barely
    overlap; forked worker processes do. Without ``fork`` (or with ``processes=False``) threads are used.
    Create the pool in the main thread (the workers are forked there, on first use) and close it, or use
    ``with``; the worker processes are shared by every pool of this program and kept for the next one.
    """

    def __init__(self, workers: int = 2, processes: bool = True) -> None:
        self.workers = workers
        self._procs: ProcessPoolExecutor | None = None
        if processes and workers > 1 and "fork" in multiprocessing.get_all_start_methods():
            self._procs = _worker_pool(workers)

    def read(self, paths: Sequence[str | os.PathLike]) -> list[np.ndarray]:
        """Decode ``paths`` (uint8 HxWx3 arrays, in order); errors as in :func:`read_array`."""
        paths = list(paths)
        if self._procs is None or len(paths) < 4 * self.workers:
            return read_arrays(paths, self.workers)
        size = -(-len(paths) // self.workers)
        parts = self._procs.map(_read_all, [paths[i:i + size] for i in range(0, len(paths), size)])
        return [arr for part in parts for arr in part]

    def close(self) -> None:
        """Let go of the worker processes (they stay up for the next pool, and stop when the program exits)."""
        self._procs = None

    def __enter__(self) -> DecodePool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def load_images(paths: Sequence[str | os.PathLike], workers: int | None = None) -> torch.Tensor:
    """Load same-sized images as one float32 NCHW tensor in [0, 1]."""
    arrays = read_arrays(paths, workers)
    first = arrays[0].shape if arrays else ()
    for path, arr in zip(paths, arrays, strict=True):
        if arr.shape != first:
            raise SemsimError(
                f"{path}: size {arr.shape[1]}x{arr.shape[0]} differs from {first[1]}x{first[0]} of "
                f"{paths[0]}; "
                "bring the images to one size"
            )
    return to_tensor(arrays)


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """float CHW tensor in [0, 1] -> uint8 HxWx3 array (values are clamped, then rounded)."""
    import torch

    if image.ndim != 3:
        raise ValueError(f"expected a CHW image, got shape {tuple(image.shape)}")
    arr = image.detach().float().clamp(0, 1).mul(255).round().to(torch.uint8)
    if arr.shape[0] == 1:
        arr = arr.expand(3, -1, -1)
    return arr.permute(1, 2, 0).cpu().numpy()


def save_image(image: torch.Tensor, path: str | os.PathLike) -> Path:
    """Save a CHW [0, 1] tensor as an image file (format from the suffix), atomically."""
    path = Path(path)
    fmt = Image.registered_extensions().get(path.suffix.lower())
    if fmt is None:
        raise SemsimError(f"{path}: unknown image format; use .png")
    with atomic_write(path) as tmp:
        Image.fromarray(to_uint8(image)).save(tmp, format=fmt)
    return path
