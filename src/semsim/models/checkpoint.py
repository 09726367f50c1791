"""Checkpoint folders (docs/contracts.md, section 4): ``model.safetensors`` + ``config.json``.

Used for victims, evaluation classifiers and SemSim models alike. Loading never unpickles anything.
Saving writes a temporary folder and renames it into place, so a checkpoint is either whole or absent.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

import semsim
from semsim.common.io import atomic_folder
from semsim.errors import SemsimError

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


def save_checkpoint(folder: str | os.PathLike, model: torch.nn.Module, config: dict[str, Any]) -> Path:
    """Save ``model``'s state dict and ``config`` (architecture, arguments, normalisation, provenance)."""
    folder = Path(folder)
    if "architecture" not in config:
        raise ValueError("a checkpoint config needs an 'architecture' entry")
    config = {**config, "semsim_version": semsim.__version__}
    with atomic_folder(folder) as tmp:
        state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        save_file(state, tmp / WEIGHTS_FILE)
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True, default=str) + "\n")
    return folder


def read_config(folder: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint's ``config.json``."""
    folder = Path(folder)
    path = folder / CONFIG_FILE
    if not path.is_file():
        raise SemsimError(f"{folder}: not a checkpoint folder (no {CONFIG_FILE}); give a folder written by semsim")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise SemsimError(f"{path}: invalid JSON ({exc}); the checkpoint is damaged") from None


def load_checkpoint(folder: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Return ``(state_dict, config)`` of a checkpoint folder, without unpickling."""
    folder = Path(folder)
    config = read_config(folder)
    weights = folder / WEIGHTS_FILE
    if not weights.is_file():
        raise SemsimError(f"{folder}: no {WEIGHTS_FILE}; the checkpoint is incomplete")
    try:
        return load_file(weights), config
    except (SafetensorError, OSError, ValueError) as exc:  # truncated, empty or not safetensors at all
        why = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
        raise SemsimError(f"{weights}: damaged or empty weights file ({why}); copy the checkpoint again or "
                          "retrain it") from None


ModuleT = TypeVar("ModuleT", bound=torch.nn.Module)


def load_state_into(model: ModuleT, state: dict[str, torch.Tensor], source: str) -> ModuleT:
    """Load ``state`` into ``model`` strictly, turning a mismatch into a one-line error naming ``source``."""
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[1].strip() if len(str(exc).splitlines()) > 1 else str(exc)
        raise SemsimError(f"{source}: weights do not match architecture {model.__class__.__name__} ({first}); "
                          "check the checkpoint's config.json") from None
    return model
