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

from semsim.analysis.ceiling import target_weights, weighted_roc
from semsim.analysis.data import AnalysisData, judge_matrix
from semsim.analysis.resample import weighted_auroc
from semsim.data.images import read_array
from semsim.data.labels import majority
from semsim.errors import SemsimError
from semsim.metrics.registry import aligned


def new_figure(width: float, height: float) -> Figure:
    """A matplotlib figure on the Agg canvas (no display needed). Margins are set by the caller
    (``subplots_adjust``): automatic layout engines cost more than the statistics on large grids."""
    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def png_bytes(fig: Figure, dpi: int = 90) -> bytes:
    """The figure as PNG bytes (light zlib compression: a few percent larger, faster to write)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, pil_kwargs={"compress_level": 1})
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


def _grid(n: int, ncols: int, width: float, height: float, sharey: bool = False,
          extra: float = 0.0) -> tuple[Figure, np.ndarray]:
    """A figure with ``n`` small panels (inches ``width`` x ``height``) in rows of ``ncols``, ``extra`` inches
    below them (for a legend); unused panels hidden."""
    ncols = max(1, min(ncols, n))
    nrows = -(-n // ncols)
    fig = new_figure(width * ncols, height * nrows + extra)
    axes = fig.subplots(nrows, ncols, squeeze=False, sharey=sharey).ravel()
    total_w, total_h = width * ncols, height * nrows + extra
    fig.subplots_adjust(left=0.45 / total_w, right=1 - 0.1 / total_w, bottom=(0.4 + extra) / total_h,
                        top=1 - 0.35 / total_h, wspace=0.3, hspace=0.55)
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes


def scatter_figure(per_set: pd.DataFrame, correlations: pd.DataFrame, metrics: list[str],
                   rate_label: str = "human recognition rate") -> Figure:
    """Per metric: set means (x) against the recognition rate (y), regression line and 95% band (dashed), and
    Spearman's rho / Kendall's tau in the title; each point is numbered by its row in the per-set table (1 =
    first set by name)."""
    fig, axes = _grid(len(metrics), 4, 2.9, 2.5, sharey=True)
    y = per_set["recognition_rate"].to_numpy()
    row_of = correlations.set_index("metric")
    for k_ax, (ax, m) in enumerate(zip(axes, metrics, strict=False)):
        x = per_set[f"{m}_mean"].to_numpy()
        ax.scatter(x, y, s=12, color="tab:blue", zorder=3)
        for k, (xi, yi) in enumerate(zip(x, y, strict=True)):
            ax.annotate(str(k + 1), (xi, yi), xytext=(2, 2), textcoords="offset points", fontsize=5.5)
        if len(x) >= 2 and np.ptp(x) > 0:
            grid = np.linspace(x.min(), x.max(), 50)
            fit, lo, hi = regression_band(x, y, grid)
            ax.plot(grid, fit, color="tab:red", lw=1.0)
            ax.plot(grid, lo, grid, hi, color="tab:red", lw=0.5, ls="--")  # lines: cheaper to draw than a fill
        row = row_of.loc[m]
        ax.set_title(f"{m}   \u03c1 {row['spearman']:+.2f}   \u03c4 {row['kendall']:+.2f}", fontsize=6)
        ax.set_xlabel(f"mean {m}", fontsize=6)
        if k_ax % 4 == 0:
            ax.set_ylabel(rate_label, fontsize=6)
        ax.tick_params(labelsize=5.5)
        ax.locator_params(axis="x", nbins=3)  # few ticks: on a 22-panel grid, tick artists cost most of the time
        ax.set_yticks([0, 0.5, 1])
    return fig


ROC_GRID = np.linspace(0, 1, 201)


def roc_points(score: np.ndarray, pos: np.ndarray, neg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The ROC curve read at 201 false-positive rates (linear between its points): enough to draw, and the
    figure no longer grows with the number of images."""
    fpr, tpr = weighted_roc(score, pos, neg)
    return ROC_GRID, np.interp(ROC_GRID, fpr, tpr)


def roc_figure(data: AnalysisData, target_label: str = "recognized by the majority of people") -> Figure:
    """Image-level ROC curves of every metric against one target: the majority of all judges."""
    t = data.table
    y = majority(t).to_numpy()
    fig = new_figure(5.6, 4.8)
    ax = fig.subplots()
    fig.subplots_adjust(left=0.12, right=0.97, bottom=0.1, top=0.95)
    if y.min() == y.max():
        ax.text(0.5, 0.5, "only one class: no ROC curve", ha="center")
        return fig
    pos, neg = y.astype(float), (~y).astype(float)
    for m in data.metrics:
        s = aligned(t[m].to_numpy(), data.directions[m])
        ax.plot(*roc_points(s, pos, neg), lw=1.0, label=f"{m} ({weighted_auroc(s, pos, neg):.3f})")
    ax.plot([0, 1], [0, 1], color="0.6", lw=0.8, ls="--")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel(f"true positive rate ({target_label})", fontsize=8)
    ax.legend(fontsize=5.5, loc="lower right", ncol=2 if len(data.metrics) > 8 else 1, title="AUROC",
              title_fontsize=6)
    return fig


def ceiling_figure(data: AnalysisData, ties: str) -> Figure | None:
    """One panel per annotator slot, one target per panel (the majority of the other annotators, ties as
    ``ties``): every metric's ROC curve and the annotator's own operating point. None without judges."""
    judges, cols = judge_matrix(data.table)
    if not cols:
        return None
    fig, axes = _grid(len(cols), 3, 3.2, 3.0, extra=0.25 + 0.12 * -(-len(data.metrics) // 6))
    lines = []
    for k, (ax, col) in enumerate(zip(axes, cols, strict=False)):
        pos, neg, _ = target_weights(np.delete(judges, k, axis=1), ties)
        keep = np.isfinite(judges[:, k]) & (pos + neg > 0)
        pos, neg = pos[keep], neg[keep]
        if pos.sum() == 0 or neg.sum() == 0:
            ax.set_visible(False)
            continue
        for m in data.metrics:
            s = aligned(data.table[m].to_numpy(), data.directions[m])[keep]
            line, = ax.plot(*roc_points(s, pos, neg), lw=0.7)
            if k == 0:
                lines.append(line)
        own = judges[keep, k]
        ax.plot(own @ neg / neg.sum(), own @ pos / pos.sum(), "k*", ms=9, label=f"annotator {col}")
        ax.plot([0, 1], [0, 1], color="0.6", lw=0.6, ls="--")
        ax.set_title(f"target: majority of the others (ties: {ties})", fontsize=6.5)
        ax.set_xlabel("false positive rate", fontsize=6)
        ax.set_ylabel("true positive rate", fontsize=6)
        ax.set_xticks([0, 0.5, 1])
        ax.set_yticks([0, 0.5, 1])
        ax.tick_params(labelsize=5.5)
        ax.legend(fontsize=6, loc="lower right")
    fig.legend(lines, data.metrics, loc="lower center", ncol=6, fontsize=6, frameon=False)
    return fig


MAX_ANNOTATED = 12


def matrix_figure(matrix: pd.DataFrame, label: str = "share of set pairs ordered oppositely") -> Figure:
    """A predictor x predictor share matrix as an annotated heat map (0 to 0.5)."""
    n = len(matrix)
    size = 1.2 + 0.42 * n
    fig = new_figure(size + 1.0, size)
    ax = fig.subplots()
    fig.subplots_adjust(left=0.3, right=0.95, bottom=0.3, top=0.97)
    im = ax.imshow(matrix.to_numpy(dtype=float), vmin=0, vmax=0.5, cmap="Reds")
    ax.set_xticks(range(n), matrix.columns, rotation=60, ha="right", fontsize=6)
    ax.set_yticks(range(n), matrix.index, fontsize=6)
    if n <= MAX_ANNOTATED:  # beyond, the numbers are unreadable (they are in the CSV)
        for i in range(n):
            for j in range(n):
                ax.text(j, i, f"{matrix.iat[i, j]:.2f}", ha="center", va="center", fontsize=6)
    fig.colorbar(im, ax=ax, label=label, shrink=0.8)
    return fig


def reliability_figure(data: AnalysisData, probs: pd.DataFrame, bins: int = 10) -> Figure:
    """Reliability diagram of the held-out calibrated probabilities of each metric, with the number of images
    in each bin (bottom panel, log scale)."""
    y = majority(data.table).to_numpy(dtype=float)
    fig = new_figure(5.6, 5.6)
    ax, hist = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    fig.subplots_adjust(left=0.12, right=0.97, bottom=0.09, top=0.97, hspace=0.08)
    centres = (np.arange(bins) + 0.5) / bins
    for m in data.metrics:
        p = probs[f"p_{m}"].to_numpy()
        ok = np.isfinite(p)
        idx = np.minimum((p[ok] * bins).astype(int), bins - 1)
        count = np.bincount(idx, minlength=bins)
        filled = count > 0
        xs = np.bincount(idx, weights=p[ok], minlength=bins)[filled] / count[filled]
        ys = np.bincount(idx, weights=y[ok], minlength=bins)[filled] / count[filled]
        line, = ax.plot(xs, ys, "o-", ms=2.5, lw=0.9, label=m)
        hist.plot(centres[filled], count[filled], "o-", ms=2, lw=0.7, color=line.get_color())
    ax.plot([0, 1], [0, 1], color="0.6", lw=0.8, ls="--")
    ax.set_ylabel("observed share recognized by majority")
    ax.legend(fontsize=5.5, ncol=2 if len(data.metrics) > 8 else 1)
    hist.set_yscale("log")
    hist.set_ylabel("images per bin", fontsize=7)
    hist.set_xlabel("predicted P(recognized), held-out sets")
    return fig


def resolve_image(path: object, base_dirs: list[Path]) -> Path | None:
    """An image path from a table cell, absolute or relative to one of ``base_dirs``; None if not found."""
    if not isinstance(path, str) or not path:
        return None
    p = Path(path)
    candidates = [p] if p.is_absolute() else [d / p for d in base_dirs] + [p]
    return next((c for c in candidates if c.is_file()), None)


def _readable_pairs(data: AnalysisData, rows: list[int], k: int) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """The first ``k`` of ``rows`` whose original and reconstruction can be read: (row, original, reconstruction)."""
    cells: list[tuple[int, np.ndarray, np.ndarray]] = []
    for i in rows:
        if len(cells) == k:
            break
        ori = resolve_image(data.table["original"].iloc[i], data.base_dirs)
        rec = resolve_image(data.table["reconstruction"].iloc[i], data.base_dirs)
        if ori is None or rec is None:
            continue
        try:
            cells.append((i, read_array(ori), read_array(rec)))
        except SemsimError:
            continue
    return cells


def disagreement_figure(data: AnalysisData, metric: str, k: int = 4, who: str = "people") -> Figure | None:
    """Pairs where ``metric`` and the judges (``who``) disagree most: the k images the metric ranks as most leaking that
    the majority did not recognize, and the k it ranks as least leaking that the majority recognized.
    None when the tables carry no readable image paths."""
    t = data.table
    if not {"original", "reconstruction"} <= set(t.columns):
        return None
    s = aligned(t[metric].to_numpy(), data.directions[metric])
    pos = majority(t).to_numpy()
    order = np.argsort(s, kind="stable")
    picks = [(f"metric: most leakage; {who}: not recognized", [i for i in order[::-1] if not pos[i]]),
             (f"metric: least leakage; {who}: recognized", [i for i in order if pos[i]])]
    groups = [(title, _readable_pairs(data, rows, k)) for title, rows in picks]
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
