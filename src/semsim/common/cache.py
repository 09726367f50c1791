"""One feature cache for every metric that embeds originals (FID, the evaluator metrics, SemSim).

Every set of a victim grid reconstructs the same originals, so a metric that passes originals through a
network keeps their features: after the first set only the reconstructions cost network time. Entries are
keyed by the image's content (a digest of its values, shape and dtype), so copies of one original stored in
different set folders share one entry and a changed file can never return stale features; the least
recently used entries are dropped beyond ``max_items``.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable

import torch


def content_keys(images: torch.Tensor) -> list[bytes]:
    """One digest per image of a batch: its values, shape and dtype."""
    host = images.detach().cpu().contiguous()
    tag = f"{tuple(host.shape[1:])}{host.dtype}".encode()
    keys = []
    for img in host:
        h = hashlib.blake2b(tag, digest_size=16)
        h.update(img.numpy().tobytes())
        keys.append(h.digest())
    return keys


class FeatureCache:
    """Features of images by content, bounded to ``max_items`` entries (least recently used dropped first);
    ``max_items=0`` caches nothing. Features are stored on the CPU."""

    def __init__(self, max_items: int) -> None:
        self.max_items = max_items
        self._store: OrderedDict[bytes, torch.Tensor] = OrderedDict()
        self.hits = 0

    def __len__(self) -> int:
        return len(self._store)

    def features(self, images: torch.Tensor, compute: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """``compute(images)``, running ``compute`` only on images not seen before (each once per batch);
        returned on the device of ``compute``'s output."""
        if self.max_items <= 0:
            return compute(images)
        keys = content_keys(images)
        first: dict[bytes, int] = {}
        for i, k in enumerate(keys):
            first.setdefault(k, i)
        missing = [k for k in first if k not in self._store]
        fresh: dict[bytes, torch.Tensor] = {}
        if missing:
            out = compute(images[[first[k] for k in missing]])
            fresh = dict(zip(missing, out, strict=True))
            for k, f in fresh.items():
                self._store[k] = f.detach().cpu()
        self.hits += len(keys) - len(missing)
        device = next(iter(fresh.values())).device if fresh else images.device
        result = torch.stack([fresh[k] if k in fresh else self._store[k].to(device) for k in keys])
        for k in keys:
            self._store.move_to_end(k)
        while len(self._store) > self.max_items:
            self._store.popitem(last=False)
        return result
