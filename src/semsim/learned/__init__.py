"""SemSim (Sun et al., NeurIPS 2023): a privacy-leakage metric learned from human recognizability labels.

``load_labels`` turns label sources into one label table, ``train_semsim`` learns the embedding with a
triplet loss, and ``load_semsim`` loads a trained model. The metric ``semsim`` (L2 distance of the embeddings)
lives in :mod:`semsim.metrics.semsim_metric`; ``semsim.analysis.evaluate_semsim.evaluate_generalization`` runs
the paper's train-on-some-sets, test-on-others protocol.
"""

from semsim.data.label_import import load_labels, read_label_table, read_release
from semsim.learned.model import SemSimNet, load_semsim
from semsim.learned.train import TrainConfig, train_semsim
from semsim.learned.triplets import TripletSampler, split_by_original

__all__ = [
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
