"""Triplet sampling and the split by original image (SemSim, Sun et al., NeurIPS 2023)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from semsim.errors import SemsimError
from semsim.learned.triplets import TripletSampler, split_by_original


def _labels() -> pd.DataFrame:
    """Originals A (2 recognized, 1 not), B (1 recognized, no unrecognized), C (none recognized), plus one
    negative-only image."""
    rows = []
    spec = {"A": [0.8, 1.0, 0.2], "B": [0.6], "C": [0.0, 0.4]}
    for oid, shares in spec.items():
        for k, share in enumerate(shares):
            rows.append(
                {
                    "set": f"s{k}",
                    "image_id": oid,
                    "original_id": oid,
                    "original": f"{oid}_ori",
                    "reconstruction": f"{oid}_rec{k}",
                    "recognized": share,
                }
            )
    rows.append(
        {
            "set": "s0",
            "image_id": "others/x",
            "original_id": None,
            "original": None,
            "reconstruction": "other",
            "recognized": 0.0,
        }
    )
    return pd.DataFrame(rows)


def test_split_by_original_is_disjoint_and_seeded() -> None:
    rows = [
        {
            "set": f"s{k}",
            "image_id": str(i),
            "original_id": str(i),
            "original": f"o{i}",
            "reconstruction": f"r{i}_{k}",
            "recognized": 1.0,
        }
        for i in range(50)
        for k in range(3)
    ]
    rows.append(
        {
            "set": "s0",
            "image_id": "others/x",
            "original_id": None,
            "original": None,
            "reconstruction": "x",
            "recognized": 0.0,
        }
    )
    df = pd.DataFrame(rows)
    train, val = split_by_original(df, 0.2, seed=3)
    assert set(train["original_id"].dropna()).isdisjoint(set(val["original_id"]))
    assert val["original_id"].nunique() == 10 and len(train) + len(val) == len(df)
    assert "others/x" in set(train["image_id"])
    again, _ = split_by_original(df, 0.2, seed=3)
    other, _ = split_by_original(df, 0.2, seed=4)
    assert again.equals(train) and not other.equals(train)
    with pytest.raises(SemsimError, match="val_fraction"):
        split_by_original(df, 1.0)


def test_original_anchor_triplets() -> None:
    s = TripletSampler(_labels())
    t = s.sample(np.random.default_rng(0))
    name = np.array(s.images)
    # A has 2 positives, B has 1; C has none and gives no triplet
    assert len(t) == 3
    assert all(a.endswith("_ori") for a in name[t.anchor])
    for a, p, n in zip(name[t.anchor], name[t.positive], name[t.negative], strict=True):
        assert p.startswith(a[0]) and p in {"A_rec0", "A_rec1", "B_rec0"}
        if a == "A_ori":
            assert n == "A_rec2"  # the same original's unrecognized reconstruction
        else:  # B has none: another original's, or the negative-only image
            assert n in {"A_rec2", "C_rec0", "C_rec1", "other"}
    assert np.all(t.weight == 1)


def test_every_image_anchor_and_soft_weights() -> None:
    s = TripletSampler(_labels(), anchor="all", label_mode="soft")
    t = s.sample(np.random.default_rng(1))
    name = np.array(s.images)
    # A's group {ori, rec0, rec1}: 3 anchors x 2 positives; B's {ori, rec0}: 2 x 1
    assert len(t) == 8
    assert not np.any(t.anchor == t.positive)
    assert {"A_rec0", "A_rec1", "B_rec0"} <= set(name[t.anchor])
    # soft: C_rec1 (0.4) is a negative, weights are share(positive) - share(negative)
    share = {
        "A_ori": 1.0,
        "B_ori": 1.0,
        "A_rec0": 0.8,
        "A_rec1": 1.0,
        "B_rec0": 0.6,
        "A_rec2": 0.2,
        "C_rec0": 0.0,
        "C_rec1": 0.4,
        "other": 0.0,
    }
    expect = [share[p] - share[n] for p, n in zip(name[t.positive], name[t.negative], strict=True)]
    assert np.allclose(t.weight, expect)


def test_sampler_refuses_labels_without_both_classes() -> None:
    df = _labels()
    with pytest.raises(SemsimError, match="no recognized"):
        TripletSampler(df.assign(recognized=0.0))
    with pytest.raises(SemsimError, match="no unrecognized"):
        TripletSampler(df.assign(recognized=1.0))
    with pytest.raises(SemsimError, match="anchor mode"):
        TripletSampler(df, anchor="random")
