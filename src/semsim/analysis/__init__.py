"""Faithfulness analysis: how well does each leakage metric agree with people? (Sun et al., NeurIPS 2023)

Join a score table with a label table (:mod:`~semsim.analysis.data`), then: set-level correlations (the
paper's protocol) and image-level AUROC with bootstrap intervals over configurations and over originals
(:mod:`~semsim.analysis.stats`, :mod:`~semsim.analysis.resample`), tests of differences between metrics
(:mod:`~semsim.analysis.compare`), contradictions between sets and per original
(:mod:`~semsim.analysis.contradiction`), the tie-handled human ceiling (:mod:`~semsim.analysis.ceiling`),
agreement between annotators (:mod:`~semsim.analysis.agreement`), calibration of metrics into P(recognized)
(:mod:`~semsim.analysis.calibration`), and the summary tables and report (:mod:`~semsim.analysis.summary`,
:mod:`~semsim.analysis.report`).
"""

from semsim.analysis.calibration import (
    Calibration,
    calibration_table,
    estimate_rates,
    expected_calibration_error,
    expected_recognition,
    fit_calibration,
    heldout_evaluation,
    heldout_summary,
    load_calibration,
)
from semsim.analysis.ceiling import human_ceiling
from semsim.analysis.compare import metric_comparisons
from semsim.analysis.contradiction import contradiction_matrix, per_original_contradiction
from semsim.analysis.data import (
    SEMSIM_CIFAR100_DIRECTIONS,
    AnalysisData,
    import_semsim_cifar100,
    imported_directions,
    join_scores_labels,
    parse_directions,
    resolve_directions,
)
from semsim.analysis.report import AnalysisReport, analyze, run_analysis
from semsim.analysis.stats import image_level, set_level

__all__ = [
    "SEMSIM_CIFAR100_DIRECTIONS", "AnalysisData", "AnalysisReport", "Calibration", "analyze",
    "calibration_table", "contradiction_matrix", "estimate_rates", "expected_calibration_error",
    "expected_recognition", "fit_calibration", "heldout_evaluation", "heldout_summary", "human_ceiling", "image_level",
    "import_semsim_cifar100", "imported_directions", "join_scores_labels", "load_calibration",
    "metric_comparisons", "parse_directions", "per_original_contradiction", "resolve_directions", "run_analysis",
    "set_level",
]
