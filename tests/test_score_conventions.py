"""``semsim score --color`` and ``--no-download``: the published metric conventions from the command line."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from helpers import run_cli, shared_path
from semsim.data.images import load_images
from semsim.data.sets import write_manifest
from semsim.metrics import column_direction
from semsim.metrics.pixel import psnr, ssim


@pytest.fixture
def manifest(tmp_path):
    """Six real CIFAR-10 test JPEGs (cats), each paired with a dog."""
    cats = sorted(shared_path("cifar10_test", "cat").glob("*.jpg"))[:6]
    dogs = sorted(shared_path("cifar10_test", "dog").glob("*.jpg"))[:6]
    rows = [{"set": "s", "image_id": c.stem, "original": str(c), "reconstruction": str(d)}
            for c, d in zip(cats, dogs, strict=True)]
    path = tmp_path / "manifest.csv"
    write_manifest(pd.DataFrame(rows), path)
    return path, load_images(cats), load_images(dogs)


@pytest.mark.parametrize("color", ["gray", "y"])
def test_score_color_writes_the_converted_metrics(color, manifest, tmp_path, monkeypatch, capsys):
    path, x, y = manifest
    out = tmp_path / f"scores_{color}.csv"
    code, _, err = run_cli(["score", path, "--metrics", "psnr,ssim", "--color", color, "--out", out, "--quiet"],
                           monkeypatch, capsys)
    assert code in (0, None), err
    assert f"computed on the {color} image" in err
    table = pd.read_csv(out).sort_values("image_id")
    assert "ssim" not in table and "psnr" not in table  # the column names say the colour space
    assert np.allclose(table[f"ssim_{color}"], ssim(x, y, color=color).numpy(), atol=1e-5)
    assert np.allclose(table[f"psnr_{color}"], psnr(x, y, color=color).numpy(), atol=1e-4)
    assert not np.allclose(table[f"ssim_{color}"], ssim(x, y).numpy(), atol=1e-3)
    assert f"ssim_{color}_mean" in pd.read_csv(out.with_name(f"scores_{color}_sets.csv"))
    assert column_direction(f"ssim_{color}") is True and column_direction(f"mse_{color}") is False


def test_score_rejects_unknown_color_and_no_download_stops_fetching(manifest, tmp_path, monkeypatch, capsys):
    path, _, _ = manifest
    code, _, err = run_cli(["score", path, "--metrics", "ssim", "--color", "lab"], monkeypatch, capsys)
    assert code == 2 and err.strip() == "error: --color lab: use rgb, gray or y"
    monkeypatch.delenv("SEMSIM_OFFLINE", raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("SEMSIM_WEIGHTS_DIR", str(tmp_path / "none"))
    code, _, err = run_cli(["score", path, "--metrics", "ssim,lpips_alex", "--no-download", "--quiet"],
                           monkeypatch, capsys)
    assert code in (0, None), err
    assert "lpips_alex skipped" in err and "downloads are off" in err
    assert not (tmp_path / "torch").exists()
