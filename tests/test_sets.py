"""Ingestion of reconstruction sets: the three input forms, pairing by id, and every bad-input error."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from helpers import run_cli, shared_path
from semsim.data.sets import ingest, read_manifest, write_manifest
from semsim.errors import SemsimError


@pytest.fixture
def examples(tmp_path) -> Path:
    """A copy of the real CIFAR-100 examples: 2 complete pairs plus one original without reconstruction."""
    folder = tmp_path / "examples"
    shutil.copytree(shared_path("cifar100_examples"), folder)
    return folder


@pytest.fixture
def two_folders(tmp_path) -> tuple[Path, Path]:
    """Originals and (noisy) reconstructions of 6 real CIFAR-10 images, matched by file stem."""
    files = sorted(shared_path("cifar10_test", "ship").glob("*.jpg"))[:6]
    ori, rec = tmp_path / "ori", tmp_path / "rec"
    ori.mkdir()
    rec.mkdir()
    rng = np.random.default_rng(0)
    for i, f in enumerate(files):
        arr = np.asarray(Image.open(f).convert("RGB"))
        # names whose listing orders differ between the folders, so pairing by order would be wrong
        Image.fromarray(arr).save(ori / f"img{i}.png")
        noisy = np.clip(arr + rng.normal(0, 4, arr.shape), 0, 255).astype(np.uint8)
        Image.fromarray(noisy).save(rec / f"img{i}.png")
    (rec / "z_notes.txt").write_text("side files are ignored")
    return ori, rec


def test_semsim_layout_pairs_by_id_and_reads_labels(examples):
    with pytest.raises(SemsimError, match=r"100_35_ori.png: no reconstruction with id '100_35'.*--skip-bad"):
        ingest(examples)
    manifest, skipped = ingest(examples, skip_bad=True)
    assert list(manifest["image_id"]) == ["10_0", "1_49"]
    assert list(manifest["label"]) == [0, 49]
    for _, row in manifest.iterrows():
        assert Path(row["reconstruction"]).name == f"{row['image_id']}_rec.png"
        assert Path(row["original"]).name == f"{row['image_id']}_ori.png"
    assert set(manifest["set"]) == {"examples"}
    assert list(skipped["image_id"]) == ["100_35"] and skipped["status"].iloc[0].startswith("skipped: ")


def test_semsim_layout_with_sibling_originals_folder(examples, tmp_path):
    rec = tmp_path / "run"
    ori = tmp_path / "run_ori"
    rec.mkdir()
    ori.mkdir()
    for f in examples.glob("*_rec.png"):
        shutil.move(f, rec / f.name)
    for f in examples.glob("*_ori.png"):
        shutil.move(f, ori / f.name)
    manifest, skipped = ingest(rec, set_name="cifar100/demo", skip_bad=True)
    assert list(manifest["image_id"]) == ["10_0", "1_49"] and len(skipped) == 1
    assert all(Path(p).parent == ori for p in manifest["original"])
    assert set(manifest["set"]) == {"cifar100/demo"}


def test_two_folders_pair_by_stem(two_folders):
    ori, rec = two_folders
    (rec / "img0.png").rename(rec / "a_first.png")  # listing order now differs; the id no longer matches
    with pytest.raises(SemsimError, match="a_first.png: no original with id 'a_first'"):
        ingest(ori, rec)
    (rec / "a_first.png").rename(rec / "img0.png")
    manifest, skipped = ingest(ori, rec)
    assert len(manifest) == 6 and len(skipped) == 0
    for _, row in manifest.iterrows():
        assert Path(row["original"]).stem == Path(row["reconstruction"]).stem == row["image_id"]


def test_manifest_round_trip_with_relative_paths(two_folders, tmp_path):
    manifest, _ = ingest(*two_folders, set_name="s1")
    path = tmp_path / "manifest.csv"
    write_manifest(manifest, path)
    stored = pd.read_csv(path)
    assert not stored["original"].str.startswith("/").any()  # stored relative to the manifest
    again, skipped = ingest(path)
    assert list(again["image_id"]) == list(manifest["image_id"]) and len(skipped) == 0
    assert list(again["original"]) == [str(Path(p).resolve()) for p in manifest["original"]]
    assert read_manifest(path)["set"].eq("s1").all()


def _corrupt(two_folders, kind: str) -> tuple[Path, str]:
    """Make one kind of bad input; return the folder to ingest and the file name the error must name."""
    ori, rec = two_folders
    if kind == "missing partner":
        (rec / "img3.png").unlink()
        return rec, "img3.png"
    if kind == "unreadable file":
        (rec / "img2.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
        return rec, "img2.png"
    if kind == "mismatched sizes":
        Image.new("RGB", (64, 64)).save(rec / "img4.png")
        return rec, "img4.png"
    if kind == "non-image file":
        (rec / "weights.bin").write_bytes(b"\x00" * 16)
        return rec, "weights.bin"
    for f in rec.iterdir():  # empty folder
        f.unlink()
    return rec, str(rec)


BAD_INPUTS = ["missing partner", "unreadable file", "mismatched sizes", "non-image file", "empty folder"]
EXPECTED = {
    "missing partner": "no reconstruction",
    "unreadable file": "not a readable image",
    "mismatched sizes": "size 64x64 differs",
    "non-image file": "not an image file",
    "empty folder": "no image files found",
}


@pytest.mark.parametrize("kind", BAD_INPUTS)
def test_bad_input_is_one_line_error_with_exit_code_2(kind, two_folders, monkeypatch, capsys):
    ori, _ = two_folders
    folder, name = _corrupt(two_folders, kind)
    with pytest.raises(SemsimError, match=EXPECTED[kind]) as exc:
        ingest(ori, folder)
    assert name in str(exc.value)
    code, out, err = run_cli(["score", ori, folder, "--metrics", "psnr", "--quiet"], monkeypatch, capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and name in lines[0]
    assert "Traceback" not in err + out


@pytest.mark.parametrize("kind", ["missing partner", "unreadable file", "mismatched sizes"])
def test_skip_bad_records_the_pair(kind, two_folders, tmp_path, monkeypatch, capsys):
    ori, _ = two_folders
    folder, name = _corrupt(two_folders, kind)
    out_file = tmp_path / "scores.csv"
    code, _, err = run_cli(
        ["score", ori, folder, "--metrics", "psnr,ssim", "--skip-bad", "--quiet", "--out", out_file],
        monkeypatch,
        capsys,
    )
    assert code == 0, err
    table = pd.read_csv(out_file)
    bad = table[table["status"] != "ok"]
    assert len(table) == 6 and len(bad) == 1
    assert bad["status"].iloc[0].startswith("skipped: ") and name in bad["status"].iloc[0]
    assert bad[["psnr", "ssim"]].isna().all().all()
    assert table.loc[table["status"] == "ok", "psnr"].gt(30).all()  # noisy copies of the right originals
    assert "1 pair(s) skipped" in err


def test_bad_manifest_rows_are_reported(tmp_path, two_folders):
    ori, rec = two_folders
    rows = pd.DataFrame(
        {
            "set": "s",
            "image_id": ["img0", "img0"],
            "original": [str(ori / "img0.png")] * 2,
            "reconstruction": [str(rec / "img0.png")] * 2,
        }
    )
    rows.to_csv(tmp_path / "dupes.csv", index=False)
    with pytest.raises(SemsimError, match="'img0' appears twice"):
        ingest(tmp_path / "dupes.csv")
    rows.drop(columns="reconstruction").to_csv(tmp_path / "short.csv", index=False)
    with pytest.raises(SemsimError, match="missing column.*reconstruction"):
        ingest(tmp_path / "short.csv")
    rows.iloc[:1].assign(reconstruction=str(rec / "absent.png")).to_csv(tmp_path / "absent.csv", index=False)
    with pytest.raises(SemsimError, match="absent.png: no such file"):
        ingest(tmp_path / "absent.csv")


def test_image_size_reads_headers(two_folders, tmp_path):
    from semsim.data.images import image_size

    ori, _ = two_folders
    jpg = shared_path("celeba_samples")
    for path in [ori / "img0.png", *sorted(jpg.glob("*.jpg"))[:2]]:
        with Image.open(path) as img:
            assert image_size(path) == img.size
    fake = tmp_path / "fake.png"
    fake.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)  # signature without an IHDR chunk
    with pytest.raises(OSError):
        image_size(fake)
    with pytest.raises(FileNotFoundError):
        image_size(tmp_path / "absent.png")
