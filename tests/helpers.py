"""Helpers shared by the tests (no test file imports another one; conftest.py holds fixtures only).

Real data: ``SHARED_DATA`` / :func:`shared_path` (a test skips with a reason when it is absent). Synthetic
inputs: :func:`make_set` (a SemSim-layout folder of noisy pairs), :func:`write_grid`, :func:`synthetic` (score
and label tables of rising leakage), :func:`make_sets` (image sets with labels). :func:`run_cli` runs the
console entry point in-process. The annotation tests' own helpers (projects, logged-in clients, servers on held
sockets) are in ``annotation_util.py``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

SHARED_DATA = Path(os.environ.get("SEMSIM_SHARED_DATA", Path(__file__).resolve().parents[1] / ".." / "shared" / "data"))

DIRS = {"psnr": True, "mse": False, "noise": True}  # directions of the columns of synthetic()


def shared_path(*parts: str) -> Path:
    """A path inside the shared data folder, skipping the test when it is missing."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is absent from the shared data folder")
    return path.resolve()


def run_cli(args: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
            ) -> tuple[int, str, str]:
    """Run ``semsim ARGS`` in-process through the console entry point; return (exit code, stdout, stderr)."""
    from semsim.cli import main

    monkeypatch.setattr(sys, "argv", ["semsim", *map(str, args)])
    with pytest.raises(SystemExit) as exc:
        main()
    out, err = capsys.readouterr()
    return exc.value.code, out, err


def write_grid(folder: Path, data: dict, name: str = "grid.yaml") -> Path:
    """Write a grid file (YAML) into ``folder``."""
    path = folder / name
    path.write_text(yaml.safe_dump(data))
    return path


def make_set(folder: Path, n: int, seed: int, size: int = 16) -> Path:
    """A SemSim-layout set of random originals and noisy reconstructions."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    for i in range(n):
        ori = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        noise = rng.normal(0, 10 + 5 * i, ori.shape)
        rec = np.clip(ori.astype(float) + noise, 0, 255).astype(np.uint8)
        Image.fromarray(ori).save(folder / f"{i}_{i % 3}_ori.png")
        Image.fromarray(rec).save(folder / f"{i}_{i % 3}_rec.png")
    return folder


def synthetic(n_sets: int = 6, n: int = 40, seed: int = 0, judges: int = 5) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Sets of rising leakage; psnr (higher = leakage) and mse (lower = leakage) follow it, 'noise' not."""
    rng = np.random.default_rng(seed)
    scores, labels = [], []
    for s in range(n_sets):
        latent = rng.normal(s * 0.4, 1.0, n)
        p = 1 / (1 + np.exp(-(latent - 1.0)))
        votes = (rng.random((n, judges)) < p[:, None]).astype(int)
        votes[rng.random((n, judges)) < 0.1] = -1  # some "can't tell"
        ids = [f"img{i}" for i in range(n)]
        scores.append(pd.DataFrame({"set": f"set{s}", "image_id": ids,
                                    "psnr": latent + rng.normal(0, 0.5, n),
                                    "mse": np.exp(-latent) + rng.random(n) * 0.1,
                                    "noise": rng.normal(size=n)}))
        lab = pd.DataFrame({"set": f"set{s}", "image_id": ids, "recognized": (votes == 1).mean(1),
                            "n_judges": judges, "label_source": "human:test"})
        for k in range(judges):
            lab[f"judge_{k + 1}"] = votes[:, k]
        labels.append(lab)
    return pd.concat(scores, ignore_index=True), pd.concat(labels, ignore_index=True)


def make_sets(root: Path, n: int = 12, seed: int = 0) -> tuple[Path, Path]:
    """Three sets of real image files (noise of rising strength), their manifest and a label table."""
    from semsim.data.labels import write_labels

    rng = np.random.default_rng(seed)
    rows, labels = [], []
    for s, set_name in enumerate(("alpha", "beta", "gamma")):
        for i in range(n):
            ori = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
            sigma = 10 + 60 * ((i + s * n / 3) % n) / n - 3 * s
            rec = np.clip(ori + rng.normal(0, sigma, ori.shape), 0, 255).astype(np.uint8)
            folder = root / set_name
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(ori).save(folder / f"{i}_0_ori.png")
            Image.fromarray(rec).save(folder / f"{i}_0_rec.png")
            rows.append({"set": set_name, "image_id": str(i), "original": f"{set_name}/{i}_0_ori.png",
                         "reconstruction": f"{set_name}/{i}_0_rec.png"})
            recognized = float(sigma < 40) if i % 5 else float(sigma >= 40)  # mostly, not always, agree
            labels.append({**rows[-1], "recognized": recognized, "n_judges": 1, "label_source": "human:test"})
    manifest = root / "manifest.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    write_labels(pd.DataFrame(labels), root / "labels.csv")
    return manifest, root / "labels.csv"


def small_cifar10_folder(out: Path, per_class: int) -> Path:
    """An image folder of real CIFAR-10 test images: airplane, automobile, bird x ``per_class``."""
    import shutil

    root = shared_path("cifar10_test")
    for name in ("airplane", "automobile", "bird"):
        (out / name).mkdir(parents=True)
        for k in range(per_class):
            shutil.copy(root / name / f"{k:04d}.jpg", out / name / f"{k:04d}.jpg")
    return out


def untrained_lenet(folder: Path, **training: str) -> Path:
    """A seeded, untrained 3-class LeNet checkpoint whose config records ``training``."""
    import torch

    from semsim.models import create_model, model_config
    from semsim.models.checkpoint import save_checkpoint

    torch.manual_seed(0)
    save_checkpoint(folder, create_model("lenet", 3),
                    model_config("lenet", 3, training={"dataset": "/data/cifar10", **training}))
    return folder


def torch_lbfgs(f, start, iterations: int, history: int):
    """The reference: ``torch.optim.LBFGS`` (no line search, no early stop) run ``iterations`` times on ``f``
    from ``start``; returns the final point."""
    import torch

    ref = start.clone().requires_grad_(True)
    opt = torch.optim.LBFGS([ref], lr=1, max_iter=iterations, max_eval=2 * iterations, history_size=history,
                            tolerance_change=0, tolerance_grad=0)

    def closure():
        opt.zero_grad()
        loss = f(ref)
        loss.backward()
        return loss

    opt.step(closure)
    return ref.detach()
