"""Gradient defenses, as evaluated in DLG (Zhu et al., "Deep Leakage from Gradients", NeurIPS 2019, Sec. 5).

A defense transforms the gradient a client shares. The same object is used at training time (the victim
is trained on defended gradients) and at attack time (the attacker observes the gradient as the defense
leaves it, as a federated-learning server would).

* ``none``: the gradient unchanged.
* ``noise-<sigma>`` (e.g. ``noise-1e-3``): additive Gaussian noise ``N(0, sigma^2)`` on every entry.
* ``prune-<percent>`` (e.g. ``prune-70``): gradient pruning; in every tensor the ``percent``% entries of
  smallest magnitude are set to zero.

The SemSim study's names ``gaussian_1e-3`` and ``prune_70`` are accepted as aliases.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch

from semsim.errors import SemsimError

_SPEC = re.compile(r"^(?P<kind>none|noise|gaussian|prune)(?:[-_](?P<value>[0-9.eE+-]+))?$")


def _format_sigma(sigma: float) -> str:
    """0.001 -> '1e-3', 0.025 -> '2.5e-2': a short, canonical spelling for set names."""
    mantissa, exponent = f"{sigma:e}".split("e")
    mantissa = mantissa.rstrip("0").rstrip(".")
    return f"{mantissa}e{int(exponent)}"


@dataclass(frozen=True)
class Defense:
    """A gradient defense: ``none``, ``noise`` (``value`` = sigma) or ``prune`` (``value`` = percent)."""

    kind: str = "none"
    value: float = 0.0

    @property
    def name(self) -> str:
        """Canonical name used in set names: ``none``, ``noise-1e-3``, ``prune-70``."""
        if self.kind == "none":
            return "none"
        if self.kind == "noise":
            return f"noise-{_format_sigma(self.value)}"
        return f"prune-{self.value:g}"

    def apply(self, grads: list[torch.Tensor],
              generator: torch.Generator | None = None) -> list[torch.Tensor]:
        """Return the defended gradients (new tensors; the inputs are not modified).

        ``generator`` makes the noise reproducible; it may live on another device than the gradients.
        """
        if self.kind == "none":
            return [g.clone() for g in grads]
        if self.kind == "noise":
            out = []
            for g in grads:
                dev = generator.device if generator is not None else g.device
                noise = torch.randn(g.shape, generator=generator, device=dev, dtype=g.dtype)
                out.append(g + self.value * noise.to(g.device))
            return out
        return [_prune(g, self.value) for g in grads]


def _prune(g: torch.Tensor, percent: float) -> torch.Tensor:
    """Zero the ``percent``% smallest entries of ``g`` (exactly ``floor(numel * percent / 100)``)."""
    k = int(math.floor(g.numel() * percent / 100.0))
    keep = torch.ones(g.numel(), dtype=torch.bool, device=g.device)
    if k > 0:
        keep[torch.sort(g.detach().flatten().abs(), stable=True).indices[:k]] = False
    return torch.where(keep.view_as(g), g, torch.zeros((), dtype=g.dtype, device=g.device))


def parse_defense(spec: str | Defense | None) -> Defense:
    """Parse ``none``, ``noise-<sigma>``, ``prune-<percent>`` (aliases ``gaussian_<s>``, ``prune_<p>``)."""
    if isinstance(spec, Defense):
        return spec
    text = (spec or "none").strip().lower()
    m = _SPEC.match(text)
    if m is None:
        raise SemsimError(f"defense '{spec}': unknown; use none, noise-<sigma> (e.g. noise-1e-3) "
                          "or prune-<percent> (e.g. prune-70)")
    kind = {"gaussian": "noise"}.get(m["kind"], m["kind"])
    if kind == "none":
        if m["value"] is not None:
            raise SemsimError(f"defense '{spec}': 'none' takes no value; write just none")
        return Defense()
    if m["value"] is None:
        raise SemsimError(f"defense '{spec}': missing its value; e.g. noise-1e-3 or prune-70")
    try:
        value = float(m["value"])
    except ValueError:
        raise SemsimError(f"defense '{spec}': '{m['value']}' is not a number; "
                          "e.g. noise-1e-3 or prune-70") from None
    if kind == "noise" and not (value > 0 and math.isfinite(value)):
        raise SemsimError(f"defense '{spec}': sigma must be a positive number; e.g. noise-1e-3")
    if kind == "prune" and not 0 <= value < 100:
        raise SemsimError(f"defense '{spec}': the percentage must be in [0, 100); e.g. prune-70")
    return Defense(kind, value)
