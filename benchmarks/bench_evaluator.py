"""Clean held-out accuracy of an evaluation classifier trained on the real CIFAR-10 test images.

Model-based recognition (MR) is only meaningful relative to the evaluator's clean accuracy, so the README
states the number this script measures. It runs exactly what ``semsim train-evaluator`` runs
(:func:`semsim.victims.train.train_to_checkpoint`): a stratified 20% of ``../shared/data/cifar10_test`` is
held out, the rest trains the classifier (crop+flip augmentation, SGD with momentum, cosine schedule).

    .venv/bin/python benchmarks/bench_evaluator.py                       # ConvNet width 16, 5 epochs, CPU
    .venv/bin/python benchmarks/bench_evaluator.py --arch resnet18 --epochs 30 --device cuda

The checkpoint goes to a temporary folder unless ``--out`` is given; the result is printed as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

from semsim.victims.train import train_to_checkpoint

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("SEMSIM_SHARED_DATA", ROOT / ".." / "shared" / "data"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA / "cifar10_test")
    parser.add_argument("--arch", default="convnet")
    parser.add_argument("--width", type=int, default=16, help="convnet width (other architectures: ignored)")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.02)
    parser.add_argument("--val-split", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if not args.data.is_dir():
        print(f"skipped: {args.data} is absent (set SEMSIM_SHARED_DATA)", file=sys.stderr)
        return 0
    out = args.out or Path(tempfile.mkdtemp(prefix="semsim-bench-evaluator-")) / "evaluator"
    start = time.perf_counter()
    config = train_to_checkpoint(out, role="evaluator", arch=args.arch, data=args.data, epochs=args.epochs,
                                 augment="crop", val_split=args.val_split,
                                 width=args.width if args.arch == "convnet" else None,
                                 batch_size=args.batch_size, lr=args.lr, seed=args.seed, device=args.device)
    seconds = time.perf_counter() - start
    result = {"arch": args.arch, "width": args.width if args.arch == "convnet" else None,
              "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "device": args.device,
              "torch_threads": torch.get_num_threads(), "n_train": config["training"]["n_train"],
              "n_val": config["training"]["n_val"], "clean_accuracy": config["clean_accuracy"],
              "train_accuracy": config["train_accuracy"], "seconds": round(seconds, 1),
              "checkpoint": str(out),
              "val_accuracy_per_epoch": [round(h["val_accuracy"], 4) for h in config["training"]["history"]]}
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
