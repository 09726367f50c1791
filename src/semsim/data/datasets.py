"""Labelled image datasets without torchvision: CIFAR-10/100 pickle folders, image folders, MNIST IDX files.

A dataset is held in memory as compact uint8 NCHW RGB (:class:`ImageDataset`); :meth:`ImageDataset.floats`
is the edge to the library's float32 [0, 1] convention. Three on-disk layouts are understood by
:func:`load_dataset`:

* **CIFAR-10 / CIFAR-100 python folders** as distributed (``data_batch_1..5``, ``test_batch``,
  ``batches.meta`` / ``train``, ``test``, ``meta``). These files are pickles. They are read with
  :class:`RestrictedUnpickler`, which resolves only the handful of numpy names that rebuild a plain numeric
  array (``ndarray``, its ``_reconstruct`` helper and ``dtype``, object dtypes refused) and refuses every
  other global, so a crafted file cannot run code (``os.system`` and the like) while being read.
* **Image folders** with one sub-folder per class (``root/<class>/<image>``, classes sorted by name). A flat
  folder of images without class sub-folders loads as an *unlabelled* dataset: ``classes == []`` and every
  label is ``-1`` (``ImageDataset.labelled`` is False); model-based recognition then has nothing to check,
  while attacks and pixel metrics still work. A root holding only one sub-folder, which in turn holds the
  class folders (e.g. ``caltech101_subset/101_ObjectCategories``), is descended into.
* **MNIST IDX files** (``*-images-idx3-ubyte`` and ``*-labels-idx1-ubyte``, gzipped or raw); the grayscale
  digits are expanded to three channels.

``image_size`` brings every image to ``image_size x image_size``: ``fit="resize"`` crops the centred square
and resamples it (bilinear, antialiased); ``fit="pad"`` pads smaller images with black around the centre
(MNIST 28 -> 32, as in DLG). Without ``image_size`` the images must already share one size.
"""

from __future__ import annotations

import gzip
import os
import pickle
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image

from semsim.data.bundled import load_bundled
from semsim.data.image_dataset import ImageDataset
from semsim.data.images import IMAGE_SUFFIXES, read_arrays
from semsim.errors import SemsimError

Fit = Literal["resize", "pad"]

CIFAR10_FILES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
CIFAR100_FILES = {"train": ["train"], "test": ["test"]}


# --------------------------------------------------------------------------------------------------- CIFAR
_ARRAY_RECONSTRUCT = np.ndarray((0,)).__reduce__()[0]  # numpy's own ndarray rebuild function


def _numeric_dtype(*args: Any) -> np.dtype:
    dtype = np.dtype(*args)
    if dtype.hasobject:
        raise pickle.UnpicklingError("object arrays are refused (they can hold arbitrary Python objects)")
    return dtype


def _latin1_bytes(text: str, encoding: str = "latin1") -> bytes:
    """``_codecs.encode(text, "latin1")``, how Python 3 stores bytes at pickle protocol 2; no other codec."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"_codecs.encode is allowed only for latin1 text, not {encoding!r}")
    return text.encode("latin1")


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler for data-only pickles (the CIFAR python folders): plain containers and numeric arrays.

    ``find_class`` is the only way a pickle reaches code; here it resolves exactly numpy's array
    reconstruction (``numpy.core.multiarray._reconstruct`` / ``numpy._core.multiarray._reconstruct``),
    ``numpy.ndarray`` and ``numpy.dtype`` (numeric dtypes only), plus ``_codecs.encode`` restricted to
    latin1 text (files re-pickled by Python 3 at protocol 2 store bytes that way), and raises for any
    other name.
    """

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): _ARRAY_RECONSTRUCT,
        ("numpy._core.multiarray", "_reconstruct"): _ARRAY_RECONSTRUCT,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): _numeric_dtype,
        ("_codecs", "encode"): _latin1_bytes,
    }

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self.ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"global '{module}.{name}' is not allowed in a data file") from None


def restricted_load(path: str | os.PathLike) -> Any:
    """Read a data-only pickle file with :class:`RestrictedUnpickler` (byte strings kept as ``bytes``)."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            return RestrictedUnpickler(fh, encoding="bytes").load()
    except FileNotFoundError:
        raise SemsimError(f"{path}: no such file; the CIFAR folder is incomplete") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError,
            struct.error) as exc:
        raise SemsimError(f"{path}: refused or unreadable as a CIFAR data file ({exc}); "
                          "use the original python-version CIFAR files") from None


def _str_keys(obj: Any, path: Path) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise SemsimError(f"{path}: holds a {type(obj).__name__}, not a dict; not a CIFAR python file")
    return {(k.decode() if isinstance(k, bytes) else str(k)): v for k, v in obj.items()}


def _names(values: Sequence[Any]) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in values]


def _read_cifar_batch(path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    batch = _str_keys(restricted_load(path), path)
    if "data" not in batch or label_key not in batch:
        raise SemsimError(f"{path}: needs the keys 'data' and '{label_key}'; not a CIFAR python batch "
                          "of this kind")
    data = np.asarray(batch["data"])
    labels = np.asarray(batch[label_key], dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(data) != len(labels):
        raise SemsimError(f"{path}: 'data' must be uint8 of shape (N, 3072) with one label per row, got "
                          f"{data.dtype} {data.shape} and {len(labels)} labels")
    return data.reshape(-1, 3, 32, 32), labels


def _is_cifar(folder: Path) -> str | None:
    if (folder / "batches.meta").is_file():
        return "cifar10"
    if (folder / "meta").is_file() and ((folder / "train").is_file() or (folder / "test").is_file()):
        return "cifar100"
    return None


def _pick_split(folder: Path, files: dict[str, list[str]], split: str | None) -> str:
    present = [s for s, names in files.items() if all((folder / n).is_file() for n in names)]
    if split is None:
        if not present:
            raise SemsimError(f"{folder}: neither the train nor the test files are complete; "
                              f"expected {files['train']} or {files['test']}")
        return "train" if "train" in present else present[0]
    if split not in files:
        raise SemsimError(f"split '{split}': unknown; use train or test")
    if split not in present:
        missing = [n for n in files[split] if not (folder / n).is_file()]
        raise SemsimError(f"{folder}: the {split} split is missing {', '.join(missing)}; "
                          "give the complete CIFAR python folder")
    return split


def load_cifar(folder: str | os.PathLike, split: str | None = None) -> ImageDataset:
    """A CIFAR-10 or CIFAR-100 python folder (fine labels for CIFAR-100); ``split`` is train or test."""
    folder = Path(folder)
    kind = _is_cifar(folder)
    if kind is None:
        raise SemsimError(f"{folder}: not a CIFAR python folder (no batches.meta or meta file)")
    files = CIFAR10_FILES if kind == "cifar10" else CIFAR100_FILES
    split = _pick_split(folder, files, split)
    meta_path = folder / ("batches.meta" if kind == "cifar10" else "meta")
    meta = _str_keys(restricted_load(meta_path), meta_path)
    names_key = "label_names" if kind == "cifar10" else "fine_label_names"
    if names_key not in meta:
        raise SemsimError(f"{meta_path}: no '{names_key}' entry; not a {kind} meta file")
    classes = _names(meta[names_key])
    label_key = "labels" if kind == "cifar10" else "fine_labels"
    parts = [_read_cifar_batch(folder / n, label_key) for n in files[split]]
    images = torch.from_numpy(np.concatenate([p[0] for p in parts]))
    labels = torch.from_numpy(np.concatenate([p[1] for p in parts]))
    bad = (labels < 0) | (labels >= len(classes))
    if bool(bad.any()):
        raise SemsimError(f"{folder}: label {int(labels[bad][0])} outside the {len(classes)} classes of "
                          f"{meta_path.name}")
    return ImageDataset(images, labels, classes, kind,
                        {"source": str(folder), "format": kind, "split": split})


# --------------------------------------------------------------------------------------------------- MNIST
def _read_idx(path: Path) -> np.ndarray:
    """An IDX file (LeCun's MNIST format: 0, 0, dtype code, ndim, big-endian dims, data), gzipped or raw."""
    with open(path, "rb") as fh:
        raw = fh.read()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise SemsimError(f"{path}: damaged gzip file ({exc}); download it again") from None
    if len(raw) < 4 or raw[:2] != b"\x00\x00" or raw[2] != 0x08:
        raise SemsimError(f"{path}: not an unsigned-byte IDX file (bad magic number)")
    ndim = raw[3]
    dims = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    offset = 4 + 4 * ndim
    count = int(np.prod(dims)) if dims else 0
    if len(raw) - offset != count:
        raise SemsimError(f"{path}: {len(raw) - offset} data bytes for dimensions {dims}; "
                          "the file is truncated")
    return np.frombuffer(raw, dtype=np.uint8, offset=offset).reshape(dims)


def _mnist_files(folder: Path) -> dict[str, tuple[Path, Path]]:
    found: dict[str, dict[str, Path]] = {}
    for path in sorted(folder.iterdir()):
        name = path.name.lower()
        for kind in ("images-idx3-ubyte", "labels-idx1-ubyte"):
            if kind in name and (name.endswith(kind) or name.endswith(kind + ".gz")):
                prefix = name.split(kind)[0].rstrip("-_.")
                split = "test" if prefix in ("t10k", "test") else prefix or "train"
                found.setdefault(split, {})[kind.split("-")[0]] = path
    return {s: (f["images"], f["labels"]) for s, f in found.items() if "images" in f and "labels" in f}


def load_mnist(folder: str | os.PathLike, split: str | None = None) -> ImageDataset:
    """An MNIST-style folder of IDX files (``train-*`` / ``t10k-*``); digits become 3-channel images."""
    folder = Path(folder)
    splits = _mnist_files(folder)
    if not splits:
        raise SemsimError(f"{folder}: no pair of *-images-idx3-ubyte[.gz] and *-labels-idx1-ubyte[.gz] files")
    if split is None:
        split = "train" if "train" in splits else sorted(splits)[0]
    if split not in splits:
        raise SemsimError(f"{folder}: no {split} split; found {', '.join(sorted(splits))}")
    image_path, label_path = splits[split]
    images, labels = _read_idx(image_path), _read_idx(label_path)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise SemsimError(f"{image_path}: {images.shape} images do not match {labels.shape} labels in "
                          f"{label_path.name}")
    classes = [str(i) for i in range(int(labels.max()) + 1 if len(labels) else 0)]
    gray = torch.from_numpy(images.copy()).unsqueeze(1)
    return ImageDataset(gray.expand(-1, 3, -1, -1).contiguous(), torch.from_numpy(labels.astype(np.int64)),
                        classes, "mnist", {"source": str(folder), "format": "mnist", "split": split})


# ------------------------------------------------------------------------------------------- image folders
def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES)


def _subfolders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _fit_array(arr: np.ndarray, size: int, fit: Fit, path: Path) -> np.ndarray:
    h, w = arr.shape[:2]
    if (h, w) == (size, size):
        return arr
    if fit == "pad":
        if h > size or w > size:
            raise SemsimError(f"{path}: {w}x{h} is larger than {size}x{size}; use fit='resize' to shrink")
        out = np.zeros((size, size, 3), dtype=np.uint8)
        top, left = (size - h) // 2, (size - w) // 2
        out[top:top + h, left:left + w] = arr
        return out
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    square = Image.fromarray(np.ascontiguousarray(arr[top:top + side, left:left + side]))
    resized = square.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=None)
    return np.asarray(resized, dtype=np.uint8)


def _stack_arrays(arrays: list[np.ndarray], paths: Sequence[Path], image_size: int | None,
                  fit: Fit) -> torch.Tensor:
    if image_size is not None:
        arrays = [_fit_array(a, image_size, fit, p) for a, p in zip(arrays, paths, strict=True)]
    else:
        for a, p in zip(arrays, paths, strict=True):
            if a.shape != arrays[0].shape:
                raise SemsimError(f"{p}: size {a.shape[1]}x{a.shape[0]} differs from "
                                  f"{arrays[0].shape[1]}x{arrays[0].shape[0]} of {paths[0]}; "
                                  "give an image size (--image-size) to bring them to one size")
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def load_image_folder(folder: str | os.PathLike, image_size: int | None = None,
                      fit: Fit = "resize") -> ImageDataset:
    """Images under ``folder/<class>/`` (labelled) or directly in ``folder`` (unlabelled, labels -1)."""
    folder = Path(folder)
    loose, subs = _images_in(folder), _subfolders(folder)
    while not loose and len(subs) == 1 and not _images_in(subs[0]) and _subfolders(subs[0]):
        folder = subs[0]
        loose, subs = _images_in(folder), _subfolders(folder)
    class_dirs = [d for d in subs if _images_in(d)]
    if loose and class_dirs:
        raise SemsimError(f"{folder}: holds both loose images ({loose[0].name}) and class folders "
                          f"({class_dirs[0].name}/); keep one layout")
    if class_dirs:
        classes = [d.name for d in class_dirs]
        paths, labels = [], []
        for label, d in enumerate(class_dirs):
            files = _images_in(d)
            paths += files
            labels += [label] * len(files)
        info: dict[str, Any] = {"source": str(folder), "format": "image-folder"}
    elif loose:
        classes, paths, labels = [], loose, [-1] * len(loose)
        info = {"source": str(folder), "format": "image-folder", "unlabelled": True}
    else:
        raise SemsimError(f"{folder}: no images found (neither in the folder nor in class sub-folders)")
    images = _stack_arrays(read_arrays(paths), paths, image_size, fit)
    info["files"] = [str(p.relative_to(folder)) for p in paths]
    return ImageDataset(images, torch.tensor(labels, dtype=torch.int64), classes, folder.name, info)


def _resize_tensor(ds: ImageDataset, image_size: int, fit: Fit) -> ImageDataset:
    if ds.images.shape[2:] == (image_size, image_size):
        return ds
    source = Path(ds.info.get("source", ds.name))
    arrays = [_fit_array(a, image_size, fit, source) for a in ds.images.permute(0, 2, 3, 1).numpy()]
    images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    return ImageDataset(images, ds.labels, ds.classes, ds.name, ds.info)


# -------------------------------------------------------------------------------------------------- public
def load_dataset(spec: str | os.PathLike, image_size: int | None = None, split: str | None = None,
                 fit: Fit = "resize") -> ImageDataset:
    """Load a CIFAR-10/100 python folder, an MNIST IDX folder, an image folder (see the module doc), or a
    dataset bundled with the dependencies as ``bundled:<name>`` (:mod:`semsim.data.bundled`).

    ``split`` (train/test) applies to CIFAR and MNIST; ``None`` takes train when present, else test.
    """
    if str(spec).startswith("bundled:"):
        if split is not None:
            raise SemsimError(f"{spec}: a bundled dataset has no {split} split; leave the split out")
        return load_bundled(str(spec).removeprefix("bundled:"), image_size=image_size or 32)
    folder = Path(spec)
    if not folder.is_dir():
        raise SemsimError(f"{folder}: no such folder; give a CIFAR python folder, an MNIST folder or an "
                          "image folder")
    if fit not in ("resize", "pad"):
        raise SemsimError(f"fit '{fit}': unknown; use resize or pad")
    if image_size is not None and image_size < 1:
        raise SemsimError(f"image size {image_size}: must be a positive number of pixels")
    if _is_cifar(folder):
        ds = load_cifar(folder, split)
    elif _mnist_files(folder):
        ds = load_mnist(folder, split)
    else:
        if split is not None:
            raise SemsimError(f"{folder}: an image folder has no {split} split; leave the split out")
        return load_image_folder(folder, image_size, fit)
    return ds if image_size is None else _resize_tensor(ds, image_size, fit)


def subset(ds: ImageDataset, n: int | None = None, per_class: int | None = None,
           seed: int = 0) -> tuple[ImageDataset, list[int]]:
    """A deterministic subset: ``n`` images, or ``per_class`` images of every class, drawn by ``seed``.

    The images are the first ones of a seeded random permutation (so a smaller ``n`` with the same seed
    picks a subset of a larger one). With neither ``n`` nor ``per_class`` the whole dataset is returned.

    Returns ``(subset, indices)``: the chosen images as a new :class:`ImageDataset` (same classes and name),
    and their positions in ``ds``, sorted ascending (``subset[i]`` is ``ds[indices[i]]``), e.g. to record
    which dataset images were attacked.
    """
    if n is not None and per_class is not None:
        raise SemsimError("give either n or per_class, not both")
    total = len(ds)
    order = torch.randperm(total, generator=torch.Generator().manual_seed(int(seed)))
    if n is not None:
        if not 0 < n <= total:
            raise SemsimError(f"n={n}: must be between 1 and the dataset's {total} images")
        chosen = order[:n]
    elif per_class is not None:
        if not ds.labelled:
            raise SemsimError(f"{ds.name}: has no class labels, so per_class cannot be used; give n instead")
        if per_class < 1:
            raise SemsimError(f"per_class={per_class}: must be at least 1")
        picks = []
        labels = ds.labels[order]
        for c in range(ds.num_classes):
            members = order[labels == c]
            if len(members) < per_class:
                raise SemsimError(f"{ds.name}: class '{ds.classes[c]}' has {len(members)} images, fewer than "
                                  f"per_class={per_class}")
            picks.append(members[:per_class])
        chosen = torch.cat(picks)
    else:
        chosen = torch.arange(total)
    indices = sorted(int(i) for i in chosen)
    return ds.take(indices), indices


def train_val_split(ds: ImageDataset, val_fraction: float,
                    seed: int = 0) -> tuple[ImageDataset, ImageDataset, list[int], list[int]]:
    """Split into (train, val, train_indices, val_indices), stratified by class, deterministic by ``seed``.

    Each class contributes ``round(val_fraction * class_size)`` images to the validation part.
    """
    if not 0 < val_fraction < 1:
        raise SemsimError(f"validation fraction {val_fraction}: must be between 0 and 1")
    if not ds.labelled:
        raise SemsimError(f"{ds.name}: has no class labels; a held-out split needs a labelled dataset")
    order = torch.randperm(len(ds), generator=torch.Generator().manual_seed(int(seed)))
    labels = ds.labels[order]
    val = torch.cat([order[labels == c][: round(val_fraction * int((labels == c).sum()))]
                     for c in range(ds.num_classes)])
    is_val = torch.zeros(len(ds), dtype=torch.bool)
    is_val[val] = True
    train_idx = torch.nonzero(~is_val).flatten().tolist()
    val_idx = torch.nonzero(is_val).flatten().tolist()
    if not train_idx or not val_idx:
        raise SemsimError(f"{ds.name}: {len(ds)} images are too few for a {val_fraction:g} validation split")
    return (ds.take(train_idx, f"{ds.name}-train"), ds.take(val_idx, f"{ds.name}-val"), train_idx, val_idx)


def channel_stats(ds: ImageDataset) -> tuple[list[float], list[float]]:
    """Per-channel mean and standard deviation of the images in [0, 1] (for a model's normalisation)."""
    x = ds.images.double().div(255.0)
    return x.mean(dim=(0, 2, 3)).tolist(), x.std(dim=(0, 2, 3)).clamp_min(1e-3).tolist()


__all__ = ["ImageDataset", "RestrictedUnpickler", "channel_stats", "load_cifar", "load_dataset",
           "load_image_folder", "load_mnist", "restricted_load", "subset", "train_val_split"]
