"""Score reconstruction sets: manifest in, per-image and per-set tables out (docs/contracts.md, section 2).

Images are decoded in a background thread while the previous batch is scored, so the metric panel costs
little beyond reading the files. Pairs of one batch are grouped by image size and scored in torch.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from semsim.data.images import read_arrays, to_tensor
from semsim.errors import SemsimError
from semsim.metrics.registry import MetricUnavailable, create, list_metrics, metric_info
from semsim.progress import progress


@dataclass
class ScoreResult:
    """Per-image scores, per-set summary, and pairs that were skipped (with the reason in ``status``)."""

    per_image: pd.DataFrame
    per_set: pd.DataFrame
    skipped: pd.DataFrame


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
            warnings.warn(f"{name} skipped: {exc}", stacklevel=2)
    return metrics, notes


def _as_columns(name: str, value) -> dict[str, torch.Tensor]:
    return value if isinstance(value, dict) else {name: value}


def _load_batch(rows: pd.DataFrame, skip_bad: bool) -> tuple[list[np.ndarray], list[np.ndarray], list[str | None]]:
    """Decode the originals and reconstructions of ``rows``; errors become reasons with ``skip_bad``."""
    paths = list(rows["original"]) + list(rows["reconstruction"])
    try:
        arrays = read_arrays(paths, workers=2)
        n = len(rows)
        return arrays[:n], arrays[n:], [None] * n
    except SemsimError:
        if not skip_bad:
            raise
    ori, rec, why = [], [], []
    for o, r in zip(rows["original"], rows["reconstruction"]):
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


def score_manifest(manifest: pd.DataFrame, metrics: dict[str, torch.nn.Module], *, device: str | torch.device = "cpu",
                   batch_size: int = 256, skip_bad: bool = False, show_progress: bool = True,
                   n_bootstrap: int = 1000, seed: int = 0) -> ScoreResult:
    """Score every pair of ``manifest`` with ``metrics`` (built by :func:`build_metrics`)."""
    device = torch.device(device)
    image_metrics = {n: m for n, m in metrics.items() if metric_info(n).level == "image"}
    set_metrics = {n: m for n, m in metrics.items() if metric_info(n).level == "set"}
    has_labels = "label" in manifest.columns
    per_image, per_set, skipped = [], [], []
    bar = progress(total=len(manifest), desc="scoring", unit="pair", enabled=show_progress)
    with ThreadPoolExecutor(1) as loader:
        for set_name, group in manifest.groupby("set", sort=False):
            for m in set_metrics.values():
                m.reset()
            set_rows = []
            starts = list(range(0, len(group), batch_size))
            pending = loader.submit(_load_batch, group.iloc[:batch_size], skip_bad) if starts else None
            for i, start in enumerate(starts):
                rows = group.iloc[start:start + batch_size]
                ori, rec, why = pending.result()
                if i + 1 < len(starts):
                    nxt = group.iloc[starts[i + 1]:starts[i + 1] + batch_size]
                    pending = loader.submit(_load_batch, nxt, skip_bad)
                values: dict[str, np.ndarray] = {}
                keep = [j for j, w in enumerate(why) if w is None]
                for j, w in enumerate(why):
                    if w is not None:
                        skipped.append({**rows.iloc[j].to_dict(), "status": f"skipped: {w}"})
                by_shape: dict[tuple, list[int]] = {}
                for j in keep:
                    by_shape.setdefault(ori[j].shape, []).append(j)
                cols: dict[str, np.ndarray] = {}
                for idx in by_shape.values():
                    x = to_tensor([ori[j] for j in idx]).to(device)
                    y = to_tensor([rec[j] for j in idx]).to(device)
                    sub = rows.iloc[idx]
                    labels = torch.tensor(sub["label"].to_numpy(dtype=np.int64), device=device) if has_labels else None
                    keys = list(sub["original"])
                    with torch.no_grad():
                        for name, metric in image_metrics.items():
                            for col, v in _as_columns(name, metric(x, y, labels=labels, original_keys=keys)).items():
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
            for name, metric in set_metrics.items():
                if len(set_table) == 0:
                    continue
                with torch.no_grad():
                    set_values.update(metric.compute())
                    if hasattr(metric, "per_image"):
                        for col, v in metric.per_image().items():
                            set_table[col] = v.detach().double().cpu().numpy()
            per_image.append(set_table)
            per_set.append(summarize_set(str(set_name), set_table, set_values, n_bootstrap, seed))
    bar.close()
    skipped_df = pd.DataFrame(skipped) if skipped else pd.DataFrame(columns=["set", "image_id", "status"])
    return ScoreResult(pd.concat(per_image, ignore_index=True), pd.DataFrame(per_set), skipped_df)


def bootstrap_mean_ci(values: np.ndarray, n_bootstrap: int = 1000, seed: int = 0, level: float = 0.95
                      ) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean (Efron & Tibshirani, 1993); NaN for fewer than 2 values."""
    values = values[np.isfinite(values)]
    if len(values) < 2:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(n_bootstrap, len(values)))].mean(1)
    alpha = (1 - level) / 2
    return float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha))


def summarize_set(set_name: str, table: pd.DataFrame, set_values: dict[str, float], n_bootstrap: int = 1000,
                  seed: int = 0) -> dict:
    """One row per set: n, then mean / median / 95% bootstrap interval of every per-image column."""
    row: dict = {"set": set_name, "n": len(table)}
    for col in table.columns:
        if col in ("set", "image_id") or not pd.api.types.is_numeric_dtype(table[col]):
            continue
        v = table[col].to_numpy(dtype=float)
        finite = v[np.isfinite(v)]
        lo, hi = bootstrap_mean_ci(v, n_bootstrap, seed)
        row[f"{col}_mean"] = float(finite.mean()) if len(finite) else float("nan")
        row[f"{col}_median"] = float(np.median(finite)) if len(finite) else float("nan")
        row[f"{col}_ci_low"], row[f"{col}_ci_high"] = lo, hi
    row.update(set_values)
    return row
