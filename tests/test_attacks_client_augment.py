"""attack_set(client_augment=...): the client transforms its image before the gradient, as ATSPrivacy's and
SemSim's attack scripts do (the attacked image is the training transform of the test image)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image, ImageEnhance, ImageOps
from typer.testing import CliRunner

import semsim.attacks.core as core
import semsim.attacks.runner as runner
from helpers import small_cifar10_folder, untrained_lenet, write_grid
from semsim.attacks import attack_set
from semsim.attacks.runner import client_seed
from semsim.cli import app
from semsim.data.datasets import load_dataset
from semsim.data.images import load_image
from semsim.data.sets import read_manifest
from semsim.errors import SemsimError
from semsim.grid import build_plan, load_grid, parse_grid, run_plan

ARGS = dict(attack="dlg", iterations=2, batch_size=2, show_progress=False)
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "semsim_cifar100.yaml"
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """Real CIFAR-10 test images: 3 classes x 2 images."""
    return small_cifar10_folder(tmp_path_factory.mktemp("cifar") / "cifar10_small", per_class=2)


@pytest.fixture(scope="module")
def victim(tmp_path_factory) -> Path:
    return untrained_lenet(tmp_path_factory.mktemp("victim") / "lenet", augment="crop")


def ats_3_1_7_with_pil(image: np.ndarray, seed: int) -> np.ndarray:
    """ATSPrivacy's training transform for policy 3-1-7 with PIL, written from its code: RandomCrop(32,
    padding=4) + RandomHorizontalFlip, then translateX (magnitude index 9 of linspace(0, 150/331, 10)), contrast
    (index 6 of 1 +- linspace(0, 0.5, 10)) and translateY (index 2), each with a random sign, black fill.
    The random choices are drawn from a torch generator seeded with the recorded seed, in semsim's documented
    order (docs/contracts.md): row offset, column offset, flip, then one sign per signed operation."""
    g = torch.Generator().manual_seed(seed)
    oy = int(torch.randint(0, 9, (1,), generator=g))
    ox = int(torch.randint(0, 9, (1,), generator=g))
    flip = bool(torch.rand(1, generator=g) < 0.5)
    im = ImageOps.expand(Image.fromarray(image), border=4, fill=(0, 0, 0)).crop((ox, oy, ox + 32, oy + 32))
    if flip:
        im = ImageOps.mirror(im)
    shift = 150 / 331

    def sign() -> int:
        return int(torch.randint(0, 2, (1,), generator=g)) * 2 - 1

    im = im.transform(im.size, Image.AFFINE, (1, 0, shift * 32 * sign(), 0, 1, 0), fillcolor=(0, 0, 0))
    im = ImageEnhance.Contrast(im).enhance(1 + 0.5 * 6 / 9 * sign())
    im = im.transform(im.size, Image.AFFINE, (1, 0, 0, 0, 1, shift * 2 / 9 * 32 * sign()), fillcolor=(0, 0, 0))
    return np.asarray(im)


def test_the_attacked_image_is_the_policy_applied_with_the_recorded_seed(data_dir, victim, tmp_path,
                                                                        monkeypatch) -> None:
    ds = load_dataset(data_dir)
    attacked: list[torch.Tensor] = []
    real = runner.client_gradients

    def record(model, images, *args, **kwargs):
        attacked.append(images.detach().cpu().clone())
        return real(model, images, *args, **kwargs)

    monkeypatch.setattr(runner, "client_gradients", record)
    manifest = attack_set(victim, ds, out=tmp_path / "ats", indices=[0, 2, 5], client_augment="ats:3-1-7", **ARGS)
    assert manifest["set"].unique().tolist() == ["cifar10/lenet/crop/client-ats-3-1-7/dlg-2"]
    assert manifest["client_augment"].eq("ats:3-1-7").all()
    targets = torch.cat(attacked)
    for k, row in enumerate(manifest.itertuples()):
        assert row.client_seed == client_seed(0, row.index)
        clean = ds.floats([row.index])[0]
        assert torch.equal(load_image(row.untransformed), clean)  # the dataset's image, kept
        assert torch.equal(load_image(row.original), targets[k])  # `original` is what was attacked
        uint8 = clean.mul(255).round().byte().permute(1, 2, 0).numpy()
        ref = torch.from_numpy(ats_3_1_7_with_pil(uint8, row.client_seed)).permute(2, 0, 1).float()
        diff = (targets[k] * 255 - ref).abs()
        assert diff.max() <= 1 and diff.mean() < 0.05, row.image_id  # PIL's rounding, one grey level
        assert not torch.equal(targets[k], clean)
    with pytest.raises(SemsimError, match="augmentation 'blur'"):
        attack_set(victim, ds, out=tmp_path / "bad", n=2, client_augment="blur", **ARGS)


def test_resume_and_rebatching_give_identical_files(data_dir, victim, tmp_path, monkeypatch) -> None:
    ds = load_dataset(data_dir)
    opts = dict(ARGS, n=5, client_augment="train")  # train: the victim's own augmentation (crop + flip)
    full = attack_set(victim, ds, out=tmp_path / "full", **opts)
    assert full["set"].iloc[0] == "cifar10/lenet/crop/client-crop/dlg-2"
    assert full["client_augment"].eq("crop").all()
    original = core.Attack.reconstruct
    calls = {"n": 0}

    def dies_on_second_chunk(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(core.Attack, "reconstruct", dies_on_second_chunk)
    with pytest.raises(KeyboardInterrupt):
        attack_set(victim, ds, out=tmp_path / "resumed", **opts)
    monkeypatch.setattr(core.Attack, "reconstruct", original)
    attack_set(victim, ds, out=tmp_path / "resumed", **opts)

    def files(folder: Path) -> dict[str, bytes]:
        return {p.name: p.read_bytes() for p in sorted(folder.glob("*.png"))}

    assert len(files(tmp_path / "full")) == 15  # ori, rec, untransformed per image
    assert files(tmp_path / "resumed") == files(tmp_path / "full")
    a = pd.read_csv(tmp_path / "full" / "manifest.csv").drop(columns="seconds")
    b = pd.read_csv(tmp_path / "resumed" / "manifest.csv").drop(columns="seconds")
    pd.testing.assert_frame_equal(a, b)
    # an image's transform does not depend on its companions in a chunk
    rebatched = attack_set(victim, ds, out=tmp_path / "b3", **{**opts, "batch_size": 3})
    for row in rebatched.itertuples():
        assert Path(row.original).read_bytes() == (tmp_path / "full" / f"{row.image_id}_ori.png").read_bytes()
    with pytest.raises(SemsimError, match="other settings"):
        attack_set(victim, ds, out=tmp_path / "full", **{**opts, "client_augment": "none"})


def test_cli_option(data_dir, victim, tmp_path) -> None:
    out = tmp_path / "cli"
    result = CliRunner().invoke(app, ["attack", "--victim", str(victim), "--data", str(data_dir), "--attack", "idlg",
                                      "--n", "2", "--iterations", "2", "--out", str(out), "--quiet",
                                      "--client-augment", "train"])
    assert result.exit_code == 0, result.output
    manifest = pd.read_csv(out / "manifest.csv")
    assert manifest["set"].iloc[0] == "cifar10/lenet/crop/client-crop/idlg-2"
    assert manifest["untransformed"].map(lambda p: (out / p).is_file()).all()  # stored relative to the folder


def test_the_study_grid_transforms_each_victims_attacked_images_with_its_training_augmentation(victim,
                                                                                             tmp_path) -> None:
    raw = yaml.safe_load(EXAMPLE.read_text())
    plan = build_plan(parse_grid(raw, tmp_path / "grid.yaml"))
    clients = {t.set: t.params.get("client_augment", "none") for t in plan.tasks if t.kind == "attack"}
    assert clients["cifar100/convnet/ats-3-1-7+43-18-18/client-ats-3-1-7+43-18-18/invgrad-8000"] == (
        "ats:3-1-7+43-18-18")
    assert clients["cifar100/resnet20-4/crop+train-prune-70/client-crop/invgrad-8000"] == "crop"
    assert clients["cifar100/convnet/none/none/invgrad-8000"] == "none"
    raw["attacks"][0]["client_augment"] = "blur"
    with pytest.raises(SemsimError, match="client_augment"):
        parse_grid(raw, tmp_path / "grid.yaml")
    raw["attacks"][0]["client_augment"] = "train"
    raw["victims"] = {"given": {"checkpoint": str(victim)}}
    with pytest.raises(SemsimError, match="client_augment: train needs victims the grid trains"):
        build_plan(parse_grid(raw, tmp_path / "grid.yaml"))


def test_a_grid_run_keeps_the_untransformed_images_in_the_merged_set(data_dir, tmp_path) -> None:
    grid = {"out": "run", "datasets": {"toy": str(data_dir)},
            "victims": {"lenet/crop": {"train": {"architecture": "lenet", "epochs": 1, "batch_size": 4,
                                                 "augment": "crop"}}},
            "defenses": ["none"], "attacks": [{"name": "dlg", "iterations": [2], "client_augment": "train"}],
            "images": {"n": 4, "shard_size": 2, "seed": 1}, "attack": {"batch_size": 2}}
    spec = load_grid(write_grid(tmp_path, grid))
    report = run_plan(build_plan(spec), workers=1, show_progress=False)
    assert not report.failed and report.merged_sets == ["toy/lenet/crop/client-crop/dlg-2"]
    folder = spec.out / "sets" / "toy" / "lenet" / "crop" / "client-crop" / "dlg-2"
    merged = read_manifest(folder / "manifest.csv")
    ds = load_dataset(data_dir)
    assert len(merged) == 4 and merged["client_augment"].eq("crop").all()
    for row in merged.itertuples():
        assert Path(row.untransformed).parent == folder.resolve()
        assert torch.equal(load_image(row.untransformed), ds.floats([row.index])[0])
        assert row.client_seed == client_seed(0, row.index)
