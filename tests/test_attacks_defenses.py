"""Gradient defenses (DLG, Sec. 5): parsing, names, noise statistics, exact pruning."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from semsim.errors import SemsimError
from semsim.victims.defenses import Defense, parse_defense


@pytest.mark.parametrize("spec, name", [("none", "none"), (None, "none"), ("noise-1e-3", "noise-1e-3"),
                                        ("noise-0.001", "noise-1e-3"), ("gaussian_1e-3", "noise-1e-3"),
                                        ("noise-2.5e-2", "noise-2.5e-2"), ("prune-70", "prune-70"),
                                        ("prune_70", "prune-70"), ("PRUNE-99.5", "prune-99.5")])
def test_parse_and_name(spec, name):
    assert parse_defense(spec).name == name
    assert parse_defense(parse_defense(spec)) == parse_defense(spec)


@pytest.mark.parametrize("spec", ["noise", "noise-abc", "noise--1", "noise-0", "prune-100", "prune--5",
                                  "blur-3", "none-3", "noise-nan"])
def test_bad_specs(spec):
    with pytest.raises(SemsimError, match="defense"):
        parse_defense(spec)


def test_none_is_identity_copy():
    g = [torch.randn(3, 4), torch.randn(5)]
    out = parse_defense("none").apply(g)
    assert all(torch.equal(a, b) and a is not b for a, b in zip(g, out, strict=True))


def test_noise_statistics_and_reproducibility():
    g = [torch.zeros(200_000), torch.ones(10, 10)]
    d = parse_defense("noise-1e-2")
    out = d.apply(g, torch.Generator().manual_seed(3))
    assert abs(out[0].std().item() - 1e-2) < 2e-4 and abs(out[0].mean().item()) < 2e-4
    again = d.apply(g, torch.Generator().manual_seed(3))
    assert all(torch.equal(a, b) for a, b in zip(out, again, strict=True))
    other = d.apply(g, torch.Generator().manual_seed(4))
    assert not torch.equal(out[1], other[1])
    assert torch.equal(g[0], torch.zeros(200_000))  # inputs untouched


def test_prune_matches_numpy_reference():
    torch.manual_seed(0)
    g = [torch.randn(7, 13), torch.randn(101), torch.randn(3)]
    out = Defense("prune", 70).apply(g)
    for a, b in zip(g, out, strict=True):
        arr = a.numpy().ravel()
        k = int(np.floor(arr.size * 0.7))
        smallest = np.argsort(np.abs(arr), kind="stable")[:k]
        ref = arr.copy()
        ref[smallest] = 0
        np.testing.assert_array_equal(b.numpy().ravel(), ref)
        assert (b == 0).sum().item() == k
    # the largest entries survive untouched
    assert out[1].abs().max() == g[1].abs().max()


def test_prune_keeps_autograd():
    w = torch.randn(10, requires_grad=True)
    Defense("prune", 50).apply([w * 2])[0].sum().backward()
    assert (w.grad != 0).sum().item() == 5
