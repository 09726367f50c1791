"""SemSim (Sun et al., NeurIPS 2023): a privacy-leakage metric learned from human recognizability labels.

``load_labels`` turns label sources into one label table, ``train_semsim`` learns the embedding with a
triplet loss, ``load_semsim`` loads a trained model, and the registered metric ``semsim`` scores pairs by the
L2 distance of their embeddings. ``semsim.learned.evaluate.evaluate_generalization`` runs the paper's
train-on-some-sets, test-on-others protocol (not imported here: it builds on :mod:`semsim.scoring`, which
imports the metric registry that this package registers into).
"""

from semsim.learned.labels_in import load_labels, read_label_table, read_release
from semsim.learned.metric import SemSimMetric
from semsim.learned.model import SemSimNet, load_semsim
from semsim.learned.train import TrainConfig, train_semsim
from semsim.learned.triplets import TripletSampler, split_by_original

__all__ = [
    "SemSimMetric",
    "SemSimNet",
    "TrainConfig",
    "TripletSampler",
    "load_labels",
    "load_semsim",
    "read_label_table",
    "read_release",
    "split_by_original",
    "train_semsim",
]
