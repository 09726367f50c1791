"""Attack many images of a dataset with a victim checkpoint and write a reconstruction set.

Output (docs/contracts.md, section 1): ``{id}_{label}_ori.png`` / ``{id}_{label}_rec.png`` (the SemSim layout;
``id`` is the image's index in the dataset) and ``manifest.csv`` with the attack record of every image, plus
``attack.json`` with the run's settings. Images whose optimisation hit NaN get a manifest row with
``status = failed: nan`` and no image files; the run goes on.

Client transform (``client_augment``): ATSPrivacy's and SemSim's attack scripts transform the client's image
with the victim's training transform (random crop + flip, ATS policy) before computing its gradient, and compare
the reconstruction with that transformed image. With ``client_augment`` (an augmentation spec, or ``train`` for
the victim's own) the same happens here: ``{id}_ori.png`` / ``original`` is the transformed image, the dataset's
image is kept as ``{id}_untransformed.png`` (column ``untransformed``), ``client_seed`` records the seed of the
image's transform and the set name says ``client-<augmentation>`` (:mod:`semsim.data.set_names`).

Determinism and resume: each image's randomness (client transform, defense noise, random start) comes from
generators seeded by ``(seed, dataset index)``, and images are attacked in fixed chunks of ``batch_size``
consecutive images of the requested list. The manifest is rewritten after every chunk, so a killed run started
again skips finished images, recomputes only unfinished chunks (with the same companions), and ends with the same
files as an uninterrupted run (on the same device; the ``seconds`` column is a timing and differs).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

import semsim
from semsim.attacks.core import create_attack
from semsim.attacks.engine import EngineOptions
from semsim.attacks.gradients import client_gradients
from semsim.common.io import write_json
from semsim.common.progress import progress
from semsim.data.datasets import ImageDataset, subset
from semsim.data.images import save_image
from semsim.data.set_names import attack_set_name, gradient_part, image_id, training_part
from semsim.data.sets import read_manifest, write_manifest
from semsim.errors import SemsimError
from semsim.victims import check_inputs, load_classifier
from semsim.victims.augment import Augmentation, parse_augment
from semsim.victims.defenses import parse_defense

MANIFEST = "manifest.csv"
SETTINGS = "attack.json"
# settings that runs of earlier versions did not record, as they ran
UNRECORDED = {"engine": "eager", "client_augment": "none"}


def image_seeds(seed: int, index: int) -> tuple[int, int]:
    """Seeds of one image's (random start, defense noise), from the base seed and the dataset index."""
    init, noise = np.random.SeedSequence([int(seed), int(index)]).generate_state(2, dtype=np.uint64)
    return int(init >> np.uint64(1)), int(noise >> np.uint64(1))


def client_seed(seed: int, index: int) -> int:
    """Seed of one image's client transform: the third word of the stream :func:`image_seeds` starts."""
    word = np.random.SeedSequence([int(seed), int(index)]).generate_state(3, dtype=np.uint64)[2]
    return int(word >> np.uint64(1))


def client_augmentation(spec: str | None, config: dict[str, Any]) -> Augmentation:
    """The client's transform: an augmentation spec (``none``, ``crop``, ``ats:3-1-7``), or ``train`` for the
    augmentation the victim was trained with (from its checkpoint), as ATSPrivacy's and SemSim's attacks do."""
    if str(spec or "none").strip().lower() == "train":
        training = config.get("training") or {}
        spec = training.get("augment") or config.get("augment") or "none"
    return parse_augment(spec)


def client_transform(images: torch.Tensor, aug: Augmentation, seeds: Sequence[int]) -> torch.Tensor:
    """Apply ``aug`` to each image (CPU, NCHW) with a generator seeded by its own seed, so an image's transform
    does not depend on its companions in a chunk."""
    return torch.cat([aug(images[k:k + 1], torch.Generator().manual_seed(int(s))) for k, s in enumerate(seeds)])


def set_name(config: dict[str, Any], data: ImageDataset, defense: str, attack: str, iterations: int,
             client_augment: str = "none") -> str:
    """``dataset/architecture/training/gradient/attack-iterations`` (:mod:`semsim.data.set_names`), e.g.
    ``cifar10/resnet20-4/crop+train-prune-70/grad-noise-1e-3/invgrad-8000``. Dataset, augmentation and
    training-time defense come from the checkpoint; ``defense`` is the one on the observed gradient and
    ``client_augment`` the client's transform of its image (``Augmentation.label``)."""
    training = config.get("training") or {}
    dataset = training.get("dataset") or config.get("dataset") or data.name
    dataset = Path(str(dataset).rstrip("/")).name or str(dataset)
    augment = parse_augment(training.get("augment") or config.get("augment") or "none").label
    train_defense = parse_defense(training.get("defense") or config.get("defense") or "none").name
    return attack_set_name(dataset, config["architecture"], training_part(augment, train_defense),
                           gradient_part(parse_defense(defense).name, client_augment), attack, iterations)


@contextlib.contextmanager
def deterministic(device: str | torch.device) -> Iterator[None]:
    """On CUDA, ask for deterministic kernels while attacking (cuDNN and, where they exist, deterministic
    versions of atomics-based ops), so a resumed run recomputes the same images; restored afterwards."""
    if torch.device(device).type != "cuda":
        yield
        return
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    saved = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark,
             torch.are_deterministic_algorithms_enabled(),
             torch.is_deterministic_algorithms_warn_only_enabled())
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved[0], saved[1]
        torch.use_deterministic_algorithms(saved[2], warn_only=saved[3])


def _requested(data: ImageDataset, n: int | None, indices: Sequence[int] | None, seed: int) -> list[int]:
    if indices is not None and n is not None:
        raise SemsimError("give either n or indices, not both")
    if indices is not None:
        chosen = [int(i) for i in indices]
        bad = [i for i in chosen if not 0 <= i < len(data)]
        if bad:
            raise SemsimError(f"index {bad[0]}: outside the dataset '{data.name}' of {len(data)} images")
        if len(set(chosen)) != len(chosen):
            raise SemsimError("indices: an image is listed twice; give each index once")
        return chosen
    if n is None:
        return list(range(len(data)))
    return subset(data, n=n, seed=seed)[1]


def _finished(out: Path, settings: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Rows of a previous run of the same settings in ``out`` whose files are present, by image id."""
    manifest_path, settings_path = out / MANIFEST, out / SETTINGS
    if not manifest_path.is_file():
        return {}
    if settings_path.is_file():
        old = json.loads(settings_path.read_text())
        diff = sorted(k for k in settings if k != "victim" and old.get(k, UNRECORDED.get(k)) != settings[k])
        if diff:
            raise SemsimError(f"{out}: holds a run with other settings ({', '.join(diff)} differ); "
                              "resume with the same settings or choose another --out folder")
    rows = {}
    for row in read_manifest(manifest_path).to_dict("records"):
        files = [row.get(c) for c in ("original", "reconstruction", "untransformed") if c in row]
        failed = str(row.get("status", "ok")).startswith("failed")
        if failed or all(isinstance(p, str) and Path(p).is_file() for p in files):
            rows[str(row["image_id"])] = row
    return rows


def attack_set(victim: str | os.PathLike, data: ImageDataset, attack: str, out: str | os.PathLike, *,
               n: int | None = None, indices: Sequence[int] | None = None, seed: int = 0,
               defense: str = "none", iterations: int | None = None, batch_size: int = 8,
               device: str | torch.device = "cpu", engine: EngineOptions | str | None = None,
               client_augment: str = "none", show_progress: bool = True, **attack_kwargs: Any) -> pd.DataFrame:
    """Attack ``n`` images (a seeded subset) or the images at ``indices`` of ``data`` (all by default).

    Each image's gradient comes from the victim (eval-mode BatchNorm unless ``model_mode="train"``), passes
    through ``defense`` and is inverted by ``attack`` (``dlg``, ``idlg``, ``invgrad``, ``gradinversion``;
    ``iterations`` and ``attack_kwargs`` override its settings). ``batch_size`` images are solved in one
    batched optimisation; ``client_augment`` transforms each image before its gradient (module docstring);
    ``engine`` says how the loop runs (an :class:`EngineOptions` or its text form, e.g.
    ``"tf32+channels-last+compile"``; recorded in the settings, so a resumed run uses the same). Returns the
    manifest (absolute paths); resumable, see the module docstring.
    """
    out = Path(out)
    if batch_size < 1:
        raise SemsimError(f"batch size {batch_size}: must be at least 1")
    model, config = load_classifier(victim, device=device)
    if not data.labelled:
        raise SemsimError(f"{data.name}: has no class labels; the client's gradient needs the true labels")
    chosen = _requested(data, n, indices, seed)
    check_inputs(config, data.floats(chosen), data.labels[chosen], source=data.name)
    engine = EngineOptions.parse(engine) if isinstance(engine, str) else (engine or EngineOptions())
    atk = create_attack(attack, engine=engine, iterations=iterations, **attack_kwargs)
    dfn = parse_defense(defense)
    client = client_augmentation(client_augment, config)
    name = set_name(config, data, dfn.name, atk.name, atk.config.iterations, client.label)
    settings = {"set": name, "victim": str(Path(victim).resolve()), "dataset": data.name, "defense": dfn.name,
                "client_augment": client.spec,
                "attack": dataclasses.asdict(atk.config), "seed": int(seed), "batch_size": int(batch_size),
                "indices": chosen, "engine": engine.label, "semsim_version": semsim.__version__}
    done = _finished(out, settings)
    out.mkdir(parents=True, exist_ok=True)
    write_json(settings, out / SETTINGS)

    labels = data.labels
    ids = [image_id(i, int(labels[i])) for i in chosen]
    chunks = [list(range(s, min(s + batch_size, len(chosen)))) for s in range(0, len(chosen), batch_size)]
    bar = progress(total=len(chosen), initial=sum(i in done for i in ids), desc=name, unit="img",
                   enabled=show_progress)
    with deterministic(device), contextlib.closing(bar):
        for chunk in chunks:
            if all(ids[p] in done for p in chunk):
                continue
            idx = [chosen[p] for p in chunk]
            seeds = [image_seeds(seed, i) for i in idx]
            clean = data.floats(idx)
            client_seeds = [client_seed(seed, i) for i in idx]
            x = (clean if client.kind == "none" else client_transform(clean, client, client_seeds)).to(device)
            y = labels[idx].to(device)
            noise_gens = [torch.Generator().manual_seed(s[1]) for s in seeds]
            observed = client_gradients(model, x, y, dfn, noise_gens, mode=atk.config.model_mode)
            result = atk.reconstruct(model, observed, y, tuple(x.shape[1:]),
                                     generators=[torch.Generator().manual_seed(s[0]) for s in seeds])
            for k, p in enumerate(chunk):
                if ids[p] in done:
                    continue
                record = result.records[k]
                row = {"set": name, "image_id": ids[p], "original": None, "reconstruction": None,
                       "label": int(labels[idx[k]]), "index": idx[k], "defense": dfn.name, **record}
                if client.kind != "none":
                    row.update(client_augment=client.spec, client_seed=client_seeds[k], untransformed=None)
                if record["status"] == "ok":
                    row["original"] = str(save_image(x[k].cpu(), out / f"{ids[p]}_ori.png"))
                    row["reconstruction"] = str(save_image(result.images[k], out / f"{ids[p]}_rec.png"))
                    if client.kind != "none":
                        row["untransformed"] = str(save_image(clean[k], out / f"{ids[p]}_untransformed.png"))
                done[ids[p]] = row
                bar.update(1)
            _write(done, ids, out)
    return read_manifest(out / MANIFEST)


def _write(done: dict[str, dict[str, Any]], ids: list[str], out: Path) -> None:
    """Rewrite the manifest with the finished rows, in the requested order."""
    rows = [done[i] for i in ids if i in done]
    write_manifest(pd.DataFrame(rows), out / MANIFEST)
