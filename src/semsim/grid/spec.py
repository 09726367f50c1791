"""The grid file: a declarative study (datasets x victims x defenses x attacks x images), or a collection of
sets to score, read from YAML and checked up front so that a typo fails before hours of work start.

Attack grid::

    out: runs/study                 # run folder (relative paths are relative to this file)
    device: cpu                     # cpu, cuda, cuda:1 ...
    retries: 2                      # extra attempts for a failed or killed task
    datasets:
      cifar10: {path: ../shared/data/cifar10_test, image_size: 32}   # split/train_split: CIFAR/MNIST splits
    victims:
      resnet: {checkpoint: checkpoints/resnet20-4}          # an existing checkpoint folder
      lenet: {train: {architecture: lenet, epochs: 2}}       # or one to train per dataset
    defenses: [none, noise-1e-3]
    attacks:
      - {name: invgrad, iterations: [1000, 8000], options: {lr: 0.1}}
      # client_augment: the client transforms its image before the gradient (an augmentation spec, or
      # `train`: each trained victim's training augmentation, as ATSPrivacy's and SemSim's attack scripts do)
      - {name: invgrad, client_augment: crop}
    images: {n: 64, shard_size: 8, seed: 0}
    score: {metrics: [psnr, ssim]}

Scoring grid (the same engine over many existing sets)::

    out: runs/scores
    sets: [runs/study/sets/*/*/*/*, {path: other/manifest.csv, name: other}]
    score: {metrics: [psnr, ssim], shard_size: 500}

``score`` also takes what ``semsim score`` does, with the same effect on the tables: ``evaluator:`` (an
evaluation checkpoint for mr / iip / feature_distance), ``semsim:`` (a SemSim model folder: the ``semsim``
column and its provenance columns), ``calibration:`` (a calibration file, applied to the merged tables),
``skip_bad: true``, and per-metric ``options``.

Probe grid (empty tasks, to check a cluster and measure per-task overhead; ``crash_once`` / ``fail_times``
inject worker deaths and errors to see the retries at work)::

    probe: {tasks: 100, images: 1, sleep: 0.0, crash_once: false, fail_times: 0}
"""

from __future__ import annotations

import glob
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from semsim.errors import SemsimError

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")
TOP_KEYS = {"out", "device", "retries", "threads", "seed", "datasets", "victims", "defenses", "attacks",
            "images", "attack", "score", "sets", "probe"}


@dataclass(frozen=True)
class DatasetSpec:
    """Where attacked images come from (``path``) and victims train on (``train``, default ``path``)."""

    name: str
    path: str
    train: str
    image_size: int | None = None
    split: str | None = None  # of ``path`` (CIFAR, MNIST: train/test); None: train when present
    train_split: str | None = None  # of ``train``


@dataclass(frozen=True)
class VictimSpec:
    """A victim model: an existing checkpoint folder, or a training recipe run once per dataset."""

    name: str
    checkpoint: str | None = None
    train: dict[str, Any] | None = None
    datasets: tuple[str, ...] | None = None  # restrict to these datasets (default: all)


@dataclass(frozen=True)
class AttackSpec:
    """An attack by registry name, its iteration budgets (``None``: the attack's default) and options;
    ``client_augment``: the client's transform of its image (``none``, ``crop``, ``ats:...`` or ``train``)."""

    name: str
    iterations: tuple[int | None, ...] = (None,)
    options: dict[str, Any] = field(default_factory=dict)
    client_augment: str = "none"


@dataclass(frozen=True)
class ImagesSpec:
    """Which images are attacked (``subset(ds, n, per_class, seed)``) and how many per task."""

    n: int | None = None
    per_class: int | None = None
    seed: int = 0
    shard_size: int = 8
    indices: tuple[int, ...] | None = None  # explicit dataset indices (the plan then needs no dataset)


@dataclass(frozen=True)
class ScoreSpec:
    """What to score: metric names, per-metric constructor options, shard size for set collections."""

    metrics: tuple[str, ...]
    options: dict[str, dict[str, Any]] = field(default_factory=dict)
    batch_size: int = 256
    shard_size: int = 1000
    table: str = "scores.parquet"
    skip_bad: bool = False
    calibration: str | None = None  # a calibration file (semsim calibrate), applied to the merged tables


@dataclass(frozen=True)
class SetInput:
    """An existing set to score: a folder or a manifest; ``name`` overrides the set name."""

    path: str
    name: str | None = None


@dataclass(frozen=True)
class ProbeSpec:
    """Synthetic tasks (no model, no data): measure scheduler overhead, check fault handling on a cluster."""

    tasks: int
    images: int = 1
    sleep: float = 0.0
    crash_once: bool = False  # each task kills its worker process on its first attempt
    fail_times: int = 0  # each task raises on its first ``fail_times`` attempts


@dataclass(frozen=True)
class GridSpec:
    """A parsed grid file (paths resolved against the file's folder)."""

    path: Path
    out: Path
    device: str = "cpu"
    retries: int = 2
    threads: int | None = None
    seed: int = 0
    datasets: tuple[DatasetSpec, ...] = ()
    victims: tuple[VictimSpec, ...] = ()
    defenses: tuple[str, ...] = ("none",)
    attacks: tuple[AttackSpec, ...] = ()
    images: ImagesSpec = ImagesSpec()
    attack_batch_size: int = 8
    score: ScoreSpec | None = None
    sets: tuple[SetInput, ...] = ()
    probe: ProbeSpec | None = None

    @property
    def scoring(self) -> ScoreSpec:
        """The ``score`` section (for grids that score; an error names the missing section otherwise)."""
        if self.score is None:
            raise SemsimError(f"{self.path}: the grid has no 'score' section")
        return self.score


def _fail(where: str, what: str) -> SemsimError:
    return SemsimError(f"{where}: {what}")


def _mapping(value: Any, where: str, allowed: set[str]) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _fail(where, f"expected a mapping, got {type(value).__name__}; see examples/grid.yaml")
    unknown = sorted(set(map(str, value)) - allowed)
    if unknown:
        raise _fail(where, f"unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}")
    return value


def _int(value: Any, where: str, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise _fail(where, f"expected an integer >= {minimum}, got {value!r}")
    return value


def _opt_int(value: Any, where: str, minimum: int = 0) -> int | None:
    """:func:`_int`, or None when the value is absent."""
    return None if value is None else _int(value, where, minimum)


def _name(value: Any, where: str, nested: bool = False) -> str:
    """A name used in set names and folders; ``nested`` allows ``/`` between parts (``resnet20-4/crop``)."""
    value = str(value)
    if not all(NAME.match(part) for part in (value.split("/") if nested else [value])):
        raise _fail(where, f"name '{value}' may use only letters, digits and . _ + - "
                    + ("(and / between parts)" if nested else "(no spaces or slashes)"))
    return value


def _list(value: Any) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, list | tuple) else [value]


def _path(base: Path, value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise _fail(where, f"expected a path, got {value!r}")
    p = Path(value).expanduser()
    return str(p if p.is_absolute() else (base / p).resolve())


def _defense(value: Any, where: str) -> str:
    from semsim.victims.defenses import parse_defense

    parse_defense(str(value))  # unknown defenses fail here
    return _name(value, where)


def _datasets(raw: Any, base: Path, where: str) -> tuple[DatasetSpec, ...]:
    out = []
    for name, entry in _mapping(raw, where, set(map(str, raw or {}))).items():
        w = f"{where}.{name}"
        if isinstance(entry, str):
            entry = {"path": entry}
        entry = _mapping(entry, w, {"path", "train", "image_size", "split", "train_split"})
        if "path" not in entry:
            raise _fail(w, "'path' is missing; give a CIFAR, MNIST or image-folder dataset")
        path = _path(base, entry["path"], f"{w}.path")
        train = _path(base, entry["train"], f"{w}.train") if "train" in entry else path
        size = _opt_int(entry.get("image_size"), f"{w}.image_size", 1)
        splits = [entry.get(k) for k in ("split", "train_split")]
        if any(s not in (None, "train", "test") for s in splits):
            raise _fail(w, f"split {splits}: use train or test (CIFAR, MNIST folders)")
        out.append(DatasetSpec(_name(name, w), path, train, size, *splits))
    return tuple(out)


TRAIN_KEYS = {"architecture", "epochs", "batch_size", "lr", "augment", "defense", "n", "seed", "schedule",
              "nesterov", "warmup", "milestones"}


def _victims(raw: Any, base: Path, where: str, dataset_names: set[str]) -> tuple[VictimSpec, ...]:
    out = []
    for name, entry in _mapping(raw, where, set(map(str, raw or {}))).items():
        w = f"{where}.{name}"
        if isinstance(entry, str):
            entry = {"checkpoint": entry}
        entry = _mapping(entry, w, {"checkpoint", "train", "datasets"})
        if ("checkpoint" in entry) == ("train" in entry):
            raise _fail(w, "give exactly one of 'checkpoint' (a folder) or 'train' (a recipe)")
        only = tuple(str(d) for d in _list(entry.get("datasets"))) or None
        for d in only or ():
            if d not in dataset_names:
                raise _fail(f"{w}.datasets", f"unknown dataset '{d}'; declared: "
                            f"{', '.join(sorted(dataset_names))}")
        if "checkpoint" in entry:
            ckpt = _path(base, entry["checkpoint"], f"{w}.checkpoint")
            if not (Path(ckpt) / "config.json").is_file():
                raise _fail(f"{w}.checkpoint", f"{ckpt} is not a checkpoint folder (no config.json)")
            out.append(VictimSpec(_name(name, w, nested=True), checkpoint=ckpt, datasets=only))
        else:
            recipe = dict(_mapping(entry["train"], f"{w}.train", TRAIN_KEYS))
            if "architecture" not in recipe:
                raise _fail(f"{w}.train", "'architecture' is missing (lenet, convnet, resnet20-4, resnet18)")
            _int(recipe.setdefault("epochs", 1), f"{w}.train.epochs", 1)
            out.append(VictimSpec(_name(name, w, nested=True), train=recipe, datasets=only))
    return tuple(out)


def _attacks(raw: Any, where: str) -> tuple[AttackSpec, ...]:
    out = []
    for i, entry in enumerate(_list(raw)):
        w = f"{where}[{i}]"
        if isinstance(entry, str):
            entry = {"name": entry}
        entry = _mapping(entry, w, {"name", "iterations", "options", "client_augment"})
        if "name" not in entry:
            raise _fail(w, "'name' is missing (dlg, idlg, invgrad, gradinversion)")
        iters = tuple(_opt_int(v, f"{w}.iterations", 1) for v in _list(entry.get("iterations")))
        iters = iters or (None,)
        options = _mapping(entry.get("options"), f"{w}.options", set(map(str, entry.get("options") or {})))
        from semsim.attacks import create_attack

        for it in iters:  # unknown attacks and settings fail here, not in the middle of the run
            try:
                create_attack(str(entry["name"]), iterations=it, **options)
            except (SemsimError, TypeError, ValueError) as exc:
                raise _fail(w, str(exc)) from None
        out.append(AttackSpec(_name(entry["name"], w), iters, dict(options),
                              _client_augment(entry.get("client_augment"), f"{w}.client_augment")))
    return tuple(out)


def _client_augment(raw: Any, where: str) -> str:
    """``train`` or a canonical augmentation spec (``semsim.victims.augment.parse_augment``)."""
    from semsim.victims.augment import parse_augment

    text = str(raw if raw is not None else "none").strip().lower()
    if text == "train":
        return text
    try:
        return parse_augment(text).spec
    except SemsimError as exc:
        raise _fail(where, f"{exc}, or train (each victim's training augmentation)") from None


def _score(raw: Any, base: Path, where: str) -> ScoreSpec | None:
    if raw is None:
        return None
    raw = _mapping(raw, where, {"metrics", "options", "batch_size", "shard_size", "table", "skip_bad",
                                "evaluator", "semsim", "calibration"})
    metrics = tuple(str(m) for m in _list(raw.get("metrics")))
    if not metrics:
        raise _fail(f"{where}.metrics", "list at least one metric (see `semsim metrics`)")
    from semsim.metrics import metric_info  # imports the registry; cheap, no models are built

    for m in metrics:
        metric_info(m)
    options = _mapping(raw.get("options"), f"{where}.options", set(metrics))
    # options naming files next to the grid file (a SemSim model, an evaluator checkpoint) become absolute
    resolved = {}
    for m, o in options.items():
        o = _mapping(o, f"{where}.options.{m}", set(map(str, o or {})))
        resolved[m] = {k: str((base / v).resolve()) if isinstance(v, str) and v and (base / v).exists() else v
                       for k, v in o.items()}
    # evaluator / semsim / calibration as in `semsim score` (files relative to the grid file)
    files = {k: str((base / str(raw[k])).resolve()) for k in ("evaluator", "semsim", "calibration")
             if raw.get(k) is not None}
    from semsim.metrics.scoring import panel_request

    names, resolved = panel_request(metrics, evaluator=files.get("evaluator"), semsim=files.get("semsim"),
                                    options=resolved)
    if "calibration" in files:
        from semsim.metrics.calibrated import load_calibration

        load_calibration(files["calibration"])  # a bad file fails now, not after the grid ran
    table = str(raw.get("table", "scores.parquet"))
    if Path(table).suffix.lower() not in (".csv", ".parquet", ".pq") or "/" in table:
        raise _fail(f"{where}.table", f"'{table}' must be a file name ending in .csv or .parquet")
    return ScoreSpec(tuple(names), resolved, _int(raw.get("batch_size", 256), f"{where}.batch_size", 1),
                     _int(raw.get("shard_size", 1000), f"{where}.shard_size", 1), table,
                     bool(raw.get("skip_bad", False)), files.get("calibration"))


def _sets(raw: Any, base: Path, where: str) -> tuple[SetInput, ...]:
    out = []
    for i, entry in enumerate(_list(raw)):
        w = f"{where}[{i}]"
        if isinstance(entry, str):
            entry = {"path": entry}
        entry = _mapping(entry, w, {"path", "name"})
        pattern = _path(base, entry.get("path"), f"{w}.path")
        matches = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
        matches = [m for m in matches if not Path(m).name.startswith(".")]
        if not matches or not Path(matches[0]).exists():
            raise _fail(f"{w}.path", f"{pattern} matches no folder or manifest")
        if entry.get("name") and len(matches) > 1:
            raise _fail(f"{w}.name", f"a name applies to one set, but {pattern} matches {len(matches)}")
        out += [SetInput(m, entry.get("name")) for m in matches]
    return tuple(out)


def parse_grid(data: dict[str, Any], path: Path) -> GridSpec:
    """Check and normalise a grid mapping read from ``path`` (relative paths resolve against its folder)."""
    where = str(path)
    data = _mapping(data, where, TOP_KEYS)
    base = path.resolve().parent
    out = Path(_path(base, data.get("out", f"runs/{path.stem}"), f"{where}: out"))
    device = str(data.get("device", "cpu"))
    if not re.match(r"^(cpu|cuda(:\d+)?|mps)$", device):
        raise _fail(f"{where}: device", f"'{device}' is not a torch device (cpu, cuda, cuda:N, mps)")
    datasets = _datasets(data.get("datasets"), base, f"{where}: datasets")
    victims = _victims(data.get("victims"), base, f"{where}: victims", {d.name for d in datasets})
    attacks = _attacks(data.get("attacks"), f"{where}: attacks")
    defenses = tuple(_defense(d, f"{where}: defenses") for d in _list(data.get("defenses"))) or ("none",)
    img = _mapping(data.get("images"), f"{where}: images", {"n", "per_class", "seed", "shard_size", "indices"})
    indices = None
    if img.get("indices") is not None:
        indices = tuple(_int(i, f"{where}: images.indices", 0) for i in _list(img["indices"]))
        if len(set(indices)) != len(indices) or img.get("n") is not None or img.get("per_class") is not None:
            raise _fail(f"{where}: images.indices", "list each index once, without n or per_class")
    images = ImagesSpec(_opt_int(img.get("n"), f"{where}: images.n", 1),
                        _opt_int(img.get("per_class"), f"{where}: images.per_class", 1),
                        _int(img.get("seed", 0), f"{where}: images.seed"),
                        _int(img.get("shard_size", 8), f"{where}: images.shard_size", 1), indices)
    atk = _mapping(data.get("attack"), f"{where}: attack", {"batch_size"})
    probe_raw = data.get("probe")
    probe = None
    if probe_raw is not None:
        p = _mapping(probe_raw, f"{where}: probe",
                     {"tasks", "images", "sleep", "crash_once", "fail_times"})
        probe = ProbeSpec(_int(p.get("tasks", 1), f"{where}: probe.tasks", 1),
                          _int(p.get("images", 1), f"{where}: probe.images", 0), float(p.get("sleep", 0.0)),
                          bool(p.get("crash_once")),
                          _int(p.get("fail_times", 0), f"{where}: probe.fail_times"))
    spec = GridSpec(
        path=path.resolve(), out=out, device=device,
        retries=_int(data.get("retries", 2), f"{where}: retries"),
        threads=_opt_int(data.get("threads"), f"{where}: threads", 1),
        seed=_int(data.get("seed", 0), f"{where}: seed"),
        datasets=datasets, victims=victims, defenses=defenses, attacks=attacks, images=images,
        attack_batch_size=_int(atk.get("batch_size", 8), f"{where}: attack.batch_size", 1),
        score=_score(data.get("score"), base, f"{where}: score"),
        sets=_sets(data.get("sets"), base, f"{where}: sets"), probe=probe)
    has_attack_grid = bool(datasets or victims or attacks)
    if has_attack_grid and images.shard_size % spec.attack_batch_size:
        raise _fail(f"{where}: images.shard_size", f"{images.shard_size} is not a multiple of "
                    f"attack.batch_size {spec.attack_batch_size}; make it one, so that shards give the same "
                    "images as one long run")
    if has_attack_grid and not (datasets and victims and attacks):
        raise _fail(where, "an attack grid needs 'datasets', 'victims' and 'attacks'")
    if spec.sets and spec.score is None:
        raise _fail(where, "'sets' are scored: add a 'score' section with the metrics")
    if not (has_attack_grid or spec.sets or probe):
        raise _fail(where, "nothing to do; declare datasets/victims/attacks, or sets with score "
                    "(see examples/grid.yaml)")
    return spec


def load_grid(path: str | Path) -> GridSpec:
    """Read and check a grid YAML file."""
    path = Path(path)
    if not path.is_file():
        raise SemsimError(f"{path}: no such grid file; see examples/grid.yaml for the format")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        first = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
        raise SemsimError(f"{path}: not valid YAML ({first}); fix the file") from None
    return parse_grid(data or {}, path)
