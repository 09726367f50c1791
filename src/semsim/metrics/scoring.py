"""Score reconstruction sets: manifest in, per-image and per-set tables out (docs/contracts.md, section 2).

Images are decoded on both cores (worker processes for big manifests) while the previous batch is scored,
so the metric panel costs little beyond reading the files. Pairs of one batch are grouped by image size and
scored in torch.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from semsim.common.progress import progress
from semsim.data.images import DecodePool, read_arrays, to_tensor
from semsim.errors import MetricUnavailable, SemsimError
from semsim.metrics.registry import create, decoded_inputs, list_metrics, metric_info

_PROCESS_DECODE_MIN = 256  # pairs from which decoding in worker processes pays for starting them


@dataclass
class ScoreResult:
    """Per-image scores, per-set summary, and pairs that were skipped (with the reason in ``status``)."""

    per_image: pd.DataFrame
    per_set: pd.DataFrame
    skipped: pd.DataFrame


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


def _as_columns(name: str, value) -> dict[str, torch.Tensor]:
    return value if isinstance(value, dict) else {name: value}


def _load_batch(rows: pd.DataFrame, skip_bad: bool, decoder: DecodePool
                ) -> tuple[list[np.ndarray], list[np.ndarray], list[str | None]]:
    """Decode the originals and reconstructions of ``rows``; errors become reasons with ``skip_bad``."""
    paths = list(rows["original"]) + list(rows["reconstruction"])
    try:
        arrays = decoder.read(paths)
        n = len(rows)
        return arrays[:n], arrays[n:], [None] * n
    except SemsimError:
        if not skip_bad:
            raise
    ori, rec, why = [], [], []
    for o, r in zip(rows["original"], rows["reconstruction"], strict=True):
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


def score_manifest(manifest: pd.DataFrame, metrics: dict[str, torch.nn.Module], *,
                   device: str | torch.device = "cpu", batch_size: int = 256, skip_bad: bool = False,
                   show_progress: bool = True, n_bootstrap: int = 1000, seed: int = 0) -> ScoreResult:
    """Score every pair of ``manifest`` with ``metrics`` (built by :func:`build_metrics`).

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


def _score_manifest(manifest: pd.DataFrame, metrics: dict[str, torch.nn.Module], device: torch.device,
                    batch_size: int, skip_bad: bool, show_progress: bool, n_bootstrap: int, seed: int
                    ) -> ScoreResult:
    image_metrics = {n: m for n, m in metrics.items() if metric_info(n).level == "image"}
    set_metrics = {n: m for n, m in metrics.items() if metric_info(n).level == "set"}
    has_labels = "label" in manifest.columns
    per_image, per_set, skipped = [], [], []
    bar = progress(total=len(manifest), desc="scoring", unit="pair", enabled=show_progress)
    # decoding runs on both cores while the main thread scores: in worker processes for big manifests when
    # cores are idle (they cost extra CPU to start and feed), else in threads
    processes = len(manifest) >= _PROCESS_DECODE_MIN and _idle_cores() >= 1
    with ThreadPoolExecutor(1) as loader, DecodePool(2, processes=processes) as decoder:
        for set_name, group in manifest.groupby("set", sort=False):
            for m in set_metrics.values():
                m.reset()
            set_rows = []
            update_order: list[int] = []  # row of set_table for each pair, in the order set metrics saw them
            starts = _batch_starts(len(group), batch_size)
            pending = loader.submit(_load_batch, group.iloc[:starts[1]], skip_bad, decoder)
            for i, start in enumerate(starts[:-1]):
                rows = group.iloc[start:starts[i + 1]]
                ori, rec, why = pending.result()
                if i + 2 < len(starts):
                    nxt = group.iloc[starts[i + 1]:starts[i + 2]]
                    pending = loader.submit(_load_batch, nxt, skip_bad, decoder)
                values: dict[str, np.ndarray] = {}
                keep = [j for j, w in enumerate(why) if w is None]
                for j, w in enumerate(why):
                    if w is not None:
                        skipped.append({**rows.iloc[j].to_dict(), "status": f"skipped: {w}"})
                by_shape: dict[tuple, list[int]] = {}
                for j in keep:
                    by_shape.setdefault(ori[j].shape, []).append(j)
                offset = sum(len(t) for t in set_rows)
                position = {j: offset + p for p, j in enumerate(keep)}
                cols: dict[str, np.ndarray] = {}
                for idx in by_shape.values():
                    update_order.extend(position[j] for j in idx)
                    x = to_tensor([ori[j] for j in idx]).to(device)
                    y = to_tensor([rec[j] for j in idx]).to(device)
                    sub = rows.iloc[idx]
                    labels = (torch.tensor(sub["label"].to_numpy(dtype=np.int64), device=device)
                              if has_labels else None)
                    keys = list(sub["original"])
                    with torch.no_grad(), decoded_inputs():
                        for name, metric in image_metrics.items():
                            out = metric(x, y, labels=labels, original_keys=keys)
                            for col, v in _as_columns(name, out).items():
                                arr = cols.setdefault(col, np.full(len(rows), np.nan))
                                arr[idx] = v.detach().double().cpu().numpy()
                        for metric in set_metrics.values():
                            metric.update(x, y, labels=labels, original_keys=keys)
                values.update(cols)
                table = rows.iloc[keep][["set", "image_id"]].copy()
                for col, arr in values.items():
                    table[col] = arr[keep]
                set_rows.append(table)
                bar.update(len(rows))
            set_table = pd.concat(set_rows, ignore_index=True) if set_rows else pd.DataFrame()
            set_values: dict[str, float] = {}
            for metric in set_metrics.values():
                if len(set_table) == 0:
                    continue
                with torch.no_grad():
                    set_values.update(metric.compute())
                    if hasattr(metric, "per_image"):
                        for col, v in metric.per_image().items():
                            arr = np.full(len(set_table), np.nan)
                            arr[update_order] = v.detach().double().cpu().numpy()
                            set_table[col] = arr
            per_image.append(set_table)
            per_set.append(summarize_set(str(set_name), set_table, set_values, n_bootstrap, seed))
    bar.close()
    skipped_df = pd.DataFrame(skipped) if skipped else pd.DataFrame(columns=["set", "image_id", "status"])
    return ScoreResult(pd.concat(per_image, ignore_index=True), pd.DataFrame(per_set), skipped_df)


def bootstrap_mean_ci(values: np.ndarray, n_bootstrap: int = 1000, seed: int = 0, level: float = 0.95
                      ) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean (Efron & Tibshirani, 1993); NaN for fewer than 2 values."""
    return _bootstrap_ci(values, n_bootstrap, seed, level, {})


def _bootstrap_ci(values: np.ndarray, n_bootstrap: int, seed: int, level: float,
                  draws: dict[int, np.ndarray]) -> tuple[float, float]:
    """:func:`bootstrap_mean_ci`, reusing the resampling indices in ``draws`` (by sample size; the same seed
    draws the same indices, so columns of one table share them)."""
    values = values[np.isfinite(values)]
    if len(values) < 2:
        return float("nan"), float("nan")
    if len(values) not in draws:
        rng = np.random.default_rng(seed)
        draws[len(values)] = rng.integers(0, len(values), size=(n_bootstrap, len(values)))
    means = values[draws[len(values)]].mean(1)
    alpha = (1 - level) / 2
    return float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha))


def summarize_set(set_name: str, table: pd.DataFrame, set_values: dict[str, float], n_bootstrap: int = 1000,
                  seed: int = 0) -> dict:
    """One row per set: n, then mean / median / 95% bootstrap interval of every per-image column."""
    row: dict = {"set": set_name, "n": len(table)}
    draws: dict[int, np.ndarray] = {}
    for col in table.columns:
        if col in ("set", "image_id") or not pd.api.types.is_numeric_dtype(table[col]):
            continue
        v = table[col].to_numpy(dtype=float)
        finite = v[np.isfinite(v)]
        lo, hi = _bootstrap_ci(v, n_bootstrap, seed, 0.95, draws)
        row[f"{col}_mean"] = float(finite.mean()) if len(finite) else float("nan")
        row[f"{col}_median"] = float(np.median(finite)) if len(finite) else float("nan")
        row[f"{col}_ci_low"], row[f"{col}_ci_high"] = lo, hi
    row.update(set_values)
    return row
