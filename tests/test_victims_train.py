"""Victim/evaluator training on real CIFAR-10 images, resume, defenses, checkpoints, CLI and bad input."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch

import semsim.victims.train as train_module
from helpers import shared_path
from semsim.data.datasets import ImageDataset, channel_stats, load_dataset, subset, train_val_split
from semsim.errors import SemsimError
from semsim.models.checkpoint import save_checkpoint
from semsim.models.classifiers import create_model, model_config
from semsim.victims import check_inputs, evaluate_accuracy, learning_rate, load_classifier, train_classifier
from semsim.victims.defenses import Defense


@pytest.fixture(scope="module")
def cifar() -> ImageDataset:
    return load_dataset(shared_path("cifar10_test"))


@pytest.fixture(scope="module")
def tiny(cifar: ImageDataset) -> ImageDataset:
    return subset(cifar, per_class=6, seed=5)[0]


def _convnet(ds: ImageDataset, width: int = 4, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    mean, std = channel_stats(ds)
    return create_model("convnet", num_classes=ds.num_classes, width=width, mean=mean, std=std)


def test_training_beats_chance_on_held_out_real_images(cifar: ImageDataset) -> None:
    picked, _ = subset(cifar, per_class=50, seed=0)
    train, val, _, _ = train_val_split(picked, 0.2, seed=0)
    model = _convnet(train, width=8)
    before = evaluate_accuracy(model, val)
    result = train_classifier(model, train, epochs=3, batch_size=32, lr=0.01, val=val, seed=0,
                              show_progress=False)
    assert len(result["history"]) == 3 and result["accuracy"] == result["history"][-1]["val_accuracy"]
    assert result["history"][-1]["loss"] < result["history"][0]["loss"]
    assert result["accuracy"] >= 0.2 > before + 0.05  # chance is 0.1 on the 100 balanced held-out images
    # evaluate_accuracy against an independent computation of top-1 accuracy
    with torch.no_grad():
        pred = model(val.floats()).argmax(1)
    assert evaluate_accuracy(model, val) == pytest.approx(float((pred == val.labels).float().mean()))
    assert not model.training


def test_resume_after_interruption_matches_an_uninterrupted_run(tiny: ImageDataset, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    kwargs = dict(epochs=2, batch_size=16, lr=0.01, augment="crop", defense="noise-1e-3", seed=3,
                  show_progress=False)
    full = _convnet(tiny)
    train_classifier(full, tiny, **kwargs)

    state = tmp_path / "state"
    real_save = train_module._save_state

    def save_then_die(*args, **kw):
        real_save(*args, **kw)
        raise KeyboardInterrupt  # killed right after epoch 1 was saved

    monkeypatch.setattr(train_module, "_save_state", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train_classifier(_convnet(tiny), tiny, state_dir=state, **kwargs)
    monkeypatch.setattr(train_module, "_save_state", real_save)
    resumed = _convnet(tiny, seed=99)  # different fresh weights: everything must come from the saved state
    result = train_classifier(resumed, tiny, state_dir=state, **kwargs)
    assert result["resumed_from_epoch"] == 1 and [h["epoch"] for h in result["history"]] == [1, 2]
    for (name, a), b in zip(full.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.allclose(a.float(), b.float(), atol=1e-6), name
    with pytest.raises(SemsimError, match="different training run"):
        train_classifier(_convnet(tiny), tiny, state_dir=state, **{**kwargs, "lr": 0.02})


def test_training_time_defense_is_applied_to_every_step(tiny: ImageDataset, monkeypatch: pytest.MonkeyPatch
                                                        ) -> None:
    calls = []

    class Recording(Defense):
        def apply(self, grads, generator=None):
            out = super().apply(grads, generator)
            calls.append(sum(int((g == 0).sum()) for g in out) / sum(g.numel() for g in out))
            return out

    monkeypatch.setattr(train_module, "parse_defense", lambda spec: Recording("prune", 70.0))
    pruned = _convnet(tiny)
    train_classifier(pruned, tiny, epochs=1, batch_size=16, lr=0.01, defense="prune-70", show_progress=False)
    monkeypatch.undo()
    assert len(calls) == 4 and min(calls) >= 0.69  # 60 images in batches of 16: 4 steps, 70% zeros each
    plain = _convnet(tiny)
    train_classifier(plain, tiny, epochs=1, batch_size=16, lr=0.01, show_progress=False)
    assert not torch.allclose(plain.head.weight, pruned.head.weight)


def test_learning_rate_schedules() -> None:
    assert learning_rate(0, 100, 0.1, "cosine") == pytest.approx(0.1 / 5)  # warm-up over 5 steps
    assert learning_rate(4, 100, 0.1, "cosine") == pytest.approx(0.1)
    assert learning_rate(5, 100, 0.1, "cosine") == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi * 0.05)))
    assert learning_rate(0, 100, 0.1, "cosine", warmup=0) == pytest.approx(0.1)
    assert learning_rate(50, 100, 0.1, "cosine") == pytest.approx(0.05)
    assert learning_rate(40, 100, 0.1, "step") == pytest.approx(0.01)
    assert learning_rate(90, 100, 0.1, "step") == pytest.approx(1e-4)


def test_train_to_checkpoint_round_trip(tmp_path: Path, cifar: ImageDataset) -> None:
    out = tmp_path / "victim"
    config = train_module.train_to_checkpoint(
        out, role="evaluator", arch="lenet", data=shared_path("cifar10_test"), epochs=1, n=80, val_split=0.25,
        batch_size=16, lr=0.05, seed=1, show_progress=False)
    saved = json.loads((out / "config.json").read_text())
    picked, _ = subset(cifar, n=80, seed=1)
    train, val, _, _ = train_val_split(picked, 0.25, seed=1)
    assert saved["role"] == "evaluator" and saved["dataset"] == "cifar10_test"
    assert saved["classes"][0] == "airplane" and saved["num_classes"] == 10
    assert saved["clean_accuracy"] == config["accuracy"] and saved["training"]["n_val"] == len(val)
    assert saved["augment"] == "none" and saved["defense"] == "none" and "semsim_version" in saved
    assert not (tmp_path / ".victim.training").exists()  # the per-epoch state is removed once saved
    model, loaded = load_classifier(out)
    assert evaluate_accuracy(model, val) == pytest.approx(saved["clean_accuracy"])
    assert loaded["mean"] == pytest.approx(channel_stats(train)[0])


@pytest.mark.filterwarnings("ignore:Initializing zero-element tensors")  # the 4x4 ConvNet refused below
def test_cli_train_victim_and_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    from semsim.cli import main

    data = tmp_path / "data"
    for c in ("a", "b"):
        (data / c).mkdir(parents=True)
        for i in range(6):
            torch.manual_seed(i + (c == "b") * 10)
            from semsim.data.images import save_image

            save_image(torch.rand(3, 12, 12) * (0.5 if c == "a" else 1.0), data / c / f"{i}.png")
    out = tmp_path / "ckpt"
    argv = ["semsim", "train-victim", "--arch", "lenet", "--data", str(data), "--augment", "ats:3-1-7",
            "--defense", "prune-70", "--epochs", "1", "--batch-size", "4", "--out", str(out), "--quiet"]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code in (0, None)
    config = json.loads((out / "config.json").read_text())
    assert config["role"] == "victim" and config["augment"] == "ats:3-1-7" and config["defense"] == "prune-70"
    assert config["image_size"] == 12 and config["classes"] == ["a", "b"] and config["accuracy"] is None
    assert "wrote" in capsys.readouterr().out

    monkeypatch.setattr(sys, "argv", argv[:-3] + ["--defense", "shuffle", "--out", str(tmp_path / "x")])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: defense 'shuffle'") and err.count("\n") == 1
    monkeypatch.setattr(sys, "argv", ["semsim", "train-victim", "--arch", "convnet", "--width", "4", "--data",
                                      str(data), "--epochs", "1", "--image-size", "4",
                                      "--out", str(tmp_path / "y")])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2 and "cannot be built for 4x4" in capsys.readouterr().err


def test_bad_input_errors(tmp_path: Path, tiny: ImageDataset) -> None:
    model = create_model("lenet", num_classes=10)
    config = model_config("lenet", 10, image_size=32)
    save_checkpoint(tmp_path / "ok", model, config)
    images = torch.rand(2, 3, 32, 32)
    check_inputs(config, images, torch.tensor([0, 9]))  # fine: no error
    with pytest.raises(SemsimError, match="images are 28x28 but the model takes 32x32"):
        check_inputs(config, torch.rand(2, 3, 28, 28))
    with pytest.raises(SemsimError, match="label 10 is outside the model's 10 classes"):
        check_inputs(config, images, torch.tensor([3, 10]))
    with pytest.raises(SemsimError, match="label -1"):
        check_inputs(model, images, [-1, 2])
    with pytest.raises(SemsimError, match="expected \\[0, 1\\]"):
        check_inputs(config, images * 255)
    with pytest.raises(SemsimError, match="float"):
        check_inputs(config, (images * 255).byte())
    with pytest.raises(SemsimError, match="N x 3 x H x W"):
        check_inputs(config, torch.rand(3, 32, 32))
    loaded, _ = load_classifier(tmp_path / "ok")
    with pytest.raises(SemsimError, match="take 32x32|takes 32x32"):
        check_inputs(loaded, torch.rand(1, 3, 16, 16))  # the loaded model knows its image size

    wrong = json.loads((tmp_path / "ok" / "config.json").read_text())
    wrong["architecture"] = "convnet"
    (tmp_path / "ok" / "config.json").write_text(json.dumps(wrong))
    with pytest.raises(SemsimError, match="weights do not match"):
        load_classifier(tmp_path / "ok")
    del wrong["num_classes"]
    (tmp_path / "ok" / "config.json").write_text(json.dumps(wrong))
    with pytest.raises(SemsimError, match="lacks num_classes"):
        load_classifier(tmp_path / "ok")

    unlabelled = ImageDataset(tiny.images[:4], torch.full((4,), -1), [], "faces")
    with pytest.raises(SemsimError, match="no class labels"):
        train_classifier(create_model("lenet", num_classes=10), unlabelled, epochs=1, show_progress=False)
    with pytest.raises(SemsimError, match="outside the model's 3 classes"):
        train_classifier(create_model("lenet", num_classes=3), tiny, epochs=1, show_progress=False)
    with pytest.raises(SemsimError, match="held-out split"):
        train_module.train_to_checkpoint(tmp_path / "e", role="evaluator", arch="lenet", data=tmp_path,
                                         epochs=1)
