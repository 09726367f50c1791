"""Metric-panel benchmark (issue 2, Performance): every contender measured side by side in one run.

For 1,000 pairs of RGB PNGs (real CIFAR-10 test images from ../shared/data, 32x32 and upsampled to 64x64):

* decode alone: PIL-decoding the 2,000 files to arrays, in one thread and in two;
* scikit-image per pair: ``mean_squared_error`` + ``peak_signal_noise_ratio`` + ``structural_similarity``
  (Gaussian, as the SemSim reference code scores pairs), on arrays in memory;
* torchmetrics SSIM: ``structural_similarity_index_measure`` on the same tensors, in batches of 256;
* ours: semsim's ``mse`` + ``psnr`` + ``ssim`` metrics on the tensors, in batches of 256 (and ``ssim`` alone);
* files to table: ``ingest`` + ``score_manifest`` (mse, psnr, ssim) + writing the Parquet table.

Each figure is the best of ``--repeats`` interleaved rounds, in ms per pair, as wall-clock time and as CPU
time (this process and its decoding workers, which semsim keeps running between calls; a steadier figure on a
shared machine). Usage:
``python benchmarks/bench_metrics.py [--pairs 1000] [--sizes 32 64] [--repeats 5] [--threads 1]``.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from skimage.metrics import mean_squared_error, peak_signal_noise_ratio, structural_similarity
from torchmetrics.functional.image import structural_similarity_index_measure

from semsim.common.io import write_table
from semsim.data.images import read_arrays, to_tensor
from semsim.data.sets import ingest
from semsim.metrics import create
from semsim.metrics.scoring import build_metrics, score_manifest

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "cifar10_test"
BATCH = 256
PANEL = ["mse", "psnr", "ssim"]


def pil_decode(path: Path) -> np.ndarray:
    """Decoding alone, the floor: PIL to a uint8 RGB array."""
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


def make_pngs(folder: Path, size: int, n: int) -> tuple[Path, Path]:
    """Write n originals and n reconstructions (other real images) as PNGs of size x size."""
    files = sorted(SHARED.glob("*/*.jpg"))
    if len(files) < 2 * n:
        sys.exit(
            f"error: {SHARED} holds {len(files)} JPEGs; {2 * n} are needed (../shared/data/cifar10_test)"
        )
    ori, rec = folder / f"ori{size}", folder / f"rec{size}"
    ori.mkdir()
    rec.mkdir()
    step = len(files) // (2 * n)
    for i in range(n):
        for out, f in ((ori, files[2 * i * step]), (rec, files[(2 * i + 1) * step])):
            img = Image.open(f).convert("RGB")
            if img.size != (size, size):
                img = img.resize((size, size), Image.BILINEAR)
            img.save(out / f"{i:05d}.png")
    return ori, rec


def live_children_seconds() -> float:
    """CPU time of this process's running children (the decoding workers kept between calls), from Linux's
    /proc/PID/schedstat (nanoseconds on a CPU); 0 where that is unavailable."""
    total = 0.0
    for task in Path(f"/proc/{os.getpid()}/task").glob("*/children"):
        for pid in task.read_text().split():
            try:
                total += int(Path(f"/proc/{pid}/schedstat").read_text().split()[0]) / 1e9
            except (OSError, ValueError, IndexError):
                pass
    return total


def cpu_seconds() -> float:
    """CPU time of this process and of its children (the decoding workers), finished or still running."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime + live_children_seconds()


def best_of(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, tuple[float, float]]:
    """Run every function once per round, ``repeats`` rounds; keep each one's fastest (wall, CPU) seconds."""
    best = dict.fromkeys(fns, (float("inf"), float("inf")))
    for _ in range(repeats):
        for name, fn in fns.items():
            cpu, start = cpu_seconds(), time.perf_counter()
            fn()
            wall, cpu = time.perf_counter() - start, cpu_seconds() - cpu
            best[name] = (min(best[name][0], wall), min(best[name][1], cpu))
    return best


def bench_size(size: int, n: int, repeats: int, tmp: Path) -> dict[str, float]:
    ori_dir, rec_dir = make_pngs(tmp, size, n)
    paths = sorted(ori_dir.iterdir()) + sorted(rec_dir.iterdir())
    arrays = read_arrays(paths, workers=1)
    x, y = to_tensor(arrays[:n]), to_tensor(arrays[n:])
    ori64 = [a / 255.0 for a in arrays[:n]]
    rec64 = [a / 255.0 for a in arrays[n:]]
    ours = {name: create(name) for name in PANEL}
    out_file = tmp / f"scores{size}.parquet"

    def skimage_loop() -> None:
        for a, b in zip(ori64, rec64, strict=True):
            mean_squared_error(a, b)
            peak_signal_noise_ratio(a, b, data_range=1)
            structural_similarity(
                a,
                b,
                gaussian_weights=True,
                sigma=1.5,
                use_sample_covariance=False,
                data_range=1,
                channel_axis=2,
            )

    def torchmetrics_ssim() -> None:
        for i in range(0, n, BATCH):
            structural_similarity_index_measure(
                y[i : i + BATCH], x[i : i + BATCH], data_range=1.0, reduction="none"
            )

    def ours_panel(names: list[str] = PANEL) -> None:
        with torch.no_grad():
            for i in range(0, n, BATCH):
                for name in names:
                    ours[name](x[i : i + BATCH], y[i : i + BATCH])

    def files_to_table() -> None:
        manifest, _ = ingest(ori_dir, rec_dir)
        metrics, _ = build_metrics(PANEL)
        result = score_manifest(manifest, metrics, show_progress=False)
        write_table(result.per_image, out_file)

    with ThreadPoolExecutor(2) as decoders:
        seconds = best_of(
            {
                "decode alone, 1 thread": lambda: [pil_decode(p) for p in paths],
                "decode alone, 2 threads": lambda: list(decoders.map(pil_decode, paths, chunksize=64)),
                "scikit-image loop (mse+psnr+ssim)": skimage_loop,
                "torchmetrics SSIM": torchmetrics_ssim,
                "ours (ssim)": lambda: ours_panel(["ssim"]),
                "ours (mse+psnr+ssim)": ours_panel,
                "files to table (ingest+decode+score+write)": files_to_table,
            },
            repeats,
        )
    return {k: (wall / n * 1e3, cpu / n * 1e3) for k, (wall, cpu) in seconds.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=1000)
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch threads for the in-memory contenders")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            results[size] = bench_size(size, args.pairs, args.repeats, Path(tmp))
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"\n{args.pairs} pairs, best of {args.repeats} rounds, {os.cpu_count()} CPU cores "
        f"({platform.processor() or platform.machine()}), torch {torch.__version__} with {args.threads} "
        f"thread(s) for the in-memory contenders, load average {load:.1f} at the end\n"
    )
    sizes = args.sizes
    ratios = [
        (
            "scikit-image loop / ours (target >= 4)",
            "scikit-image loop (mse+psnr+ssim)",
            "ours (mse+psnr+ssim)",
        ),
        ("torchmetrics SSIM / ours panel (target >= 3)", "torchmetrics SSIM", "ours (mse+psnr+ssim)"),
        ("torchmetrics SSIM / ours ssim", "torchmetrics SSIM", "ours (ssim)"),
        (
            "files to table / decode 1 thread (target <= 1.5)",
            "files to table (ingest+decode+score+write)",
            "decode alone, 1 thread",
        ),
        (
            "files to table / decode 2 threads",
            "files to table (ingest+decode+score+write)",
            "decode alone, 2 threads",
        ),
    ]
    for kind, k in (("wall-clock", 0), ("CPU (this process and its workers)", 1)):
        print(f"\n{kind}: ms per pair | " + " | ".join(f"{s}x{s}" for s in sizes) + " |")
        print("|---|" + "---:|" * len(sizes))
        for key in results[sizes[0]]:
            print(f"| {key} | " + " | ".join(f"{results[s][key][k]:.4f}" for s in sizes) + " |")
        for label, a, b in ratios:
            cells = " | ".join(f"{results[s][a][k] / results[s][b][k]:.2f}x" for s in sizes)
            print(f"| **{label}** | {cells} |")


if __name__ == "__main__":
    main()
