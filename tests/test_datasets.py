"""Dataset loaders (CIFAR pickles, image folders, MNIST IDX), the restricted unpickler, subsets and splits."""

from __future__ import annotations

import gzip
import io
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import shared_path
from semsim.data.datasets import (
    ImageDataset,
    RestrictedUnpickler,
    channel_stats,
    load_dataset,
    restricted_load,
    subset,
    train_val_split,
)
from semsim.errors import SemsimError


# ----------------------------------------------------------------------------------------- CIFAR pickles
class _Py2Pickler(pickle._Pickler):
    """Writes ``bytes`` as Python 2 ``str`` (BINSTRING opcodes), as in the distributed CIFAR files."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_py2_str(self, obj: bytes) -> None:
        n = len(obj)
        if n < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([n]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", n) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str


def _legacy_pickle(obj: object) -> bytes:
    """Pickle as the distributed CIFAR files are: Python 2 protocol 2, numpy.core.multiarray names."""
    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump(obj)
    return buf.getvalue().replace(b"numpy._core.multiarray", b"numpy.core.multiarray")


def _cifar_rows(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, 3072), dtype=np.uint8)


@pytest.fixture()
def cifar10_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for i in range(1, 6):
        rows = _cifar_rows(4, i)
        batch = {b"batch_label": f"training batch {i} of 5".encode(), b"labels": [i % 10, 1, 2, 3],
                 b"data": rows, b"filenames": [f"img_{i}_{k}.png".encode() for k in range(4)]}
        (folder / f"data_batch_{i}").write_bytes(_legacy_pickle(batch))
    test = {b"batch_label": b"testing batch 1 of 1", b"labels": [9, 8, 7], b"data": _cifar_rows(3, 99),
            b"filenames": [b"a.png", b"b.png", b"c.png"]}
    (folder / "test_batch").write_bytes(_legacy_pickle(test))
    names = [n.encode() for n in ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                                  "ship", "truck")]
    (folder / "batches.meta").write_bytes(_legacy_pickle({b"label_names": names, b"num_vis": 3072,
                                                          b"num_cases_per_batch": 10000}))
    return folder


def test_cifar10_pickle_folder_loads_train_and_test(cifar10_folder: Path) -> None:
    raw = (cifar10_folder / "test_batch").read_bytes()
    assert b"numpy.core.multiarray" in raw and b"_codecs" not in raw  # the real files' format
    train = load_dataset(cifar10_folder)
    assert len(train) == 20 and train.name == "cifar10" and train.info["split"] == "train"
    assert train.classes[0] == "airplane" and train.classes[9] == "truck"
    assert train.labels[:4].tolist() == [1, 1, 2, 3] and train.labels[4].item() == 2
    # rows are 1024 red, then 1024 green, then 1024 blue values, each plane row-major
    rows = _cifar_rows(4, 1)
    expected = torch.from_numpy(rows[2].reshape(3, 32, 32))
    assert torch.equal(train.images[2], expected)
    assert train.images[2, 1, 0, 5].item() == rows[2][1024 + 5]
    test = load_dataset(cifar10_folder, split="test")
    assert len(test) == 3 and test.labels.tolist() == [9, 8, 7] and test.info["split"] == "test"
    assert torch.equal(test.images, torch.from_numpy(_cifar_rows(3, 99).reshape(3, 3, 32, 32)))


@pytest.mark.parametrize("protocol", [2, 4])
def test_cifar_repickled_by_python3_loads(cifar10_folder: Path, protocol: int) -> None:
    rows = _cifar_rows(2, 7)
    raw = pickle.dumps({b"data": rows, b"labels": [4, 5]}, protocol=protocol)
    assert (b"_codecs" in raw) == (protocol == 2)
    (cifar10_folder / "test_batch").write_bytes(raw)
    ds = load_dataset(cifar10_folder, split="test")
    assert ds.labels.tolist() == [4, 5]
    assert torch.equal(ds.images, torch.from_numpy(rows.reshape(2, 3, 32, 32)))


def test_cifar10_missing_split_file_is_named(cifar10_folder: Path) -> None:
    (cifar10_folder / "data_batch_3").unlink()
    assert load_dataset(cifar10_folder).info["split"] == "test"  # the complete split is taken
    with pytest.raises(SemsimError, match="data_batch_3"):
        load_dataset(cifar10_folder, split="train")


def test_cifar100_fine_labels(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    fine = [f"class{i:02d}".encode() for i in range(100)]
    (folder / "meta").write_bytes(_legacy_pickle({b"fine_label_names": fine,
                                                  b"coarse_label_names": [b"c"] * 20}))
    for split, labels in (("train", [5, 99, 0]), ("test", [42, 7])):
        batch = {b"data": _cifar_rows(len(labels), len(labels)), b"fine_labels": labels,
                 b"coarse_labels": [1] * len(labels), b"filenames": [b"x"] * len(labels)}
        (folder / split).write_bytes(_legacy_pickle(batch))
    test = load_dataset(folder, split="test")
    assert test.name == "cifar100" and test.num_classes == 100
    assert test.labels.tolist() == [42, 7] and test.classes[42] == "class42"
    assert load_dataset(folder).labels.tolist() == [5, 99, 0]
    resized = load_dataset(folder, image_size=16)
    assert resized.images.shape == (3, 3, 16, 16)


def test_cifar_label_outside_classes_is_an_error(cifar10_folder: Path) -> None:
    bad = {b"labels": [10, 1, 2], b"data": _cifar_rows(3, 5)}
    (cifar10_folder / "test_batch").write_bytes(_legacy_pickle(bad))
    with pytest.raises(SemsimError, match="label 10 outside the 10 classes"):
        load_dataset(cifar10_folder, split="test")


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_restricted_unpickler_refuses_code_execution(cifar10_folder: Path, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    evil = pickle.dumps({b"data": _Exploit(marker), b"labels": [0]}, protocol=2)
    (cifar10_folder / "test_batch").write_bytes(evil)
    with pytest.raises(SemsimError, match="not allowed"):
        load_dataset(cifar10_folder, split="test")
    assert not marker.exists()
    with pytest.raises(pickle.UnpicklingError):  # plain pickle would have run the command
        RestrictedUnpickler(io.BytesIO(pickle.dumps(eval))).load()


def test_restricted_unpickler_refuses_object_arrays(tmp_path: Path) -> None:
    path = tmp_path / "objects"
    path.write_bytes(_legacy_pickle({b"data": np.array([1, "x"], dtype=object)}))
    with pytest.raises(SemsimError, match="object arrays are refused"):
        restricted_load(path)
    ok = tmp_path / "numbers"
    ok.write_bytes(_legacy_pickle({b"data": np.arange(6, dtype=np.float32).reshape(2, 3), b"n": [1, 2]}))
    loaded = restricted_load(ok)
    assert loaded[b"data"].dtype == np.float32 and loaded[b"data"][1, 2] == 5.0 and loaded[b"n"] == [1, 2]


# ------------------------------------------------------------------------------------------------ MNIST
def test_mnist_idx_real_files() -> None:
    folder = shared_path("mnist_t10k")
    ds = load_dataset(folder)
    assert ds.name == "mnist" and ds.info["split"] == "test" and len(ds) == 10000
    assert ds.images.shape == (10000, 3, 28, 28) and ds.classes == [str(i) for i in range(10)]
    assert ds.labels[:8].tolist() == [7, 2, 1, 0, 4, 1, 4, 9]  # the well-known first MNIST test labels
    assert torch.equal(ds.images[:, 0], ds.images[:, 2])  # grayscale expanded to 3 channels
    with gzip.open(folder / "t10k-images-idx3-ubyte.gz") as fh:
        raw = fh.read()
    assert torch.equal(ds.images[1, 0], torch.frombuffer(bytearray(raw[16 + 784:16 + 2 * 784]),
                                                         dtype=torch.uint8).view(28, 28))
    padded = load_dataset(folder, image_size=32, fit="pad")
    assert padded.images.shape[-2:] == (32, 32)
    assert torch.equal(padded.images[:5, :, 2:30, 2:30], ds.images[:5])
    assert int(padded.images[:, :, :2].max()) == 0 and int(padded.images[:, :, :, 30:].max()) == 0
    assert load_dataset(folder, image_size=32).images.shape[-1] == 32  # resize also works
    with pytest.raises(SemsimError, match="no train split"):
        load_dataset(folder, split="train")


def _idx_bytes(array: np.ndarray) -> bytes:
    return bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def test_mnist_raw_idx_and_truncated_file(tmp_path: Path) -> None:
    images = np.arange(2 * 5 * 5, dtype=np.uint8).reshape(2, 5, 5)
    (tmp_path / "train-images-idx3-ubyte").write_bytes(_idx_bytes(images))
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(_idx_bytes(np.array([3, 1], dtype=np.uint8)))
    ds = load_dataset(tmp_path)
    assert ds.info["split"] == "train" and ds.labels.tolist() == [3, 1] and ds.num_classes == 4
    assert torch.equal(ds.images[1, 1], torch.from_numpy(images[1]))
    (tmp_path / "train-images-idx3-ubyte").write_bytes(_idx_bytes(images)[:-3])
    with pytest.raises(SemsimError, match="truncated"):
        load_dataset(tmp_path)


# ---------------------------------------------------------------------------------------- image folders
@pytest.fixture(scope="module")
def cifar10_jpegs() -> ImageDataset:
    return load_dataset(shared_path("cifar10_test"))


def test_image_folder_cifar10_test(cifar10_jpegs: ImageDataset) -> None:
    ds = cifar10_jpegs
    root = shared_path("cifar10_test")
    assert len(ds) == 10000 and ds.images.shape[1:] == (3, 32, 32) and ds.images.dtype == torch.uint8
    assert ds.classes == sorted(p.name for p in root.iterdir() if p.is_dir()) and ds.classes[3] == "cat"
    assert ds.labels.bincount().tolist() == [1000] * 10
    i = 3456
    path = root / ds.info["files"][i]
    assert path.parent.name == ds.classes[int(ds.labels[i])]
    reference = np.asarray(Image.open(path).convert("RGB"))
    assert np.array_equal(ds.images[i].permute(1, 2, 0).numpy(), reference)
    x = ds.floats([0, i])
    assert x.dtype == torch.float32 and x.shape == (2, 3, 32, 32)
    assert 0 <= float(x.min()) <= float(x.max()) <= 1
    assert torch.allclose(x[1] * 255, ds.images[i].float())


def test_image_folder_caltech_descends_and_resizes() -> None:
    root = shared_path("caltech101_subset")
    with pytest.raises(SemsimError, match="give an image size"):
        load_dataset(root)
    ds = load_dataset(root, image_size=32)
    assert ds.num_classes == 101 and len(ds) == 606 and ds.images.shape[1:] == (3, 32, 32)
    assert ds.name == "101_ObjectCategories" and "Faces" in ds.classes
    # resize = centre square crop, then bilinear resampling
    path = root / "101_ObjectCategories" / ds.info["files"][0]
    img = Image.open(path).convert("RGB")
    side = min(img.size)
    left, top = (img.width - side) // 2, (img.height - side) // 2
    ref = img.crop((left, top, left + side, top + side)).resize((32, 32), Image.Resampling.BILINEAR)
    assert np.array_equal(ds.images[0].permute(1, 2, 0).numpy(), np.asarray(ref))


def test_flat_folder_is_unlabelled() -> None:
    ds = load_dataset(shared_path("celeba_samples"), image_size=32)
    assert len(ds) == 32 and ds.classes == [] and not ds.labelled
    assert ds.labels.tolist() == [-1] * 32 and ds.info["files"][0] == "000001.jpg"
    with pytest.raises(SemsimError, match="no class labels"):
        subset(ds, per_class=2)
    assert subset(ds, n=5)[0].images.shape == (5, 3, 32, 32)
    with pytest.raises(SemsimError, match="larger than 32x32"):
        load_dataset(shared_path("celeba_samples"), image_size=32, fit="pad")


def test_mixed_layout_and_missing_folder(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "a" / "x.png")
    Image.new("RGB", (4, 4)).save(tmp_path / "loose.png")
    with pytest.raises(SemsimError, match="keep one layout"):
        load_dataset(tmp_path)
    with pytest.raises(SemsimError, match="no such folder"):
        load_dataset(tmp_path / "nope")
    with pytest.raises(SemsimError, match="no train split"):
        load_dataset(tmp_path / "a", split="train")


# ------------------------------------------------------------------------------------- subsets, splits
def test_subset_is_deterministic_and_nested(cifar10_jpegs: ImageDataset) -> None:
    a, ia = subset(cifar10_jpegs, n=20, seed=3)
    b, ib = subset(cifar10_jpegs, n=20, seed=3)
    _, ic = subset(cifar10_jpegs, n=20, seed=4)
    _, small = subset(cifar10_jpegs, n=8, seed=3)
    assert ia == ib and ia != ic and ia == sorted(ia) and len(set(ia)) == 20
    assert set(small) <= set(ia)
    assert torch.equal(a.images, cifar10_jpegs.images[ia]) and torch.equal(b.labels, cifar10_jpegs.labels[ia])
    assert a.info["files"] == [cifar10_jpegs.info["files"][i] for i in ia]
    per, ip = subset(cifar10_jpegs, per_class=7, seed=0)
    assert per.labels.bincount().tolist() == [7] * 10 and torch.equal(per.labels, cifar10_jpegs.labels[ip])
    assert subset(cifar10_jpegs)[1] == list(range(10000))
    with pytest.raises(SemsimError, match="between 1 and"):
        subset(cifar10_jpegs, n=10001)
    with pytest.raises(SemsimError, match="fewer than"):
        subset(cifar10_jpegs, per_class=1001)


def test_train_val_split_is_stratified_and_disjoint(cifar10_jpegs: ImageDataset) -> None:
    small, _ = subset(cifar10_jpegs, per_class=10, seed=1)
    train, val, ti, vi = train_val_split(small, 0.2, seed=0)
    assert not set(ti) & set(vi) and sorted(ti + vi) == list(range(100))
    assert val.labels.bincount().tolist() == [2] * 10 and len(train) == 80
    assert train_val_split(small, 0.2, seed=0)[3] == vi and train_val_split(small, 0.2, seed=1)[3] != vi
    mean, std = channel_stats(small)
    ref = small.images.numpy().astype(np.float64) / 255
    assert np.allclose(mean, ref.mean(axis=(0, 2, 3))) and np.allclose(std, ref.std(axis=(0, 2, 3), ddof=1))
