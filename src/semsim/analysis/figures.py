"""Figures of the faithfulness report, drawn with matplotlib's Agg renderer (no pyplot, no display).

Each function returns a :class:`matplotlib.figure.Figure`; :func:`png_bytes` renders it for embedding.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from scipy import stats

from semsim.analysis.data import AnalysisData, judge_matrix
from semsim.analysis.stats import _majority_of, aligned
from semsim.data.images import read_array
from semsim.data.labels import majority
from semsim.errors import SemsimError


def new_figure(width: float, height: float) -> Figure:
    """A matplotlib figure on the Agg canvas (no display needed), laid out automatically."""
    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def png_bytes(fig: Figure, dpi: int = 100) -> bytes:
    """The figure as PNG bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def regression_band(x: np.ndarray, y: np.ndarray, grid: np.ndarray, level: float = 0.95
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Least-squares line of y on x at ``grid`` and its pointwise confidence band for the mean response
    (t-interval: yhat +- t * s * sqrt(1/n + (x0 - xbar)^2 / Sxx))."""
    n = len(x)
    slope, intercept = np.polyfit(x, y, 1)
    fit = intercept + slope * grid
    if n < 3:
        return fit, fit, fit
    resid = y - (intercept + slope * x)
    s = np.sqrt(np.sum(resid ** 2) / (n - 2))
    sxx = np.sum((x - x.mean()) ** 2)
    half = stats.t.ppf(0.5 + level / 2, n - 2) * s * np.sqrt(1 / n + (grid - x.mean()) ** 2 / sxx)
    return fit, fit - half, fit + half


def _grid_shape(n: int, ncols: int = 3) -> tuple[int, int]:
    ncols = min(ncols, n)
    return -(-n // ncols), ncols


def scatter_figure(per_set: pd.DataFrame, correlations: pd.DataFrame, metrics: list[str]) -> Figure:
    """Per metric: set means (x) against the human recognition rate (y), regression line and 95% band."""
    nrows, ncols = _grid_shape(len(metrics))
    fig = new_figure(3.3 * ncols, 2.9 * nrows)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    y = per_set["recognition_rate"].to_numpy()
    for ax, m in zip(axes, metrics, strict=False):
        x = per_set[f"{m}_mean"].to_numpy()
        ax.scatter(x, y, s=18, color="tab:blue", zorder=3)
        if len(x) >= 2 and np.ptp(x) > 0:
            grid = np.linspace(x.min(), x.max(), 100)
            fit, lo, hi = regression_band(x, y, grid)
            ax.plot(grid, fit, color="tab:red", lw=1.2)
            ax.fill_between(grid, lo, hi, color="tab:red", alpha=0.15, lw=0)
        row = correlations.set_index("metric").loc[m]
        ax.set_title(f"{m}\nSpearman {row['spearman']:+.2f}, Kendall {row['kendall']:+.2f}", fontsize=9)
        ax.set_xlabel(f"mean {m}", fontsize=8)
        ax.set_ylabel("human recognition rate", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in axes[len(metrics):]:
        ax.set_visible(False)
    return fig


def roc_figure(data: AnalysisData) -> Figure:
    """Image-level ROC curves of every metric against the majority label, with each annotator's operating
    point against the other annotators' majority (the human ceiling) as crosses."""
    from sklearn.metrics import roc_auc_score, roc_curve

    t = data.table
    y = majority(t).to_numpy()
    fig = new_figure(5.2, 4.6)
    ax = fig.subplots()
    if y.min() == y.max():
        ax.text(0.5, 0.5, "only one class: no ROC curve", ha="center")
        return fig
    for m in data.metrics:
        s = aligned(t[m].to_numpy(), data.directions[m])
        fpr, tpr, _ = roc_curve(y, s)
        ax.plot(fpr, tpr, lw=1.3, label=f"{m} (AUROC {roc_auc_score(y, s):.3f})")
    judges, cols = judge_matrix(t)
    for k in range(len(cols)):
        target, n_others = _majority_of(np.delete(judges, k, axis=1))
        keep = np.isfinite(judges[:, k]) & (n_others > 0)
        yt, own = target[keep], judges[keep, k] > 0.5
        if len(yt) == 0 or yt.min() == yt.max():
            continue
        ax.plot(np.mean(own[~yt]), np.mean(own[yt]), "kx", ms=7,
                label="one annotator vs the others' majority" if k == 0 else None)
    ax.plot([0, 1], [0, 1], color="0.6", lw=0.8, ls="--")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate (recognized by majority)")
    ax.legend(fontsize=7, loc="lower right")
    return fig


def matrix_figure(matrix: pd.DataFrame) -> Figure:
    """The contradiction matrix as an annotated heat map."""
    n = len(matrix)
    fig = new_figure(1.0 + 0.75 * n, 0.8 + 0.65 * n)
    ax = fig.subplots()
    im = ax.imshow(matrix.to_numpy(), vmin=0, vmax=0.5, cmap="Reds")
    ax.set_xticks(range(n), matrix.columns, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(n), matrix.index, fontsize=8)
    for i in range(n):
        for j in range(n):
            ax.text(j, i, f"{matrix.iat[i, j]:.2f}", ha="center", va="center", fontsize=7)
    fig.colorbar(im, ax=ax, label="share of set pairs ordered oppositely", shrink=0.8)
    return fig


def reliability_figure(data: AnalysisData, probs: pd.DataFrame, bins: int = 10) -> Figure:
    """Reliability diagram of the held-out calibrated probabilities of each metric."""
    y = majority(data.table).to_numpy(dtype=float)
    fig = new_figure(5.2, 4.6)
    ax = fig.subplots()
    for m in data.metrics:
        p = probs[f"p_{m}"].to_numpy()
        ok = np.isfinite(p)
        idx = np.minimum((p[ok] * bins).astype(int), bins - 1)
        xs = [p[ok][idx == b].mean() for b in range(bins) if (idx == b).any()]
        ys = [y[ok][idx == b].mean() for b in range(bins) if (idx == b).any()]
        ax.plot(xs, ys, "o-", ms=3, lw=1.1, label=m)
    ax.plot([0, 1], [0, 1], color="0.6", lw=0.8, ls="--")
    ax.set_xlabel("predicted P(recognized), held-out sets")
    ax.set_ylabel("observed share recognized by majority")
    ax.legend(fontsize=7)
    return fig


def resolve_image(path: object, base_dirs: list[Path]) -> Path | None:
    """An image path from a table cell, absolute or relative to one of ``base_dirs``; None if not found."""
    if not isinstance(path, str) or not path:
        return None
    p = Path(path)
    candidates = [p] if p.is_absolute() else [d / p for d in base_dirs] + [p]
    return next((c for c in candidates if c.is_file()), None)


def disagreement_figure(data: AnalysisData, metric: str, k: int = 4) -> Figure | None:
    """Pairs where ``metric`` and people disagree most: the k images the metric ranks as most leaking that
    the majority did not recognize, and the k it ranks as least leaking that the majority recognized.
    None when the tables carry no readable image paths."""
    t = data.table
    if not {"original", "reconstruction"} <= set(t.columns):
        return None
    s = aligned(t[metric].to_numpy(), data.directions[metric])
    pos = majority(t).to_numpy()
    order = np.argsort(s, kind="stable")
    picks = [("metric: most leakage; people: not recognized", [i for i in order[::-1] if not pos[i]]),
             ("metric: least leakage; people: recognized", [i for i in order if pos[i]])]
    groups = []
    for title, rows in picks:
        cells = []
        for i in rows:
            if len(cells) == k:
                break
            ori = resolve_image(t["original"].iloc[i], data.base_dirs)
            rec = resolve_image(t["reconstruction"].iloc[i], data.base_dirs)
            if ori is None or rec is None:
                continue
            try:
                cells.append((i, read_array(ori), read_array(rec)))
            except SemsimError:
                continue
        groups.append((title, cells))
    n_rows = max(len(cells) for _, cells in groups)
    if n_rows == 0:
        return None
    fig = new_figure(8.0, 1.7 * n_rows + 0.5)
    axes = fig.subplots(n_rows, 4, squeeze=False)
    for g, (title, cells) in enumerate(groups):
        axes[0, 2 * g].set_title(f"{title}\noriginal", fontsize=7, loc="left")
        for r in range(n_rows):
            ax0, ax1 = axes[r, 2 * g], axes[r, 2 * g + 1]
            for ax in (ax0, ax1):
                ax.set_xticks([])
                ax.set_yticks([])
            if r >= len(cells):
                ax0.set_visible(False)
                ax1.set_visible(False)
                continue
            i, a, b = cells[r]
            ax0.imshow(a, interpolation="nearest")
            ax1.imshow(b, interpolation="nearest")
            ax0.set_xlabel(f"{t['set'].iloc[i][-28:]} #{t['image_id'].iloc[i]}", fontsize=6)
            ax1.set_xlabel(f"{metric}={t[metric].iloc[i]:.3g}, recognized {t['recognized'].iloc[i]:.0%}",
                           fontsize=6)
    return fig
