"""Find and load pretrained weights offline (nothing is ever downloaded).

A weight file is looked up by its usual file name (torchvision's, pytorch-fid's, LPIPS') in this order: an
explicit path given by the user (a file, or a folder holding the file), ``$SEMSIM_WEIGHTS_DIR``, and the torch
hub cache ``$TORCH_HOME/hub/checkpoints`` (``TORCH_HOME`` defaults to ``$XDG_CACHE_HOME/torch``, i.e.
``~/.cache/torch``), where ``torch.hub`` and torchvision keep downloaded weights. Files are read with
``torch.load(weights_only=True)`` or safetensors: nothing is unpickled. When no file is found the caller gets
:class:`~semsim.errors.MetricUnavailable` naming the file and where to put it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from semsim.errors import MetricUnavailable

WEIGHTS_ENV = "SEMSIM_WEIGHTS_DIR"


def hub_checkpoint_dir() -> Path:
    """torch hub's checkpoint folder ``$TORCH_HOME/hub/checkpoints`` (~/.cache/torch/hub/checkpoints)."""
    torch_home = os.environ.get("TORCH_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "torch"
    )
    return Path(torch_home) / "hub" / "checkpoints"


def search_dirs() -> list[Path]:
    """The folders searched for weight files, in order: ``$SEMSIM_WEIGHTS_DIR``, then the torch hub cache."""
    dirs = [Path(os.environ[WEIGHTS_ENV]).expanduser()] if os.environ.get(WEIGHTS_ENV) else []
    return [*dirs, hub_checkpoint_dir()]


def find_weights(names: Sequence[str], what: str, path: str | os.PathLike | None = None) -> Path:
    """The first existing file among ``names`` (relative file names) in ``path`` or the search folders.

    ``path`` may be the file itself or a folder. Raises :class:`MetricUnavailable` naming the file and place.
    """
    if path is not None:
        path = Path(path).expanduser()
        if path.is_file():
            return path
        if not path.is_dir():
            raise MetricUnavailable(f"{path}: no such weight file for {what}; give the path of {names[0]}")
        dirs = [path]
    else:
        dirs = search_dirs()
    for folder in dirs:
        for name in names:
            if (folder / name).is_file():
                return folder / name
    places = " or ".join(str(d) for d in dirs)
    hint = (
        ""
        if path is not None or os.environ.get(WEIGHTS_ENV)
        else f" (or set {WEIGHTS_ENV} to a folder holding it)"
    )
    raise MetricUnavailable(f"{what} weights not found: put {names[0]} in {places}{hint}")


def load_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a state dict from ``.safetensors`` or a torch file, without unpickling arbitrary objects."""
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch and safetensors raise many types for bad files
        raise MetricUnavailable(
            f"{path}: cannot be read as a weight file ({exc.__class__.__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}); replace it"
        ) from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise MetricUnavailable(f"{path}: not a state dict of tensors; give a torchvision-format weight file")
    return state


def load_into(
    module: nn.Module,
    state: dict[str, torch.Tensor],
    source: str | os.PathLike,
    ignore_prefixes: Sequence[str] = (),
) -> None:
    """Load ``state`` into ``module`` strictly (keys and shapes), ignoring keys under ``ignore_prefixes``.

    Missing BatchNorm ``num_batches_tracked`` counters are tolerated (converted checkpoints often lack them).
    """
    own = module.state_dict()
    state = {k: v for k, v in state.items() if not k.startswith(tuple(ignore_prefixes))}
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    wrong = [k for k in state if k in own and state[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        if missing:
            detail = f"missing {missing[:3]}"
        elif unexpected:
            detail = f"unexpected {unexpected[:3]}"
        else:
            detail = f"{wrong[0]} has shape {tuple(state[wrong[0]].shape)}, not {tuple(own[wrong[0]].shape)}"
        raise MetricUnavailable(
            f"{source}: does not match {type(module).__name__} ({detail}); "
            "give the torchvision-format file this metric names"
        )
    module.load_state_dict(state, strict=False)
