"""Attack throughput: images reconstructed per hour, batched vs one at a time, at equal quality.

Every image is attacked from its own gradient (one image per gradient). ``--batch-sizes 1,8,16`` solves the
same N images in chunks of B images per batched optimisation (per-sample gradients via ``torch.func``);
the per-image seeds are identical, so the mean PSNR must agree (within 0.5 dB) while the wall time differs.

    .venv/bin/python benchmarks/bench_attacks.py                          # LeNet, invgrad, 16 images, CPU
    .venv/bin/python benchmarks/bench_attacks.py --arch convnet --iterations 200 --device cuda

Prints a Markdown table (paste into README.md, "## Benchmarks" / "Attacks") and the rows as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

from semsim.attacks import client_gradients, create_attack
from semsim.attacks.runner import image_seeds
from semsim.data.images import load_images
from semsim.metrics.pixel import psnr
from semsim.models import create_model

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("SEMSIM_SHARED_DATA", ROOT / ".." / "shared" / "data"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA / "cifar10_test")
    parser.add_argument("--arch", default="lenet")
    parser.add_argument("--width", type=int, default=16, help="convnet width")
    parser.add_argument("--attack", default="invgrad")
    parser.add_argument("--iterations", type=int, default=40)
    parser.add_argument("--n", type=int, default=16, help="images (a multiple of every batch size)")
    parser.add_argument("--batch-sizes", default="1,8,16")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    if not args.data.is_dir():
        print(f"skipped: {args.data} is absent (set SEMSIM_SHARED_DATA)", file=sys.stderr)
        return 0
    classes = sorted(p for p in args.data.iterdir() if p.is_dir())
    files = [classes[i % len(classes)] / f"{i // len(classes):04d}.jpg" for i in range(args.n)]
    x = load_images(files).to(args.device)
    y = torch.tensor([i % len(classes) for i in range(args.n)], device=args.device)
    torch.manual_seed(0)
    kwargs = {"width": args.width} if args.arch == "convnet" else {}
    model = create_model(args.arch, len(classes), **kwargs).to(args.device).eval()
    grads = client_gradients(model, x, y)
    attack = create_attack(args.attack, iterations=args.iterations,
                           **({"schedule": "none"} if args.attack == "invgrad" else {}))
    rows = []
    for b in (int(v) for v in args.batch_sizes.split(",")):
        images = []
        start = time.perf_counter()
        for s in range(0, args.n, b):
            gens = [torch.Generator().manual_seed(image_seeds(0, i)[0]) for i in range(s, min(s + b, args.n))]
            out = attack.reconstruct(model, [g[s:s + b] for g in grads], y[s:s + b], tuple(x.shape[1:]),
                                     generators=gens)
            images.append(out.images)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        quality = psnr(x.cpu(), torch.cat(images)).mean().item()
        rows.append({"batch_size": b, "seconds": round(seconds, 2),
                     "images_per_hour": round(args.n / seconds * 3600), "mean_psnr": round(quality, 2)})
    base = rows[0]
    if args.device.startswith("cuda"):
        device = torch.cuda.get_device_name()
    else:
        device = f"CPU ({platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads)"
    print(f"{args.attack}, {args.arch}, {args.iterations} iterations, {args.n} CIFAR-10 images 32x32, "
          f"{device}\n")
    print("| batch size | seconds | images / hour | speed-up | mean PSNR (dB) |")
    print("|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['batch_size']} | {r['seconds']} | {r['images_per_hour']} | "
              f"{r['images_per_hour'] / base['images_per_hour']:.2f}x | {r['mean_psnr']} |")
    same = all(abs(r["mean_psnr"] - base["mean_psnr"]) <= 0.5 for r in rows)
    print(f"\nequal quality (mean PSNR within 0.5 dB of B={base['batch_size']}): {same}")
    print(json.dumps(rows))
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
