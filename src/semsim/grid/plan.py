"""Expand a grid into tasks: one task = one configuration x one shard of images.

Every task has a *key*, a hash of what it computes (its kind, parameters and the keys of the tasks it reads
from), and publishes into its own folder with a ``DONE.json`` marker holding that key. A task is complete when
the marker is there with the same key, so a rerun skips finished shards, and a changed setting (another seed,
another victim) redoes exactly the shards it affects.

Run folder layout (``out`` of the grid file)::

    victims/<dataset>/<victim>/          trained victims (checkpoint folders)
    shards/<set>/attack-0000/            one shard of reconstructions ({id}_{label}_ori/_rec.png, manifest)
    shards/<set>/score-0000/             per-image scores of one shard; score-set/ for set-level metrics
    sets/<set>/                          merged sets (SemSim layout + manifest.csv); manifest.csv of all sets
    scores.parquet, scores_sets.parquet  merged score tables
    grid-plan.json, grid-state.json      what the run does and how far it got (read by `semsim grid status`)
    work/<key>/                          unpublished work of running or interrupted tasks
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from semsim.errors import SemsimError
from semsim.grid.spec import AttackSpec, GridSpec, VictimSpec

DONE_FILE = "DONE.json"
PLAN_FILE = "grid-plan.json"
STATE_FILE = "grid-state.json"
RATE_KINDS = ("attack", "score", "probe")  # the first present is the "images" the progress rate counts


@dataclass
class Task:
    """One unit of work: what to compute (``kind``, ``params``), where it publishes, what it waits for."""

    id: str
    kind: str  # train | attack | score | score-set | probe
    set: str | None
    shard: int
    out: str
    work: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    deps: tuple[str, ...] = ()
    n_images: int = 0
    device: str = "cpu"
    key: str = ""

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["deps"] = list(self.deps)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Task:
        return cls(**{**d, "deps": tuple(d.get("deps", ()))})


@dataclass
class Plan:
    """The tasks of a grid in dependency order, plus the input manifests a run writes before starting."""

    spec: GridSpec
    tasks: list[Task]
    inputs: dict[str, pd.DataFrame] = field(default_factory=dict)  # path -> manifest (scoring grids)
    skipped: pd.DataFrame | None = None  # unusable pairs of scored inputs (score.skip_bad)

    def by_id(self) -> dict[str, Task]:
        return {t.id: t for t in self.tasks}

    @property
    def rate_kind(self) -> str:
        kinds = {t.kind for t in self.tasks}
        return next((k for k in RATE_KINDS if k in kinds), "attack")


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _file_stamp(path: str) -> str:
    st = os.stat(path)
    return f"{path}:{st.st_size}:{st.st_mtime_ns}"


def task_key(task_id: str, kind: str, params: dict[str, Any], dep_keys: list[str]) -> str:
    """A stable hash of what a task computes: its identity, settings and the keys of the tasks it reads.

    The id is part of it, so two tasks with equal settings (two victims trained from the same recipe) never
    share a key, nor a work folder.
    """
    blob = json.dumps({"id": task_id, "kind": kind, "params": params, "deps": dep_keys}, sort_keys=True,
                      default=str)
    return _digest(blob)


def safe_path(set_name: str) -> str:
    """A set name as a relative folder path (``/`` kept as nesting; other odd characters become ``_``)."""
    parts = [re.sub(r"[^A-Za-z0-9._+=-]", "_", p) for p in str(set_name).split("/") if p]
    parts = ["_" if p in (".", "..") else p for p in parts]
    if not parts:
        raise SemsimError(f"set name '{set_name}' is empty; name the set")
    return "/".join(parts)


def read_done(folder: str | Path) -> dict[str, Any] | None:
    """The completion record of a published task folder, or None when it is not complete."""
    path = Path(folder) / DONE_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def is_done(task: Task) -> bool:
    """Has this task (with this exact key) been published?"""
    record = read_done(task.out)
    return record is not None and record.get("key") == task.key


def _chunks(values: list, size: int) -> list[list]:
    return [values[i:i + size] for i in range(0, len(values), size)]


def _dataset_indices(spec: GridSpec) -> dict[str, list[int]]:
    """Which dataset indices each dataset contributes (``images`` section), chosen once in the driver."""
    from semsim.data.datasets import subset
    from semsim.grid.datasets import cached_dataset

    chosen = {}
    for ds in spec.datasets:
        img = spec.images
        if img.indices is not None:  # checked against the dataset when the attack runs
            chosen[ds.name] = list(img.indices)
            continue
        data = cached_dataset(ds.path, ds.image_size, ds.split)
        if img.n is None and img.per_class is None:
            chosen[ds.name] = list(range(len(data)))
        else:
            _, idx = subset(data, n=img.n, per_class=img.per_class, seed=img.seed)
            chosen[ds.name] = [int(i) for i in idx]
    return chosen


Shard = tuple[list[str], list[str], "list[str] | None", int]


def _score_tasks(spec: GridSpec, set_name: str, shards: list[Shard], root: Path) -> list[Task]:
    """Image-level metric tasks per shard, plus one whole-set task for set-level metrics (FID needs them all).

    ``shards``: per shard, (manifests to read, tasks it waits for, image ids to keep or None, image count).
    """
    from semsim.metrics import metric_info

    score = spec.scoring
    folder = root / "shards" / safe_path(set_name)
    tasks = []
    for level in ("image", "set"):
        metrics = [m for m in score.metrics if metric_info(m).level == level]
        if not metrics:
            continue
        params = {"set": set_name, "metrics": metrics, "batch_size": score.batch_size,
                  "skip_bad": score.skip_bad,
                  "options": {m: o for m, o in score.options.items() if m in metrics}}
        if level == "image":
            for k, (manifests, deps, ids, n) in enumerate(shards):
                tasks.append(Task(f"score:{set_name}#{k:04d}", "score", set_name, k,
                                  str(folder / f"score-{k:04d}"), deps=tuple(deps), n_images=n,
                                  device=spec.device,
                                  params={**params, "manifests": manifests, "image_ids": ids}))
        else:
            ids = None if all(s[2] is None for s in shards) else [i for s in shards for i in s[2] or ()]
            params.update(manifests=list(dict.fromkeys(m for s in shards for m in s[0])), image_ids=ids)
            tasks.append(Task(f"score-set:{set_name}", "score-set", set_name, -1, str(folder / "score-set"),
                              params=params, deps=tuple(d for s in shards for d in s[1]),
                              n_images=sum(s[3] for s in shards), device=spec.device))
    return tasks


def _train_task(spec: GridSpec, dataset: Any, victim: Any, root: Path) -> Task:
    recipe = {"augment": "none", "defense": "none", "batch_size": 128, "lr": 0.1, "n": None,
              "seed": spec.seed, **victim.train}
    return Task(f"train:{dataset.name}/{victim.name}", "train", None, 0,
                str(root / "victims" / dataset.name / victim.name),
                params={"dataset": dataset.train, "image_size": dataset.image_size, **recipe,
                        **({"split": dataset.train_split} if dataset.train_split else {})},
                device=spec.device)


def default_iterations(attack: str) -> int:
    from semsim.attacks import ATTACK_DEFAULTS

    return int(ATTACK_DEFAULTS[attack.lower()]["iterations"])


def _client_augment(attack: AttackSpec, victim: VictimSpec) -> str:
    """The client's transform for ``victim``: the attack's spec, or with ``train`` the victim's training
    augmentation (known only for victims the grid trains)."""
    from semsim.victims.augment import parse_augment

    if attack.client_augment != "train":
        return attack.client_augment
    if victim.train is None:
        raise SemsimError(f"attack {attack.name}: client_augment: train needs victims the grid trains; victim "
                          f"'{victim.name}' is a checkpoint: name the augmentation (e.g. client_augment: crop)")
    return parse_augment(victim.train.get("augment")).spec


def _attack_tasks(spec: GridSpec, root: Path) -> list[Task]:
    from semsim.data.set_names import gradient_part
    from semsim.victims.augment import parse_augment
    from semsim.victims.defenses import parse_defense

    indices = _dataset_indices(spec)
    tasks: list[Task] = []
    for ds, victim in itertools.product(spec.datasets, spec.victims):
        if victim.datasets is not None and ds.name not in victim.datasets:
            continue
        deps: tuple[str, ...] = ()
        victim_path = victim.checkpoint
        if victim.train is not None:
            train = _train_task(spec, ds, victim, root)
            tasks.append(train)
            deps, victim_path = (train.id,), train.out
        for defense, attack in itertools.product(spec.defenses, spec.attacks):
            for iters in attack.iterations:
                iters_name = iters or default_iterations(attack.name)
                # set name: dataset/<victim name: architecture/training>/<gradient defense>/attack-iterations
                client = _client_augment(attack, victim)
                grad = gradient_part(parse_defense(defense).name, parse_augment(client).label)
                name = f"{ds.name}/{victim.name}/{grad}/{attack.name}-{iters_name}"
                folder = root / "shards" / safe_path(name)
                shards = []
                for k, idx in enumerate(_chunks(indices[ds.name], spec.images.shard_size)):
                    params = {"dataset": ds.path, "image_size": ds.image_size, "victim": victim_path,
                              **({"split": ds.split} if ds.split else {}),
                              "attack": attack.name, "iterations": iters, "defense": defense,
                              "seed": spec.seed, "indices": idx, "batch_size": spec.attack_batch_size,
                              "options": attack.options,
                              **({"client_augment": client} if client != "none" else {})}
                    shards.append(Task(f"attack:{name}#{k:04d}", "attack", name, k,
                                       str(folder / f"attack-{k:04d}"), params=params, deps=deps,
                                       n_images=len(idx), device=spec.device))
                tasks += shards
                if spec.score is not None:
                    tasks += _score_tasks(spec, name, [([str(Path(t.out) / "manifest.csv")], [t.id], None,
                                                        t.n_images) for t in shards], root)
    return tasks


def _collection_tasks(spec: GridSpec, root: Path) -> tuple[list[Task], dict[str, pd.DataFrame], pd.DataFrame]:
    """Score tasks for existing sets: each set's manifest is resolved once, then split into shards of ids."""
    from semsim.data.sets import ingest

    tasks: list[Task] = []
    inputs: dict[str, pd.DataFrame] = {}
    skipped: list[pd.DataFrame] = []
    seen: dict[str, str] = {}
    score = spec.scoring
    for item in spec.sets:
        manifest, bad = ingest(item.path, set_name=item.name, skip_bad=score.skip_bad)
        if len(bad):
            skipped.append(bad)
        for set_name, group in manifest.groupby("set", sort=False):
            set_name = str(set_name)
            if set_name in seen:
                raise SemsimError(f"{item.path}: set '{set_name}' also comes from {seen[set_name]}; "
                                  "give one of them another name (sets: [{path: ..., name: ...}])")
            seen[set_name] = item.path
            path = str(root / "inputs" / f"{safe_path(set_name).replace('/', '__')}.parquet")
            group = group.reset_index(drop=True)
            inputs[path] = group
            size = score.shard_size
            ids = _chunks(group["image_id"].astype(str).tolist(), size)
            # a key must change when the files a shard points at change: hash paths, sizes and mtimes
            rows = [f"{r.image_id},{_file_stamp(r.original)},{_file_stamp(r.reconstruction)}"
                    for r in group.itertuples()]
            digests = [_digest("\n".join(rows[i * size:(i + 1) * size])) for i in range(len(ids))]
            shard_tasks = _score_tasks(spec, set_name, [([path], [], i, len(i)) for i in ids], root)
            for t in shard_tasks:
                t.params["rows"] = digests[t.shard] if t.shard >= 0 else _digest("".join(digests))
            tasks += shard_tasks
    return tasks, inputs, pd.concat(skipped, ignore_index=True) if skipped else pd.DataFrame()


def _probe_tasks(spec: GridSpec, root: Path) -> list[Task]:
    p = spec.probe
    tasks: list[Task] = []
    if p is None:
        return tasks
    for k in range(p.tasks):
        marker = root / "work" / f"probe-{k:04d}"
        params = {"images": p.images, "sleep": p.sleep,
                  "crash_marker": str(marker) + ".crashed" if p.crash_once else None,
                  "fail_marker": str(marker) + ".failed" if p.fail_times else None,
                  "fail_times": p.fail_times}
        tasks.append(Task(f"probe#{k:04d}", "probe", "probe", k, str(root / "shards" / "probe" / f"{k:04d}"),
                          params=params, n_images=p.images, device=spec.device))
    return tasks


def build_plan(spec: GridSpec) -> Plan:
    """Expand ``spec`` into keyed tasks, dependencies first (reads datasets and manifests, writes nothing)."""
    root = spec.out
    tasks: list[Task] = []
    inputs: dict[str, pd.DataFrame] = {}
    skipped = pd.DataFrame()
    if spec.probe is not None:
        tasks += _probe_tasks(spec, root)
    if spec.datasets:
        tasks += _attack_tasks(spec, root)
    if spec.sets:
        more, inputs, skipped = _collection_tasks(spec, root)
        tasks += more
    keys: dict[str, str] = {}
    for t in tasks:
        t.key = task_key(t.id, t.kind, t.params, [keys[d] for d in t.deps])
        t.work = str(root / "work" / t.key)
        keys[t.id] = t.key
    ids = [t.id for t in tasks]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise SemsimError(f"{spec.path}: task '{dup}' is declared twice; make the names in the grid unique")
    return Plan(spec, tasks, inputs, skipped)


def plan_summary(plan: Plan) -> pd.DataFrame:
    """One row per (kind, set): shards, how many are done, images in all and done."""
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for t in plan.tasks:
        name = t.set if t.set is not None else t.id.split(":", 1)[-1]
        row = rows.setdefault((t.kind, name), {"kind": t.kind, "set": name, "tasks": 0, "done": 0,
                                                "images": 0, "images_done": 0})
        done = is_done(t)
        row["tasks"] += 1
        row["done"] += int(done)
        row["images"] += t.n_images
        row["images_done"] += t.n_images if done else 0
    df = pd.DataFrame(list(rows.values()), columns=["kind", "set", "tasks", "done", "images", "images_done"])
    df["to_run"] = df["tasks"] - df["done"]
    return df
