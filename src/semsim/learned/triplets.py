"""Triplets for SemSim training and the split by original image.

SemSim (Sun et al., NeurIPS 2023, Sec. 4) learns an embedding with a triplet loss: the anchor is an original
image, the positive a reconstruction of it that people recognized, the negative one they did not. Negatives
come from the same original's unrecognized reconstructions; when it has none, from another original's (or from
the release layout's ``others/`` images). With ``anchor="all"`` every image of an original's recognized group
(the original and its recognized reconstructions) serves as anchor, as the authors' reference code samples.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from semsim.errors import SemsimError

ANCHOR_MODES = ("original", "all")
LABEL_MODES = ("majority", "soft")


@dataclass(frozen=True)
class Triplets:
    """Indices into an image list (anchor, positive, negative) and a weight per triplet."""

    anchor: np.ndarray
    positive: np.ndarray
    negative: np.ndarray
    weight: np.ndarray

    def __len__(self) -> int:
        return len(self.anchor)


def split_by_original(
    labels: pd.DataFrame, val_fraction: float, seed: int = 0
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split rows into (train, val) so that no ``original_id`` has rows in both; seeded, reproducible.

    Rows without an original (``others/`` negatives) stay in training.
    """
    if not 0 <= val_fraction < 1:
        raise SemsimError(f"val_fraction {val_fraction}: must be in [0, 1)")
    ids = np.array(sorted(labels["original_id"].dropna().astype(str).unique()))
    rng = np.random.default_rng(seed)
    n_val = int(round(val_fraction * len(ids)))
    if val_fraction > 0 and len(ids) >= 2:
        n_val = min(max(n_val, 1), len(ids) - 1)
    val_ids = set(rng.permutation(ids)[:n_val].tolist())
    is_val = labels["original_id"].astype(str).isin(val_ids) & labels["original_id"].notna()
    return labels[~is_val].reset_index(drop=True), labels[is_val].reset_index(drop=True)


class TripletSampler:
    """Draws a fresh set of triplets per epoch over an image list built from a label table.

    ``images`` lists the distinct image files (originals first seen, then reconstructions); rows refer to them
    by index. ``label_mode="majority"``: positives are ``recognized > 0.5``, the rest negatives, weight 1.
    ``label_mode="soft"``: positives ``> 0.5``, negatives ``< 0.5`` (ties unused) and each triplet is
    weighted by how clearly the judges separated the two, ``recognized(pos) - recognized(neg)``.
    """

    def __init__(self, labels: pd.DataFrame, anchor: str = "original", label_mode: str = "majority") -> None:
        if anchor not in ANCHOR_MODES:
            raise SemsimError(f"anchor mode '{anchor}': choose one of {', '.join(ANCHOR_MODES)}")
        if label_mode not in LABEL_MODES:
            raise SemsimError(f"label mode '{label_mode}': choose one of {', '.join(LABEL_MODES)}")
        self.anchor_mode, self.label_mode = anchor, label_mode
        labels = labels.reset_index(drop=True)
        paths = list(dict.fromkeys(list(labels["original"].dropna()) + list(labels["reconstruction"])))
        self.images: list[str] = paths
        index = {p: i for i, p in enumerate(paths)}
        share = labels["recognized"].to_numpy(dtype=float)
        is_pos = share > 0.5
        is_neg = ~is_pos if label_mode == "majority" else share < 0.5
        self.share = {index[r]: s for r, s in zip(labels["reconstruction"], share, strict=True)}
        self.groups: list[tuple[int, np.ndarray, np.ndarray]] = []  # (original, positives, negatives)
        for _, g in labels[labels["original"].notna()].groupby("original_id", sort=True):
            ori = index[g["original"].iloc[0]]
            pos = np.array([index[r] for r in g["reconstruction"][is_pos[g.index]]], dtype=np.int64)
            neg = np.array([index[r] for r in g["reconstruction"][is_neg[g.index]]], dtype=np.int64)
            self.groups.append((ori, pos, neg))
        self.all_negatives = np.array([index[r] for r in labels["reconstruction"][is_neg]], dtype=np.int64)
        if not any(len(p) for _, p, _ in self.groups):
            raise SemsimError(
                "the labels hold no recognized reconstruction (recognized > 0.5); SemSim needs "
                "positives to learn from"
            )
        if len(self.all_negatives) == 0:
            raise SemsimError(
                "the labels hold no unrecognized reconstruction; SemSim needs negatives to learn from"
            )

    def sample(self, rng: np.random.Generator) -> Triplets:
        """One triplet per (anchor, positive) pair of every original, with a random negative each."""
        a, p, n = [], [], []
        for ori, pos, neg in self.groups:
            if len(pos) == 0:
                continue
            members = np.concatenate([[ori], pos])
            anchors = [ori] if self.anchor_mode == "original" else members
            own = neg if len(neg) else np.setdiff1d(self.all_negatives, members)
            if len(own) == 0:
                continue
            for anc in anchors:
                for positive in members:
                    if positive == anc:
                        continue
                    a.append(anc)
                    p.append(positive)
                    n.append(own[rng.integers(len(own))])
        a_, p_, n_ = (np.array(v, dtype=np.int64) for v in (a, p, n))
        order = rng.permutation(len(a_))
        a_, p_, n_ = a_[order], p_[order], n_[order]
        if self.label_mode == "soft":
            pairs = zip(p_, n_, strict=True)
            w = np.array([self.share.get(i, 1.0) - self.share.get(j, 0.0) for i, j in pairs])
        else:
            w = np.ones(len(a_))
        return Triplets(a_, p_, n_, w.astype(np.float32))
