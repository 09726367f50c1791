"""SemSim scoring cost: the ``semsim`` metric vs a bare forward pass of its backbone over the same images.

Target: scoring costs at most 1.3x the bare forward pass. Also measures the original-embedding cache: in a
victim grid every set reconstructs the same originals, so from the second set on only the reconstructions
pass through the network. Weights are random (the cost does not depend on them); images are real CIFAR-10
test images from ../shared/data with noisy "reconstructions".

Run: ``.venv/bin/python benchmarks/bench_semsim.py [--pairs 512] [--sets 4] [--device cpu]``
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

from semsim.data.images import load_images, save_image
from semsim.learned.model import SemSimNet
from semsim.metrics import create
from semsim.metrics.scoring import score_manifest
from semsim.models.checkpoint import save_checkpoint

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "cifar10_test"


def best_of(fn, repeats: int = 5) -> float:
    """Fastest of ``repeats`` runs, in seconds (after one warm-up run)."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=512)
    parser.add_argument("--sets", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if not DATA.is_dir():
        raise SystemExit(f"{DATA} is absent; this benchmark needs the shared CIFAR-10 test images")
    device = torch.device(args.device)
    files = sorted(DATA.glob("*/*.jpg"))[: args.pairs]
    ori = load_images(files)
    rec = (ori + 0.1 * torch.randn(ori.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    tmp = Path(tempfile.mkdtemp(prefix="bench_semsim_"))
    try:
        torch.manual_seed(0)
        net = SemSimNet("resnet18")
        save_checkpoint(tmp / "model", net, {**net.config(), "label_sources": ["model:benchmark"]})
        backbone = net.backbone.to(device).eval()
        plain = create("semsim", model=tmp / "model", cache=False).to(device).eval()
        cached = create("semsim", model=tmp / "model").to(device).eval()
        x, y = ori.to(device), rec.to(device)
        bs = args.batch_size

        def sync() -> None:
            if device.type == "cuda":
                torch.cuda.synchronize()

        def bare() -> None:
            with torch.no_grad():
                for s in range(0, len(x), bs):
                    backbone.features(x[s:s + bs])
                    backbone.features(y[s:s + bs])
            sync()

        def metric(m) -> None:
            with torch.no_grad():
                for s in range(0, len(x), bs):
                    m(x[s:s + bs], y[s:s + bs])
            sync()

        def cold() -> None:
            cached._cache.clear()
            metric(cached)

        t_bare = best_of(bare)
        t_plain = best_of(lambda: metric(plain))
        t_cold = best_of(cold)
        metric(cached)  # fill the cache: the next sets reuse every original
        t_warm = best_of(lambda: metric(cached))

        # end to end: score_manifest over several sets whose originals are copies in each set's folder
        rows = []
        for k in range(args.sets):
            folder = tmp / f"set{k}"
            for i in range(len(files)):
                o = folder / f"{i}_0_ori.png"
                if k == 0:
                    save_image(ori[i], o)
                    save_image(rec[i], folder / f"{i}_0_rec.png")
                rows.append({"set": f"set{k}", "image_id": f"{i}_0", "original": str(o),
                             "reconstruction": str(tmp / "set0" / f"{i}_0_rec.png")})
            if k:
                shutil.copytree(tmp / "set0", folder, ignore=shutil.ignore_patterns("*_rec.png"))
        manifest = pd.DataFrame(rows)

        def scored(m) -> float:
            start = time.perf_counter()
            score_manifest(manifest, {"semsim": m}, device=device, batch_size=bs, show_progress=False,
                           n_bootstrap=10)
            sync()
            return time.perf_counter() - start

        scored(plain)  # warm-up (file cache)
        e2e_plain = scored(plain)
        cached._cache.clear()
        e2e_cached = scored(cached)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    n = len(files)
    print(f"SemSim scoring, ResNet-18 at 32x32, {n} pairs, batch {bs}, device {device} "
          f"({torch.get_num_threads()} CPU threads)\n")
    print("| what | seconds | pairs/s | vs bare forward |")
    print("|---|---:|---:|---:|")
    for name, t in [("bare backbone forward, originals + reconstructions", t_bare),
                    ("semsim metric, no cache", t_plain),
                    ("semsim metric, cache cold (first set)", t_cold),
                    ("semsim metric, cache warm (later sets)", t_warm)]:
        print(f"| {name} | {t:.3f} | {n / t:.0f} | {t / t_bare:.2f}x |")
    print(f"\nscore_manifest over {args.sets} sets sharing {n} originals (decoding included): "
          f"{e2e_plain:.2f} s without cache, {e2e_cached:.2f} s with cache "
          f"({e2e_plain / e2e_cached:.2f}x faster)")


if __name__ == "__main__":
    main()
