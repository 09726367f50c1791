"""GradInversion before/after its rebuild to the published objective: PSNR on the same real images, same budget.

*before*: the former settings (unscaled L2 matching, BatchNorm prior 1e-2 without the first-layer x10, group
term toward the unregistered mean, cosine decay without warm-up, no Langevin noise, last iterate).
*after*: ``create_attack("gradinversion")`` (breaching's seethroughgradients objective; semsim.attacks.gradinversion).
Both attack the same N CIFAR-10 test images (one gradient each, labels from the gradient) with the same starts,
iterations and restarts, on a ConvNet victim trained here for a few epochs on other CIFAR-10 test images (BN
running statistics of real data). Also prints each term's size at the random start.

    .venv/bin/python benchmarks/bench_gradinversion.py            # ConvNet-8, 4 images, 200 iterations x 2 restarts
    .venv/bin/python benchmarks/bench_gradinversion.py --width 64 --iterations 2000 --restarts 4 --device cuda

Prints a Markdown table (paste into README.md, "## Benchmarks" / "GradInversion") and the rows as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

from semsim.attacks import Attack, AttackConfig, client_gradients, create_attack
from semsim.attacks.gradients import GradientModel, input_normalization
from semsim.attacks.gradinversion import bn_term
from semsim.data.datasets import channel_stats, load_dataset, subset
from semsim.metrics.pixel import psnr
from semsim.models import create_model
from semsim.victims.train import evaluate_accuracy, train_classifier

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("SEMSIM_SHARED_DATA", ROOT / ".." / "shared" / "data"))
BEFORE = dict(optimizer="adam", lr=0.1, objective="l2", label="recover", tv=1e-4, image_l2=1e-6, bn=1e-2,
              group=1e-2, schedule="cosine", boxed=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA / "cifar10_test")
    parser.add_argument("--width", type=int, default=8, help="convnet width")
    parser.add_argument("--train", type=int, default=1000, help="victim training images")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--restarts", type=int, default=2)
    parser.add_argument("--n", type=int, default=4, help="attacked images")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if not args.data.is_dir():
        print(f"skipped: {args.data} is absent (set SEMSIM_SHARED_DATA)", file=sys.stderr)
        return 0

    ds = load_dataset(args.data)
    train, idx = subset(ds, n=args.train, seed=0)
    mean, std = channel_stats(train)
    torch.manual_seed(0)
    model = create_model("convnet", ds.num_classes, width=args.width, mean=mean, std=std)
    t0 = time.perf_counter()
    train_classifier(model, train, epochs=args.epochs, batch_size=64, lr=0.05, augment="crop",
                     device=args.device, show_progress=False)
    train_s = time.perf_counter() - t0
    rest, _ = subset(ds, n=500, seed=1)
    acc = evaluate_accuracy(model, rest, args.device)
    picked = [i for i in range(len(ds)) if i not in set(idx)][:: len(ds) // (4 * args.n)][: args.n]
    x, y = ds.floats(picked).to(args.device), ds.labels[picked].to(args.device)
    model = model.to(args.device).eval()
    grads = client_gradients(model, x, y)

    after = create_attack("gradinversion", iterations=args.iterations, restarts=args.restarts)
    before = Attack(AttackConfig(name="gradinversion-before", iterations=args.iterations,
                                 restarts=args.restarts, **BEFORE))
    gm = GradientModel(model, track_bn=True)
    mu, sd = input_normalization(model, 3)
    z0 = torch.randn((args.n, 3, 32, 32), generator=torch.Generator().manual_seed(1)).to(args.device)
    with torch.no_grad():
        terms = {k: float(v.mean()) for k, v in after.objective(gm, z0, grads, y, mu, sd).items()}
        g0, stats = gm.per_sample(z0 * sd + mu, y)
        old = {"match": float(sum((a - b).pow(2).flatten(1).sum(1) for a, b in zip(g0, grads, strict=True)).mean()),
               "bn": float(BEFORE["bn"] * bn_term(stats, gm.bn_running, first=1.0).mean())}
    gm.close()

    rows = []
    for name, attack in (("before", before), ("after", after)):
        gens = [torch.Generator().manual_seed(1000 + i) for i in range(args.n)]
        t0 = time.perf_counter()
        out = attack.reconstruct(model, grads, None, (3, 32, 32), generators=gens)
        seconds = time.perf_counter() - t0
        p = psnr(out.images.to(args.device), x).tolist()
        labels_ok = sum(r["recovered_label"] == int(t) for r, t in zip(out.records, y.tolist(), strict=True))
        rows.append({"setting": name, "mean_psnr": sum(p) / len(p), "psnr": p, "labels": f"{labels_ok}/{args.n}",
                     "seconds": seconds})
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"victim: ConvNet width {args.width}, {args.epochs} epochs on {args.train} CIFAR-10 test images "
          f"({train_s:.0f} s), held-out accuracy {acc:.3f}; {args.n} other images, {args.iterations} iterations "
          f"x {args.restarts} restarts; device {args.device}, {args.threads} thread(s), load {load:.1f}")
    print("terms at the random start, after: " + ", ".join(f"{k} {v:.3g}" for k, v in terms.items())
          + f"; before: match {old['match']:.3g}, bn {old['bn']:.3g} (BN/match: after "
          f"{terms['bn'] / terms['match']:.3g}, before {old['bn'] / old['match']:.3g})")
    print()
    print("| GradInversion | mean PSNR | per image (dB) | labels | seconds |")
    print("|---|---:|---|---:|---:|")
    for r in rows:
        print(f"| {r['setting']} | {r['mean_psnr']:.2f} dB | {', '.join(f'{v:.1f}' for v in r['psnr'])} | "
              f"{r['labels']} | {r['seconds']:.0f} |")
    print(f"| **after - before** | **{rows[1]['mean_psnr'] - rows[0]['mean_psnr']:+.2f} dB** | | | "
          f"{rows[1]['seconds'] / rows[0]['seconds']:.2f}x |")
    print()
    print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
