"""The model-based labeler (`semsim label --by-model`): a valid label table judged by an evaluator."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from semsim.cli import app, main
from semsim.data.images import load_images, save_image
from semsim.data.labels import label_sources, read_labels, write_labels
from semsim.data.sets import ingest, write_manifest
from semsim.errors import SemsimError
from semsim.metrics.labeler import label_by_model
from semsim.models.checkpoint import save_checkpoint
from semsim.models.classifiers import create_model, load_classifier, model_config

CLASSES = {"cat": 3, "ship": 8, "frog": 6}


@pytest.fixture(scope="module")
def evaluator_dir(tmp_path_factory) -> Path:
    torch.manual_seed(1)
    folder = tmp_path_factory.mktemp("ev") / "lenet-judge"
    config = model_config("lenet", 10, clean_accuracy=0.5)
    save_checkpoint(folder, create_model("lenet", num_classes=10), config)
    return folder


@pytest.fixture(scope="module")
def real_set(tmp_path_factory, shared_data) -> Path:
    """A SemSim-layout set of 9 real CIFAR-10 test images with noisy 'reconstructions'."""
    folder = tmp_path_factory.mktemp("sets") / "cifar10-noisy"
    folder.mkdir()
    g = torch.Generator().manual_seed(0)
    idx = 0
    for name, label in CLASSES.items():
        files = sorted((shared_data / "cifar10_test" / name).glob("*.jpg"))[:3]
        for img in load_images(files):
            save_image(img, folder / f"{idx}_{label}_ori.png")
            rec = (img + 0.05 * torch.randn(img.shape, generator=g)).clamp(0, 1)
            save_image(rec, folder / f"{idx}_{label}_rec.png")
            idx += 1
    return folder


def _reference(evaluator_dir: Path, manifest: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    net = load_classifier(evaluator_dir)[0]
    with torch.no_grad():
        probs = net(load_images(list(manifest["reconstruction"]))).softmax(1).numpy()
    labels = manifest["label"].to_numpy()
    return probs.argmax(1), probs[np.arange(len(labels)), labels]


def test_label_by_model_matches_the_evaluator(real_set, evaluator_dir, tmp_path) -> None:
    manifest, _ = ingest(real_set)
    table = label_by_model(manifest, evaluator_dir, show_progress=False, batch_size=4)
    pred, prob = _reference(evaluator_dir, manifest)
    right = (pred == manifest["label"].to_numpy()) * 1.0
    np.testing.assert_array_equal(table["recognized"].to_numpy(), right)
    np.testing.assert_array_equal(table["judge_1"].to_numpy(), pred)
    assert (table["n_judges"] == 1).all() and label_sources(table) == ["model:lenet-judge"]
    assert list(table["image_id"]) == list(manifest["image_id"])
    soft = label_by_model(manifest, evaluator_dir, soft=True, show_progress=False)
    np.testing.assert_allclose(soft["recognized"].to_numpy(), prob, atol=1e-6)
    out = tmp_path / "labels.parquet"
    write_labels(table, out)
    back = read_labels(out)
    assert list(back["recognized"]) == list(table["recognized"])


def test_label_cli_writes_a_valid_label_table(real_set, evaluator_dir, tmp_path) -> None:
    manifest, _ = ingest(real_set)
    second = manifest.assign(set="cifar10-noisy-copy")
    write_manifest(second, tmp_path / "copy" / "manifest.csv")
    out = tmp_path / "labels.csv"
    res = CliRunner().invoke(app, ["label", "--by-model", str(evaluator_dir), "--sets", str(real_set),
                                   "--sets", str(tmp_path / "copy" / "manifest.csv"), "--out", str(out),
                                   "--quiet"])
    assert res.exit_code == 0, res.output
    table = read_labels(out)
    assert len(table) == 18 and set(table["set"]) == {"cifar10-noisy", "cifar10-noisy-copy"}
    assert label_sources(table) == ["model:lenet-judge"]
    assert set(table["recognized"]) <= {0.0, 1.0}
    assert all(Path(p).is_file() for col in ("original", "reconstruction") for p in table[col])
    pred, _ = _reference(evaluator_dir, manifest)
    first = table[table["set"] == "cifar10-noisy"]
    right = (pred == manifest["label"].to_numpy()) * 1.0
    np.testing.assert_array_equal(first["recognized"].to_numpy(), right)


def test_label_needs_class_labels(real_set, evaluator_dir, tmp_path, monkeypatch, capsys) -> None:
    manifest, _ = ingest(real_set)
    with pytest.raises(SemsimError, match="no 'label' column"):
        label_by_model(manifest.drop(columns="label"), evaluator_dir, show_progress=False)
    with pytest.raises(SemsimError, match="label 12: outside"):
        label_by_model(manifest.assign(label=12), evaluator_dir, show_progress=False)
    write_manifest(manifest.drop(columns="label"), tmp_path / "nolabels.csv")
    monkeypatch.setattr(sys, "argv", ["semsim", "label", "--by-model", str(evaluator_dir), "--sets",
                                      str(tmp_path / "nolabels.csv"), "--out", str(tmp_path / "l.csv")])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "label" in err and "Traceback" not in err
    assert not (tmp_path / "l.csv").exists()
