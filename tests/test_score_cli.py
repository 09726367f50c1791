"""``semsim score`` end to end on the real example reconstructions and CIFAR-10 test JPEGs."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from helpers import run_cli, shared_path
from semsim.data.images import read_array
from semsim.data.sets import write_manifest
from semsim.metrics import column_direction
from semsim.metrics.scoring import build_metrics, score_manifest


@pytest.fixture(scope="module")
def cifar_manifest(tmp_path_factory) -> Path:
    """Two sets of real CIFAR-10 test JPEGs: 'same' pairs each image with itself, 'other' with a dog."""
    cats = sorted(shared_path("cifar10_test", "cat").glob("*.jpg"))[:30]
    dogs = sorted(shared_path("cifar10_test", "dog").glob("*.jpg"))[:30]
    rows = [
        {"set": "same", "image_id": c.stem, "original": str(c), "reconstruction": str(c), "label": 3}
        for c in cats
    ]
    rows += [
        {"set": "other", "image_id": c.stem, "original": str(c), "reconstruction": str(d), "label": 3}
        for c, d in zip(cats, dogs, strict=True)
    ]
    path = tmp_path_factory.mktemp("manifest") / "manifest.csv"
    write_manifest(pd.DataFrame(rows), path)
    return path


def test_score_examples_end_to_end(tmp_path, monkeypatch, capsys):
    out = tmp_path / "res" / "scores.parquet"
    code, stdout, err = run_cli(
        ["score", shared_path("cifar100_examples"), "--metrics", "mse,psnr,ssim,ms_ssim", "--skip-bad", "--out",
         out, "--quiet"],
        monkeypatch,
        capsys,
    )
    assert code == 0, err
    assert re.search(r"^warning: ms_ssim left blank.*176x176", err, re.M), err
    table = pd.read_parquet(out)
    ok = table[table["status"] == "ok"].set_index("image_id")
    assert list(ok.index) == ["10_0", "1_49"]
    ex = shared_path("cifar100_examples")
    for image_id in ok.index:
        a, b = (read_array(ex / f"{image_id}_{k}.png") / 255.0 for k in ("ori", "rec"))
        assert ok.loc[image_id, "psnr"] == pytest.approx(
            peak_signal_noise_ratio(a, b, data_range=1), abs=1e-4
        )
        ssim = structural_similarity(
            a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1, channel_axis=2
        )
        assert ok.loc[image_id, "ssim"] == pytest.approx(ssim, abs=1e-4)
    assert ok["ms_ssim"].isna().all()  # 32x32 is below MS-SSIM's minimum, which the warning says
    sets = pd.read_parquet(tmp_path / "res" / "scores_sets.parquet")
    assert sets.loc[0, "n"] == 2 and sets.loc[0, "psnr_mean"] == pytest.approx(ok["psnr"].mean())
    assert "per-set summary" in stdout and "cifar100_ex" in stdout
    assert "1 pair(s) skipped" in err


def test_score_manifest_with_two_sets(cifar_manifest, tmp_path, monkeypatch, capsys):
    out = tmp_path / "scores.csv"
    code, stdout, err = run_cli(
        ["score", cifar_manifest, "--metrics", "psnr,ssim,mse", "--batch-size", "7", "--out", out, "--quiet"],
        monkeypatch,
        capsys,
    )
    assert code == 0, err
    table = pd.read_csv(out)
    assert list(table.columns) == ["set", "image_id", "psnr", "ssim", "mse"]
    assert len(table) == 60 and table.groupby("set").size().to_dict() == {"same": 30, "other": 30}
    same, other = table[table["set"] == "same"], table[table["set"] == "other"]
    assert (
        np.isinf(same["psnr"]).all() and np.allclose(same["ssim"], 1, atol=1e-5) and same["mse"].eq(0).all()
    )
    assert other["ssim"].lt(0.9).all() and other["psnr"].lt(30).all()
    sets = pd.read_csv(tmp_path / "scores_sets.csv").set_index("set")
    lo, hi = sets.loc["other", "ssim_ci_low"], sets.loc["other", "ssim_ci_high"]
    assert lo < sets.loc["other", "ssim_mean"] < hi
    assert column_direction("ssim") is True and column_direction("mse") is False


def test_python_api_batches_give_the_same_table(cifar_manifest):
    from semsim.data.sets import read_manifest

    manifest = read_manifest(cifar_manifest)
    metrics, notes = build_metrics(["mse", "psnr", "ssim"])
    a = score_manifest(manifest, metrics, batch_size=256, show_progress=False).per_image
    b = score_manifest(manifest, metrics, batch_size=4, show_progress=False).per_image
    pd.testing.assert_frame_equal(a, b)
    assert not notes


def test_output_is_atomic(cifar_manifest, tmp_path, monkeypatch, capsys):
    out = tmp_path / "scores.csv"
    out.write_text("previous results\n")

    def interrupted(self, path, *args, **kwargs):
        Path(path).write_text("set,image_id,psnr\nsame,0001,")  # half a table, then Ctrl-C
        raise KeyboardInterrupt

    monkeypatch.setattr(pd.DataFrame, "to_csv", interrupted)
    monkeypatch.setattr(
        sys,
        "argv",
        ["semsim", "score", str(cifar_manifest), "--metrics", "psnr", "--out", str(out), "--quiet"],
    )
    from semsim.cli import main

    with pytest.raises(SystemExit) as exc:  # click turns Ctrl-C into exit status 130
        main()
    assert exc.value.code == 130
    assert out.read_text() == "previous results\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scores.csv"]  # no temporary file left behind


def test_unknown_metric_and_console_script(tmp_path, monkeypatch, capsys):
    code, _, err = run_cli(
        ["score", shared_path("cifar100_examples"), "--metrics", "psnr,nope", "--skip-bad"],
        monkeypatch,
        capsys,
    )
    assert code == 2 and "unknown metric 'nope'" in err and len(err.strip().splitlines()) == 1
    # the installed entry point (a real process): same one-line error, no traceback
    proc = subprocess.run(
        [sys.executable, "-m", "semsim", "score", str(tmp_path / "absent"), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr


def test_decoding_in_worker_processes_gives_the_same_table(cifar_manifest, monkeypatch, tmp_path):
    import semsim.metrics.scoring
    from semsim.data.images import DecodePool, read_arrays
    from semsim.data.sets import read_manifest
    from semsim.errors import SemsimError

    manifest = read_manifest(cifar_manifest)
    paths = list(manifest["original"]) + list(manifest["reconstruction"])
    with DecodePool(2) as pool:
        arrays = pool.read(paths)
        bad = tmp_path / "bad.png"
        bad.write_bytes(b"not an image")
        with pytest.raises(SemsimError, match="bad.png: not a readable image"):
            pool.read([*paths[:20], bad])
    assert all(np.array_equal(a, b) for a, b in zip(arrays, read_arrays(paths, workers=1), strict=True))
    metrics, _ = build_metrics(["psnr", "ssim"])
    threads = score_manifest(manifest, metrics, batch_size=16, show_progress=False)
    used = []

    class Recording(DecodePool):
        def __init__(self, workers: int = 2, processes: bool = True) -> None:
            super().__init__(workers, processes)
            used.append(self._procs is not None)

    monkeypatch.setattr(semsim.metrics.scoring, "_PROCESS_DECODE_MIN", 1)
    monkeypatch.setattr(semsim.metrics.scoring, "_idle_cores", lambda: 2.0)
    monkeypatch.setattr(semsim.metrics.scoring, "DecodePool", Recording)
    processes = score_manifest(manifest, metrics, batch_size=16, show_progress=False)
    assert used == [True]
    pd.testing.assert_frame_equal(threads.per_image, processes.per_image)
    pd.testing.assert_frame_equal(threads.per_set, processes.per_set)
