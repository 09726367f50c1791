"""Score reconstruction sets: manifest in, per-image and per-set tables out (docs/contracts.md, section 2).

:func:`score_sets` is the one scoring workflow: ``semsim score``, ``semsim grid`` and the Python API call it
(or, for the grid's shards, its parts :func:`build_panel`, :func:`score_manifest` and :func:`finish_tables`),
so all three write the same tables. It chooses the panel (the default one, plus the evaluator's metrics and
SemSim when given), scores every pair, adds the SemSim provenance columns and applies a calibration.

Images are decoded on both cores (worker processes for big manifests) while the previous batch is scored,
so the metric panel costs little beyond reading the files. Pairs of one batch are grouped by image size and
scored in torch.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import pandas as pd
import torch

from semsim.common.io import write_table
from semsim.common.progress import progress
from semsim.data.images import DecodePool, read_arrays, to_tensor
from semsim.errors import MetricUnavailable, SemsimError
from semsim.metrics.calibrated import Calibration, apply_calibration, load_calibration
from semsim.metrics.registry import (
    EVALUATOR_METRICS,
    SetMetric,
    create,
    decoded_inputs,
    list_metrics,
    metric_info,
    per_image_columns,
)
from semsim.metrics.summary import bootstrap_mean_ci, set_table_path, summarize_set

if TYPE_CHECKING:
    from semsim.metrics.semsim_metric import SemSimMetric

__all__ = ["ScoreResult", "bootstrap_mean_ci", "build_metrics", "build_panel", "default_metric_names",
           "finish_tables", "panel_request", "score_manifest", "score_sets", "set_annotations",
           "set_table_path", "summarize_set"]

_PROCESS_DECODE_MIN = 256  # pairs from which decoding in worker processes pays for starting them
SKIPPED_COLUMNS = ["set", "image_id", "status"]


@dataclass
class ScoreResult:
    """Per-image scores, per-set summary, pairs that were skipped (with the reason in ``status``) and notes
    (metrics left out and why, provenance, calibration warnings)."""

    per_image: pd.DataFrame
    per_set: pd.DataFrame
    skipped: pd.DataFrame
    notes: list[str] = field(default_factory=list)

    def image_table(self) -> pd.DataFrame:
        """The per-image table as written: the scored pairs, then (with ``status``) the skipped ones."""
        if not len(self.skipped):
            return self.per_image
        return pd.concat([self.per_image.assign(status="ok"), self.skipped[SKIPPED_COLUMNS]], ignore_index=True)

    def write(self, out: str | os.PathLike) -> tuple[Path, Path]:
        """Write the per-image table to ``out`` and the per-set table next to it (:func:`set_table_path`)."""
        out = Path(out)
        write_table(self.image_table(), out)
        write_table(self.per_set, set_table_path(out))
        return out, set_table_path(out)


def _idle_cores() -> float:
    """CPU cores not used by other running processes, from the one-minute load average (all cores if unknown).

    The caller itself counts in the load average once it has run a while (a long scoring or benchmark
    session), so up to one unit of load is taken to be its own.
    """
    cores = os.cpu_count() or 1
    return cores - max(0.0, os.getloadavg()[0] - 1.0) if hasattr(os, "getloadavg") else float(cores)


def default_metric_names() -> list[str]:
    """The default panel: every registered metric marked ``default`` that needs no extra input."""
    return [m.name for m in list_metrics() if m.default]


def panel_request(metrics: Sequence[str] | None = None, *, evaluator: str | os.PathLike | None = None,
                  semsim: str | os.PathLike | None = None, options: Mapping[str, Mapping[str, Any]] | None = None
                  ) -> tuple[list[str], dict[str, dict[str, Any]]]:
    """Metric names and per-metric constructor options of a scoring run.

    No ``metrics``: the default panel, plus the evaluator's metrics (mr, iip, feature_distance) when an
    ``evaluator`` checkpoint is given. A ``semsim`` model folder adds the ``semsim`` column. The evaluator
    and the SemSim model are passed to the metrics that take them; ``options`` add or override the rest.
    """
    names = list(metrics) if metrics else default_metric_names()
    kwargs: dict[str, dict[str, Any]] = {}
    if evaluator is not None:
        if not metrics:
            names += [n for n in EVALUATOR_METRICS if n not in names]
        kwargs.update({n: {"evaluator": evaluator} for n in EVALUATOR_METRICS})
    if semsim is not None:
        names += [] if "semsim" in names else ["semsim"]
        kwargs["semsim"] = {"model": semsim}
    for name, opts in (options or {}).items():
        kwargs[name] = {**kwargs.get(name, {}), **opts}
    return names, kwargs


def build_metrics(names: Sequence[str], device: str | torch.device = "cpu", **kwargs_by_metric: dict
                  ) -> tuple[dict[str, torch.nn.Module], list[str]]:
    """Create metrics by name; those that cannot be built here are left out with a note saying why."""
    metrics, notes = {}, []
    for name in names:
        metric_info(name)  # unknown names fail loudly
        try:
            metrics[name] = create(name, **kwargs_by_metric.get(name, {})).to(device).eval()
        except MetricUnavailable as exc:
            notes.append(f"{name} skipped: {exc}")
    return metrics, notes


def build_panel(metrics: Sequence[str] | None = None, *, evaluator: str | os.PathLike | None = None,
                semsim: str | os.PathLike | None = None, options: Mapping[str, Mapping[str, Any]] | None = None,
                device: str | torch.device = "cpu") -> tuple[dict[str, torch.nn.Module], list[str]]:
    """Build the panel of :func:`panel_request`; notes say which metrics were left out and whose labels a
    SemSim model reproduces. Raises when none of the metrics can run here."""
    names, kwargs = panel_request(metrics, evaluator=evaluator, semsim=semsim, options=options)
    built, notes = build_metrics(names, device=device, **kwargs)
    if not built:
        raise SemsimError("none of the requested metrics can run here: " + "; ".join(notes))
    note = cast("SemSimMetric", built["semsim"]).provenance_note() if "semsim" in built else None
    return built, notes + ([note] if note else [])


def set_annotations(metrics: Mapping[str, torch.nn.Module]) -> dict[str, str]:
    """Columns every per-set row carries about how it was scored: which model the ``semsim`` column comes
    from and whose judgments it reproduces (``semsim_label_source``, ``semsim_model``)."""
    if "semsim" not in metrics:
        return {}
    semsim = cast("SemSimMetric", metrics["semsim"])
    return {"semsim_label_source": ";".join(semsim.label_sources) or "unrecorded",
            "semsim_model": semsim.model_path}


def finish_tables(result: ScoreResult, annotations: Mapping[str, str],
                  calibration: Calibration | None = None, *, allow_out_of_range: bool = False) -> ScoreResult:
    """Add the per-set ``annotations`` (:func:`set_annotations`) and, with a calibration, per-image
    ``p_recognized`` and per-set expected recognition rates (:func:`~semsim.metrics.calibrated.apply_calibration`)."""
    per_image, per_set, notes = result.per_image, result.per_set.assign(**annotations), list(result.notes)
    if calibration is not None:
        per_image, per_set, cal_notes = apply_calibration(per_image, per_set, calibration,
                                                          allow_out_of_range=allow_out_of_range)
        notes += cal_notes
    return ScoreResult(per_image, per_set, result.skipped, notes)


def merge_skipped(*parts: pd.DataFrame | None) -> pd.DataFrame:
    """One table of skipped pairs (``set``, ``image_id``, ``status`` and whatever else they carry)."""
    parts_ = [p for p in parts if p is not None and len(p)]
    return pd.concat(parts_, ignore_index=True) if parts_ else pd.DataFrame(columns=SKIPPED_COLUMNS)


def score_sets(manifest: pd.DataFrame, metrics: Sequence[str] | None = None, *,
               evaluator: str | os.PathLike | None = None, semsim: str | os.PathLike | None = None,
               calibration: Calibration | str | os.PathLike | None = None,
               options: Mapping[str, Mapping[str, Any]] | None = None, skipped: pd.DataFrame | None = None,
               device: str | torch.device = "cpu", batch_size: int = 256, skip_bad: bool = False,
               show_progress: bool = True, n_bootstrap: int = 1000, seed: int = 0,
               allow_out_of_range: bool = False) -> ScoreResult:
    """Score a manifest with a metric panel: the workflow of ``semsim score`` (and of ``semsim grid``).

    ``metrics``, ``evaluator``, ``semsim`` and ``options`` choose the panel (:func:`panel_request`);
    ``calibration`` (a :class:`~semsim.metrics.calibrated.Calibration` or its file) adds P(recognized);
    ``skipped`` (pairs already found unusable, e.g. by :func:`~semsim.data.sets.ingest`) joins the pairs
    skipped while scoring. The calibration file is read before any image is; values mostly outside its
    fitted range stop with an error unless ``allow_out_of_range``.
    """
    cal = load_calibration(calibration) if isinstance(calibration, (str, os.PathLike)) else calibration
    built, notes = build_panel(metrics, evaluator=evaluator, semsim=semsim, options=options, device=device)
    if cal is not None:
        check_calibration_columns(cal, built, notes)
    result = score_manifest(manifest, built, device=device, batch_size=batch_size, skip_bad=skip_bad,
                            show_progress=show_progress, n_bootstrap=n_bootstrap, seed=seed)
    result.notes = notes
    result.skipped = merge_skipped(skipped, result.skipped)
    if len(result.per_image) == 0:  # every pair was skipped: a table of nothing would look like a result
        first = result.skipped["status"].iloc[0] if len(result.skipped) else "no pairs"
        raise SemsimError(f"none of the {len(result.skipped)} pair(s) could be scored (first: {first}); fix the "
                          "inputs or choose other --metrics")
    return finish_tables(result, set_annotations(built), cal, allow_out_of_range=allow_out_of_range)


def check_calibration_columns(cal: Calibration, built: Mapping[str, torch.nn.Module], notes: Sequence[str] = ()
                              ) -> None:
    """Refuse, before any image is read, a calibration that needs a column the built panel does not produce."""
    produced = {col for name in built for col in metric_info(name).columns}
    missing = [f for f in cal.features if f not in produced]
    if not missing:
        return
    owners = {col: m.name for m in list_metrics() for col in m.columns}
    needed = sorted({owners.get(f, f) for f in missing})
    why = [n for n in notes if any(n.startswith(f"{m} ") for m in needed)]
    how = [f"--semsim MODEL/ for {m}" if m == "semsim" else f"--evaluator EVALUATOR/ for {m}"
           for m in needed if m == "semsim" or m in EVALUATOR_METRICS]
    raise SemsimError(f"the calibration needs column(s) {', '.join(missing)}, which the panel "
                      f"({', '.join(built)}) does not produce; add {', '.join(needed)} to --metrics"
                      + (f" ({', '.join(how)})" if how else "") + (f"; {'; '.join(why)}" if why else ""))


def score_manifest(manifest: pd.DataFrame, metrics: dict[str, torch.nn.Module], *,
                   device: str | torch.device = "cpu", batch_size: int = 256, skip_bad: bool = False,
                   show_progress: bool = True, n_bootstrap: int = 1000, seed: int = 0) -> ScoreResult:
    """Score every pair of ``manifest`` with ``metrics`` (built by :func:`build_metrics`): the scoring engine
    under :func:`score_sets`, without its provenance columns and calibration.

    On the CPU, a panel of memory-bound metrics (each declaring ``cpu_threads = 1``, like the pixel metrics)
    runs on one torch thread, so that the other core keeps decoding images instead of fighting OpenMP.
    """
    device = torch.device(device)
    threads = torch.get_num_threads()
    if device.type == "cpu" and metrics and all(getattr(m, "cpu_threads", 0) == 1 for m in metrics.values()):
        torch.set_num_threads(1)
    try:
        return _score_manifest(manifest, metrics, device, batch_size, skip_bad, show_progress, n_bootstrap,
                               seed)
    finally:
        torch.set_num_threads(threads)


@dataclass
class _Panel:
    """The metrics of one scoring run, split by level, and where they run."""

    image: dict[str, torch.nn.Module]
    set: dict[str, SetMetric]
    device: torch.device
    has_labels: bool


def _score_manifest(manifest: pd.DataFrame, metrics: dict[str, torch.nn.Module], device: torch.device,
                    batch_size: int, skip_bad: bool, show_progress: bool, n_bootstrap: int, seed: int
                    ) -> ScoreResult:
    set_metrics = {n: cast(SetMetric, m) for n, m in metrics.items() if metric_info(n).level == "set"}
    panel = _Panel({n: m for n, m in metrics.items() if metric_info(n).level == "image"}, set_metrics, device,
                   "label" in manifest.columns)
    per_image, per_set, skipped = [], [], []
    bar = progress(total=len(manifest), desc="scoring", unit="pair", enabled=show_progress)
    # decoding runs on both cores while the main thread scores: in worker processes for big manifests when
    # cores are idle (they cost extra CPU to start and feed), else in threads
    processes = len(manifest) >= _PROCESS_DECODE_MIN and _idle_cores() >= 1
    with ThreadPoolExecutor(1) as loader, DecodePool(2, processes=processes) as decoder:
        for set_name, group in manifest.groupby("set", sort=False):
            batches = _size_checked(_decoded_batches(group, batch_size, skip_bad, loader, decoder), metrics,
                                    skip_bad)
            set_table, set_values, bad = _score_set(batches, panel, bar)
            skipped += bad
            per_image.append(set_table)
            per_set.append(summarize_set(str(set_name), set_table, set_values, n_bootstrap, seed))
    bar.close()
    return ScoreResult(pd.concat(per_image, ignore_index=True), pd.DataFrame(per_set), merge_skipped(
        pd.DataFrame(skipped) if skipped else None))


def _as_columns(name: str, value: torch.Tensor | dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return value if isinstance(value, dict) else {name: value}


def _load_batch(rows: pd.DataFrame, skip_bad: bool, decoder: DecodePool
                ) -> tuple[list[np.ndarray | None], list[np.ndarray | None], list[str | None]]:
    """Decode the originals and reconstructions of ``rows``; errors become reasons with ``skip_bad``."""
    paths = list(rows["original"]) + list(rows["reconstruction"])
    try:
        arrays = decoder.read(paths)
        n = len(rows)
        return list(arrays[:n]), list(arrays[n:]), [None] * n
    except SemsimError as exc:
        if not skip_bad:
            raise SemsimError(f"{exc} (or pass --skip-bad to record and skip the pair)") from None
    ori: list[np.ndarray | None] = []
    rec: list[np.ndarray | None] = []
    why: list[str | None] = []
    for o, r in zip(rows["original"], rows["reconstruction"], strict=True):
        a: np.ndarray | None
        b: np.ndarray | None
        try:
            a, b = read_arrays([o, r], workers=1)
            reason = None if a.shape == b.shape else f"{r}: size differs from its original {o}"
        except SemsimError as exc:
            a = b = None
            reason = str(exc)
        ori.append(a)
        rec.append(b)
        why.append(reason)
    return ori, rec, why


def _batch_starts(n: int, batch_size: int) -> list[int]:
    """Batch boundaries (0, ..., n): the first and last batches are small, so that scoring waits little for
    the first decoded batch and decoding idles little while the last one is scored."""
    edge = max(1, batch_size // 4)
    if n <= 2 * edge:
        return [0, n]
    return [0, *range(edge, n - edge, batch_size), n - edge, n]


_Batch = tuple[pd.DataFrame, list[Any], list[Any], list[str | None]]


def _decoded_batches(group: pd.DataFrame, batch_size: int, skip_bad: bool, loader: ThreadPoolExecutor,
                     decoder: DecodePool) -> Iterator[_Batch]:
    """(rows, originals, reconstructions, skip reasons) per batch; the next batch decodes while one is used."""
    starts = _batch_starts(len(group), batch_size)
    pending = loader.submit(_load_batch, group.iloc[:starts[1]], skip_bad, decoder)
    for i, start in enumerate(starts[:-1]):
        rows = group.iloc[start:starts[i + 1]]
        ori, rec, why = pending.result()
        if i + 2 < len(starts):
            pending = loader.submit(_load_batch, group.iloc[starts[i + 1]:starts[i + 2]], skip_bad, decoder)
        yield rows, ori, rec, why


def _size_checked(batches: Iterator[_Batch], metrics: Mapping[str, torch.nn.Module], skip_bad: bool
                  ) -> Iterator[_Batch]:
    """Pass batches on, marking pairs smaller than a metric's ``min_size`` (e.g. SSIM's 11-pixel window) as
    unusable with ``skip_bad``, or stopping at the first such pair without it."""
    needs = {name: int(cast(Any, m).min_size) for name, m in metrics.items() if getattr(m, "min_size", 0)}
    for rows, ori, rec, why in batches:
        for j, a in enumerate(ori):
            if why[j] is not None or a is None:
                continue
            h, w = a.shape[:2]
            small = [f"{size}x{size} that {name} needs" for name, size in needs.items() if min(h, w) < size]
            if not small:
                continue
            reason = f"{rows['original'].iloc[j]}: {w}x{h} pixels, smaller than the {' and '.join(small)}"
            if not skip_bad:
                raise SemsimError(f"{reason}; leave {', '.join(n for n, s in needs.items() if min(h, w) < s)} "
                                  "out of --metrics, or pass --skip-bad to record such pairs as skipped")
            why[j] = reason
        yield rows, ori, rec, why


def _score_set(batches: Iterator[_Batch], panel: _Panel, bar: Any
               ) -> tuple[pd.DataFrame, dict[str, float], list[dict[str, Any]]]:
    """Score one set: its per-image table, the set-level values and the skipped pairs."""
    for m in panel.set.values():
        m.reset()
    set_rows: list[pd.DataFrame] = []
    skipped: list[dict[str, Any]] = []
    update_order: list[int] = []  # row of the set's table for each pair, in the order set metrics saw them
    offset = 0
    for rows, ori, rec, why in batches:
        keep = [j for j, w in enumerate(why) if w is None]
        skipped += [{**rows.iloc[j].to_dict(), "status": f"skipped: {w}"} for j, w in enumerate(why)
                    if w is not None]
        cols, order = _score_batch(rows, ori, rec, keep, panel)
        update_order += [offset + p for p in order]
        table = rows.iloc[keep][["set", "image_id"]].copy()
        for col, arr in cols.items():
            table[col] = arr[keep]
        set_rows.append(table)
        offset += len(table)
        bar.update(len(rows))
    set_table = pd.concat(set_rows, ignore_index=True) if set_rows else pd.DataFrame()
    return set_table, _set_level(set_table, panel.set, update_order), skipped


def _score_batch(rows: pd.DataFrame, ori: list[Any], rec: list[Any], keep: list[int], panel: _Panel
                 ) -> tuple[dict[str, np.ndarray], list[int]]:
    """Score the usable pairs ``keep`` of one batch, grouped by image size: per-image columns (one value per
    row of ``rows``, NaN for skipped ones) and, for set metrics, the order (positions in ``keep``) they were
    fed in."""
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for j in keep:
        by_shape.setdefault(ori[j].shape, []).append(j)
    position = {j: p for p, j in enumerate(keep)}
    cols: dict[str, np.ndarray] = {}
    order: list[int] = []
    for idx in by_shape.values():
        order.extend(position[j] for j in idx)
        x = to_tensor([ori[j] for j in idx]).to(panel.device)
        y = to_tensor([rec[j] for j in idx]).to(panel.device)
        sub = rows.iloc[idx]
        labels = (torch.tensor(sub["label"].to_numpy(dtype=np.int64), device=panel.device)
                  if panel.has_labels else None)
        keys = list(sub["original"])
        with torch.no_grad(), decoded_inputs():
            for name, metric in panel.image.items():
                out = metric(x, y, labels=labels, original_keys=keys)
                for col, v in _as_columns(name, out).items():
                    arr = cols.setdefault(col, np.full(len(rows), np.nan))
                    arr[idx] = v.detach().double().cpu().numpy()
            for set_metric in panel.set.values():
                set_metric.update(x, y, labels=labels, original_keys=keys)
    return cols, order


def _set_level(set_table: pd.DataFrame, set_metrics: dict[str, SetMetric], update_order: list[int]
               ) -> dict[str, float]:
    """Set-level values of a scored set; per-image columns of set metrics are written into ``set_table``."""
    set_values: dict[str, float] = {}
    if len(set_table) == 0:
        return set_values
    with torch.no_grad():
        for metric in set_metrics.values():
            set_values.update(metric.compute())
            for col, v in per_image_columns(metric).items():
                arr = np.full(len(set_table), np.nan)
                arr[update_order] = v.detach().double().cpu().numpy()
                set_table[col] = arr
    return set_values
