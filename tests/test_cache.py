"""The shared feature cache: keyed by content, computed once per new image, bounded (least recently used out)."""

from __future__ import annotations

import torch

from semsim.common.cache import FeatureCache, content_keys


def test_cache_is_keyed_by_content_and_computes_each_new_image_once() -> None:
    calls: list[int] = []

    def embed(x: torch.Tensor) -> torch.Tensor:
        calls.append(len(x))
        return x.flatten(1).sum(1, keepdim=True) * torch.ones(1, 2)

    g = torch.Generator().manual_seed(0)
    images = torch.rand(4, 3, 5, 5, generator=g)
    cache = FeatureCache(10)
    batch = torch.cat([images, images[:2].clone()])  # copies of two images in the same batch
    assert torch.equal(cache.features(batch, embed), embed(batch))
    assert calls[0] == 4 and cache.hits == 2 and len(cache) == 4
    changed = images.clone()
    changed[0, 0, 0, 0] += 0.5 / 255
    out = cache.features(changed, embed)
    assert calls[-1] == 1 and torch.equal(out, embed(changed))  # only the changed image is recomputed
    assert content_keys(images[:1].double()) != content_keys(images[:1])  # dtype is part of the key


def test_cache_drops_least_recently_used_beyond_its_bound() -> None:
    cache = FeatureCache(3)
    images = torch.rand(5, 1, 2, 2)
    cache.features(images[:3], lambda x: x.flatten(1))
    cache.features(images[:1], lambda x: x.flatten(1))  # touch image 0
    cache.features(images[3:4], lambda x: x.flatten(1))  # evicts image 1, the least recently used
    assert len(cache) == 3
    hits = cache.hits
    cache.features(images[[0, 2]], lambda x: x.flatten(1))
    assert cache.hits == hits + 2
    assert len(FeatureCache(0).features(images, lambda x: x.flatten(1))) == 5 and len(FeatureCache(0)) == 0
