"""Inter-annotator agreement for nominal judgments: Fleiss' kappa and Krippendorff's alpha.

Both take the judgments either as a list of units (items), each a sequence of the categories its judges chose
(any hashable values; units may have different numbers of judges), or as a units x categories count matrix
(``*_counts``, vectorised). Pure numpy: the annotation dashboard and the faithfulness analysis share it.

* Fleiss' kappa (Fleiss, 1971, "Measuring nominal scale agreement among many raters"):
  ``kappa = (P_bar - P_e) / (1 - P_e)`` with ``P_i = (sum_j n_ij^2 - n_i) / (n_i (n_i - 1))``,
  ``P_bar`` the mean of ``P_i`` over units and ``P_e = sum_j p_j^2``, ``p_j`` the share of all judgments in
  category ``j``. With unequal judges per unit this is the usual generalisation (units with fewer than 2
  judges dropped).
* Krippendorff's alpha, nominal metric (Krippendorff, 2011, "Computing Krippendorff's alpha-reliability"):
  from the coincidence matrix ``o_ck = sum_u (pairs c-k in u) / (m_u - 1)``,
  ``alpha = 1 - (n - 1) * sum_{c != k} o_ck / sum_{c != k} n_c n_k``; missing judgments are simply absent.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence

import numpy as np


def count_matrix(units: Iterable[Sequence[Hashable]]) -> np.ndarray:
    """Units x categories matrix of judgment counts, keeping units with at least two judgments."""
    units = [list(u) for u in units if len(u) >= 2]
    categories = sorted({v for u in units for v in u}, key=repr)
    index = {c: i for i, c in enumerate(categories)}
    counts = np.zeros((len(units), max(1, len(categories))), dtype=np.float64)
    for row, unit in enumerate(units):
        for value in unit:
            counts[row, index[value]] += 1
    return counts


def _pairable(counts: np.ndarray) -> np.ndarray:
    counts = np.asarray(counts, dtype=np.float64)
    return counts[counts.sum(axis=1) >= 2]


def fleiss_kappa_counts(counts: np.ndarray) -> float:
    """Fleiss' kappa from a units x categories count matrix (units with fewer than 2 judgments ignored; NaN
    when undefined: no such unit, or every judgment in a single category)."""
    counts = _pairable(counts)
    if counts.shape[0] == 0:
        return float("nan")
    n_i = counts.sum(axis=1)
    p_i = ((counts**2).sum(axis=1) - n_i) / (n_i * (n_i - 1))
    p_bar = p_i.mean()
    p_j = counts.sum(axis=0) / counts.sum()
    p_e = float((p_j**2).sum())
    if p_e >= 1.0:
        return float("nan")
    return float((p_bar - p_e) / (1.0 - p_e))


def krippendorff_alpha_counts(counts: np.ndarray) -> float:
    """Krippendorff's alpha (nominal) from a units x categories count matrix (NaN when undefined)."""
    counts = _pairable(counts)
    if counts.shape[0] == 0:
        return float("nan")
    m_u = counts.sum(axis=1)
    # o_ck = sum_u n_uc (n_uk - [c == k]) / (m_u - 1)
    weighted = counts / (m_u - 1)[:, None]
    coincidence = weighted.T @ counts - np.diag(weighted.sum(axis=0))
    n_c = coincidence.sum(axis=1)
    n = n_c.sum()
    observed = coincidence.sum() - np.trace(coincidence)
    expected = n * n - (n_c**2).sum()
    if expected <= 0:
        return float("nan")
    return float(1.0 - (n - 1.0) * observed / expected)


def fleiss_kappa(units: Iterable[Sequence[Hashable]]) -> float:
    """Fleiss' kappa of nominal judgments (NaN when undefined: fewer than one unit with 2+ judgments, or
    every judgment in a single category)."""
    return fleiss_kappa_counts(count_matrix(units))


def krippendorff_alpha_nominal(units: Iterable[Sequence[Hashable]]) -> float:
    """Krippendorff's alpha with the nominal difference metric (NaN when undefined)."""
    return krippendorff_alpha_counts(count_matrix(units))


def agreement(units: Iterable[Sequence[Hashable]]) -> dict[str, float]:
    """Both statistics plus the number of units (with 2+ judgments) they rest on."""
    units = [list(u) for u in units]
    counts = count_matrix(units)
    return {
        "fleiss_kappa": fleiss_kappa_counts(counts),
        "krippendorff_alpha": krippendorff_alpha_counts(counts),
        "n_units": sum(len(u) >= 2 for u in units),
    }
