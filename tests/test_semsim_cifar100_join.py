"""The SemSim CIFAR-100 human labels join semsim's own attacks of the same study: the importer's set names are
the 14 the study grid (examples/semsim_cifar100.yaml) plans, and its image ids are those semsim's attacks
write for the same CIFAR-100 test image."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from helpers import shared_path
from semsim.analysis.data import import_semsim_cifar100
from semsim.attacks import attack_set
from semsim.data.image_dataset import ImageDataset
from semsim.data.set_names import image_id
from semsim.grid import build_plan, parse_grid
from semsim.models import create_model, model_config
from semsim.models.checkpoint import save_checkpoint

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "semsim_cifar100.yaml"
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def imported() -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    path = shared_path("cifar100_human_labels", "labels.csv")
    scores, labels = import_semsim_cifar100(path)
    return pd.read_csv(path), scores, labels


def test_the_importers_sets_are_the_14_the_study_grid_plans(imported, tmp_path) -> None:
    _, scores, labels = imported
    plan = build_plan(parse_grid(yaml.safe_load(EXAMPLE.read_text()), tmp_path / "grid.yaml"))
    planned = {t.set for t in plan.tasks if t.kind == "attack"}
    assert len(planned) == 14
    assert set(labels["set"]) == set(scores["set"]) == planned
    assert "cifar100/convnet/ats-3-1-7/client-ats-3-1-7/invgrad-8000" in planned


def test_the_importers_ids_are_the_ids_semsims_attacks_write(imported, tmp_path) -> None:
    raw, scores, labels = imported
    rows = raw.iloc[[0, 1, 2, 4000, len(raw) - 1]]
    for i, row in rows.iterrows():
        expected = image_id(int(row["cifar100_test_idx_1based"]) - 1, int(row["fine_label"]))
        assert labels.loc[i, "image_id"] == scores.loc[i, "image_id"] == expected
    assert labels.loc[0, "image_id"] == "780_12"  # 1-based test image 781 of class 12
    # semsim's attack on a stand-in for the CIFAR-100 test set, with those images' classes at those indices
    index = rows["cifar100_test_idx_1based"].to_numpy() - 1
    n = int(index.max()) + 1
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    classes = torch.zeros(n, dtype=torch.long)
    classes[torch.tensor(index.tolist())] = torch.tensor(rows["fine_label"].tolist())
    data = ImageDataset(images, classes, [f"c{k}" for k in range(100)], "cifar100", {})
    victim = tmp_path / "victim"
    save_checkpoint(victim, create_model("lenet", 100), model_config("lenet", 100))
    manifest = attack_set(victim, data, "dlg", tmp_path / "set", indices=sorted(set(index.tolist())),
                          iterations=1, batch_size=8, show_progress=False)
    assert set(manifest["image_id"]) == set(labels.loc[rows.index, "image_id"])
