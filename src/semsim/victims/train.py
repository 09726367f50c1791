"""Training of victim and evaluation classifiers: SGD with (Nesterov) momentum, cosine or step schedule, seeded.

The training variants of the SemSim study (Sun et al., NeurIPS 2023, Sec. 5) are an augmentation
(:mod:`semsim.victims.augment`) and a training-time gradient defense (:func:`semsim.victims.defenses.parse_defense`):
each mini-batch gradient of the loss is passed through ``Defense.apply`` before the optimiser step (weight
decay is added by the optimiser afterwards), i.e. the model learns from the gradients a defended client
would share.

Every epoch draws its shuffling, augmentation and defense noise from generators seeded by ``(seed, epoch)``,
so with ``state_dir`` a run interrupted after epoch k and started again continues from epoch k and ends
with the same weights as an uninterrupted run (on the same device).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from semsim.common.progress import progress
from semsim.common.train_state import load_train_state, save_train_state
from semsim.data.datasets import ImageDataset, channel_stats, load_dataset, subset, train_val_split
from semsim.errors import SemsimError
from semsim.models.checkpoint import save_checkpoint
from semsim.models.classifiers import create_model, model_config
from semsim.victims.augment import parse_augment
from semsim.victims.defenses import parse_defense

STATE_FILE = "training_state.safetensors"
SCHEDULES = ("cosine", "step")


def num_classes_of(target: nn.Module | dict[str, Any]) -> int:
    """Number of classes of a classifier (its ``head``) or of a checkpoint config."""
    if isinstance(target, dict):
        return int(target["num_classes"])
    head = getattr(target, "head", None)
    if not isinstance(head, nn.Linear):
        raise SemsimError(f"{target.__class__.__name__}: not a semsim classifier (no linear 'head')")
    return int(head.out_features)


def check_inputs(target: nn.Module | dict[str, Any], images: torch.Tensor,
                 labels: torch.Tensor | Sequence[int] | None = None, source: str = "input") -> None:
    """Raise a one-line :class:`SemsimError` unless ``images``/``labels`` suit the classifier.

    ``target`` is a checkpoint config (checks image size and classes) or a classifier module (checks
    classes, and the image size when the module has an ``image_size`` attribute). ``images`` must be
    float NCHW RGB in [0, 1]; ``labels`` integers in ``[0, num_classes)`` (checked with
    :func:`check_labels`; they need not be as many as ``images``, so a sample image can stand for a set).
    """
    if not torch.is_tensor(images) or images.ndim != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if torch.is_tensor(images) else type(images).__name__
        raise SemsimError(f"{source}: images must be an N x 3 x H x W tensor, got {shape}")
    if not images.is_floating_point():
        raise SemsimError(f"{source}: images must be float in [0, 1], got {images.dtype}; "
                          "divide uint8 images by 255")
    size = target.get("image_size") if isinstance(target, dict) else getattr(target, "image_size", None)
    if size is not None and tuple(images.shape[2:]) != (int(size), int(size)):
        raise SemsimError(f"{source}: images are {images.shape[3]}x{images.shape[2]} but the model takes "
                          f"{size}x{size}; resize them (e.g. --image-size {size})")
    if images.numel():
        lo, hi = float(images.min()), float(images.max())
        if not (math.isfinite(lo) and math.isfinite(hi)) or lo < -1e-4 or hi > 1 + 1e-4:
            raise SemsimError(f"{source}: image values span [{lo:.3g}, {hi:.3g}], expected [0, 1]")
    if labels is not None:
        check_labels(target, labels, source)


def check_labels(target: nn.Module | dict[str, Any], labels: torch.Tensor | Sequence[int],
                 source: str = "input") -> None:
    """Raise a one-line :class:`SemsimError` unless every label is an integer in ``[0, num_classes)``."""
    labels = torch.as_tensor(labels)
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool or labels.ndim > 1:
        raise SemsimError(f"{source}: labels must be a 1-d sequence of integers, got {labels.dtype} "
                          f"{tuple(labels.shape)}")
    n = num_classes_of(target)
    bad = (labels < 0) | (labels >= n)
    if bool(bad.any()):
        raise SemsimError(f"{source}: label {int(labels[bad][0])} is outside the model's {n} classes "
                          f"(0..{n - 1}); use data with the model's classes")


@torch.no_grad()
def evaluate_accuracy(model: nn.Module, ds: ImageDataset, device: str | torch.device = "cpu",
                      batch_size: int = 256) -> float:
    """Top-1 accuracy of ``model`` on the labelled dataset ``ds`` (eval mode; the mode is restored)."""
    if not ds.labelled:
        raise SemsimError(f"{ds.name}: has no class labels; accuracy needs a labelled dataset")
    check_inputs(model, ds.floats(range(min(len(ds), 1))), source=ds.name)
    check_labels(model, ds.labels, source=ds.name)
    was_training = model.training
    model.eval()
    correct = 0
    try:
        for start in range(0, len(ds), batch_size):
            idx = range(start, min(start + batch_size, len(ds)))
            logits = model(ds.floats(idx).to(device))
            correct += int((logits.argmax(dim=1).cpu() == ds.labels[start:start + len(idx)]).sum())
    finally:
        model.train(was_training)
    return correct / len(ds)


STEP_MILESTONES = (3 / 8, 5 / 8, 7 / 8)


def learning_rate(step: int, total_steps: int, lr: float, schedule: str, warmup: float = 0.05,
                  milestones: Sequence[float] = STEP_MILESTONES) -> float:
    """Per-step learning rate: a linear warm-up over the first ``warmup`` share of the steps (Goyal et al.,
    2017), then cosine annealing to 0, or x0.1 at each of the ``milestones`` (shares of the run; by default
    3/8, 5/8 and 7/8, the schedule Inverting Gradients trains its victims with)."""
    warmup_steps = int(warmup * total_steps)
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    t = step / max(1, total_steps)
    if schedule == "cosine":
        return 0.5 * lr * (1.0 + math.cos(math.pi * t))
    return lr * 0.1 ** sum(t >= m for m in milestones)


def _fingerprint(model: nn.Module, train: ImageDataset, settings: dict[str, Any]) -> str:
    h = hashlib.sha256()
    h.update(json.dumps(settings, sort_keys=True, default=str).encode())
    h.update(model.__class__.__name__.encode())
    for name, t in model.state_dict().items():
        h.update(f"{name}:{tuple(t.shape)}".encode())
    h.update(train.images.numpy().tobytes())
    h.update(train.labels.numpy().tobytes())
    return h.hexdigest()


def _save_state(state_dir: Path, model: nn.Module, opt: torch.optim.Optimizer, epoch: int,
                history: list[dict[str, Any]], fingerprint: str) -> None:
    save_train_state(state_dir / STATE_FILE, model, opt,
                     {"epoch": epoch, "history": history, "fingerprint": fingerprint})


def _load_state(state_dir: Path, model: nn.Module, opt: torch.optim.Optimizer,
                fingerprint: str) -> tuple[int, list[dict[str, Any]]]:
    meta = load_train_state(state_dir / STATE_FILE, model, opt, fingerprint)
    return int(meta["epoch"]), meta["history"]


def train_classifier(model: nn.Module, train: ImageDataset, *, epochs: int, batch_size: int = 128,
                     lr: float = 0.1, augment: str = "none", defense: str = "none",
                     val: ImageDataset | None = None, device: str | torch.device = "cpu", seed: int = 0,
                     show_progress: bool = True, momentum: float = 0.9, weight_decay: float = 5e-4,
                     schedule: str = "cosine", state_dir: str | os.PathLike | None = None, nesterov: bool = False,
                     warmup: float = 0.05, milestones: Sequence[float] = STEP_MILESTONES) -> dict[str, Any]:
    """Train ``model`` in place on ``train``; returns ``{"history", "accuracy", "train_accuracy", ...}``.

    ``warmup`` (share of the steps) and ``milestones`` (shares of the run, ``step`` schedule) shape
    :func:`learning_rate`. The SemSim study's victims (its inversefed ``conservative`` strategy) train with
    ``nesterov=True, warmup=0`` and x0.1 at epochs ``E // 2.667, E // 1.6, E // 1.142`` (74, 124, 175 of 200).

    ``accuracy`` is the top-1 accuracy on ``val`` after the last epoch (``None`` without ``val``);
    ``history`` has one entry per epoch (loss, training accuracy on the augmented batches, learning rate,
    validation accuracy). With ``state_dir``, the model and optimiser state are saved there after every
    epoch and a matching saved state is resumed from.
    """
    if epochs < 1:
        raise SemsimError(f"epochs={epochs}: train for at least one epoch")
    if batch_size < 2:
        raise SemsimError(f"batch size {batch_size}: must be at least 2 (BatchNorm needs two images)")
    if schedule not in SCHEDULES:
        raise SemsimError(f"schedule '{schedule}': unknown; use {' or '.join(SCHEDULES)}")
    if not 0 <= warmup < 1 or not all(0 < m <= 1 for m in milestones):
        raise SemsimError(f"warm-up {warmup} / milestones {list(milestones)}: give shares of the run, "
                          "warm-up in [0, 1) and milestones in (0, 1], e.g. 0.375")
    if not train.labelled:
        raise SemsimError(f"{train.name}: has no class labels; a classifier needs a labelled dataset")
    if len(train) < 2:
        raise SemsimError(f"{train.name}: {len(train)} image(s) are too few to train on")
    check_inputs(model, train.floats(range(1)), source=train.name)
    check_labels(model, train.labels, source=train.name)
    if val is not None:
        check_inputs(model, val.floats(range(min(1, len(val)))), source=val.name)
        check_labels(model, val.labels, source=val.name)
    aug, dfn = parse_augment(augment), parse_defense(defense)
    settings = {"epochs": epochs, "batch_size": batch_size, "lr": lr, "augment": aug.spec,
                "defense": dfn.name, "seed": seed, "momentum": momentum, "weight_decay": weight_decay,
                "schedule": schedule, "nesterov": nesterov, "warmup": warmup, "milestones": list(milestones)}

    model.to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov)
    start_epoch, history = 0, cast(list[dict[str, Any]], [])
    state_path = Path(state_dir) if state_dir is not None else None
    fingerprint = _fingerprint(model, train, settings) if state_path is not None else ""
    if state_path is not None and (state_path / STATE_FILE).is_file():
        start_epoch, history = _load_state(state_path, model, opt, fingerprint)

    images, labels = train.images.to(device), train.labels.to(device)
    n = len(train)
    steps = n // batch_size + (1 if n % batch_size > 1 else 0)  # a last batch of one image is dropped
    total = epochs * steps
    bar = progress(total=total, initial=start_epoch * steps, desc="training", unit="batch",
                   enabled=show_progress)
    try:
        for epoch in range(start_epoch, epochs):
            gen = torch.Generator().manual_seed(int(seed) * 1_000_003 + epoch)
            dgen = torch.Generator().manual_seed(int(seed) * 1_000_003 + epoch + 500_000)
            order = torch.randperm(n, generator=gen).to(device)
            loss_sum, correct, seen = 0.0, 0, 0
            for step in range(steps):
                idx = order[step * batch_size:(step + 1) * batch_size]
                x = aug(images[idx].float().div_(255.0), gen)
                y = labels[idx]
                lr_now = learning_rate(epoch * steps + step, total, lr, schedule, warmup, milestones)
                for group in opt.param_groups:
                    group["lr"] = lr_now
                logits = model(x)
                loss = F.cross_entropy(logits, y)
                if not torch.isfinite(loss):
                    raise SemsimError(f"training diverged at epoch {epoch + 1} (loss {float(loss)}); "
                                      "lower the learning rate (--lr)")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if dfn.kind != "none":
                    defended = dfn.apply([cast(torch.Tensor, p.grad) for p in params], generator=dgen)
                    for p, g in zip(params, defended, strict=True):
                        p.grad = g
                opt.step()
                loss_sum += float(loss.detach()) * len(idx)
                correct += int((logits.argmax(dim=1) == y).sum())
                seen += len(idx)
                bar.update(1)
                bar.set_postfix(epoch=epoch + 1, loss=f"{loss_sum / seen:.3f}")
            entry: dict[str, Any] = {"epoch": epoch + 1, "loss": loss_sum / seen,
                                     "train_accuracy": correct / seen, "lr": lr_now}
            if val is not None:
                entry["val_accuracy"] = evaluate_accuracy(model, val, device)
            history.append(entry)
            if state_path is not None:
                _save_state(state_path, model, opt, epoch + 1, history, fingerprint)
    finally:
        bar.close()
    model.eval()
    return {"history": history, "accuracy": history[-1].get("val_accuracy"),
            "train_accuracy": history[-1]["train_accuracy"], "epochs": epochs,
            "resumed_from_epoch": start_epoch, **{k: v for k, v in settings.items() if k != "epochs"}}


def train_to_checkpoint(out: str | os.PathLike, *, role: str, arch: str, data: str | os.PathLike,
                        epochs: int, augment: str = "none", defense: str = "none", val_split: float = 0.0,
                        image_size: int | None = None, split: str | None = None, fit: str = "resize",
                        n: int | None = None, per_class: int | None = None, width: int | None = None,
                        batch_size: int = 128, lr: float = 0.1, schedule: str = "cosine", seed: int = 0,
                        split_seed: int | None = None, device: str = "cpu", show_progress: bool = True,
                        resume: bool = True, init: str = "default", **schedule_options: Any) -> dict[str, Any]:
    """Load ``data``, train ``arch`` on it and save a checkpoint folder ``out``; returns the config written.

    ``role`` is ``victim`` or ``evaluator`` (recorded in the config; an evaluator needs a held-out split and
    records its accuracy there as ``clean_accuracy``, since model-based recognition is only meaningful
    relative to it). The images' per-channel mean/std normalise the model. While training, per-epoch
    state lives in ``.<out name>.training/`` next to ``out``; an interrupted run started again with the same
    arguments resumes from it (``resume=False`` starts over), and it is removed once ``out`` is written.
    ``split_seed`` (default ``seed``) draws the subset and the held-out split, ``seed`` the initial weights and
    the batches, so models of different seeds can share one split. ``init="dlg"`` initialises a LeNet as DLG
    does; ``epochs=0`` writes the untrained model (DLG attacks an untrained LeNet). ``schedule_options``
    (``nesterov``, ``warmup``, ``milestones``) go to :func:`train_classifier`.
    """
    if role not in ("victim", "evaluator"):
        raise SemsimError(f"role '{role}': use victim or evaluator")
    if role == "evaluator" and not val_split > 0:
        raise SemsimError("an evaluator needs a held-out split (--val-split > 0) to measure its clean "
                          "accuracy")
    if not 0 <= val_split < 1:
        raise SemsimError(f"validation split {val_split}: must be in [0, 1)")
    if width is not None and arch.lower() != "convnet":
        raise SemsimError(f"--width applies to convnet only, not to {arch}")
    if init != "default" and arch.lower() != "lenet":
        raise SemsimError(f"--init {init} applies to lenet only (DLG's initialisation), not to {arch}")
    if epochs < 0:
        raise SemsimError(f"epochs={epochs}: give 0 (an untrained model) or more")
    out = Path(out)
    full = load_dataset(data, image_size=image_size, split=split, fit=fit)  # type: ignore[arg-type]
    split_seed = seed if split_seed is None else split_seed
    picked, _ = subset(full, n=n, per_class=per_class, seed=split_seed)
    if val_split > 0:
        train, val, _, _ = train_val_split(picked, val_split, seed=split_seed)
    else:
        train, val = picked, None
    mean, std = channel_stats(train)
    size = train.image_size
    if train.images.shape[2] != train.images.shape[3]:
        raise SemsimError(f"{data}: images are {train.images.shape[3]}x{size}, not square; give --image-size")
    arch_kwargs = {"width": width} if width is not None else {}
    torch.manual_seed(seed)
    try:
        model = create_model(arch, num_classes=train.num_classes, image_size=size, mean=mean, std=std,
                             **arch_kwargs, **({"init": init} if init != "default" else {}))
        with torch.no_grad():  # too small an image fails here, not in the middle of training
            model.eval()(torch.zeros(2, 3, size, size))
    except (RuntimeError, ValueError) as exc:
        raise SemsimError(f"{arch}: cannot be built for {size}x{size} images ({exc}); "
                          "choose another --image-size") from None
    state_dir = out.parent / f".{out.name}.training"
    if not resume and state_dir.exists():
        shutil.rmtree(state_dir)
    if epochs == 0:
        result: dict[str, Any] = {"history": [], "accuracy": evaluate_accuracy(model, val) if val is not None else None,
                  "train_accuracy": None, "epochs": 0, "augment": parse_augment(augment).spec,
                  "defense": parse_defense(defense).name}
    else:
        result = train_classifier(model, train, epochs=epochs, batch_size=batch_size, lr=lr, augment=augment,
                                  defense=defense, val=val, device=device, seed=seed,
                                  show_progress=show_progress, schedule=schedule, state_dir=state_dir,
                                  **schedule_options)
    training = {"init": init, "dataset": full.name, "data": str(data), "split": full.info.get("split"), "role": role,
                "n_train": len(train), "n_val": len(val) if val is not None else 0, "subset_n": n,
                "subset_per_class": per_class, "val_split": val_split, "fit": fit,
                "label_source": f"dataset:{full.name}",
                **{k: v for k, v in result.items() if k not in ("accuracy",)}}
    config = model_config(arch.lower(), train.num_classes, size, mean, std, role=role, dataset=full.name,
                          classes=list(train.classes), augment=result["augment"], defense=result["defense"],
                          normalisation="per-channel mean/std of the training images",
                          accuracy=result["accuracy"], train_accuracy=result["train_accuracy"],
                          label_source=f"dataset:{full.name}", training=training)
    if arch_kwargs:
        config["arch_kwargs"] = arch_kwargs
    if role == "evaluator":
        config["clean_accuracy"] = result["accuracy"]
    save_checkpoint(out, model.cpu(), config)
    if state_dir.exists():
        shutil.rmtree(state_dir)
    return config
