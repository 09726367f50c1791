"""Victim and evaluation classifiers: training variants (augmentations, defenses), input checks, loading."""

from __future__ import annotations

from semsim.models.classifiers import load_classifier
from semsim.victims.augment import ATS_POLICIES, parse_augment
from semsim.victims.train import (
    check_inputs,
    check_labels,
    evaluate_accuracy,
    learning_rate,
    train_classifier,
)

__all__ = ["ATS_POLICIES", "check_inputs", "check_labels", "evaluate_accuracy", "learning_rate",
           "load_classifier", "parse_augment", "train_classifier"]
