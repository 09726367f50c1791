"""Victim and evaluation classifiers: training variants (augmentations, defenses), input checks, loading."""

from __future__ import annotations

import os
from typing import Any

import torch

from semsim.checkpoint import load_checkpoint, load_state_into
from semsim.errors import SemsimError
from semsim.models.classifiers import Classifier, build_model
from semsim.victims.augment import TRANSFORMS, parse_augment
from semsim.victims.train import (
    check_inputs,
    check_labels,
    evaluate_accuracy,
    learning_rate,
    train_classifier,
)

REQUIRED_CONFIG = ("architecture", "num_classes", "image_size", "mean", "std")


def load_classifier(folder: str | os.PathLike,
                    device: str | torch.device = "cpu") -> tuple[Classifier, dict[str, Any]]:
    """Load a classifier checkpoint folder (eval mode) with one-line errors for a damaged or mismatched one.

    The returned model carries ``image_size`` (from the config), so :func:`check_inputs` also checks the
    image size when given the model.
    """
    state, config = load_checkpoint(folder)
    missing = [k for k in REQUIRED_CONFIG if k not in config]
    if missing:
        raise SemsimError(f"{folder}: config.json lacks {', '.join(missing)}; not a classifier checkpoint")
    try:
        model = build_model(config)
    except (TypeError, ValueError) as exc:
        raise SemsimError(f"{folder}: config.json does not describe a buildable "
                          f"{config['architecture']} ({exc})") from None
    load_state_into(model, state, str(folder))
    model.image_size = int(config["image_size"])
    return model.to(device).eval(), config


__all__ = ["TRANSFORMS", "check_inputs", "check_labels", "evaluate_accuracy", "learning_rate",
           "load_classifier", "parse_augment", "train_classifier"]
