"""``analyze``: every faithfulness statistic, written as CSV tables and one self-contained HTML report.

The report embeds its figures as base64 PNG data URIs and has no external links or scripts, so it opens
offline and fetches nothing.
"""

from __future__ import annotations

import base64
import html
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from semsim import __version__
from semsim.analysis import figures
from semsim.analysis.calibration import calibration_table
from semsim.analysis.data import AnalysisData, join_scores_labels
from semsim.analysis.stats import contradiction_matrix, human_ceiling, image_level, set_level
from semsim.common.io import atomic_write, write_table
from semsim.common.progress import progress


@dataclass
class AnalysisReport:
    """The tables of an analysis (name -> DataFrame), the notes, and where the report was written."""

    tables: dict[str, pd.DataFrame]
    notes: list[str]
    html_path: Path | None = None
    figures: dict[str, bytes] = field(default_factory=dict)


def run_analysis(data: AnalysisData, *, n_boot: int = 1000, seed: int = 0, holdout: str | None = None,
                 calibration_method: str = "logistic", show_progress: bool = False) -> AnalysisReport:
    """Compute every table and figure of the report for joined data."""
    steps = progress(total=6, desc="analysis", unit="step", enabled=show_progress)
    per_set, correlations = set_level(data, n_boot=n_boot, seed=seed)
    steps.update()
    overall, by_set = image_level(data, n_boot=n_boot, seed=seed)
    steps.update()
    contradiction = contradiction_matrix(per_set, data.metrics, data.directions)
    ceiling = human_ceiling(data)
    steps.update()
    notes = list(data.notes)
    if data.table["set"].nunique() >= 2 and data.table["recognized"].gt(0.5).nunique() == 2:
        calib, probs = calibration_table(data, method=calibration_method, holdout=holdout)
    else:
        calib, probs = pd.DataFrame(), None
        notes.append("calibration check skipped: it needs two sets or more and both majority labels")
    steps.update()
    tables = {"set_level": per_set, "set_correlations": correlations, "image_level": overall,
              "image_level_by_set": by_set, "contradiction": contradiction.reset_index(),
              "human_ceiling": ceiling, "calibration": calib}
    figs = {"scatter": figures.scatter_figure(per_set, correlations, data.metrics),
            "roc": figures.roc_figure(data), "contradiction": figures.matrix_figure(contradiction)}
    if probs is not None:
        figs["reliability"] = figures.reliability_figure(data, probs)
    steps.update()
    for m in data.metrics:
        fig = figures.disagreement_figure(data, m)
        if fig is not None:
            figs[f"disagree_{m}"] = fig
    steps.update()
    steps.close()
    return AnalysisReport(tables, notes, None, {k: figures.png_bytes(f) for k, f in figs.items()})


def analyze(scores: pd.DataFrame | str | os.PathLike, labels: pd.DataFrame | str | os.PathLike | None,
            out_dir: str | os.PathLike, *, metrics: list[str] | None = None,
            directions: dict[str, bool] | None = None, n_boot: int = 1000, seed: int = 0,
            holdout: str | None = None, calibration_method: str = "logistic",
            show_progress: bool = False) -> AnalysisReport:
    """Join ``scores`` with ``labels`` (None: one table has both), compute the faithfulness statistics and
    write ``<table>.csv`` files, ``figures/<name>.png`` and ``report.html`` into ``out_dir``.

    ``directions`` (column -> higher_is_more_leakage) overrides / completes the metric registry;
    ``holdout`` is a regex of set names held out of the calibration fit (default: leave-one-set-out).
    """
    data = join_scores_labels(scores, labels, metrics=metrics, directions=directions)
    report = run_analysis(data, n_boot=n_boot, seed=seed, holdout=holdout,
                          calibration_method=calibration_method, show_progress=show_progress)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name, table in report.tables.items():
        if len(table.columns):
            write_table(table, out / f"{name}.csv")
    for name, png in report.figures.items():
        with atomic_write(out / "figures" / f"{name}.png") as tmp:
            tmp.write_bytes(png)
    inputs = {"scores": scores if not isinstance(scores, pd.DataFrame) else "(data frame)",
              "labels": labels if labels is None or not isinstance(labels, pd.DataFrame) else "(data frame)"}
    report.html_path = out / "report.html"
    with atomic_write(report.html_path) as tmp:
        tmp.write_text(render_html(data, report, inputs, n_boot=n_boot, holdout=holdout,
                                   method=calibration_method), encoding="utf-8")
    return report


def html_image(png: bytes, alt: str) -> str:
    """An <img> tag embedding ``png`` (nothing is fetched when the page is viewed)."""
    return (f'<img alt="{html.escape(alt)}" src="data:image/png;base64,'
            f'{base64.b64encode(png).decode("ascii")}">')


def html_table(df: pd.DataFrame, digits: int = 3) -> str:
    """A plain HTML table of ``df`` with ``digits`` decimals."""
    if not len(df.columns):
        return "<p><em>not computed</em></p>"
    return df.to_html(index=False, float_format=lambda v: f"{v:.{digits}f}", na_rep="-", border=0,
                      classes="t", escape=True)


REPORT_STYLE = """
body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
table.t{border-collapse:collapse;font-size:12px;margin:0.5em 0 1.5em}
table.t th,table.t td{padding:3px 8px;border-bottom:1px solid #ddd;text-align:right}
table.t td:first-child,table.t th:first-child{text-align:left}
img{max-width:100%} h2{margin-top:2em;border-bottom:1px solid #ccc} .note{color:#555;font-size:13px}
"""


def render_html(data: AnalysisData, report: AnalysisReport, inputs: dict, *, n_boot: int,
                holdout: str | None, method: str) -> str:
    """The report page: inputs, the tables and the embedded figures, with a sentence on how to read each."""
    t = data.table
    tb, fg = report.tables, report.figures
    dirs = ", ".join(f"{m} ({'higher' if data.directions[m] else 'lower'} = more leakage)"
                     for m in data.metrics)
    split = f"held-out sets matching /{holdout}/" if holdout else "leave-one-set-out"
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        "<title>semsim faithfulness report</title>",
        f"<style>{REPORT_STYLE}</style></head><body>",
        "<h1>Faithfulness of privacy-leakage metrics to human judgment</h1>",
        f"<p class='note'>semsim {__version__}, {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC}. "
        f"Scores: {html.escape(str(inputs['scores']))}; labels: {html.escape(str(inputs['labels']))}. "
        f"{len(t)} images in {t['set'].nunique()} sets; label source(s): "
        f"{html.escape(', '.join(sorted(t['label_source'].astype(str).unique())))}; "
        f"{int(t['recognized'].gt(0.5).sum())} images ({t['recognized'].gt(0.5).mean():.1%}) recognized by "
        f"a majority. Metrics: {html.escape(dirs)}. Correlations use values aligned so that agreement with "
        f"people is positive. Bootstrap: {n_boot} replicates resampling images within sets.</p>",
    ]
    if report.notes:
        items = "".join(f"<li>{html.escape(n)}</li>" for n in report.notes)
        parts.append(f"<ul class='note'>{items}</ul>")
    parts += [
        "<h2>Set level</h2><p>Per set (victim configuration): the share of images a majority recognized and "
        "each metric's mean.</p>", html_table(tb["set_level"]),
        "<p>Across sets: rank (Spearman, Kendall) and linear (Pearson) correlation of each metric's aligned "
        "mean with the recognition rate, p-values and 95% bootstrap intervals.</p>",
        html_table(tb["set_correlations"]),
        html_image(fg["scatter"], "set means against recognition rate"),
        "<h2>Image level</h2><p>AUROC of each metric for the majority label (0.5 = chance) with a 95% "
        "bootstrap interval, and Spearman's rho with the number of annotators who recognized.</p>",
        html_table(tb["image_level"]), html_image(fg["roc"], "ROC curves"),
        "<details><summary>Per-set breakdown</summary>", html_table(tb["image_level_by_set"]), "</details>",
        "<h2>Contradiction between metrics</h2><p>Share of set pairs that two metrics (or a metric and "
        "people, <code>humans</code>) order oppositely. 0 = always the same order; 0.5 = unrelated.</p>",
        html_table(tb["contradiction"]), html_image(fg["contradiction"], "contradiction matrix"),
        "<h2>Human ceiling</h2><p>Leave one annotator out: the target is the majority of the other "
        "annotators. <code>human</code> rows score the left-out annotator's own answer (its AUROC is its "
        "balanced accuracy); metric rows score the metric on the same images and target. "
        "<code>set_spearman</code> correlates set means with the others' set recognition rate.</p>",
        html_table(tb["human_ceiling"]) if len(tb["human_ceiling"]) else
        "<p><em>no judge_&lt;k&gt; columns in the label table: ceiling not computed</em></p>",
        f"<h2>Calibration</h2><p>{html.escape(method)} map from each metric to P(recognized by the "
        f"majority), fitted on some sets and scored on others ({html.escape(split)}): "
        "AUROC, Brier score (lower is better), expected calibration error (10 bins) and the mean absolute "
        "error of the predicted set recognition rate.</p>", html_table(tb["calibration"]),
    ]
    if "reliability" in fg:
        parts.append(html_image(fg["reliability"], "reliability diagram"))
    grids = [k for k in fg if k.startswith("disagree_")]
    if grids:
        parts.append("<h2>Where metrics and people disagree most</h2>")
        for k in grids:
            parts += [f"<h3>{html.escape(k[len('disagree_'):])}</h3>", html_image(fg[k], k)]
    parts.append("</body></html>")
    return "\n".join(parts)
