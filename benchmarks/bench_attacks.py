"""Attack speed: semsim's engine against plain reference loops per iteration, and images per hour at each B.

Part 1 (per iteration, one image, same process, same start): semsim's ``dlg`` against DLG written directly
with ``torch.optim.LBFGS`` (Zhu et al. 2019: dummy image and soft label, lr 1, history 100, ``max_iter`` 20 per
``step`` call, loss ``sum ||grad' - grad||^2``) on DLG's LeNet (sigmoid, weights uniform in [-0.5, 0.5],
un-normalised images), and semsim's ``invgrad`` against a plain single-image loop of Inverting Gradients
(Geiping et al. 2020: cosine distance of the gradients plus 1e-4 TV, Adam lr 0.1 on the signed gradient,
images boxed to the valid range; no step schedule) on each model of ``--ratio-models``. Both sides of a pair
run in turn, ``--rounds`` times, and the best round of each is kept (the machine may be shared: best-of-N
filters other jobs' interference); PSNR of both sides is printed (same start, same arithmetic, so equal).

Part 2 (throughput): the same N real CIFAR-10 test images (one gradient each) attacked with ``invgrad`` in
chunks of B images per batched optimisation, identical per-image seeds, so the mean PSNR must agree (within
0.5 dB of B=1) while the wall time differs. On CUDA, a B that runs out of memory ends the list. Each
``--engines`` entry (``eager``, ``tf32``, ``channels-last``, ``compile``, ``cudagraphs``, joined with ``+``)
gets its own rows; rounds are interleaved across B and best-of kept.

Timing: on CPU the process's CPU time (torch on one thread, so this is the attack's own cost; on a shared
machine it is far less inflated by other jobs than wall time), on CUDA wall time.

    .venv/bin/python benchmarks/bench_attacks.py                       # CPU: ratios on LeNet, B = 1, 8, 16
    .venv/bin/python benchmarks/bench_attacks.py --device cuda --arch resnet20-4 --iterations 50 --n 256 \\
        --batch-sizes 1,32,64,128,256 --engines eager,tf32+channels-last,tf32+channels-last+cudagraphs

Prints Markdown tables (paste into README.md, "## Benchmarks" / "Attacks") and the rows as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from semsim.attacks import client_gradients, create_attack
from semsim.attacks.engine import EngineOptions
from semsim.attacks.runner import image_seeds
from semsim.data.images import load_images
from semsim.metrics.pixel import psnr
from semsim.models import create_model

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("SEMSIM_SHARED_DATA", ROOT / ".." / "shared" / "data"))


def clock(device: str) -> float:
    """Seconds: on CPU the process's CPU time (one torch thread: what the attack itself costs, which other
    jobs on a shared machine inflate far less than wall time); on CUDA wall time after synchronising."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        return time.perf_counter()
    return time.process_time()


def dlg_lenet(classes: int, device: str) -> torch.nn.Module:
    """DLG's victim: LeNet with sigmoid activations, weights uniform in [-0.5, 0.5], images not normalised."""
    torch.manual_seed(0)
    model = create_model("lenet", classes, mean=(0, 0, 0), std=(1, 1, 1))
    with torch.no_grad():
        for p in model.parameters():
            p.uniform_(-0.5, 0.5)
    return model.to(device).eval()


def reference_dlg(model: torch.nn.Module, observed: list[torch.Tensor], seed: int, steps: int,
                  device: str) -> tuple[torch.Tensor, int]:
    """DLG from the paper: L-BFGS on a dummy image and dummy label logits, ``steps`` calls of ``step``."""
    gen = torch.Generator().manual_seed(seed)  # the draws semsim makes for its start
    dummy = torch.randn((1, 3, 32, 32), generator=gen).to(device).requires_grad_(True)
    label = torch.randn((1, observed[-1].shape[1]), generator=gen).to(device).requires_grad_(True)
    opt = torch.optim.LBFGS([dummy, label], lr=1, max_iter=20, history_size=100)
    params = list(model.parameters())

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.sum(-F.softmax(label, -1) * F.log_softmax(model(dummy), -1))
        dummy_grad = torch.autograd.grad(loss, params, create_graph=True)
        distance = sum(((d - o[0]) ** 2).sum() for d, o in zip(dummy_grad, observed, strict=True))
        # Only the optimised tensors' gradients (``backward()`` would also fill the model's, extra work).
        dummy.grad, label.grad = torch.autograd.grad(distance, [dummy, label])
        return distance

    for _ in range(steps):
        opt.step(closure)
    return dummy.detach().clamp(0, 1), int(opt.state[dummy]["n_iter"])


def reference_invgrad(model: torch.nn.Module, observed: list[torch.Tensor], label: torch.Tensor, seed: int,
                      iterations: int, device: str) -> torch.Tensor:
    """Inverting Gradients from the paper, one image: signed Adam on cosine matching + TV, boxed."""
    mean, std = model.mean.reshape(1, -1, 1, 1), model.std.reshape(1, -1, 1, 1)
    lo, hi = -mean / std, (1 - mean) / std
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn((1, 3, 32, 32), generator=gen).to(device).requires_grad_(True)  # normalised space
    opt = torch.optim.Adam([z], lr=0.1)
    params = list(model.parameters())
    target_norm = torch.sqrt(sum((o[0] ** 2).sum() for o in observed))
    for _ in range(iterations):
        loss = F.cross_entropy(model(z * std + mean), label)
        dummy_grad = torch.autograd.grad(loss, params, create_graph=True)
        dot = sum((d * o[0]).sum() for d, o in zip(dummy_grad, observed, strict=True))
        norm = torch.sqrt(sum((d ** 2).sum() for d in dummy_grad))
        tv = ((z[:, :, :, :-1] - z[:, :, :, 1:]).abs().mean() + (z[:, :, :-1, :] - z[:, :, 1:, :]).abs().mean())
        (g,) = torch.autograd.grad(1 - dot / (norm * target_norm) + 1e-4 * tv, z)
        z.grad = g.sign()
        opt.step()
        with torch.no_grad():
            z.copy_(torch.maximum(torch.minimum(z, hi), lo))
    return (z.detach() * std + mean).clamp(0, 1)


def best_of(rounds: int, runs: dict[str, Callable[[], tuple[torch.Tensor, int]]], device: str
            ) -> dict[str, tuple[float, int, torch.Tensor]]:
    """Run each entry in turn, ``rounds`` times; keep the fastest seconds per iteration of each."""
    best: dict[str, tuple[float, int, torch.Tensor]] = {}
    for _ in range(rounds):
        for name, run in runs.items():
            start = clock(device)
            image, iterations = run()
            per_it = (clock(device) - start) / iterations
            if name not in best or per_it < best[name][0]:
                best[name] = (per_it, iterations, image)
    return best


def ratio_rows(args: argparse.Namespace, x: torch.Tensor, y: torch.Tensor) -> list[dict]:
    """Part 1: semsim vs the reference loop per iteration on one image."""
    rows = []
    seed = 1  # a start from which DLG converges on this image (from some, both implementations stall at once)
    one, label = x[:1], y[:1]
    model = dlg_lenet(args.classes, args.device)
    observed = client_gradients(model, one, label)
    steps = max(1, args.dlg_iterations // 20)
    attack = create_attack("dlg", iterations=20 * steps)

    def semsim_dlg() -> tuple[torch.Tensor, int]:
        out = attack.reconstruct(model, observed, None, (3, 32, 32), generators=[torch.Generator().manual_seed(seed)])
        return out.images, out.iterations_run or attack.config.iterations

    best = best_of(args.rounds, {"reference": lambda: reference_dlg(model, observed, seed, steps, args.device),
                                 "semsim": semsim_dlg}, args.device)
    rows.append(pair_row("dlg", "lenet (DLG)", best, one))
    for arch in args.ratio_models.split(","):
        torch.manual_seed(0)
        kwargs = {"width": args.width} if arch == "convnet" else {}
        model = create_model(arch, args.classes, **kwargs).to(args.device).eval()
        best = best_of(args.rounds, invgrad_pair(model, one, label, image_seeds(0, 0)[0], args.invgrad_iterations,
                                             args.device),
                       args.device)
        rows.append(pair_row("invgrad", arch, best, one))
    return rows


def invgrad_pair(model: torch.nn.Module, x: torch.Tensor, label: torch.Tensor, seed: int, iterations: int,
                 device: str) -> dict[str, Callable[[], tuple[torch.Tensor, int]]]:
    """The reference Inverting Gradients loop and semsim's ``invgrad`` on one image, same start."""
    observed = client_gradients(model, x, label)
    attack = create_attack("invgrad", iterations=iterations, schedule="none")

    def semsim() -> tuple[torch.Tensor, int]:
        out = attack.reconstruct(model, observed, label, tuple(x.shape[1:]),
                                 generators=[torch.Generator().manual_seed(seed)])
        return out.images, out.iterations_run or iterations

    def reference() -> tuple[torch.Tensor, int]:
        return reference_invgrad(model, observed, label, seed, iterations, device), iterations

    return {"reference": reference, "semsim": semsim}


def pair_row(attack: str, model: str, best: dict[str, tuple[float, int, torch.Tensor]], x: torch.Tensor) -> dict:
    ref, mine = best["reference"], best["semsim"]
    return {"attack": attack, "model": model, "iterations": mine[1], "reference_iterations": ref[1],
            "reference_ms": round(ref[0] * 1e3, 3), "semsim_ms": round(mine[0] * 1e3, 3),
            "ratio": round(mine[0] / ref[0], 2), "reference_psnr": round(psnr(x.cpu(), ref[2].cpu()).item(), 2),
            "semsim_psnr": round(psnr(x.cpu(), mine[2].cpu()).item(), 2)}


def throughput_rows(args: argparse.Namespace, x: torch.Tensor, y: torch.Tensor) -> list[dict]:
    """Part 2: images per hour at each B and engine, best of the rounds, with the mean PSNR."""
    torch.manual_seed(0)
    kwargs = {"width": args.width} if args.arch == "convnet" else {}
    model = create_model(args.arch, args.classes, **kwargs).to(args.device).eval()
    grads = client_gradients(model, x, y)
    sizes = [int(v) for v in args.batch_sizes.split(",")]
    best: dict[tuple[str, int], dict] = {}
    failed: set[tuple[str, int]] = set()
    for _ in range(args.rounds):
        for label in args.engines.split(","):
            engine = EngineOptions.parse(label)
            attack = create_attack("invgrad", engine=engine, iterations=args.iterations, schedule="none")
            for b in sizes:
                if (label, b) in failed:
                    continue
                try:
                    row = timed_chunks(attack, model, grads, x, y, b, args)
                except torch.OutOfMemoryError:
                    failed.update((label, s) for s in sizes if s >= b)
                    best[(label, b)] = {"engine": label, "batch_size": b, "seconds": None,
                                        "images_per_hour": None, "mean_psnr": None, "note": "out of memory"}
                    torch.cuda.empty_cache()
                    continue
                key = (label, b)
                if key not in best or row["seconds"] < best[key]["seconds"]:
                    best[key] = {"engine": label, **row}
    return list(best.values())


def timed_chunks(attack, model, grads, x, y, b: int, args: argparse.Namespace) -> dict:
    n = (args.n // b) * b  # whole chunks only
    if args.warmup and attack.engine.compile:  # compile once per batch shape, outside the timing
        attack.reconstruct(model, [g[:b] for g in grads], y[:b], tuple(x.shape[1:]))
    images = []
    start = clock(args.device)
    for s in range(0, n, b):
        gens = [torch.Generator().manual_seed(image_seeds(0, i)[0]) for i in range(s, s + b)]
        out = attack.reconstruct(model, [g[s:s + b] for g in grads], y[s:s + b], tuple(x.shape[1:]),
                                 generators=gens)
        images.append(out.images)
    seconds = clock(args.device) - start
    quality = psnr(x[:n].cpu(), torch.cat(images)).mean().item()
    return {"batch_size": b, "images": n, "seconds": round(seconds, 2),
            "images_per_hour": round(n / seconds * 3600), "mean_psnr": round(quality, 2)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA / "cifar10_test")
    parser.add_argument("--arch", default="lenet", help="model of the throughput table")
    parser.add_argument("--width", type=int, default=16, help="convnet width")
    parser.add_argument("--iterations", type=int, default=20, help="invgrad iterations of the throughput table")
    parser.add_argument("--n", type=int, default=16, help="images of the throughput table")
    parser.add_argument("--batch-sizes", default="1,8,16")
    parser.add_argument("--engines", default="eager", help="comma list, e.g. eager,tf32+channels-last")
    parser.add_argument("--warmup", action="store_true", help="compiled engines: compile before timing")
    parser.add_argument("--ratio-models", default="lenet", help="models of the invgrad per-iteration ratio")
    parser.add_argument("--dlg-iterations", type=int, default=200, help="DLG L-BFGS iterations (x20 steps)")
    parser.add_argument("--invgrad-iterations", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds; best-of is kept")
    parser.add_argument("--skip-ratios", action="store_true")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    if not args.data.is_dir():
        print(f"skipped: {args.data} is absent (set SEMSIM_SHARED_DATA)", file=sys.stderr)
        return 0
    classes = sorted(p for p in args.data.iterdir() if p.is_dir())
    args.classes = len(classes)
    files = [classes[i % len(classes)] / f"{i // len(classes):04d}.jpg" for i in range(args.n)]
    x = load_images(files).to(args.device)
    y = torch.tensor([i % len(classes) for i in range(args.n)], device=args.device)
    if args.device.startswith("cuda"):
        device = torch.cuda.get_device_name()
    else:
        device = f"CPU ({platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads)"
    load_before = os.getloadavg()
    ratios = [] if args.skip_ratios else ratio_rows(args, x, y)
    throughput = throughput_rows(args, x, y)
    load_after = os.getloadavg()
    timing = "wall time" if args.device.startswith("cuda") else "CPU time of the process"
    print(f"{device}, torch {torch.__version__}; load average {load_before[0]:.1f} at the start, "
          f"{load_after[0]:.1f} at the end; best of {args.rounds} interleaved rounds, {timing}\n")
    if ratios:
        print("| attack | model | iterations reference / semsim | reference ms/it | semsim ms/it | ratio | "
              "PSNR reference / semsim |")
        print("|---|---|---:|---:|---:|---:|---:|")
        for r in ratios:
            print(f"| {r['attack']} | {r['model']} | {r['reference_iterations']} / {r['iterations']} | "
                  f"{r['reference_ms']} | {r['semsim_ms']} | "
                  f"{r['ratio']:.2f}x | {r['reference_psnr']} / {r['semsim_psnr']} dB |")
        print()
    print(f"invgrad, {args.arch}, {args.iterations} iterations, {args.n} CIFAR-10 images 32x32\n")
    print("| engine | batch size | seconds | images / hour | speed-up | mean PSNR (dB) |")
    print("|---|---:|---:|---:|---:|---:|")
    base = next(r for r in throughput if r["seconds"] is not None)
    same = True
    for r in throughput:
        if r["seconds"] is None:
            print(f"| {r['engine']} | {r['batch_size']} | out of memory | | | |")
            continue
        same &= abs(r["mean_psnr"] - base["mean_psnr"]) <= 0.5
        print(f"| {r['engine']} | {r['batch_size']} | {r['seconds']} | {r['images_per_hour']:,} | "
              f"{r['images_per_hour'] / base['images_per_hour']:.2f}x | {r['mean_psnr']} |")
    print(f"\nequal quality (mean PSNR within 0.5 dB of {base['engine']} B={base['batch_size']}): {same}")
    print(json.dumps({"ratios": ratios, "throughput": throughput, "load": [load_before[0], load_after[0]]}))
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
