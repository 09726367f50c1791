"""The registered ``semsim`` metric: L2 distance between SemSim embeddings (Sun et al., NeurIPS 2023).

Larger distance = less of the original recognizable = less leakage. The embedding of an original is computed
once and reused: every set of a victim grid reconstructs the same originals, so after the first set only the
reconstructions pass through the network. The cache is keyed by the original's pixel content (a digest of
the tensor), so copies of one original stored in different set folders share one entry, and a changed file
can never return a stale embedding.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from semsim.common.cache import FeatureCache
from semsim.data.label_import import is_human
from semsim.errors import MetricUnavailable
from semsim.learned.model import load_semsim
from semsim.metrics.registry import check_pair


class SemSimMetric(nn.Module):
    """``SemSim(x, x') = ||f(x) - f(x')||_2`` with ``f`` a trained SemSim network (``model``: its folder)."""

    def __init__(self, model: str | Path | None = None, cache_size: int = 50_000, cache: bool = True) -> None:
        super().__init__()
        if model is None:
            raise MetricUnavailable(
                "needs a trained SemSim model folder; pass --semsim MODEL/ (train one with `semsim train`)"
            )
        self.net, self.config = load_semsim(model)
        self.model_path = str(model)
        self.cache_size = cache_size if cache else 0
        self._cache = FeatureCache(self.cache_size)

    @property
    def cache_hits(self) -> int:
        """Originals whose embedding came from the cache."""
        return self._cache.hits

    @property
    def label_sources(self) -> list[str]:
        """Where the model's training labels came from (``human:...``, ``model:...``, ``import:...``)."""
        return list(self.config.get("label_sources", []))

    @property
    def human_trained(self) -> bool:
        """True only when every training label came from human judges."""
        return bool(self.label_sources) and all(is_human(s) for s in self.label_sources)

    def provenance_note(self) -> str | None:
        """A note for outputs when the model was not trained on human labels (None when it was)."""
        if self.human_trained:
            return None
        sources = ", ".join(self.label_sources) or "unrecorded"
        return (
            f"semsim model {self.model_path} was trained on labels from {sources}, not on human judgments; "
            "its scores reproduce those labels, not human perception"
        )

    def forward(
        self,
        original: torch.Tensor,
        reconstruction: torch.Tensor,
        labels: torch.Tensor | None = None,
        original_keys: Sequence[str] | None = None,
    ) -> torch.Tensor:
        """Distances (N,) between the embeddings of each original and its reconstruction."""
        check_pair(original, reconstruction)
        if self.cache_size <= 0:
            both = self.net(torch.cat([original, reconstruction]))
            eo, er = both.chunk(2)
        else:
            eo, er = self._cache.features(original, self.net), self.net(reconstruction)
        return (eo - er).norm(dim=1)
