"""Label ingestion for SemSim: the release layout, label tables, manifests joined on (set, image_id)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch

from semsim.data.images import save_image
from semsim.data.label_import import load_labels, read_release
from semsim.errors import SemsimError


def _img(path: Path, value: float) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(torch.full((3, 8, 8), value), path)
    return path


@pytest.fixture
def release(tmp_path: Path) -> Path:
    root = tmp_path / "train_with_ori"
    _img(root / "1" / "1_3_ori.png", 0.1)
    _img(root / "1" / "cfgA_rec.png", 0.2)
    _img(root / "1" / "cfgB_rec.png", 0.3)
    _img(root / "-1" / "cfgC_rec.png", 0.4)
    _img(root / "-7" / "7_2_ori.png", 0.5)  # an original nobody recognized: its image lies in -7/
    _img(root / "-7" / "cfgA_rec.png", 0.6)
    _img(root / "others" / "stranger.png", 0.7)
    return tmp_path


def test_release_layout_rows_and_labels(release: Path) -> None:
    df = read_release(release)  # the parent of train_with_ori/ is accepted too
    pairs = df[df["original"].notna()].set_index("image_id")
    assert sorted(pairs.index) == ["1/cfgA_rec", "1/cfgB_rec", "1/cfgC_rec", "7/cfgA_rec"]
    assert pairs.loc["1/cfgA_rec", "recognized"] == 1.0 and pairs.loc["1/cfgC_rec", "recognized"] == 0.0
    assert pairs.loc["7/cfgA_rec", "recognized"] == 0.0
    assert Path(pairs.loc["1/cfgC_rec", "original"]).name == "1_3_ori.png"
    assert Path(pairs.loc["7/cfgA_rec", "original"]).name == "7_2_ori.png"
    assert set(pairs["original_id"]) == {"1", "7"}
    others = df[df["original"].isna()]
    assert list(others["image_id"]) == ["others/stranger"] and others["recognized"].iloc[0] == 0.0
    assert set(df["label_source"]) == {"import:semsim-release"} and set(df["set"]) == {"train_with_ori"}
    human = load_labels([release / "train_with_ori"], label_source="human:semsim-paper")
    assert set(human["label_source"]) == {"human:semsim-paper"}


def test_release_layout_errors(tmp_path: Path, release: Path) -> None:
    (release / "train_with_ori" / "1" / "1_3_ori.png").unlink()
    with pytest.raises(SemsimError, match="'\\*_ori' image"):
        read_release(release)
    _img(tmp_path / "plain" / "cats" / "0.png", 0.2)
    _img(tmp_path / "plain" / "loose.png", 0.2)
    with pytest.raises(SemsimError, match="release layout"):
        read_release(tmp_path / "plain")
    with pytest.raises(SemsimError, match="not a label table"):
        load_labels([tmp_path / "nothing.txt"])


def _table(tmp_path: Path, with_paths: bool) -> tuple[Path, Path]:
    rows, man = [], []
    for i in range(3):
        o = _img(tmp_path / "imgs" / f"{i}_0_ori.png", 0.1 * i)
        r = _img(tmp_path / "imgs" / f"{i}_0_rec.png", 0.1 * i + 0.05)
        rows.append(
            {
                "set": "s",
                "image_id": f"{i}_0",
                "recognized": [0.8, 0.4, 0.6][i],
                "n_judges": 5,
                "label_source": "human:study1",
            }
        )
        man.append(
            {
                "set": "s",
                "image_id": f"{i}_0",
                "original": f"imgs/{o.name}",
                "reconstruction": f"imgs/{r.name}",
            }
        )
        if with_paths:
            rows[-1].update(man[-1])
    pd.DataFrame(rows).to_csv(tmp_path / "labels.csv", index=False)
    pd.DataFrame(man).to_parquet(tmp_path / "manifest.parquet", index=False)
    return tmp_path / "labels.csv", tmp_path / "manifest.parquet"


def test_label_table_paths_resolved_against_its_folder(tmp_path: Path) -> None:
    labels, _ = _table(tmp_path, with_paths=True)
    df = load_labels([labels])
    assert all(Path(p).is_absolute() and Path(p).is_file() for p in df["reconstruction"])
    assert list(df["original_id"]) == ["0_0", "1_0", "2_0"]
    assert list(df["recognized"]) == [0.8, 0.4, 0.6]


def test_label_table_joined_with_manifest(tmp_path: Path) -> None:
    labels, manifest = _table(tmp_path, with_paths=False)
    with pytest.raises(SemsimError, match="--manifest"):
        load_labels([labels])
    df = load_labels([labels], manifests=[manifest])
    assert all(Path(p).is_file() for p in df["original"])
    with pytest.raises(SemsimError, match="labelled twice"):
        load_labels([labels, labels], manifests=[manifest])


def test_release_layout_with_annotation_index(release: Path) -> None:
    """`semsim annotate export` writes index.csv beside train_with_ori/: real set names and judges' shares."""
    pd.DataFrame(
        [
            {
                "set": "cifar10/lenet/none/dlg-300",
                "image_id": "1_3",
                "file": "train_with_ori/-1/cfgC_rec.png",
                "recognized": 0.4,
                "n_judges": 5,
            }
        ]
    ).to_csv(release / "index.csv", index=False)
    df = read_release(release).set_index("reconstruction")
    row = df.loc[str((release / "train_with_ori" / "-1" / "cfgC_rec.png").resolve())]
    assert (row["set"], row["image_id"], row["recognized"], row["n_judges"]) == (
        "cifar10/lenet/none/dlg-300",
        "1_3",
        0.4,
        5,
    )
    assert row["original_id"] == "1"
