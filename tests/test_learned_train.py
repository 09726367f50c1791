"""SemSim training, the ``semsim`` metric and the CLI, on degraded real CIFAR-10 images with known labels.

"Recognized" reconstructions keep the content but shift colour and brightness (low PSNR); "unrecognized" ones
are blurred to a few colour blobs (higher PSNR). PSNR therefore ranks them the wrong way round; a SemSim
model trained on these labels must learn the difference and rank held-out originals' pairs correctly.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from helpers import shared_path
from semsim.analysis.evaluate_semsim import oriented_auroc
from semsim.cli import app
from semsim.data.images import load_image, load_images, save_image
from semsim.errors import SemsimError
from semsim.learned import TrainConfig, load_semsim, train_semsim
from semsim.learned.train import state_path
from semsim.metrics import create, psnr
from semsim.metrics.scoring import score_manifest

TINY = {"architecture": "convnet", "arch_kwargs": {"width": 8}, "batch_size": 16}


def make_labelled_set(root: Path, n: int = 30, seed: int = 0) -> pd.DataFrame:
    """n real originals, each with 2 recognized (colour-shifted) and 2 unrecognized (blurred) versions."""
    files = sorted(shared_path("cifar10_test").glob("*/0[0-4]*.jpg"))
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for i, f in enumerate(files[j] for j in rng.choice(len(files), n, replace=False)):
        o = load_image(f)[None]
        oid = f"{i}_0"
        ori = save_image(o[0], root / "ori" / f"{oid}_ori.png")
        for k in range(2):
            shift = torch.tensor([0.2 * k, 0.0, -0.2 * k]).view(1, 3, 1, 1)
            kept = (o + 0.35 + shift).clamp(0, 1)
            blob = F.interpolate(F.avg_pool2d(o, 16), size=32, mode="bilinear", align_corners=False)
            blob = (blob + 0.03 * torch.randn(o.shape, generator=gen)).clamp(0, 1)
            for name, img, share in ((f"kept{k}", kept, 1.0), (f"blob{k}", blob, 0.0)):
                rec = save_image(img[0], root / name / f"{oid}_rec.png")
                rows.append(
                    {
                        "set": f"synthetic/{name}",
                        "image_id": oid,
                        "original": str(ori),
                        "reconstruction": str(rec),
                        "recognized": share,
                        "n_judges": 3,
                        "label_source": "model:test-rule",
                    }
                )
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame]:
    root = tmp_path_factory.mktemp("semsim_data")
    return root, make_labelled_set(root)


@pytest.fixture(scope="module")
def trained(data: tuple[Path, pd.DataFrame], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("semsim_model") / "model"
    config = train_semsim(data[1], out, TrainConfig(epochs=8, **TINY), show_progress=False)
    return out, config


def test_training_learns_what_psnr_misses(
    data: tuple[Path, pd.DataFrame], trained: tuple[Path, dict]
) -> None:
    out, config = trained
    assert (out / "model.safetensors").is_file() and not state_path(out).exists()
    assert config["kind"] == "semsim" and config["embedding_dim"] == 8 * 4 * 9
    assert config["label_sources"] == ["model:test-rule"] and config["human_labels"] is False
    assert config["training"]["complete"] and config["training"]["n_originals"] == 30
    assert config["training"]["n_val_originals"] == 6 and len(config["history"]) == 8
    # validation = held-out originals; AUROC recorded at the best epoch
    assert config["validation"]["val_auroc"] >= 0.95
    assert config["validation"]["val_auroc"] == max(h["val_auroc"] for h in config["history"])
    # recompute on the validation originals from the images, next to PSNR
    labels = data[1]
    val_ids = set(labels["image_id"].unique()) - set(_train_ids(labels, config))
    val = labels[labels["image_id"].isin(val_ids)]
    x, y = load_images(list(val["original"])), load_images(list(val["reconstruction"]))
    metric = create("semsim", model=out).eval()
    with torch.no_grad():
        d = metric(x, y).numpy()
    truth = val["recognized"].to_numpy() > 0.5
    assert oriented_auroc(d, truth, higher_is_more_leakage=False) >= 0.95
    assert oriented_auroc(psnr(x, y).numpy(), truth, higher_is_more_leakage=True) < 0.5


def _train_ids(labels: pd.DataFrame, config: dict) -> list[str]:
    from semsim.learned.triplets import split_by_original

    train, _ = split_by_original(
        labels.assign(original_id=labels["image_id"]), 0.2, config["training"]["config"]["seed"]
    )
    return list(train["image_id"].unique())


def test_metric_matches_reference_and_caches_originals(
    data: tuple[Path, pd.DataFrame], trained: tuple[Path, dict]
) -> None:
    root, labels = data
    net, _ = load_semsim(trained[0])
    rows = labels[labels["set"] == "synthetic/kept0"].head(12)
    x, y = load_images(list(rows["original"])), load_images(list(rows["reconstruction"]))
    with torch.no_grad():
        ref = (net(x).double() - net(y).double()).norm(dim=1)
        emb = net(x)
    assert torch.allclose(emb.norm(dim=1), torch.ones(len(x)), atol=1e-5)  # L2-normalised embeddings
    cached, plain = create("semsim", model=trained[0]), create("semsim", model=trained[0], cache=False)
    with torch.no_grad():
        first = cached(x, y)
        second = cached(x.clone(), y)  # same pixels from other files: served from the cache
        assert cached.cache_hits == len(x)
        assert torch.allclose(first.double(), ref, atol=1e-5) and torch.allclose(second, first)
        assert torch.allclose(plain(x, y).double(), ref, atol=1e-5)
    # scoring several sets whose originals are copies in their own folders: each original embedded once
    manifest = labels[labels["set"].isin(["synthetic/kept0", "synthetic/blob0"])].copy()
    copies = root / "copies"
    copies.mkdir(exist_ok=True)
    for i in manifest.index[manifest["set"] == "synthetic/blob0"]:
        dst = copies / Path(manifest.at[i, "original"]).name
        shutil.copy(manifest.at[i, "original"], dst)
        manifest.at[i, "original"] = str(dst)
    fresh = create("semsim", model=trained[0])
    result = score_manifest(manifest, {"semsim": fresh}, batch_size=16, show_progress=False, n_bootstrap=10)
    assert fresh.cache_hits == 30 and np.isfinite(result.per_image["semsim"]).all()


def test_resume_after_interruption_gives_the_same_model(
    data: tuple[Path, pd.DataFrame], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    labels = data[1][data[1]["image_id"].isin([f"{i}_0" for i in range(8)])]
    config = TrainConfig(epochs=2, **TINY)
    straight = train_semsim(labels, tmp_path / "a", config, show_progress=False)
    import semsim.learned.train as train_module

    real_validate, calls = train_module.validate, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_validate(*args, **kwargs)

    monkeypatch.setattr(train_module, "validate", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train_semsim(labels, tmp_path / "b", config, show_progress=False)
    assert state_path(tmp_path / "b").is_file()
    monkeypatch.setattr(train_module, "validate", real_validate)
    resumed = train_semsim(labels, tmp_path / "b", config, show_progress=False)
    assert [h["train_loss"] for h in resumed["history"]] == pytest.approx(
        [h["train_loss"] for h in straight["history"]], rel=1e-5
    )
    net_a, _ = load_semsim(tmp_path / "a")
    net_b, _ = load_semsim(tmp_path / "b")
    for (k, va), vb in zip(net_a.state_dict().items(), net_b.state_dict().values(), strict=True):
        assert torch.allclose(va.float(), vb.float(), atol=1e-6), k
    # a finished model is returned as is; other settings refuse the stale state of another run
    assert train_semsim(labels, tmp_path / "b", config, show_progress=False)["history"] == resumed["history"]
    with pytest.raises(KeyboardInterrupt):
        monkeypatch.setattr(train_module, "validate", interrupted)
        calls.clear()
        train_semsim(labels, tmp_path / "c", config, show_progress=False)
    monkeypatch.setattr(train_module, "validate", real_validate)
    with pytest.raises(SemsimError, match="training state for other labels"):
        train_semsim(labels, tmp_path / "c", TrainConfig(epochs=3, **TINY), show_progress=False)


def test_not_a_semsim_model_and_missing_model(tmp_path: Path) -> None:
    from semsim.metrics import MetricUnavailable
    from semsim.models import create_model, model_config
    from semsim.models.checkpoint import save_checkpoint

    save_checkpoint(tmp_path / "clf", create_model("lenet"), model_config("lenet", 10))
    with pytest.raises(SemsimError, match="not a SemSim model"):
        load_semsim(tmp_path / "clf")
    with pytest.raises(MetricUnavailable, match="--semsim"):
        create("semsim")


def test_cli_train_score_evaluate(
    data: tuple[Path, pd.DataFrame], trained: tuple[Path, dict], tmp_path: Path
) -> None:
    root, labels = data
    labels[labels["image_id"].isin([f"{i}_0" for i in range(8)])].to_csv(tmp_path / "small.csv", index=False)
    labels.to_csv(tmp_path / "labels.csv", index=False)
    runner = CliRunner()
    res = runner.invoke(
        app,
        [
            "train",
            "--labels",
            str(tmp_path / "small.csv"),
            "--out",
            str(tmp_path / "m"),
            "--architecture",
            "convnet",
            "--width",
            "8",
            "--epochs",
            "1",
            "--anchor",
            "all",
            "--soft",
            "--quiet",
        ],
    )
    assert res.exit_code == 0, res.output
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    assert cfg["training"]["config"]["anchor"] == "all" and cfg["training"]["config"]["label_mode"] == "soft"
    assert "not human judgments" in res.output
    manifest = labels[labels["set"] == "synthetic/kept0"][["set", "image_id", "original", "reconstruction"]]
    manifest.to_csv(tmp_path / "manifest.csv", index=False)
    res = runner.invoke(
        app,
        [
            "score",
            str(tmp_path / "manifest.csv"),
            "--metrics",
            "psnr",
            "--semsim",
            str(trained[0]),
            "--out",
            str(tmp_path / "scores.csv"),
            "--quiet",
        ],
    )
    assert res.exit_code == 0, res.output
    assert "model:test-rule, not on human judgments" in res.output
    per_image = pd.read_csv(tmp_path / "scores.csv")
    per_set = pd.read_csv(tmp_path / "scores_sets.csv")
    assert {"psnr", "semsim"} <= set(per_image.columns) and per_image["semsim"].between(0, 2).all()
    assert per_set["semsim_label_source"].tolist() == ["model:test-rule"]
    res = runner.invoke(
        app,
        [
            "evaluate",
            "--labels",
            str(tmp_path / "labels.csv"),
            "--train-sets",
            "synthetic/kept0,synthetic/blob0",
            "--out",
            str(tmp_path / "eval"),
            "--model",
            str(trained[0]),
            "--baselines",
            "psnr,nosuchmetric",
            "--quiet",
        ],
    )
    assert res.exit_code == 0, res.output
    summary = pd.read_csv(tmp_path / "eval" / "evaluation.csv").set_index("column")
    assert summary.loc["semsim", "auroc"] > 0.9 > 0.5 > summary.loc["psnr", "auroc"]
    assert summary.loc["semsim", "n_pairs"] == 60 and "nosuchmetric skipped" in res.output
    sets = pd.read_csv(tmp_path / "eval" / "evaluation_sets.csv")
    assert sorted(sets["set"]) == ["synthetic/blob1", "synthetic/kept1"]
    res = runner.invoke(
        app,
        [
            "evaluate",
            "--labels",
            str(tmp_path / "labels.csv"),
            "--train-sets",
            "nothing*",
            "--out",
            str(tmp_path / "eval2"),
        ],
    )
    assert res.exit_code != 0


def test_evaluate_trains_on_some_sets_and_tests_on_others(
    data: tuple[Path, pd.DataFrame], tmp_path: Path
) -> None:
    from semsim.analysis.evaluate_semsim import evaluate_generalization

    labels = data[1][data[1]["image_id"].isin([f"{i}_0" for i in range(8)])].assign(
        original_id=lambda d: d["image_id"]
    )
    result = evaluate_generalization(
        labels,
        tmp_path,
        train_sets="synthetic/*0",
        config=TrainConfig(epochs=1, **TINY),
        baselines=("psnr",),
        show_progress=False,
    )
    assert (tmp_path / "model" / "config.json").is_file()
    assert load_semsim(tmp_path / "model")[1]["training"]["sets"] == ["synthetic/blob0", "synthetic/kept0"]
    assert list(result.summary["column"]) == ["semsim", "psnr"]
    assert sorted(result.per_set["set"]) == ["synthetic/blob1", "synthetic/kept1"]
    assert (result.summary["n_pairs"] == 16).all() and result.summary["auroc"].between(0, 1).all()
    assert any("Spearman needs at least 3" in n for n in result.notes)
    with pytest.raises(SemsimError, match="every test original"):
        evaluate_generalization(
            labels,
            tmp_path,
            train_sets="synthetic/*0",
            disjoint_originals=True,
            config=TrainConfig(epochs=1, **TINY),
            show_progress=False,
        )
    with pytest.raises(SemsimError, match="both training and testing"):
        evaluate_generalization(labels, tmp_path, train_sets="synthetic/*", test_sets="synthetic/kept1")
