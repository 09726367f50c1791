"""Evidence (issue 5): on real CIFAR-10 reconstructions, MR and IIP rank "no defense" above "strong gradient
noise", as the attack's mean PSNR does.

An evaluator (ConvNet, width 8) is trained briefly on a held-out part of ../shared/data/cifar10_test. A
randomly initialised LeNet victim (the DLG setting) is attacked with Inverting Gradients (300 iterations) on
16 other test images that the evaluator recognises as originals, so MR measures how much of its recognition
survives the attack; once without a defense and once with Gaussian gradient noise (sigma 0.1). IIP's candidate
pool adds the evaluator's validation images (same class) to the set's originals.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

from semsim.attacks import attack_set
from semsim.data.datasets import load_dataset, subset, train_val_split
from semsim.data.labels import validate_labels
from semsim.metrics.labeler import label_by_model
from semsim.metrics.scoring import build_metrics, score_manifest
from semsim.models.checkpoint import save_checkpoint
from semsim.models.classifiers import create_model, model_config
from semsim.victims.train import train_classifier

pytestmark = pytest.mark.slow

N_IMAGES = 16
DEFENSES = ("none", "noise-1e-1")
COLUMNS = ("psnr_mean", "mr_accuracy", "mr_prob_mean", "mr_relative", "iip_pixel_precision",
           "iip_feature_precision")


@pytest.fixture(scope="module")
def study(tmp_path_factory, shared_data) -> dict:
    """Train the evaluator, attack with and without the defense, score both sets."""
    root = tmp_path_factory.mktemp("evidence")
    ds = load_dataset(shared_data / "cifar10_test")
    pool, pool_idx = subset(ds, per_class=200, seed=1)
    train, val, train_idx, _ = train_val_split(pool, 0.2, seed=0)
    torch.manual_seed(0)
    evaluator = create_model("convnet", 10, width=8)
    result = train_classifier(evaluator, train, epochs=6, batch_size=64, lr=0.05, val=val, seed=0,
                              show_progress=False)
    clean = result["accuracy"]
    save_checkpoint(root / "evaluator", evaluator, model_config("convnet", 10, clean_accuracy=clean,
                                                                arch_kwargs={"width": 8}))
    trained_on = {pool_idx[i] for i in train_idx}
    candidates = [i for i in range(len(ds)) if i not in trained_on][::7][:400]
    with torch.no_grad():
        pred = evaluator.eval()(ds.floats(candidates)).argmax(1)
    recognised = [c for c, p in zip(candidates, pred.tolist(), strict=True) if p == int(ds.labels[c])]
    indices = recognised[:N_IMAGES]
    torch.manual_seed(0)
    save_checkpoint(root / "victim", create_model("lenet", 10), model_config("lenet", 10))
    sets, labels = {}, {}
    for defense in DEFENSES:
        manifest = attack_set(root / "victim", ds, "invgrad", root / defense, indices=indices,
                              defense=defense, iterations=300, batch_size=N_IMAGES, show_progress=False)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ev = root / "evaluator"
            iip = {"evaluator": ev, "variants": ["pixel", "feature"], "gallery": val}
            metrics, notes = build_metrics(["psnr", "mr", "iip"], mr={"evaluator": ev}, iip=iip)
        assert notes == []
        scores = score_manifest(manifest, metrics, show_progress=False, n_bootstrap=200)
        sets[defense] = scores.per_set.iloc[0]
        labels[defense] = label_by_model(manifest, root / "evaluator", show_progress=False)
    print(f"\nevaluator clean accuracy {clean:.3f} on {len(val)} held-out images")
    for defense, row in sets.items():
        print(defense, {c: round(float(row[c]), 3) for c in COLUMNS})
    return {"clean": clean, "sets": sets, "labels": labels, "root": Path(root)}


def test_evaluator_beats_chance(study) -> None:
    assert study["clean"] > 0.2  # 10 classes: chance is 0.1


def test_mr_and_iip_rank_like_psnr(study) -> None:
    clean, noisy = (study["sets"][d] for d in DEFENSES)
    assert clean["psnr_mean"] > noisy["psnr_mean"] + 3  # the clear case: the defense ruins the attack
    for col in ("mr_accuracy", "mr_prob_mean", "mr_relative", "iip_pixel_precision", "iip_feature_precision"):
        assert clean[col] > noisy[col], col
    assert clean["mr_relative"] == pytest.approx(clean["mr_accuracy"] / study["clean"])


def test_model_labels_rank_like_psnr(study) -> None:
    recognized = {}
    for defense, table in study["labels"].items():
        validate_labels(table)
        assert (table["label_source"] == "model:evaluator").all() and (table["n_judges"] == 1).all()
        recognized[defense] = table["recognized"].mean()
    assert recognized["none"] > recognized["noise-1e-1"]
    assert recognized["none"] == pytest.approx(study["sets"]["none"]["mr_accuracy"])
