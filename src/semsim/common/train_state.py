"""Resumable training state, one format for every trainer (victim and evaluator classifiers, SemSim).

One safetensors file (never a pickle) holds the model's state dict (``model/<name>``), the SGD momentum
buffers (``momentum/<parameter name>``) and, as JSON metadata, whatever the trainer needs to continue
(epoch, history, best epoch) plus a ``fingerprint`` of the run's model, data and settings. It is written
atomically (whole or absent), so a run killed at any moment resumes from its last finished epoch.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from semsim.common.io import atomic_write
from semsim.errors import SemsimError

FORMAT = "semsim-train-state-1"


def _parameter_names(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[tuple[str, torch.Tensor]]:
    """(name, parameter) for every parameter the optimizer updates, named as in the model."""
    names = {id(p): n for n, p in model.named_parameters()}
    return [(names[id(p)], p) for group in optimizer.param_groups for p in group["params"]]


def save_train_state(path: str | os.PathLike, model: nn.Module, optimizer: torch.optim.Optimizer,
                     meta: dict[str, Any]) -> None:
    """Write the model, the optimizer's momentum and ``meta`` (JSON-serialisable, with ``fingerprint``)."""
    tensors = {f"model/{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    for name, p in _parameter_names(model, optimizer):
        buf = optimizer.state.get(p, {}).get("momentum_buffer")
        if buf is not None:
            tensors[f"momentum/{name}"] = buf.detach().cpu().contiguous()
    with atomic_write(path) as tmp:
        save_file(tensors, str(tmp), metadata={"format": FORMAT, "meta": json.dumps(meta, default=str)})


def load_train_state(path: str | os.PathLike, model: nn.Module, optimizer: torch.optim.Optimizer,
                     fingerprint: str) -> dict[str, Any]:
    """Restore a state written by :func:`save_train_state` into ``model`` and ``optimizer``; returns its meta.

    A damaged or foreign file, or one saved by a run with another fingerprint, stops with a one-line
    :class:`SemsimError` saying what to do.
    """
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as fh:
            header = fh.metadata() or {}
        if header.get("format") != FORMAT:
            raise ValueError(f"not a {FORMAT} file")
        meta = json.loads(header["meta"])
        tensors = load_file(path)
    except (SafetensorError, OSError, ValueError, KeyError) as exc:
        raise SemsimError(f"{path}: damaged training state ({exc}); start over with --restart or delete it"
                          ) from None
    if meta.get("fingerprint") != fingerprint:
        raise SemsimError(f"{path}: was saved by a different training run (a training state for other labels, "
                          "data, model or settings); start over with --restart, delete it, or choose another "
                          "output folder")
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model/")}, strict=True)
    device = next(model.parameters()).device
    for name, p in _parameter_names(model, optimizer):
        buf = tensors.get(f"momentum/{name}")
        if buf is not None:
            optimizer.state[p]["momentum_buffer"] = buf.to(device)
    return meta
