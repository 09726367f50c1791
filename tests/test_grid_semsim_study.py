"""examples/semsim_cifar100.yaml: the SemSim paper's CIFAR-100 study as a grid, planned without the dataset."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import yaml

from helpers import shared_path
from semsim.analysis.data import _set_name
from semsim.grid import build_plan, load_grid, parse_grid

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "semsim_cifar100.yaml"
# The victim configurations of the released human-label table, as the SemSim code names them.
CONFIGS = [f"{arch}_200_inversed_{mode}_auglist_{ats}_rlabel_False{defense}"
           for arch in ("ResNet20-4", "ConvNet")
           for mode, ats, defense in [("aug", "", ""), ("crop", "", ""), ("aug", "3-1-7", ""), ("aug", "43-18-18", ""),
                                      ("aug", "3-1-7+43-18-18", ""), ("crop", "", "_defense_prune_70"),
                                      ("crop", "", "_defense_gaussian_1e-3")]]


def test_plan_lists_the_14_sets_of_the_study_without_the_dataset(tmp_path: Path) -> None:
    spec = parse_grid(yaml.safe_load(EXAMPLE.read_text()), tmp_path / "a" / "b" / "grid.yaml")
    assert not Path(spec.datasets[0].path).exists()  # no CIFAR-100 here: the plan must not need it
    plan = build_plan(spec)
    sets = sorted({t.set for t in plan.tasks if t.kind == "attack"})
    assert len(sets) == 14
    assert sets == sorted(_set_name(c) for c in CONFIGS)
    attacks = [t for t in plan.tasks if t.kind == "attack"]
    assert sum(t.n_images for t in attacks) == 14 * 600
    p = attacks[0].params
    assert (p["attack"], p["iterations"], p["options"], p["defense"], p["split"]) == (
        "invgrad", 8000, {"restarts": 1, "tv": 1e-4}, "none", "test")
    trains = {t.id.split("/", 1)[1]: t.params for t in plan.tasks if t.kind == "train"}
    assert len(trains) == 14
    for name, r in trains.items():
        assert (r["epochs"], r["batch_size"], r["lr"], r["schedule"], r["nesterov"], r["warmup"]) == (
            200, 64, 0.1, "step", True, 0.0), name
        assert [int(m * 200) for m in r["milestones"]] == [74, 124, 175] and r["split"] == "train"
    assert trains["convnet/crop+train-prune-70"]["defense"] == "prune-70"
    assert trains["resnet20-4/crop+train-noise-1e-3"]["defense"] == "noise-1e-3"
    assert trains["resnet20-4/ats-3-1-7+43-18-18"]["augment"] == "ats:3-1-7+43-18-18"
    assert trains["convnet/none"]["augment"] == "none" and trains["resnet20-4/none"]["architecture"] == "resnet20-4"


def test_the_planned_images_and_sets_are_the_released_tables() -> None:
    raw = pd.read_csv(shared_path("cifar100_human_labels", "labels.csv"))
    assert sorted(raw["config"].unique()) == sorted(CONFIGS)
    spec = load_grid(EXAMPLE)
    assert list(spec.images.indices) == sorted(set(raw["cifar100_test_idx_1based"] - 1))
