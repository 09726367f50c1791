"""semsim grid with real attack work: a victim trained by the grid and an existing checkpoint, DLG with a few
iterations on a tiny image-folder dataset, shards merged into sets that `ingest` reads, scores merged, and
sharded results identical to one uninterrupted `attack_set` run."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import write_grid
from semsim.attacks import attack_set
from semsim.common.io import read_table
from semsim.data.datasets import load_dataset
from semsim.data.images import read_array
from semsim.data.sets import ingest, read_manifest
from semsim.errors import SemsimError
from semsim.grid import build_plan, load_grid, run_plan
from semsim.models.checkpoint import save_checkpoint
from semsim.models.classifiers import create_model, model_config


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """A 2-class, 12x12 image-folder dataset and a LeNet checkpoint for it."""
    root = tmp_path_factory.mktemp("study")
    rng = np.random.default_rng(0)
    for c, name in enumerate(("cat", "dog")):
        (root / "data" / name).mkdir(parents=True)
        for i in range(4):
            base = np.full((12, 12, 3), 60 + 120 * c, dtype=np.int16)
            img = np.clip(base + rng.integers(-40, 40, base.shape), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(root / "data" / name / f"{i}.png")
    torch.manual_seed(0)
    save_checkpoint(root / "lenet", create_model("lenet", num_classes=2, image_size=12),
                    model_config("lenet", 2, image_size=12))
    return root


def grid_file(root, **extra):
    grid = {"out": "run", "datasets": {"toy": "data"},
            "victims": {"given": {"checkpoint": "lenet"},
                        "lenet/trained": {"train": {"architecture": "lenet", "epochs": 1, "batch_size": 4}}},
            "defenses": ["none"], "attacks": [{"name": "dlg", "iterations": [2]}],
            "images": {"n": 4, "shard_size": 2, "seed": 1}, "attack": {"batch_size": 2},
            "score": {"metrics": ["psnr", "mse"]}, **extra}
    return write_grid(root, grid)


def test_attack_grid_plan_shapes(study):
    plan = build_plan(load_grid(grid_file(study)))
    kinds = [t.kind for t in plan.tasks]
    assert kinds.count("train") == 1 and kinds.count("attack") == 4 and kinds.count("score") == 4
    trained = [t for t in plan.tasks if t.kind == "attack" and t.set == "toy/lenet/trained/none/dlg-2"]
    assert all(t.deps == ("train:toy/lenet/trained",) for t in trained)
    idx = [i for t in trained for i in t.params["indices"]]
    assert len(idx) == 4 and len(set(idx)) == 4


def test_bad_attack_settings_fail_before_running(study):
    with pytest.raises(SemsimError, match="unknown setting"):
        load_grid(grid_file(study, attacks=[{"name": "dlg", "options": {"learning_rate": 1}}]))
    with pytest.raises(SemsimError, match="not a multiple of attack.batch_size"):
        load_grid(grid_file(study, images={"n": 4, "shard_size": 3}))


def test_attack_grid_runs_merges_and_matches_one_uninterrupted_run(study):
    grid = load_grid(grid_file(study))
    report = run_plan(build_plan(grid), workers=2, show_progress=False)
    assert not report.failed, report.failed
    sets = sorted(report.merged_sets)
    assert sets == ["toy/given/none/dlg-2", "toy/lenet/trained/none/dlg-2"]
    assert sorted(report.scored_sets) == sets
    assert (grid.out / "victims" / "toy" / "lenet" / "trained" / "model.safetensors").is_file()

    # merged sets: SemSim layout folders that `semsim score` ingests, and one manifest of all sets
    for name in sets:
        manifest, skipped = ingest(grid.out / "sets" / name)
        assert len(manifest) == 4 and len(skipped) == 0
    everything = read_manifest(grid.out / "sets" / "manifest.csv")
    assert sorted(everything["set"].unique()) == sets and len(everything) == 8
    scores = read_table(grid.out / "scores.parquet")
    assert len(scores) == 8 and scores["psnr"].notna().all()

    # the two shards give exactly the images of one run over the four images
    data = load_dataset(study / "data")
    merged = read_manifest(grid.out / "sets" / "toy" / "given" / "none" / "dlg-2" / "manifest.csv")
    indices = sorted(int(i.split("_")[0]) for i in merged["image_id"])
    direct = attack_set(study / "lenet", data, "dlg", study / "direct", indices=indices, seed=0, iterations=2,
                        batch_size=2, show_progress=False)
    got = merged.set_index("image_id").sort_index()
    want = direct.set_index("image_id").sort_index()
    assert list(got.index) == list(want.index)
    for image_id in want.index:
        np.testing.assert_array_equal(read_array(got.loc[image_id, "reconstruction"]),
                                      read_array(want.loc[image_id, "reconstruction"]))

    again = run_plan(build_plan(grid), workers=2, show_progress=False)
    assert again.executed == [] and again.attempts == 0
