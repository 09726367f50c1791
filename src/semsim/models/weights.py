"""Find pretrained weights, fetch them on first use, and load them without unpickling.

A weight file is looked up by its usual file name (torchvision's, pytorch-fid's, LPIPS') in this order: an
explicit path given by the user (a file, or a folder holding the file), ``$SEMSIM_WEIGHTS_DIR``, and the torch
hub cache ``$TORCH_HOME/hub/checkpoints`` (``TORCH_HOME`` defaults to ``$XDG_CACHE_HOME/torch``, i.e.
``~/.cache/torch``), where ``torch.hub`` and torchvision keep downloaded weights.

When no file is found (and no explicit path was given), :func:`fetch_weights` downloads it from its publisher's
URL into the torch hub cache, as torchvision, lpips and pyiqa do: the SHA-256 of the download must start with
the published prefix (the hex digits torchvision's file names carry, e.g. ``alexnet-owt-7be5be79.pth``; full
digests where the publisher names none), otherwise it is discarded and nothing is left in the cache. The file
is written under a temporary name and renamed into place, so an interrupted download leaves nothing behind.
``SEMSIM_OFFLINE=1`` (or ``--no-download`` on the command line) forbids any network access.

Files are read with ``torch.load(weights_only=True)`` or safetensors: nothing is unpickled. When no file can be
had the caller gets :class:`~semsim.errors.MetricUnavailable` naming the file, where to put it and why the
download did not happen.
"""

from __future__ import annotations

import hashlib
import os
import re
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from semsim.common.progress import progress
from semsim.errors import MetricUnavailable

WEIGHTS_ENV = "SEMSIM_WEIGHTS_DIR"
OFFLINE_ENV = "SEMSIM_OFFLINE"
DOWNLOAD_TIMEOUT_S = 60  # seconds without data before a download is given up
_HASH_IN_NAME = re.compile(r"-([0-9a-f]{8,64})\.[a-z]+$")  # torchvision: <name>-<first sha256 digits>.pth
_BASE_URL_FOR_TESTS: str | None = None  # tests only: serve every file from this folder URL (a local server)


@dataclass(frozen=True)
class Download:
    """Where a weight file's publisher serves it and the SHA-256 it must have.

    ``sha256``: the full hex digest or its leading digits (default: those in the URL's file name, as
    torchvision encodes them). ``name``: the path under the torch hub cache (default: the URL's file name).
    """

    url: str
    sha256: str = ""
    name: str = ""

    def __post_init__(self) -> None:
        base = self.url.rsplit("/", 1)[-1]
        if not self.name:
            object.__setattr__(self, "name", base)
        if not self.sha256:
            found = _HASH_IN_NAME.search(base)
            if found is None:
                raise ValueError(f"{self.url}: no SHA-256 prefix in the file name; give sha256=")
            object.__setattr__(self, "sha256", found.group(1))


def downloads_allowed() -> bool:
    """False when ``$SEMSIM_OFFLINE`` is set to anything but empty/0/false/no."""
    return os.environ.get(OFFLINE_ENV, "").strip().lower() in ("", "0", "false", "no")


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


def _download(source: Download, what: str) -> Path:
    """Fetch ``source`` into the torch hub cache, checking its SHA-256; raises MetricUnavailable on failure."""
    dest = hub_checkpoint_dir() / source.name
    url = source.url
    if _BASE_URL_FOR_TESTS is not None:
        url = f"{_BASE_URL_FOR_TESTS.rstrip('/')}/{url.rsplit('/', 1)[-1]}"
    part = dest.with_name(f"{dest.name}.{os.getpid()}.part")
    digest = hashlib.sha256()
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        request = urllib.request.Request(url, headers={"User-Agent": "semsim"})
        with urllib.request.urlopen(request, timeout=DOWNLOAD_TIMEOUT_S) as response, open(part, "wb") as out:
            size = int(response.headers.get("Content-Length") or 0) or None
            with progress(total=size, desc=f"downloading {dest.name}", unit="B", unit_scale=True) as bar:
                while chunk := response.read(1 << 20):
                    out.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
        got = digest.hexdigest()
        if got.startswith(source.sha256):
            os.replace(part, dest)
            return dest
    except (urllib.error.URLError, OSError, ValueError) as exc:  # ValueError: a malformed URL or header
        if isinstance(exc, urllib.error.HTTPError):
            reason: object = f"HTTP {exc.code}: {exc.reason}"
        else:
            reason = getattr(exc, "reason", None) or exc
        raise MetricUnavailable(
            f"{what} weights not found and the download from {url} failed ({reason}); put {source.name} in "
            f"{dest.parent} by hand, or retry with network access (set {OFFLINE_ENV}=1 to never try)"
        ) from None
    finally:
        part.unlink(missing_ok=True)
    raise MetricUnavailable(
        f"{what} weights from {url} have SHA-256 {got[: len(source.sha256)]}..., not the published "
        f"{source.sha256}...; the download was discarded (a changed or damaged file): put a verified "
        f"{source.name} in {dest.parent}"
    )


def fetch_weights(
    names: Sequence[str], what: str, path: str | os.PathLike | None = None, download: Download | None = None
) -> Path:
    """:func:`find_weights`, then (no explicit ``path``, downloads allowed) fetch ``download`` into the hub cache.

    ``download.name`` should be one of ``names`` so that the next call finds the file.
    """
    try:
        return find_weights(names, what, path)
    except MetricUnavailable as missing:
        if path is not None or download is None:
            raise
        if not downloads_allowed():
            raise MetricUnavailable(
                f"{missing}; downloads are off ({OFFLINE_ENV}=1 or --no-download): allow them to fetch it from "
                f"{download.url}"
            ) from None
    return _download(download, what)


def load_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a state dict from ``.safetensors`` or a torch file, without unpickling arbitrary objects."""
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: Any = load_file(str(path), device="cpu")
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
