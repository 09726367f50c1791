"""Training SemSim: a triplet-loss embedding learned from recognizability labels (Sun et al., NeurIPS 2023).

Loss per triplet (anchor a, recognized positive p, unrecognized negative n) on L2-normalised embeddings f:
``max(0, ||f(a) - f(p)||_2 - ||f(a) - f(n)||_2 + margin)``. Defaults follow the paper: CIFAR-style ResNet-18,
32x32 inputs with CIFAR statistics, margin 1.0, SGD (lr 0.05, momentum 0.9, Nesterov, weight decay 5e-4),
100 epochs with the learning rate divided by 10 at 50% and 75% of training.

Validation runs every epoch on held-out ORIGINALS (no original has rows in both parts): the AUROC of the
negated distance as a predictor of the majority label, and the share of validation triplets ordered correctly.
The best epoch (by AUROC, else triplet accuracy, else training loss) is kept as the model folder. The
training state (weights, momentum, history) is written atomically after every epoch to
``<out>.train_state.safetensors`` next to the model folder, so an interrupted run continues where it
stopped and ends with the same weights.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

from semsim.common.progress import progress
from semsim.common.train_state import load_train_state, save_train_state
from semsim.data.images import read_arrays, to_tensor
from semsim.data.label_import import is_human, load_labels
from semsim.data.labels import label_sources, majority
from semsim.errors import SemsimError
from semsim.learned.model import SemSimNet
from semsim.learned.triplets import Triplets, TripletSampler, split_by_original
from semsim.models import ARCHITECTURES
from semsim.models.checkpoint import load_checkpoint, read_config, save_checkpoint
from semsim.models.classifiers import CIFAR_MEAN, CIFAR_STD

AUGMENTS = ("none", "flip")


@dataclass
class TrainConfig:
    """Every training choice; the defaults are the SemSim paper's."""

    architecture: str = "resnet18"
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    image_size: int = 32
    mean: tuple[float, ...] = CIFAR_MEAN
    std: tuple[float, ...] = CIFAR_STD
    normalize_embeddings: bool = True
    epochs: int = 100
    batch_size: int = 64  # triplets per step
    lr: float = 0.05
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    milestones: tuple[float, ...] = (0.5, 0.75)  # fractions of the epochs where lr is multiplied by gamma
    gamma: float = 0.1
    margin: float = 1.0
    anchor: str = "original"  # or "all" (every image of an original's recognized group is an anchor)
    label_mode: str = "majority"  # or "soft"
    augment: str = "none"  # or "flip" (independent random horizontal flips)
    val_fraction: float = 0.2
    seed: int = 0

    def check(self) -> None:
        """Raise :class:`SemsimError` for a value that cannot work."""
        if self.architecture.lower() not in ARCHITECTURES:
            raise SemsimError(f"architecture '{self.architecture}': choose one of {', '.join(ARCHITECTURES)}")
        if self.augment not in AUGMENTS:
            raise SemsimError(f"augment '{self.augment}': choose one of {', '.join(AUGMENTS)}")
        for name in ("epochs", "batch_size", "image_size"):
            if getattr(self, name) < 1:
                raise SemsimError(f"{name} {getattr(self, name)}: must be at least 1")
        if self.lr <= 0 or self.margin < 0:
            raise SemsimError(
                f"lr {self.lr} / margin {self.margin}: lr must be positive, margin non-negative"
            )

    def lr_at(self, epoch: int) -> float:
        """Step schedule: ``lr * gamma^k`` with k the number of milestones passed by ``epoch`` (0-based)."""
        return self.lr * self.gamma ** sum(epoch >= round(m * self.epochs) for m in self.milestones)


def state_path(out: str | os.PathLike) -> Path:
    """Where the resumable training state of model folder ``out`` lives (beside it, not inside)."""
    out = Path(out)
    return out.parent / f"{out.name}.train_state.safetensors"


def _fingerprint(labels: pd.DataFrame, config: TrainConfig) -> str:
    cols = ["set", "image_id", "original_id", "original", "reconstruction", "recognized"]
    rows = labels[cols].astype(str).sort_values(["set", "image_id"]).to_numpy().tolist()
    blob = json.dumps({"labels": rows, "config": asdict(config)}, sort_keys=True, default=list)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def load_image_bank(paths: Sequence[str], net: SemSimNet, device: torch.device) -> torch.Tensor:
    """Decode ``paths`` once and bring them to the network's input size: float32 (N, 3, S, S) in [0, 1]."""
    arrays = read_arrays(list(paths))
    out = torch.empty(len(arrays), 3, net.image_size, net.image_size)
    by_shape: dict[tuple, list[int]] = {}
    for i, a in enumerate(arrays):
        by_shape.setdefault(a.shape, []).append(i)
    for idx in by_shape.values():
        for start in range(0, len(idx), 512):
            part = idx[start : start + 512]
            out[part] = net.resize(to_tensor([arrays[i] for i in part]))
    return out.to(device)


def _embed(net: SemSimNet, bank: torch.Tensor, idx: np.ndarray, batch: int = 512) -> torch.Tensor:
    with torch.no_grad():
        return (
            torch.cat(
                [
                    net(bank[torch.as_tensor(idx[s : s + batch], device=bank.device)])
                    for s in range(0, len(idx), batch)
                ]
            )
            if len(idx)
            else bank.new_empty(0, net.embedding_dim)
        )


def validate(
    net: SemSimNet,
    bank: torch.Tensor,
    index: dict[str, int],
    val: pd.DataFrame,
    triplets: Triplets | None,
    sampler_images: list[str],
) -> dict[str, float | None]:
    """AUROC of -distance vs the majority label on held-out pairs, and validation triplet accuracy."""
    net.eval()
    out: dict[str, float | None] = {"val_auroc": None, "val_triplet_accuracy": None}
    pairs = val[val["original"].notna()]
    if len(pairs):
        ori = _embed(net, bank, np.array([index[p] for p in pairs["original"]]))
        rec = _embed(net, bank, np.array([index[p] for p in pairs["reconstruction"]]))
        dist = (ori - rec).norm(dim=1).cpu().numpy()
        y = majority(pairs).to_numpy()
        if 0 < y.sum() < len(y):
            out["val_auroc"] = float(roc_auc_score(y, -dist))
    if triplets is not None and len(triplets):
        glob = np.array([index[p] for p in sampler_images])
        a, p, n = (
            _embed(net, bank, glob[t]) for t in (triplets.anchor, triplets.positive, triplets.negative)
        )
        out["val_triplet_accuracy"] = float(((a - p).norm(dim=1) < (a - n).norm(dim=1)).float().mean())
    return out


def _score(v: dict[str, float | None], loss: float) -> float:
    if v["val_auroc"] is not None:
        return v["val_auroc"]
    if v["val_triplet_accuracy"] is not None:
        return v["val_triplet_accuracy"]
    return -loss


def data_summary(labels: pd.DataFrame, train: pd.DataFrame, val: pd.DataFrame) -> dict[str, Any]:
    """What the model was trained on, for its config.json."""
    sets = sorted(labels["set"].unique())
    pairs = labels[labels["original"].notna()]
    return {
        "n_pairs": int(len(pairs)),
        "n_originals": int(pairs["original_id"].nunique()),
        "n_negative_only_images": int(labels["original"].isna().sum()),
        "n_sets": len(sets),
        "sets": sets[:100],
        "recognized_share": float(majority(pairs).mean()) if len(pairs) else None,
        "n_train_originals": int(train["original_id"].nunique()),
        "n_val_originals": int(val["original_id"].nunique()),
    }


def train_semsim(
    labels: pd.DataFrame | Sequence[str | os.PathLike],
    out: str | os.PathLike,
    config: TrainConfig | None = None,
    *,
    device: str | torch.device = "cpu",
    show_progress: bool = True,
    resume: bool = True,
) -> dict[str, Any]:
    """Train SemSim on a label table (or label sources for :func:`load_labels`); best epoch to ``out``.

    Returns the model's config (with ``training``, ``validation`` and ``history``). A run interrupted after
    some epochs continues from its saved state when called again with the same labels and config
    (``resume=False`` starts over).
    """
    config = config or TrainConfig()
    config.check()
    out, device = Path(out), torch.device(device)
    if not isinstance(labels, pd.DataFrame):
        labels = load_labels(labels)
    missing = [c for c in ("original", "reconstruction", "recognized") if c not in labels.columns]
    if missing:
        raise SemsimError(f"labels: no {', '.join(missing)} column(s); load them with load_labels (with the "
                          "sets' manifests when the table has no image paths)")
    if "original_id" not in labels.columns:
        labels = labels.assign(original_id=labels["image_id"].where(labels["original"].notna(), None))
    fingerprint = _fingerprint(labels, config)
    if resume and (out / "config.json").is_file():
        done = read_config(out)
        if done.get("training", {}).get("fingerprint") == fingerprint and done["training"].get("complete"):
            return done
    train, val = split_by_original(labels, config.val_fraction, config.seed)
    sampler = TripletSampler(train, anchor=config.anchor, label_mode=config.label_mode)
    try:
        val_sampler = TripletSampler(val, anchor="original", label_mode="majority") if len(val) else None
    except SemsimError:  # a small validation part may lack positives or negatives: AUROC only
        val_sampler = None
    val_triplets = val_sampler.sample(np.random.default_rng(config.seed)) if val_sampler else None

    torch.manual_seed(config.seed)
    net = SemSimNet(
        config.architecture,
        config.image_size,
        config.mean,
        config.std,
        config.normalize_embeddings,
        config.arch_kwargs,
    ).to(device)
    paths = list(
        dict.fromkeys(
            sampler.images
            + (val_sampler.images if val_sampler else [])
            + list(val["original"].dropna())
            + list(val["reconstruction"])
        )
    )
    index = {p: i for i, p in enumerate(paths)}
    bank = load_image_bank(paths, net, device)
    train_idx = torch.as_tensor([index[p] for p in sampler.images], device=device)
    opt = torch.optim.SGD(
        net.parameters(),
        lr=config.lr,
        momentum=config.momentum,
        nesterov=config.nesterov,
        weight_decay=config.weight_decay,
    )
    sources = label_sources(labels)
    base = {**net.config(), "label_sources": sources, "human_labels": all(is_human(s) for s in sources)}
    summary = {**data_summary(labels, train, val), "fingerprint": fingerprint, "config": asdict(config)}

    start, history = 0, []
    best: dict[str, Any] = {"score": -float("inf"), "epoch": None, "validation": {}}
    spath = state_path(out)
    if resume and spath.is_file():
        meta = load_train_state(spath, net, opt, fingerprint)
        start, history, best = meta["epoch"] + 1, meta["history"], meta["best"]

    bar = progress(
        range(start, config.epochs),
        total=config.epochs,
        initial=start,
        desc="semsim train",
        unit="epoch",
        enabled=show_progress,
    )
    for epoch in bar:
        net.train()
        lr = config.lr_at(epoch)
        for group in opt.param_groups:
            group["lr"] = lr
        rng = np.random.default_rng([config.seed, epoch])
        gen = torch.Generator(device="cpu").manual_seed(config.seed * 100_003 + epoch)
        trip = sampler.sample(rng)
        total, count = 0.0, 0
        for s in range(0, len(trip), config.batch_size):
            sl = slice(s, s + config.batch_size)
            idx = torch.cat(
                [
                    train_idx[torch.as_tensor(t[sl], device=device)]
                    for t in (trip.anchor, trip.positive, trip.negative)
                ]
            )
            x = bank[idx]
            if config.augment == "flip":
                flip = (torch.rand(len(x), generator=gen) < 0.5).to(device)
                x = torch.where(flip[:, None, None, None], x.flip(-1), x)
            a, p, n = net(x).chunk(3)
            w = torch.as_tensor(trip.weight[sl], device=device)
            loss = (
                F.relu((a - p).norm(dim=1) - (a - n).norm(dim=1) + config.margin) * w
            ).sum() / w.sum().clamp_min(1e-8)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(w)
            count += len(w)
        train_loss = total / max(count, 1)
        v = validate(net, bank, index, val, val_triplets, val_sampler.images if val_sampler else [])
        history.append({"epoch": epoch + 1, "lr": lr, "train_loss": train_loss, "n_triplets": len(trip), **v})
        score = _score(v, train_loss)
        if score > best["score"]:
            best = {"score": score, "epoch": epoch + 1, "validation": {**v, "train_loss": train_loss}}
            save_checkpoint(
                out,
                net,
                {
                    **base,
                    "training": {**summary, "complete": False},
                    "history": history,
                    "validation": {"epoch": epoch + 1, **best["validation"]},
                },
            )
        save_train_state(
            spath, net, opt, {"fingerprint": fingerprint, "epoch": epoch, "history": history, "best": best}
        )
        bar.set_postfix(loss=f"{train_loss:.3f}", auroc=f"{v['val_auroc'] or float('nan'):.3f}")
    bar.close()

    state, _ = load_checkpoint(out)
    net.load_state_dict(state)
    final = {
        **base,
        "training": {**summary, "complete": True, "epochs_done": config.epochs, "best_epoch": best["epoch"]},
        "validation": {"epoch": best["epoch"], **best["validation"]},
        "history": history,
    }
    save_checkpoint(out, net, final)
    spath.unlink(missing_ok=True)
    return read_config(out)
