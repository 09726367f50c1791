"""attack_set and `semsim attack`: SemSim layout, manifest, set name, seeds, resume, failures, bad input."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

import semsim.attacks.core as core
import semsim.attacks.runner as runner
from helpers import small_cifar10_folder, untrained_lenet
from semsim.attacks import attack_set, image_seeds
from semsim.cli import app
from semsim.data.datasets import load_dataset
from semsim.data.images import load_image
from semsim.data.sets import ingest
from semsim.errors import SemsimError
from semsim.models import create_model, model_config
from semsim.models.checkpoint import save_checkpoint

ARGS = dict(iterations=4, batch_size=2, show_progress=False)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """A small image folder of real CIFAR-10 test images: 3 classes x 3 images."""
    return small_cifar10_folder(tmp_path_factory.mktemp("cifar") / "cifar10_small", per_class=3)


@pytest.fixture(scope="module")
def victim(tmp_path_factory) -> Path:
    return untrained_lenet(tmp_path_factory.mktemp("victim") / "lenet", augment="crop", defense="prune-70")


pytestmark = pytest.mark.usefixtures("one_thread")


def files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.png"))}


def test_writes_semsim_layout_and_manifest(data_dir, victim, tmp_path):
    ds = load_dataset(data_dir)
    out = tmp_path / "set"
    manifest = attack_set(victim, ds, "invgrad", out, n=5, defense="noise-1e-3", **ARGS)
    assert len(manifest) == 5 and manifest["status"].eq("ok").all()
    assert manifest["set"].unique().tolist() == ["cifar10/lenet/crop+train-prune-70/grad-noise-1e-3/invgrad-4"]
    for row in manifest.itertuples():
        index, label = (int(v) for v in row.image_id.split("_"))
        assert label == int(ds.labels[index]) == row.label and row.index == index
        assert Path(row.original).name == f"{row.image_id}_ori.png"
        assert Path(row.reconstruction).name == f"{row.image_id}_rec.png"
        assert row.attack == "invgrad" and row.iterations == 4 and row.defense == "noise-1e-3"
    # the originals are the dataset's images, unchanged
    first = manifest.iloc[0]
    saved = load_image(first.original)
    assert torch.equal(saved, ds.floats([int(first["index"])])[0])
    folder_pairs, _ = ingest(out)  # the folder reads back as a SemSim-layout set
    assert sorted(folder_pairs["image_id"]) == sorted(manifest["image_id"])


def test_seeds_are_per_image_and_batching_does_not_change_them(data_dir, victim, tmp_path):
    assert image_seeds(0, 3) == image_seeds(0, 3) != image_seeds(1, 3) != image_seeds(0, 4)
    ds = load_dataset(data_dir)
    a = attack_set(victim, ds, "invgrad", tmp_path / "b2", indices=[0, 4, 8], iterations=6, batch_size=2,
                   show_progress=False)
    b = attack_set(victim, ds, "invgrad", tmp_path / "b3", indices=[0, 4, 8], iterations=6, batch_size=3,
                   show_progress=False)
    pd.testing.assert_series_equal(a["loss"], b["loss"], rtol=1e-3, atol=1e-6)
    c = attack_set(victim, ds, "invgrad", tmp_path / "s1", indices=[0, 4, 8], seed=1, iterations=6,
                   batch_size=3, show_progress=False)
    assert not (c["loss"].to_numpy() == b["loss"].to_numpy()).all()


def test_resume_after_a_kill_gives_identical_files(data_dir, victim, tmp_path, monkeypatch):
    ds = load_dataset(data_dir)
    full = attack_set(victim, ds, "dlg", tmp_path / "full", n=5, **ARGS)

    calls = {"n": 0}
    original = core.Attack.reconstruct

    def dies_on_second_chunk(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt  # the run is killed while attacking the second chunk
        return original(self, *args, **kwargs)

    monkeypatch.setattr(core.Attack, "reconstruct", dies_on_second_chunk)
    with pytest.raises(KeyboardInterrupt):
        attack_set(victim, ds, "dlg", tmp_path / "resumed", n=5, **ARGS)
    partial = pd.read_csv(tmp_path / "resumed" / "manifest.csv")
    assert len(partial) == 2
    monkeypatch.setattr(core.Attack, "reconstruct", original)
    calls["n"] = 0
    resumed = attack_set(victim, ds, "dlg", tmp_path / "resumed", n=5, **ARGS)
    assert files(tmp_path / "resumed") == files(tmp_path / "full")
    drop = ["seconds", "original", "reconstruction"]
    pd.testing.assert_frame_equal(resumed.drop(columns=drop), full.drop(columns=drop))
    a = pd.read_csv(tmp_path / "full" / "manifest.csv").drop(columns="seconds")
    b = pd.read_csv(tmp_path / "resumed" / "manifest.csv").drop(columns="seconds")
    pd.testing.assert_frame_equal(a, b)
    # a finished run started again does no work
    monkeypatch.setattr(core.Attack, "reconstruct", lambda *a, **k: pytest.fail("nothing left to attack"))
    again = attack_set(victim, ds, "dlg", tmp_path / "resumed", n=5, **ARGS)
    assert len(again) == 5
    with pytest.raises(SemsimError, match="other settings"):
        attack_set(victim, ds, "dlg", tmp_path / "resumed", n=5, **{**ARGS, "iterations": 5})


def test_nan_image_is_marked_failed_and_the_run_continues(data_dir, victim, tmp_path, monkeypatch):
    ds = load_dataset(data_dir)
    real = runner.client_gradients

    def corrupt_first(model, images, labels, *args, **kwargs):
        grads = real(model, images, labels, *args, **kwargs)
        if int(labels[0]) == 0:
            grads[0][0].fill_(float("nan"))
        return grads

    monkeypatch.setattr(runner, "client_gradients", corrupt_first)
    manifest = attack_set(victim, ds, "invgrad", tmp_path / "nan", indices=[0, 1, 3, 4], **ARGS)
    status = dict(zip(manifest["image_id"], manifest["status"], strict=True))
    assert status == {"0_0": "failed: nan", "1_0": "ok", "3_1": "ok", "4_1": "ok"}
    assert manifest.loc[manifest.image_id == "0_0", "reconstruction"].isna().all()
    assert not (tmp_path / "nan" / "0_0_rec.png").exists() and (tmp_path / "nan" / "1_0_rec.png").exists()


def test_bad_input(data_dir, victim, tmp_path):
    ds = load_dataset(data_dir)
    with pytest.raises(SemsimError, match="takes 16x16"):
        small = tmp_path / "small"
        save_checkpoint(small, create_model("lenet", 3, image_size=16),
                        model_config("lenet", 3, image_size=16))
        attack_set(small, ds, "invgrad", tmp_path / "o1", n=2, **ARGS)
    with pytest.raises(SemsimError, match="outside the model's 2 classes"):
        two = tmp_path / "two"
        save_checkpoint(two, create_model("lenet", 2), model_config("lenet", 2))
        attack_set(two, ds, "invgrad", tmp_path / "o2", indices=[6], **ARGS)
    with pytest.raises(SemsimError, match="do not match architecture"):
        wrong = tmp_path / "wrong"
        save_checkpoint(wrong, create_model("lenet", 3), model_config("convnet", 3))
        attack_set(wrong, ds, "invgrad", tmp_path / "o3", n=2, **ARGS)
    with pytest.raises(SemsimError, match="defense"):
        attack_set(victim, ds, "invgrad", tmp_path / "o4", n=2, defense="blur", **ARGS)
    with pytest.raises(SemsimError, match="outside the dataset"):
        attack_set(victim, ds, "invgrad", tmp_path / "o5", indices=[99], **ARGS)


def test_cli(data_dir, victim, tmp_path):
    out = tmp_path / "cli"
    cmd = ["attack", "--victim", str(victim), "--data", str(data_dir), "--attack", "idlg", "--n", "3",
           "--iterations", "3", "--batch-size", "2", "--out", str(out), "--quiet"]
    result = CliRunner().invoke(app, cmd)
    assert result.exit_code == 0, result.output
    assert "3 reconstructed, 0 failed" in result.output
    manifest = pd.read_csv(out / "manifest.csv")
    assert manifest["set"].iloc[0] == "cifar10/lenet/crop+train-prune-70/none/idlg-3"
    assert (manifest["recovered_label"] == manifest["label"]).all()
    bad = CliRunner().invoke(app, [*cmd[:-3], "--out", str(tmp_path / "bad"), "--attack", "nope"])
    assert isinstance(bad.exception, SemsimError) and "attack 'nope'" in str(bad.exception)
