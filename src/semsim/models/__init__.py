"""Networks in plain torch (no torchvision): victim and evaluator classifiers, embedding backbones.

Every classifier here takes NCHW images in [0, 1] and normalises them itself (``mean``/``std`` arguments),
exposes ``features(x)`` (the penultimate representation) and ``forward(x)`` (class logits).
"""

from semsim.models.classifiers import (
    ARCHITECTURES,
    CifarResNet,
    ConvNet,
    LeNet,
    build_model,
    create_model,
    load_classifier,
    model_config,
)

__all__ = ["ARCHITECTURES", "CifarResNet", "ConvNet", "LeNet", "build_model", "create_model", "load_classifier",
           "model_config"]
