"""Benchmark of `semsim grid`: attack throughput with 1 and 2 local workers, and the per-task overhead of the
Ray path against the local pool (so that a user can size a cluster).

Throughput: an Inverting-Gradients grid (LeNet victim, 32x32 CIFAR-10 test images from ../shared/data, or
random images when that folder is absent) run with 1 and 2 workers of 1 torch thread each; images per hour
from the wall time (worker start-up and loading the dataset in each worker included).
Overhead: `probe` tasks that do no work, run N and 5N at a time on each executor (2 slots each); the slope
(extra wall time per extra task) is the per-task scheduling cost, the intercept the start-up cost.

    .venv/bin/python benchmarks/bench_grid.py [--images 32] [--iterations 100] [--tasks 20]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

from semsim.grid import build_plan, load_grid, run_plan

SHARED = Path(os.environ.get("SEMSIM_SHARED_DATA",
                             Path(__file__).resolve().parents[1] / ".." / "shared" / "data"))


def _dataset(root: Path) -> tuple[Path, str]:
    cifar = SHARED / "cifar10_test"
    if cifar.is_dir():
        return cifar.resolve(), "CIFAR-10 test (../shared/data)"
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in range(10):
        (root / "random" / f"c{c}").mkdir(parents=True)
        for i in range(8):
            img = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
            Image.fromarray(img).save(root / "random" / f"c{c}" / f"{i}.png")
    return root / "random", "random 32x32 images (shared data absent)"


def _grid(root: Path, name: str, data: dict) -> Path:
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"out": f"runs/{name}", **data}))
    return path


def throughput(root: Path, images: int, iterations: int, workers: int) -> tuple[float, float]:
    """Wall seconds and images per hour of an attack grid with ``workers`` local workers."""
    import torch

    from semsim.models.checkpoint import save_checkpoint
    from semsim.models.classifiers import create_model, model_config

    data, _ = _dataset(root) if not (root / "random").is_dir() else (root / "random", "")
    victim = root / "lenet"
    if not victim.is_dir():
        torch.manual_seed(0)
        save_checkpoint(victim, create_model("lenet", num_classes=10, image_size=32),
                        model_config("lenet", 10, 32))
    grid = load_grid(_grid(root, f"attack-{workers}", {
        "datasets": {"cifar10": str(data)}, "victims": {"lenet": {"checkpoint": str(victim)}},
        "attacks": [{"name": "invgrad", "iterations": [iterations]}],
        "images": {"n": images, "shard_size": 8, "seed": 0}, "attack": {"batch_size": 8}}))
    plan = build_plan(grid)
    start = time.perf_counter()
    report = run_plan(plan, workers=workers, threads=1, show_progress=False)
    wall = time.perf_counter() - start
    assert not report.failed and len(report.executed) == len(plan.tasks), report.failed
    return wall, images / wall * 3600


def overhead(root: Path, n: int, ray: str | None) -> tuple[float, float]:
    """(start-up s, s per task) from runs of ``n`` and ``5n`` empty tasks, after a warm-up run."""
    walls = []
    for tasks in (n, n, 5 * n):
        name = f"probe-{'ray' if ray else 'local'}-{tasks}-{len(walls)}"
        grid = load_grid(_grid(root, name, {"probe": {"tasks": tasks, "images": 0}}))
        plan = build_plan(grid)
        start = time.perf_counter()
        report = run_plan(plan, workers=2, ray=ray, show_progress=False)
        walls.append(time.perf_counter() - start)
        assert len(report.executed) == tasks
    walls = walls[1:]  # the first run warms up workers (imports, Ray worker processes)
    per_task = (walls[1] - walls[0]) / (4 * n)
    return walls[0] - n * per_task, per_task


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--iterations", type=int, default=100)
    parser.add_argument("--tasks", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        _, source = _dataset(root)
        load = os.getloadavg()[0]
        print(f"machine: {os.cpu_count()} CPU(s), load average {load:.1f} at start; data: {source}")
        print(f"\nthroughput: Inverting Gradients, {args.iterations} iterations, LeNet, "
              f"{args.images} images, 8 per task, 1 torch thread per worker\n")
        print("| workers | wall (s) | images/hour |\n|---|---|---|")
        for workers in (1, 2):
            wall, rate = throughput(root, args.images, args.iterations, workers)
            print(f"| {workers} | {wall:.1f} | {rate:,.0f} |", flush=True)

        print(f"\noverhead: empty tasks, {args.tasks} and {5 * args.tasks} per run, 2 slots\n")
        print("| executor | start-up (s) | per task (ms) | tasks/s |\n|---|---|---|---|")
        start, per_task = overhead(root, args.tasks, None)
        print(f"| local pool | {start:.2f} | {per_task * 1000:.1f} | {1 / per_task:.0f} |", flush=True)
        try:
            import ray
        except ImportError:
            print("| Ray | not installed (pip install 'semsim[ray]') | | |")
            return
        t0 = time.perf_counter()
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
        ray_start = time.perf_counter() - t0
        try:
            start, per_task = overhead(root, args.tasks, "auto")
        finally:
            ray.shutdown()
        print(f"| Ray (local, 2 CPUs) | {start:.2f} (+{ray_start:.1f} ray.init) | {per_task * 1000:.1f} "
              f"| {1 / per_task:.0f} |")
        print(f"\nload average at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
