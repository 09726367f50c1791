"""Agreement between annotators, in the analysis: how reliable is the target the metrics are scored against?

Fleiss' kappa and Krippendorff's alpha (:mod:`semsim.data.agreement`) under four codings of the same
judgments: the class each judge chose, with "can't tell" (-1) as a category of its own or as a missing
judgment; and the binary recognized / not, with "can't tell" as not recognized or as missing. Per annotator
slot: how often it recognized, answered "can't tell", or chose another class.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from semsim.analysis.data import CANT_TELL, AnalysisData, judge_codes, judge_slots
from semsim.data.agreement import fleiss_kappa_counts, krippendorff_alpha_counts


def counts_of(values: np.ndarray) -> np.ndarray:
    """Units x categories count matrix of a (N, k) array of category codes (NaN = no judgment)."""
    present = np.isfinite(values)
    _, inverse = np.unique(values[present], return_inverse=True)
    cats = np.full(values.shape, -1, dtype=np.int64)
    cats[present] = inverse
    n_cat = int(inverse.max()) + 1 if inverse.size else 1
    rows = np.broadcast_to(np.arange(len(values))[:, None], values.shape)[present]
    counts = np.zeros((len(values), n_cat))
    np.add.at(counts, (rows, cats[present]), 1)
    return counts


def _row(coding: str, cant_tell: str, values: np.ndarray | None) -> dict:
    if values is None:
        return {"coding": coding, "cant_tell": cant_tell, "n_units": 0, "n_judgments": 0,
                "fleiss_kappa": float("nan"), "krippendorff_alpha": float("nan")}
    counts = counts_of(values)
    pairable = counts.sum(1) >= 2
    return {"coding": coding, "cant_tell": cant_tell, "n_units": int(pairable.sum()),
            "n_judgments": int(counts[pairable].sum()), "fleiss_kappa": fleiss_kappa_counts(counts),
            "krippendorff_alpha": krippendorff_alpha_counts(counts)}


def agreement_table(data: AnalysisData) -> pd.DataFrame:
    """Kappa and alpha under the four codings (rows); NaN rows for codings the label table cannot give
    (chosen classes need ``judge_<k>_class`` or class ids). Empty without judge columns."""
    classes, codes = judge_codes(data.table)
    if classes is None and codes is None:
        return pd.DataFrame()
    missing_ct = None if classes is None else np.where(classes == CANT_TELL, np.nan, classes)
    recognized = rec_missing = None
    if codes is not None:
        recognized = np.where(np.isnan(codes), np.nan, (codes == 1).astype(float))
        rec_missing = np.where(codes == CANT_TELL, np.nan, recognized)
    return pd.DataFrame([
        _row("chosen class", "own category", classes),
        _row("chosen class", "missing", missing_ct),
        _row("recognized / not", "not recognized", recognized),
        _row("recognized / not", "missing", rec_missing),
    ])


def annotator_rates(data: AnalysisData) -> pd.DataFrame:
    """Per judge slot: judgments, and the shares recognized (true class), "can't tell" and another class."""
    _, codes = judge_codes(data.table)
    if codes is None:
        return pd.DataFrame()
    rows = []
    for k, slot in enumerate(judge_slots(data.table)):
        v = codes[:, k][np.isfinite(codes[:, k])]
        rows.append({"slot": slot, "n": len(v), "recognized": float(np.mean(v == 1)) if len(v) else np.nan,
                     "cant_tell": float(np.mean(v == CANT_TELL)) if len(v) else np.nan,
                     "other_class": float(np.mean(v == 0)) if len(v) else np.nan})
    return pd.DataFrame(rows)
