"""Bad input, as a new user makes it: every row of the table stops with ONE line ``error: ...`` that names the
file or value and what to do, exit status 2, no traceback, and leaves no output file behind.

The table covers the failures reported in issue 15 (a traceback or a wrong number before) and the ones that
already worked (kept so they stay that way). Tests after the table cover the behaviours behind the rows: one
identity per set, identical pairs in per-set PSNR, the evaluator at chance, permissions, and the CLI boundary.
"""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from helpers import run_cli, shared_path
from semsim.data.sets import write_manifest

# ---- fixtures: a real set (CIFAR-10 test images), checkpoints, a calibration ------------------------------------


@dataclass
class World:
    """Everything the bad inputs are made from (all in one temporary folder)."""

    root: Path
    set_folder: Path  # SemSim layout + manifest.csv (set 'cifar10/lenet/none/invgrad-10', one failed row)
    two_sets: Path  # manifest of two sets
    evaluator: Path  # a classifier checkpoint (random weights, recorded held-out accuracy 0.6)
    calibration: Path  # fitted on mse
    labels: Path  # a valid label table of the set


def _save_pairs(folder: Path, images: list[np.ndarray], label: int = 3, shift: int = 8) -> list[dict]:
    """Write each real image as ``{i}_{label}_ori.png`` and a perturbed copy as ``_rec.png``."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    rng = np.random.default_rng(0)
    for i, arr in enumerate(images):
        image_id = f"{i}_{label}"
        Image.fromarray(arr).save(folder / f"{image_id}_ori.png")
        noisy = np.clip(arr.astype(int) + rng.integers(-shift, shift + 1, arr.shape), 0, 255).astype(np.uint8)
        Image.fromarray(noisy).save(folder / f"{image_id}_rec.png")
        rows.append({"image_id": image_id, "original": str(folder / f"{image_id}_ori.png"),
                     "reconstruction": str(folder / f"{image_id}_rec.png"), "label": label, "status": "ok"})
    return rows


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    root = tmp_path_factory.mktemp("bad_inputs")
    files = sorted(shared_path("cifar10_test", "cat").glob("*.jpg"))[:4]
    cats = [np.asarray(Image.open(p).convert("RGB")) for p in files]
    folder = root / "sets" / "run1"
    rows = _save_pairs(folder, cats)
    rows.append({"image_id": "9_3", "original": str(folder / "0_3_ori.png"), "reconstruction": None, "label": 3,
                 "status": "failed: nan"})
    write_manifest(pd.DataFrame(rows).assign(set="cifar10/lenet/none/invgrad-10"), folder / "manifest.csv")
    other = pd.DataFrame(rows[:4]).assign(set="cifar10/lenet/noise-1e-2/invgrad-10")
    write_manifest(pd.concat([pd.DataFrame(rows[:4]).assign(set="cifar10/lenet/none/invgrad-10"), other]),
                   root / "two_sets.csv")

    from semsim.models.checkpoint import save_checkpoint
    from semsim.models.classifiers import create_model, model_config

    torch.manual_seed(0)
    net = create_model("convnet", num_classes=10, width=4)
    config = model_config("convnet", 10, 32, role="evaluator", dataset="cifar10", arch_kwargs={"width": 4},
                          clean_accuracy=0.6, accuracy=0.6, training={"n_val": 500, "n_train": 2000})
    evaluator = save_checkpoint(root / "evaluator", net, config)

    from semsim.analysis import join_scores_labels
    from semsim.analysis.calibration import fit_calibration
    from test_analysis_stats import DIRS, synthetic

    scores, labels = synthetic(n_sets=4, n=30, seed=1)
    data = join_scores_labels(scores, labels, directions=DIRS)
    calibration = fit_calibration(data.table, ["mse"], data.directions, n_draws=0, spread=False).save(root / "cal.json")

    label_table = pd.DataFrame({"set": "cifar10/lenet/none/invgrad-10", "image_id": [r["image_id"] for r in rows[:4]],
                                "recognized": [1.0, 0.0, 1.0, 0.0], "n_judges": 5, "label_source": "human:test"})
    label_table.to_csv(root / "labels.csv", index=False)
    return World(root, folder, root / "two_sets.csv", evaluator, calibration, root / "labels.csv")


# ---- the table ------------------------------------------------------------------------------------------------


@dataclass
class Case:
    """One bad input: ``make(world, tmp)`` builds it and returns the command line; the error line must contain
    every string of ``names`` (the file or value at fault) and ``fix`` (what to do)."""

    make: Callable[[World, Path], list]
    names: tuple[str, ...]
    fix: str
    out: str = "out.csv"  # what must not exist afterwards (relative to tmp)


def _copy_set(w: World, tmp: Path) -> Path:
    folder = tmp / "set"
    shutil.copytree(w.set_folder, folder)
    (folder / "manifest.csv").unlink()  # the plain SemSim-layout folder form
    return folder


def _set_with(w: World, tmp: Path, change: Callable[[Path], object]) -> Path:
    """A copy of the set (SemSim-layout folder form) with ``change`` applied to its folder."""
    folder = _copy_set(w, tmp)
    change(folder)
    return folder


def _file(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _folder(path: Path) -> Path:
    path.mkdir()
    return path


def _manifest(w: World, tmp: Path, edit: Callable[[pd.DataFrame], pd.DataFrame]) -> Path:
    df = pd.read_csv(w.set_folder / "manifest.csv", dtype={"image_id": str})
    df["original"] = [str(w.set_folder / p) if isinstance(p, str) else p for p in df["original"]]
    df["reconstruction"] = [str(w.set_folder / p) if isinstance(p, str) else p for p in df["reconstruction"]]
    path = tmp / "manifest.csv"
    edit(df).to_csv(path, index=False)
    return path


def _set_cell(col: str, value: object, row: int = 1) -> Callable[[pd.DataFrame], pd.DataFrame]:
    def edit(df: pd.DataFrame) -> pd.DataFrame:
        df[col] = df[col].astype(object)
        df.loc[row, col] = value
        return df
    return edit


def _damaged(w: World, tmp: Path, content: bytes | None) -> Path:
    folder = tmp / "model"
    shutil.copytree(w.evaluator, folder)
    weights = folder / "model.safetensors"
    weights.write_bytes(content if content is not None else weights.read_bytes()[:-100])
    return folder


def _small_images(w: World, tmp: Path) -> Path:
    folder = tmp / "small"
    images = [np.asarray(Image.open(w.set_folder / f"{i}_3_ori.png").resize((8, 8), Image.BILINEAR)) for i in range(3)]
    _save_pairs(folder, images)
    return folder


def _labels(w: World, tmp: Path, edit: Callable[[pd.DataFrame], pd.DataFrame]) -> Path:
    path = tmp / "labels.csv"
    edit(pd.read_csv(w.labels, dtype={"image_id": str})).to_csv(path, index=False)
    return path


def _unwritable(tmp: Path) -> Path:
    """A folder this process cannot write into (a read-only folder; /proc for root, who ignores permissions)."""
    if os.geteuid() == 0:
        return Path("/proc/semsim-out")
    folder = tmp / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    return folder


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

CASES: dict[str, Case] = {
    # score: the set
    "folder does not exist": Case(lambda w, t: ["score", t / "nope", "--out", t / "out.csv"], ("nope",),
                                  "give a folder"),
    "reconstruction missing": Case(
        lambda w, t: ["score", _set_with(w, t, lambda f: (f / "1_3_rec.png").unlink()), "--out", t / "out.csv"],
        ("1_3_ori.png",), "--skip-bad"),
    "unreadable image": Case(
        lambda w, t: ["score", _set_with(w, t, lambda f: (f / "2_3_rec.png").write_bytes(PNG_SIGNATURE + b"x" * 64)),
                      "--out", t / "out.csv"], ("2_3_rec.png",), "replace"),
    "sizes differ": Case(
        lambda w, t: ["score", _set_with(w, t, lambda f: Image.new("RGB", (64, 64)).save(f / "0_3_rec.png")),
                      "--out", t / "out.csv"], ("0_3_rec.png", "64x64"), "resize"),
    "stray non-image file": Case(
        lambda w, t: ["score", _set_with(w, t, lambda f: (f / "weights.bin").write_bytes(b"\0" * 8)), "--out",
                      t / "out.csv"], ("weights.bin",), "move it out"),
    "empty folder": Case(lambda w, t: ["score", _folder(t / "empty"), "--out", t / "out.csv"], ("empty",),
                         "point to the folder"),
    "manifest lacks a column": Case(
        lambda w, t: ["score", _manifest(w, t, lambda d: d.drop(columns="original")), "--out", t / "out.csv"],
        ("manifest.csv", "original"), "needs"),
    "manifest id twice": Case(
        lambda w, t: ["score", _manifest(w, t, _set_cell("image_id", "0_3")), "--out", t / "out.csv"],
        ("manifest.csv", "0_3"), "unique"),
    "manifest blank set": Case(
        lambda w, t: ["score", _manifest(w, t, _set_cell("set", None)), "--out", t / "out.csv"],
        ("manifest.csv, line 3", "'set'"), "fill it in"),
    "manifest blank image_id": Case(
        lambda w, t: ["score", _manifest(w, t, _set_cell("image_id", " ")), "--out", t / "out.csv"],
        ("line 3", "'image_id'"), "fill it in"),
    "label 2.5": Case(lambda w, t: ["score", _manifest(w, t, _set_cell("label", 2.5)), "--out", t / "out.csv"],
                      ("line 3", "label 2.5"), "whole numbers"),
    "label text": Case(lambda w, t: ["score", _manifest(w, t, _set_cell("label", "cat")), "--out", t / "out.csv"],
                       ("line 3", "label cat"), "whole numbers"),
    "manifest names an absent image": Case(
        lambda w, t: ["score", _manifest(w, t, _set_cell("reconstruction", str(t / "gone.png"))), "--out",
                      t / "out.csv"], ("gone.png",), "fix the path"),
    "--set on a manifest of two sets": Case(
        lambda w, t: ["score", w.two_sets, "--set", "mine", "--out", t / "out.csv"], ("two_sets.csv", "2 sets"),
        "leave the name out"),
    "one set given twice": Case(
        lambda w, t: ["score", "--sets", w.set_folder, "--sets", w.set_folder / "manifest.csv", "--out", t / "out.csv"],
        ("cifar10/lenet/none/invgrad-10",), "give each set once"),
    "images smaller than SSIM's window": Case(
        lambda w, t: ["score", _small_images(w, t), "--quiet", "--out", t / "out.csv"], ("0_3_ori.png", "8x8", "ssim"),
        "leave ssim"),
    "every pair too small, with --skip-bad": Case(
        lambda w, t: ["score", _small_images(w, t), "--skip-bad", "--metrics", "psnr,ssim", "--quiet", "--out",
                      t / "out.csv"], ("3 pair(s)", "8x8", "ssim"), "choose other --metrics"),
    # score: options
    "unknown metric": Case(lambda w, t: ["score", w.set_folder, "--metrics", "psnr,ssmi", "--out", t / "out.csv"],
                           ("ssmi",), "known metrics"),
    "unknown output format": Case(lambda w, t: ["score", w.set_folder, "--out", t / "out.xlsx"], ("out.xlsx",),
                                  ".csv", out="out.xlsx"),
    "output folder not writable": Case(
        lambda w, t: ["score", w.set_folder, "--out", _unwritable(t) / "out.csv"], ("out.csv",), "choose a folder"),
    "--device cuda without CUDA": Case(lambda w, t: ["score", w.set_folder, "--device", "cuda", "--out", t / "out.csv"],
                                       ("--device cuda",), "--device cpu"),
    "--device gpu": Case(lambda w, t: ["score", w.set_folder, "--device", "gpu", "--out", t / "out.csv"],
                         ("--device gpu",), "cuda"),
    "--batch-size 0": Case(lambda w, t: ["score", w.set_folder, "--batch-size", "0", "--out", t / "out.csv"],
                           ("--batch-size",), "--help"),
    "misspelt option": Case(lambda w, t: ["score", w.set_folder, "--metric", "psnr", "--out", t / "out.csv"],
                            ("--metric",), "--help"),
    "calibration needs a column the panel lacks": Case(
        lambda w, t: ["score", w.set_folder, "--metrics", "psnr", "--calibration", w.calibration, "--out",
                      t / "out.csv"], ("mse",), "add mse to --metrics"),
    "calibration file is not JSON": Case(
        lambda w, t: ["score", w.set_folder, "--calibration", _file(t / "cal.json", "{nope"),
                      "--out", t / "out.csv"], ("cal.json",), "semsim calibrate"),
    "evaluator weights damaged": Case(
        lambda w, t: ["score", w.set_folder, "--evaluator", _damaged(w, t, None), "--out", t / "out.csv"],
        ("model.safetensors",), "copy the checkpoint again"),
    "evaluator weights empty": Case(
        lambda w, t: ["score", w.set_folder, "--evaluator", _damaged(w, t, b""), "--out", t / "out.csv"],
        ("model.safetensors", "empty"), "retrain"),
    "evaluator folder without config": Case(
        lambda w, t: ["score", w.set_folder, "--evaluator", _folder(t / "ev"), "--out", t / "out.csv"],
        ("ev", "config.json"), "give a folder written by semsim"),
    "a classifier given as SemSim model": Case(
        lambda w, t: ["score", w.set_folder, "--semsim", w.evaluator, "--out", t / "out.csv"],
        ("evaluator", "not a SemSim model"), "semsim train"),
    # label, attack, training
    "label: damaged evaluator": Case(
        lambda w, t: ["label", "--by-model", _damaged(w, t, b"\0" * 16), "--sets", w.set_folder, "--out",
                      t / "out.csv"], ("model.safetensors",), "copy the checkpoint again"),
    "label: unknown output format": Case(
        lambda w, t: ["label", "--by-model", w.evaluator, "--sets", w.set_folder, "--out", t / "out.txt"],
        ("out.txt",), ".csv", out="out.txt"),
    "attack: damaged victim": Case(
        lambda w, t: ["attack", "--victim", _damaged(w, t, b""), "--data", "bundled:digits", "--n", "2",
                      "--iterations", "2", "--out", t / "out"], ("model.safetensors",), "retrain", out="out"),
    "attack: unknown attack": Case(
        lambda w, t: ["attack", "--victim", w.evaluator, "--data", "bundled:digits", "--attack", "dlgg", "--out",
                      t / "out"], ("dlgg",), "one of", out="out"),
    "attack: unknown defense": Case(
        lambda w, t: ["attack", "--victim", w.evaluator, "--data", "bundled:digits", "--defense", "blur-3", "--out",
                      t / "out"], ("blur-3",), "noise-", out="out"),
    "attack: dataset folder missing": Case(
        lambda w, t: ["attack", "--victim", w.evaluator, "--data", t / "cifar", "--out", t / "out"], ("cifar",),
        "folder", out="out"),
    "train-victim: --device cuda without CUDA": Case(
        lambda w, t: ["train-victim", "--data", "bundled:digits", "--epochs", "1", "--device", "cuda", "--out",
                      t / "out"], ("--device cuda",), "--device cpu", out="out"),
    "train-victim: unknown architecture": Case(
        lambda w, t: ["train-victim", "--data", "bundled:digits", "--epochs", "1", "--arch", "resnet9", "--out",
                      t / "out"], ("resnet9",), "choose one of", out="out"),
    "train-evaluator: output is a file": Case(
        lambda w, t: ["train-evaluator", "--data", "bundled:digits", "--epochs", "1", "--out",
                      _file(t / "f", "x")], ("f",), "give a folder name", out="nothing"),
    "train: recognized 1.7": Case(
        lambda w, t: ["train", "--labels", _labels(w, t, _set_cell("recognized", 1.7)), "--manifest",
                      w.set_folder / "manifest.csv", "--out", t / "out"], ("1_3", "has 1.7"), "[0, 1]", out="out"),
    "train: blank set in labels": Case(
        lambda w, t: ["train", "--labels", _labels(w, t, _set_cell("set", None)), "--manifest",
                      w.set_folder / "manifest.csv", "--out", t / "out"], ("row 2", "'set'"), "fill it in", out="out"),
    "evaluate: pattern matches no set": Case(
        lambda w, t: ["evaluate", "--labels", w.labels, "--manifest", w.set_folder / "manifest.csv", "--train-sets",
                      "*/resnet20-4/*", "--out", t / "out"], ("*/resnet20-4/*",), "labelled sets", out="out"),
    "grid run: device cuda without CUDA": Case(
        lambda w, t: ["grid", "run", _file(t / "grid.yaml", f"out: {t / 'out'}\ndevice: cuda\nsets: [{w.set_folder}]\n"
                                             "score: {metrics: [psnr]}\n")], ("grid.yaml", "device: cuda"),
        "use device: cpu", out="out"),
    "analyze: score table missing": Case(
        lambda w, t: ["analyze", t / "scores.csv", "--labels", w.labels, "--out", t / "out"], ("scores.csv",),
        "give the path", out="out"),
    "calibrate: output not JSON": Case(
        lambda w, t: ["calibrate", w.labels, "--labels", w.labels, "--metrics", "mse", "--out", t / "cal.txt"],
        ("cal.txt",), ".json", out="cal.txt"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_one_error_line(name, world, tmp_path, monkeypatch, capsys, one_thread):
    case = CASES[name]
    if name.endswith("without CUDA") and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    args = case.make(world, tmp_path)
    code, out, err = run_cli(args, monkeypatch, capsys)
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith(("warning:", "note:"))]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err + out and "np.float64" not in err
    for what in case.names:
        assert str(what) in lines[0], (what, lines[0])
    assert case.fix in lines[0], lines[0]
    assert not (tmp_path / case.out).exists(), f"{case.out} was left behind"
    assert not list(tmp_path.glob(".*.tmp")) and not list(tmp_path.glob(f".{case.out}.*"))


def test_the_table_holds_forty_cases():
    assert len(CASES) >= 40  # 45 at the time of writing


# ---- one identity per set -------------------------------------------------------------------------------------


def test_folder_and_manifest_forms_name_the_set_alike(world, tmp_path, monkeypatch, capsys):
    tables = {}
    for form, source in {"folder": world.set_folder, "manifest": world.set_folder / "manifest.csv"}.items():
        out = tmp_path / f"{form}.csv"
        code, _, err = run_cli(["score", source, "--metrics", "psnr", "--out", out, "--quiet"], monkeypatch, capsys)
        assert code == 0, err
        tables[form] = pd.read_csv(out, dtype={"image_id": str})
        assert "1 pair(s) skipped" in err  # the manifest's failed row, in both forms
    pd.testing.assert_frame_equal(tables["folder"], tables["manifest"])
    ok = tables["folder"][tables["folder"]["status"] == "ok"]
    assert set(ok["set"]) == {"cifar10/lenet/none/invgrad-10"} and len(ok) == 4
    failed = tables["folder"][tables["folder"]["status"] != "ok"]
    assert list(failed["image_id"]) == ["9_3"] and failed["status"].iloc[0] == "failed: nan"
    # labels made from the folder join scores made from the manifest on every row
    labels = pd.read_csv(world.labels, dtype={"image_id": str})
    assert len(ok.merge(labels, on=["set", "image_id"])) == len(labels) == 4
    # --set renames a single set
    code, _, err = run_cli(["score", world.set_folder, "--set", "mine", "--metrics", "psnr", "--out",
                            tmp_path / "renamed.csv", "--quiet"], monkeypatch, capsys)
    assert code == 0, err and set(pd.read_csv(tmp_path / "renamed.csv")["set"]) == {"mine"}


def test_keys_stay_text(world, tmp_path):
    from semsim.data.sets import ingest

    path = _manifest(world, tmp_path, lambda d: d.assign(image_id=[f"000{i}" for i in range(len(d))]))
    manifest, _ = ingest(path)
    assert list(manifest["image_id"]) == ["0000", "0001", "0002", "0003"]


# ---- no silent wrong numbers ----------------------------------------------------------------------------------


def test_identical_pairs_are_counted_and_kept_in_the_median(world, tmp_path, monkeypatch, capsys):
    df = pd.read_csv(world.set_folder / "manifest.csv", dtype={"image_id": str}).iloc[:3]
    base = world.set_folder
    df["original"] = [str(base / p) for p in df["original"]]
    df["reconstruction"] = [str(base / p) for p in df["reconstruction"]]
    df.loc[:1, "reconstruction"] = df.loc[:1, "original"]  # 2 of 3 pairs identical
    path = tmp_path / "m.csv"
    df.to_csv(path, index=False)
    code, stdout, err = run_cli(["score", path, "--metrics", "psnr,ssim", "--out", tmp_path / "s.csv", "--quiet"],
                                monkeypatch, capsys)
    assert code == 0, err
    per_image = pd.read_csv(tmp_path / "s.csv")
    sets = pd.read_csv(tmp_path / "s_sets.csv").iloc[0]
    finite = per_image["psnr"][np.isfinite(per_image["psnr"])]
    assert len(finite) == 1 and sets["psnr_mean"] == pytest.approx(finite.iloc[0])
    assert sets["psnr_n_identical"] == 2 and np.isinf(sets["psnr_median"])
    assert "2 identical" in stdout


def test_small_images_are_recorded_as_skipped_with_skip_bad(world, tmp_path, monkeypatch, capsys):
    folder = _small_images(world, tmp_path)
    big = tmp_path / "mixed"
    shutil.copytree(folder, big)
    for f in ("0_3_ori.png", "0_3_rec.png"):  # one pair large enough
        shutil.copy(world.set_folder / f, big / f)
    code, _, err = run_cli(["score", big, "--skip-bad", "--metrics", "psnr,ssim", "--out", tmp_path / "s.csv",
                            "--quiet"], monkeypatch, capsys)
    assert code == 0, err
    table = pd.read_csv(tmp_path / "s.csv", dtype={"image_id": str}).set_index("image_id")
    assert table.loc["0_3", "status"] == "ok" and table.loc["0_3", "ssim"] > 0.5
    skipped = table[table["status"] != "ok"]
    assert len(skipped) == 2 and skipped["status"].str.contains("8x8 pixels, smaller than the 11x11").all()
    assert not skipped["status"].str.contains("pass --skip-bad").any()


def test_evaluator_near_chance_warns(world, tmp_path, monkeypatch, capsys):
    weak = tmp_path / "weak"
    shutil.copytree(world.evaluator, weak)
    config = (weak / "config.json").read_text().replace('"clean_accuracy": 0.6', '"clean_accuracy": 0.11')
    (weak / "config.json").write_text(config)
    code, _, err = run_cli(["label", "--by-model", weak, "--sets", world.set_folder, "--out", tmp_path / "l.csv",
                            "--quiet"], monkeypatch, capsys)
    assert code == 0, err
    assert "warning: evaluator" in err and "0.110 is near chance (1/10 = 0.100)" in err
    code, _, err = run_cli(["label", "--by-model", world.evaluator, "--sets", world.set_folder, "--out",
                            tmp_path / "l2.csv", "--quiet"], monkeypatch, capsys)
    assert code == 0 and "near chance" not in err


def test_checkpoints_are_not_private(world):
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in [world.evaluator, *world.evaluator.iterdir()]}
    umask = os.umask(0)
    os.umask(umask)
    assert modes == {"evaluator": 0o777 & ~umask, "model.safetensors": 0o666 & ~umask, "config.json": 0o666 & ~umask}


# ---- the CLI boundary -----------------------------------------------------------------------------------------


def test_version(monkeypatch, capsys):
    import semsim

    code, out, _ = run_cli(["--version"], monkeypatch, capsys)
    assert code == 0 and out.strip() == f"semsim {semsim.__version__}"


def test_os_errors_are_one_line_and_bugs_keep_their_traceback(world, tmp_path, monkeypatch, capsys):
    import semsim.data.sets

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(world.set_folder))

    monkeypatch.setattr(semsim.data.sets, "ingest", denied)
    code, _, err = run_cli(["score", world.set_folder, "--quiet"], monkeypatch, capsys)
    assert code == 2 and err.strip().splitlines() == [
        f"error: {world.set_folder}: Permission denied; check the path, its permissions and the free disk space"]

    def bug(*args, **kwargs):
        return {}["no such key"]

    monkeypatch.setattr(semsim.data.sets, "ingest", bug)
    code, _, err = run_cli(["score", world.set_folder, "--quiet"], monkeypatch, capsys)
    assert code == 1 and "Traceback" in err and "KeyError: 'no such key'" in err
    assert err.strip().splitlines()[-1].endswith("please report it with the command line and the traceback above")


def test_threads_option_sets_torch_threads(world, tmp_path, monkeypatch, capsys):
    before = torch.get_num_threads()
    try:
        code, _, err = run_cli(["score", world.set_folder, "--metrics", "psnr", "--threads", "1", "--quiet"],
                               monkeypatch, capsys)
        assert code == 0, err and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


# ---- small items: explained nulls, old option names ----------------------------------------------------------


def test_train_explains_a_null_val_auroc(world, tmp_path, monkeypatch, capsys, one_thread):
    # 4 originals: 1 is held out, with one pair, so the held-out labels are of one kind and AUROC is undefined
    code, out, err = run_cli(["train", "--labels", world.labels, "--manifest", world.set_folder, "--arch", "convnet",
                              "--width", "4", "--image-size", "16", "--epochs", "1", "--batch-size", "4", "--quiet",
                              "--out", tmp_path / "m"], monkeypatch, capsys)
    assert code == 0, err
    assert '"val_auroc": null' in out
    assert "note: val_auroc is null: the held-out originals' pairs are all recognized or all not" in err


@pytest.mark.parametrize("args, value", [
    (["train-victim", "--architecture", "resnet9"], "resnet9"),  # --arch
    (["train", "--val-fraction", "0.3", "--architecture", "resnet9"], "resnet9"),  # --val-split, --arch
    (["demo", "--n-images", "4", "--device", "gpu"], "--device gpu"),  # --n
])
def test_old_option_names_still_parse(args, value, world, tmp_path, monkeypatch, capsys):
    extra = {"train-victim": ["--data", "bundled:digits", "--epochs", "1"],
             "train": ["--labels", str(world.labels), "--manifest", str(world.set_folder)]}.get(args[0], [])
    code, _, err = run_cli([*args, *extra, "--out", tmp_path / "o"], monkeypatch, capsys)
    assert code == 2 and err.startswith("error: ") and value in err and "No such option" not in err
    assert not (tmp_path / "o").exists()
