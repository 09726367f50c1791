"""Fleiss' kappa and Krippendorff's alpha against published examples and an independent reference on the
SemSim study's real judgments (5 annotators per reconstruction, -1 = can't tell)."""

from __future__ import annotations

import itertools
import math
from collections import Counter

import numpy as np
import pandas as pd
import pytest

from helpers import shared_path
from semsim.annotation.agreement import agreement, fleiss_kappa, krippendorff_alpha_nominal


def _units_from_counts(counts: list[list[int]]) -> list[list[int]]:
    return [[cat for cat, n in enumerate(row) for _ in range(n)] for row in counts]


def test_fleiss_published_example():
    # Fleiss' kappa worked example (10 subjects, 14 raters, 5 categories): P_bar 0.378, P_e 0.213, kappa 0.210
    counts = [[0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0], [2, 2, 8, 1, 1],
              [7, 7, 0, 0, 0], [3, 2, 6, 3, 0], [2, 5, 3, 2, 2], [6, 5, 2, 1, 0], [0, 2, 2, 3, 7]]
    assert fleiss_kappa(_units_from_counts(counts)) == pytest.approx(0.20993, abs=5e-5)


def test_krippendorff_published_example():
    # Krippendorff (2011), "Computing Krippendorff's alpha-reliability": 4 observers, 12 units, missing
    # values, nominal alpha = 0.743 (unit 12 has a single value and is not pairable)
    observers = [
        [1, 2, 3, 3, 2, 1, 4, 1, 2, None, None, None],
        [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, None, 3],
        [None, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, None],
        [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, None],
    ]
    units = [[obs[u] for obs in observers if obs[u] is not None] for u in range(12)]
    assert krippendorff_alpha_nominal(units) == pytest.approx(0.743, abs=5e-4)


def test_degenerate_cases():
    assert math.isnan(fleiss_kappa([[1], [2]]))  # no unit with two judgments
    assert math.isnan(krippendorff_alpha_nominal([[1, 1], [1, 1]]))  # a single category: undefined
    assert fleiss_kappa([[0, 0], [1, 1], [2, 2]]) == pytest.approx(1.0)
    assert krippendorff_alpha_nominal([["a", "a"], ["b", "b"], ["c", "c", "c"]]) == pytest.approx(1.0)
    assert agreement([[0, 1], [1]])["n_units"] == 1


def _reference_fleiss(rows: np.ndarray) -> float:
    """Fleiss (1971) from the definitions with plain float64 loops (equal raters per subject)."""
    n_sub, n_rat = rows.shape
    p_bar = 0.0
    totals: Counter = Counter()
    for row in rows.tolist():
        agree = 0.0
        for c, n_ij in Counter(row).items():
            agree += float(n_ij) * (n_ij - 1.0)
            totals[c] += n_ij
        p_bar += agree / (n_rat * (n_rat - 1.0))
    p_bar /= n_sub
    p_e = sum((t / (n_sub * n_rat)) ** 2 for t in totals.values())
    return (p_bar - p_e) / (1.0 - p_e)


def _reference_alpha(units: list[list[int]]) -> float:
    """Krippendorff's alpha from its pairwise definition: 1 - D_o / D_e, nominal delta, loops over pairs."""
    pairable = [u for u in units if len(u) >= 2]
    n = float(sum(len(u) for u in pairable))
    d_o = 0.0
    for u in pairable:
        mismatches = sum(a != b for a, b in itertools.permutations(u, 2))
        d_o += mismatches / (len(u) - 1.0)
    d_o /= n
    values = [v for u in pairable for v in u]
    counts = pd.Series(values).value_counts().to_numpy(dtype=np.float64)
    mismatched_pairs = n * n - float(np.sum(counts * counts))  # sum over c != k of n_c n_k
    d_e = mismatched_pairs / (n * (n - 1.0))
    return 1.0 - d_o / d_e


def test_equal_reference_on_semsim_study_labels():
    table = pd.read_csv(shared_path("cifar100_human_labels", "labels.csv"))
    judges = table[[f"ann{k}" for k in range(1, 6)]].to_numpy()
    assert judges.shape == (8400, 5)
    units = judges.tolist()
    kappa, alpha = fleiss_kappa(units), krippendorff_alpha_nominal(units)
    assert kappa == pytest.approx(_reference_fleiss(judges), abs=1e-12)
    assert alpha == pytest.approx(_reference_alpha(units), abs=1e-12)
    # a third opinion: statsmodels (when installed)
    inter_rater = pytest.importorskip("statsmodels.stats.inter_rater")
    counts, _ = inter_rater.aggregate_raters(judges)
    assert kappa == pytest.approx(inter_rater.fleiss_kappa(counts, method="fleiss"), abs=1e-12)
    # the recognized/not recognized view the label table uses, with missing judgments dropped at random
    recognized = judges == table["fine_label"].to_numpy()[:, None]
    rng = np.random.default_rng(0)
    ragged = [[bool(v) for v, keep in zip(row, rng.random(5) > 0.3, strict=True) if keep]
              for row in recognized]
    assert krippendorff_alpha_nominal(ragged) == pytest.approx(_reference_alpha(ragged), abs=1e-12)
    assert 0.2 < kappa < 0.9 and 0.2 < alpha < 0.9  # real people: moderate agreement, not chance, not perfect
