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

import numpy as np
import pandas as pd

from semsim import __version__
from semsim.analysis import figures
from semsim.analysis.agreement import agreement_table, annotator_rates
from semsim.analysis.calibration import calibration_table
from semsim.analysis.ceiling import human_ceiling
from semsim.analysis.compare import best_and_ties, metric_comparisons
from semsim.analysis.contradiction import as_matrix, contradiction_matrix, per_original_contradiction
from semsim.analysis.data import AnalysisData, join_scores_labels
from semsim.analysis.stats import auroc_replicates, image_level, per_set_table, set_level, set_replicates
from semsim.analysis.summary import by_configuration, indistinguishable, model_recognition_table, summary_table
from semsim.common.io import atomic_write, write_table
from semsim.common.progress import progress
from semsim.data.labels import majority

# columns computed from an evaluation classifier's outputs (iip_pixel and iip_lpips compare images, not the evaluator)
EVALUATOR_COLUMNS = ("mr_", "iip_feature", "feature_l2", "feature_cosine")


@dataclass
class AnalysisReport:
    """The tables of an analysis (name -> DataFrame), the notes, and where the report was written."""

    tables: dict[str, pd.DataFrame]
    notes: list[str]
    html_path: Path | None = None
    figures: dict[str, bytes] = field(default_factory=dict)


def label_kind(data: AnalysisData) -> str:
    """``model`` when every label comes from an evaluator, ``human`` when none does, else ``mixed``."""
    kinds = set(data.table["label_source"].astype(str).str.split(":").str[0])
    return "model" if kinds == {"model"} else "mixed" if "model" in kinds else "human"


def recognized_by(data: AnalysisData) -> str:
    """Who recognized, in words: people, or the evaluator for model-based labels."""
    return {"model": "the evaluator", "mixed": "the judges (people and evaluators)"}.get(label_kind(data),
                                                                                        "people")


def circularity_notes(data: AnalysisData) -> list[str]:
    """Warnings for metrics computed by an evaluation classifier scored against model-based labels: when
    the metric and the labels come from the same evaluator, agreement is by construction."""
    if label_kind(data) == "human":
        return []
    sources = ", ".join(sorted(data.table["label_source"].astype(str).unique()))
    suspects = [m for m in data.metrics if m.startswith(EVALUATOR_COLUMNS) and not m.startswith("mr_clip_")]
    return [f"warning: {m} is computed by an evaluation classifier and the labels are model-based ({sources}); "
            "if they come from the same evaluator, their agreement is circular, not evidence of faithfulness"
            for m in suspects]


def _calibration(data: AnalysisData, method: str, holdout: str | None, notes: list[str]
                 ) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    if data.table["set"].nunique() >= 2 and majority(data.table).nunique() == 2:
        return calibration_table(data, method=method, holdout=holdout)
    notes.append("calibration check skipped: it needs two sets or more and both majority labels")
    return pd.DataFrame(), None


def run_analysis(data: AnalysisData, *, n_boot: int = 1000, seed: int = 0, holdout: str | None = None,
                 calibration_method: str = "logistic", ties: str = "exclude",
                 show_progress: bool = False) -> AnalysisReport:
    """Compute every table and figure of the report for joined data.

    Bootstrap replicates are drawn once: over sets for set-level figures, over originals (``image_id``
    clusters) for image-level ones, and reused for the tests of differences. ``ties``: how the human
    ceiling counts a tied majority of the other annotators (:data:`~semsim.analysis.ceiling.TIE_RULES`).
    """
    steps = progress(total=5, desc="analysis", unit="step", enabled=show_progress)
    per_set = per_set_table(data)
    set_reps = set_replicates(per_set, data.metrics, data.directions, n_boot, seed) if n_boot else None
    _, correlations = set_level(data, n_boot=n_boot, seed=seed, replicates=set_reps)
    auc_reps = auroc_replicates(data, n_boot, seed) if n_boot else None
    overall, by_set = image_level(data, n_boot=n_boot, seed=seed, replicates=auc_reps)
    steps.update()
    comparisons = metric_comparisons(data, per_set, set_replicates=set_reps["spearman"] if set_reps else None,
                                     auroc_replicates=auc_reps, n_boot=n_boot)
    contradiction = contradiction_matrix(per_set, data.metrics, data.directions)
    per_original = per_original_contradiction(data)
    steps.update()
    notes = list(data.notes) + circularity_notes(data)
    calib, probs = _calibration(data, calibration_method, holdout, notes)
    steps.update()
    tables = {
        "summary": summary_table(correlations, overall, comparisons, calib),
        "summary_by_configuration": by_configuration(per_set, by_set),
        "set_level": per_set, "set_correlations": correlations, "image_level": overall,
        "image_level_by_set": by_set, "metric_comparisons": comparisons,
        "contradiction": contradiction.reset_index(), "contradiction_per_original": per_original,
        "human_ceiling": human_ceiling(data, ties=ties), "agreement": agreement_table(data),
        "annotators": annotator_rates(data),
        "model_recognition": model_recognition_table(data.table, majority(data.table).to_numpy()),
        "calibration": calib,
    }
    steps.update()
    figs = _figures(data, tables, probs, ties)
    steps.update()
    steps.close()
    return AnalysisReport(tables, notes, None, {k: figures.png_bytes(f) for k, f in figs.items()})


def _figures(data: AnalysisData, tables: dict[str, pd.DataFrame], probs: pd.DataFrame | None, ties: str) -> dict:
    """The report's figures (name -> matplotlib figure)."""
    who = recognized_by(data)
    figs = {"scatter": figures.scatter_figure(tables["set_level"], tables["set_correlations"], data.metrics,
                                              rate_label=f"share recognized by {who}"),
            "roc": figures.roc_figure(data, target_label=f"recognized by {who}, majority"),
            "contradiction": figures.matrix_figure(tables["contradiction"].set_index("metric"))}
    if len(tables["contradiction_per_original"]):
        figs["contradiction_per_original"] = figures.matrix_figure(
            as_matrix(tables["contradiction_per_original"]),
            label="share of same-original pairs ordered oppositely (ties left out)")
    ceiling = figures.ceiling_figure(data, ties)
    if ceiling is not None:
        figs["ceiling"] = ceiling
    if probs is not None:
        figs["reliability"] = figures.reliability_figure(data, probs)
    for m in data.metrics:
        fig = figures.disagreement_figure(data, m, who=who)
        if fig is not None:
            figs[f"disagree_{m}"] = fig
    return figs


def describe_input(obj: object, what: str) -> str:
    """A table argument as the report names it: its path, or what it is when given as a data frame."""
    if obj is None:
        return "none (the score table holds the labels)"
    return str(obj) if not isinstance(obj, pd.DataFrame) else f"({what} given as a data frame)"


def analyze(scores: pd.DataFrame | str | os.PathLike, labels: pd.DataFrame | str | os.PathLike | None,
            out_dir: str | os.PathLike, *, metrics: list[str] | None = None,
            directions: dict[str, bool] | None = None, n_boot: int = 1000, seed: int = 0,
            holdout: str | None = None, calibration_method: str = "logistic", ties: str = "exclude",
            allow_missing: bool = False, inputs: dict[str, str] | None = None,
            show_progress: bool = False) -> AnalysisReport:
    """Join ``scores`` with ``labels`` (None: one table has both), compute the faithfulness statistics and
    write ``<table>.csv`` files, ``figures/<name>.png`` and ``report.html`` into ``out_dir``.

    ``directions`` (column -> higher_is_more_leakage) overrides / completes the metric registry;
    ``holdout`` is a regex of set names held out of the calibration fit (default: leave-one-set-out);
    ``allow_missing``: analyse the images both tables share instead of stopping when a join loses some;
    ``inputs``: how the report names the inputs (default: their paths).
    """
    data = join_scores_labels(scores, labels, metrics=metrics, directions=directions, allow_missing=allow_missing)
    report = run_analysis(data, n_boot=n_boot, seed=seed, holdout=holdout, calibration_method=calibration_method,
                          ties=ties, show_progress=show_progress)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name, table in report.tables.items():
        if len(table.columns):
            write_table(table, out / f"{name}.csv")
    for name, png in report.figures.items():
        with atomic_write(out / "figures" / f"{name}.png") as tmp:
            tmp.write_bytes(png)
    inputs = inputs or {"scores": describe_input(scores, "scores"), "labels": describe_input(labels, "labels")}
    report.html_path = out / "report.html"
    with atomic_write(report.html_path) as tmp:
        tmp.write_text(render_html(data, report, inputs, n_boot=n_boot, holdout=holdout, method=calibration_method,
                                   ties=ties), encoding="utf-8")
    return report


def html_image(png: bytes, alt: str) -> str:
    """An <img> tag embedding ``png`` (nothing is fetched when the page is viewed)."""
    return (f'<img alt="{html.escape(alt)}" src="data:image/png;base64,'
            f'{base64.b64encode(png).decode("ascii")}">')


def fmt_p(p: float) -> str:
    """A p-value for reading: three decimals, or two significant digits below 0.001 (never "0.000")."""
    if not np.isfinite(p):
        return "-"
    return f"{p:.3f}" if p >= 0.001 else f"{p:.1e}" if p > 0 else "0"


def _is_p(col: str) -> bool:
    return col == "p" or col.endswith(("_p", "_p_holm", "p_bootstrap")) or col == "p_holm"


def readable(df: pd.DataFrame, digits: int = 3) -> pd.DataFrame:
    """A copy for display: ``X_ci_low`` / ``X_ci_high`` joined into one ``X 95% CI`` column, integer-valued
    columns as integers, p-values by :func:`fmt_p`, other numbers with ``digits`` decimals."""
    out = pd.DataFrame(index=df.index)
    for col in df.columns:
        if col.endswith("ci_high"):
            continue
        v = df[col]
        if col.endswith("ci_low"):
            base = col[: -len("ci_low")]
            hi = df[f"{base}ci_high"]
            out[f"{base.rstrip('_') or 'difference'} 95% CI"] = [
                f"[{a:.{digits}f}, {b:.{digits}f}]" if np.isfinite(a) else "-" for a, b in zip(v, hi, strict=True)]
        elif pd.api.types.is_bool_dtype(v) or not pd.api.types.is_numeric_dtype(v):
            out[col] = v.astype(str)
        elif _is_p(col):
            out[col] = [fmt_p(x) for x in v]
        elif pd.api.types.is_integer_dtype(v) or (col == "n" or col.startswith("n_")):
            # counts as integers; a mean count (the ceiling's "mean" rows) with one decimal
            out[col] = [("-" if not np.isfinite(x) else str(int(x)) if float(x).is_integer() else f"{x:.1f}")
                        for x in v.astype(float)]
        else:
            out[col] = [f"{x:.{digits}f}" if np.isfinite(x) else "-" for x in v]
    return out


def html_table(df: pd.DataFrame, digits: int = 3) -> str:
    """A plain HTML table of ``df`` (formatted by :func:`readable`) in a horizontally scrolling box."""
    if not len(df.columns):
        return "<p><em>not computed</em></p>"
    body = readable(df, digits).to_html(index=False, na_rep="-", border=0, classes="t", escape=True)
    return f"<div class='wrap'>{body}</div>"


def summary_html(summary: pd.DataFrame) -> str:
    """The summary table as in a paper: value [95% CI] with the mark against the best metric."""
    def cell(r: pd.Series, col: str, mark: str = "") -> str:
        if not np.isfinite(r[col]):
            return "-"
        spec = ".3f" if col == "image_auroc" else "+.3f"  # AUROC: 0.5 is chance, no sign
        ci_spec = ".3f" if col == "image_auroc" else "+.2f"
        ci = (f" [{r[col + '_ci_low']:{ci_spec}}, {r[col + '_ci_high']:{ci_spec}}]"
              if np.isfinite(r[col + "_ci_low"]) else "")
        return f"{r[col]:{spec}}{ci}" + (f" {r[mark]}" if mark and r[mark] else "")

    rows = []
    for _, r in summary.iterrows():
        row = {"metric": r["metric"], "set Spearman [95% CI]": cell(r, "set_spearman", "set_mark"),
               "set Kendall": cell(r, "set_kendall"), "set Pearson": cell(r, "set_pearson"),
               "image AUROC [95% CI]": cell(r, "image_auroc", "image_mark")}
        for col in ("calibrated_auroc", "calibrated_brier", "calibrated_ece"):
            if col in summary.columns:
                row[col.replace("calibrated_", "held-out ")] = f"{r[col]:.3f}" if np.isfinite(r[col]) else "-"
        rows.append(row)
    body = pd.DataFrame(rows).to_html(index=False, border=0, classes="t", escape=True)
    return f"<div class='wrap'>{body}</div>"


def comparison_words(tb: dict[str, pd.DataFrame]) -> str:
    """Which metrics cannot be told apart, in words, from the tests of differences."""
    comp = tb["metric_comparisons"]
    if comp.empty:
        return "<p>Only one metric: nothing to compare.</p>"
    parts = []
    for level, values, test in (("set", tb["set_correlations"].set_index("metric")["spearman"],
                                 "Williams' test on Spearman's rho"),
                                ("image", tb["image_level"].set_index("metric")["auroc"], "DeLong's test")):
        if values.isna().all():
            continue
        best, ties = best_and_ties(comp, values, level)
        n_pairs = int((comp["level"] == level).sum())
        n_same = len(indistinguishable(comp, level))
        tied = ", ".join(html.escape(t) for t in ties) if ties else "none"
        parts.append(f"<li><b>{level} level</b> ({test}, Holm-adjusted over {n_pairs} pairs): the highest is "
                     f"<code>{html.escape(best)}</code> ({values[best]:+.3f}); not distinguishable from it "
                     f"(p<sub>Holm</sub> &ge; 0.05): {tied}. {n_same} of {n_pairs} pairs cannot be told "
                     "apart.</li>")
    return "<ul>" + "".join(parts) + "</ul>"


REPORT_STYLE = """
body{font-family:system-ui,sans-serif;max-width:1400px;margin:2em auto;padding:0 1em;color:#222}
div.wrap{overflow-x:auto;max-width:100%}
table.t{border-collapse:collapse;font-size:12px;margin:0.5em 0 1.5em}
table.t th,table.t td{padding:3px 8px;border-bottom:1px solid #ddd;text-align:right;white-space:nowrap}
table.t td:first-child,table.t th:first-child{text-align:left}
img{max-width:100%} h2{margin-top:2em;border-bottom:1px solid #ccc} .note{color:#555;font-size:13px}
"""


def render_html(data: AnalysisData, report: AnalysisReport, inputs: dict, *, n_boot: int,
                holdout: str | None, method: str, ties: str = "exclude") -> str:
    """The report page: the summary first, then every table and embedded figure with how to read it."""
    t = data.table
    tb, fg = report.tables, report.figures
    who = recognized_by(data)
    dirs = ", ".join(f"{m} ({'higher' if data.directions[m] else 'lower'} = more leakage)" for m in data.metrics)
    split = f"held-out sets matching /{holdout}/" if holdout else "leave-one-configuration-out"
    set_names = "; ".join(f"{k + 1} = {html.escape(n)}" for k, n in enumerate(tb["set_level"]["set"]))
    head = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        "<title>semsim faithfulness report</title>",
        f"<style>{REPORT_STYLE}</style></head><body>",
        f"<h1>Faithfulness of privacy-leakage metrics to recognition by {html.escape(who)}</h1>",
        f"<p class='note'>semsim {__version__}, {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC}. "
        f"Scores: {html.escape(str(inputs['scores']))}; labels: {html.escape(str(inputs['labels']))}. "
        f"{len(t)} images in {t['set'].nunique()} sets; label source(s): "
        f"{html.escape(', '.join(sorted(t['label_source'].astype(str).unique())))}; "
        f"{int(majority(t).sum())} images ({majority(t).mean():.1%}) recognized by a majority of "
        f"{html.escape(who)}. Metrics: {html.escape(dirs)}. Correlations use values aligned so that agreement "
        f"is positive. Intervals: set level, {n_boot} bootstrap replicates over sets (configurations); image "
        f"level, {n_boot} replicates over {html.escape(_image_unit(tb))}.</p>",
    ]
    if report.notes:
        head.append("<ul class='note'>" + "".join(f"<li>{html.escape(n)}</li>" for n in report.notes) + "</ul>")
    parts = head + [
        "<h2>Summary</h2><p>Per metric: set-level correlation of the metric's set mean with the share recognized "
        "(Spearman, Kendall, Pearson; 95% configuration-bootstrap intervals), image-level AUROC for the majority "
        "label (95% interval resampling originals), and the calibrated map's held-out AUROC / Brier / ECE. "
        "Marks: <code>best</code>; <code>=</code> cannot be told apart from the best (Holm-adjusted p &ge; "
        "0.05); <code>&lt;</code> significantly below it.</p>", summary_html(tb["summary"]),
        comparison_words(tb),
        "<details><summary>Per configuration (AUROC within each set)</summary>",
        html_table(tb["summary_by_configuration"]), "</details>",
        "<h2>Set level</h2><p>Per set (victim configuration, sorted by name; the numbers label the points of "
        f"the scatter plots: {set_names}): the majority recognition rate and each metric's mean.</p>",
        html_table(tb["set_level"]),
        "<p>Across sets: correlations with p-values (scipy), Holm-adjusted p-values over the whole table, and "
        "95% intervals from the bootstrap over sets.</p>", html_table(tb["set_correlations"]),
        "<p>Scatter: each metric's set means against the recognition rate (points numbered as above), least "
        "squares line, its 95% band (dashed); &rho; = Spearman, &tau; = Kendall.</p>",
        html_image(fg["scatter"], "set means against recognition rate"),
        "<h2>Image level</h2><p>AUROC of each metric for the majority label (0.5 = chance), 95% interval from "
        "the bootstrap over originals, and Spearman's rho with the number of judges who recognized.</p>",
        html_table(tb["image_level"]), html_image(fg["roc"], "ROC curves"),
        "<details><summary>Per-set breakdown</summary>", html_table(tb["image_level_by_set"]), "</details>",
        "<h2>Tests of differences</h2><p>Every pair of metrics: set level, Williams' t for the difference of "
        "two Spearman correlations with the same rate, with the configuration-bootstrap interval of the "
        "difference; image level, DeLong's z for two correlated AUROCs, with the interval from the bootstrap "
        "over originals as a check. <code>p_holm</code>: Holm-adjusted within the level.</p>",
        "<details><summary>All pairs</summary>", html_table(tb["metric_comparisons"]), "</details>",
        "<h2>Contradiction</h2><p>Between sets: the share of set pairs two metrics (or a metric and "
        "<code>humans</code>) order oppositely (0 = same order, 0.5 = unrelated).</p>",
        html_table(tb["contradiction"]), html_image(fg["contradiction"], "contradiction between sets"),
        "<p>Per original (the paper's question): over pairs of reconstructions of the same original in two "
        "sets, how often two predictors order them the same way, oppositely, or either ties "
        "(<code>humans</code> = number of judges who recognized, which ties often).</p>",
        "<details><summary>All pairs</summary>", html_table(tb["contradiction_per_original"]), "</details>",
    ]
    if "contradiction_per_original" in fg:
        parts.append(html_image(fg["contradiction_per_original"], "contradiction per original"))
    parts += _ceiling_and_agreement(tb, fg, ties)
    parts += [
        f"<h2>Calibration</h2><p>{html.escape(method)} map from each metric to P(recognized by the majority), "
        f"fitted on some sets and scored on others ({html.escape(split)}): each figure (AUROC, Brier score, "
        "expected calibration error in 10 bins, error of the predicted recognition rate) is computed within a "
        "held-out configuration and averaged over them; <code>base rate</code> predicts the training "
        "configurations' recognition rate for every image. Descriptive: no test of differences is run on "
        "these.</p>", html_table(tb["calibration"])]
    if "reliability" in fg:
        parts.append(html_image(fg["reliability"], "reliability diagram"))
    grids = [k for k in fg if k.startswith("disagree_")]
    if grids:
        parts.append(f"<h2>Where metrics and {html.escape(who)} disagree most</h2>")
        for k in grids:
            parts += [f"<h3>{html.escape(k[len('disagree_'):])}</h3>", html_image(fg[k], k)]
    parts.append("</body></html>")
    return "\n".join(parts)


def _image_unit(tb: dict[str, pd.DataFrame]) -> str:
    unit = str(tb["image_level"]["ci_resamples"].iloc[0]) if len(tb["image_level"]) else ""
    return unit.split(" over ", 1)[1] if " over " in unit else "nothing (no bootstrap)"


def _ceiling_tables(ceiling: pd.DataFrame) -> str:
    """The ceiling's averages over annotator slots, then every slot in a folded section."""
    if not len(ceiling):
        return "<p><em>no judge_&lt;k&gt; columns in the label table: ceiling not computed</em></p>"
    mean = ceiling["slot"] == "mean"
    return (html_table(ceiling[mean]) + "<details><summary>Per annotator slot</summary>"
            + html_table(ceiling[~mean]) + "</details>")


def _ceiling_and_agreement(tb: dict[str, pd.DataFrame], fg: dict[str, bytes], ties: str) -> list[str]:
    parts = [
        "<h2>Human ceiling</h2><p>Leave one annotator out: the target is the majority of the other "
        f"annotators; a tied majority counts as <b>{html.escape(ties)}</b> (<code>--ties</code>: exclude, not, "
        "half). <code>human</code> rows score the left-out annotator (AUROC = balanced accuracy; hit rate "
        "<code>tpr</code> at false-positive rate <code>fpr</code>); metric rows score the metric on the same "
        "images and target, with <code>tpr_at_annotator_fpr</code>, its hit rate at the annotator's "
        "false-positive rate.</p>",
        _ceiling_tables(tb["human_ceiling"])]
    if "ceiling" in fg:
        parts.append(html_image(fg["ceiling"], "ROC curves against each annotator's target"))
    if len(tb["agreement"]):
        parts += ["<h2>Agreement between annotators</h2><p>Fleiss' kappa and Krippendorff's alpha (nominal) on "
                  "the chosen classes and on recognized / not, with \"can't tell\" as its own category, as "
                  "missing, or as not recognized.</p>", html_table(tb["agreement"], digits=4),
                  html_table(tb["annotators"])]
    if len(tb["model_recognition"]):
        parts += ["<h2>Model-based recognition versus people</h2><p>Per recognizer: clean accuracy (on the "
                  "originals), accuracy on the reconstructions, relative accuracy, and how often its verdict "
                  "equals the majority of people.</p>", html_table(tb["model_recognition"])]
    return parts
