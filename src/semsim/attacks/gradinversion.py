"""GradInversion: Yin et al., "See through Gradients: Image Batch Recovery via GradInversion", CVPR 2021.

The paper has no official code; the ``breaching`` library's ``seethroughgradients`` configuration (Geiping et
al.) is the reference re-implementation and the source of the weights below unless noted. Per image (one
image per observed gradient, as in the SemSim study), in the model's normalised input space ``z``:

``L(z) = s * 1/2 * sum_l ||g_l(z) - g_l||^2``                                      gradient matching, ``s = 1e-4``
``    + a_BN * sum_k m_k (||mu_k(z) - mu_k|| + ||var_k(z) - var_k||)``   BN statistics, ``a_BN = 0.1``, ``m_0 = 10``
``    + a_TV * TV(z)``                                                            total variation, ``a_TV = 1e-4``
``    + a_l2 * 1/2 * mean(z^2)``                                                  image l2, ``a_l2 = 1e-6``
``    + a_G * ||z - E(z)||``                                                      group consistency, ``a_G = 0.01``

* ``s``, ``a_BN``, ``a_TV``, ``a_l2``, the first-BN multiplier ``m_0 = 10`` (DeepInversion's
  ``first_bn_multiplier``, as breaching applies it), the TV form (anisotropic, differences with zero padding,
  mean over pixels): breaching ``config/attack/seethroughgradients.yaml`` and its regularisers.
  ``mu_k``/``var_k`` are the running statistics of BatchNorm layer ``k`` (the victim is attacked in eval mode),
  ``mu_k(z)``/``var_k(z)`` the statistics of the layer's input for this image (biased variance).
* ``a_G = 0.01``: the paper's group-consistency weight (breaching lists it, unimplemented). The paper runs
  several restarts ("seeds") and pulls each toward the pixel-wise mean of the *registered* restarts,
  ``E(z)``; it registers with RANSAC-flow. Here registration is a rigid search: each restart is aligned to
  the consensus by the integer shift (up to ``max_shift`` pixels, edges repeated) and horizontal flip that
  minimise the squared distance; the consensus is refreshed every ``group_every`` iterations (first at
  iteration ``group_every``), and each restart is pulled toward the consensus mapped back into its own frame.
* Optimiser: Adam, lr 0.1, linear warm-up over 50 iterations then cosine decay to 0, 20,000 iterations,
  unsigned gradients, images boxed to the valid range (breaching). Langevin noise ``lambda * lr_t * N(0, 1)``
  is added to the image gradient every iteration with ``lambda = 0.01`` (breaching's value; the paper uses
  0.2, which breaching found too large).
* The best iterate (lowest total objective) of every restart is kept; of the restarts, the one whose gradient
  matching term is lowest is returned (breaching's ``euclidean`` restart scoring).
* Labels (when not given): the paper's rule, the classes with the most negative entry of the last layer's
  weight gradient (for one image, ``argmin_k min_j dL/dW[k, j]``).

Randomness (starts and Langevin noise) comes from each image's own generator, so an image gets the same result
in any batch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch
import torch.nn.functional as F

from semsim.attacks.core import Attack, AttackConfig, register_attack
from semsim.attacks.gradients import GradientModel, normalized_box
from semsim.common.progress import progress
from semsim.errors import SemsimError

#: The published settings (sources in the module docstring).
GRADINVERSION_DEFAULTS: dict[str, Any] = dict(
    iterations=20_000, optimizer="adam", lr=0.1, objective="l2", label="recover", tv=1e-4, image_l2=1e-6,
    bn=0.1, group=0.01, restarts=4, schedule="cosine", boxed=True, signed=False,
)


@dataclass(frozen=True)
class GradInversionConfig(AttackConfig):
    """:class:`AttackConfig` plus GradInversion's own settings (defaults: breaching / the paper)."""

    grad_scale: float = 1e-4  # s: the gradient-matching term's scale
    first_bn: float = 10.0  # m_0: multiplier of the first BatchNorm layer's term
    langevin: float = 0.01  # lambda: Langevin noise per unit of learning rate
    warmup: int = 50  # iterations of linear learning-rate warm-up
    group_every: int = 100  # iterations between consensus updates (registration of the restarts)
    max_shift: int = 2  # registration searches shifts up to this many pixels (and a horizontal flip)

    def __post_init__(self) -> None:
        super().__post_init__()
        checks = [
            (self.optimizer == "adam", "runs with Adam"),
            (self.grad_scale > 0, "grad_scale must be positive"),
            (min(self.first_bn, self.langevin) >= 0, "first_bn and langevin must be >= 0"),
            (self.warmup >= 0, "warmup must be >= 0"),
            (self.group_every >= 1 and self.max_shift >= 0, "group_every >= 1 and max_shift >= 0"),
        ]
        for ok, message in checks:
            if not ok:
                raise SemsimError(f"attack '{self.name}': {message}")

    def lr_at(self, step: int) -> float:
        """Linear warm-up over ``warmup`` iterations (at most half of a short run), then cosine decay to 0
        (``schedule="cosine"``, the default; other schedules as in :class:`AttackConfig`, without warm-up)."""
        if self.schedule != "cosine":
            return super().lr_at(step)
        warmup = min(self.warmup, self.iterations // 2)
        if step < warmup:
            return self.lr * (step + 1) / warmup
        t = (step - warmup) / max(1, self.iterations - warmup)
        return self.lr * 0.5 * (1 + math.cos(math.pi * t))


def yin_labels(grads: Sequence[torch.Tensor], head_index: int) -> torch.Tensor:
    """Yin et al.'s label rule for one image per gradient: the class whose row of the last layer's weight
    gradient holds the most negative entry. ``grads[head_index]``: ``(N, K, D)``; returns ``(N,)``."""
    return grads[head_index].amin(dim=-1).argmin(dim=-1)


def matching_term(dummy: Sequence[torch.Tensor], target: Sequence[torch.Tensor], scale: float) -> torch.Tensor:
    """``scale * 1/2 * sum_l ||g'_l - g_l||^2`` per sample (breaching's ``Euclidean`` objective)."""
    return scale * 0.5 * cast(torch.Tensor, sum((d - t).pow(2).flatten(1).sum(1)
                                                for d, t in zip(dummy, target, strict=True)))


def bn_term(stats: Sequence[torch.Tensor], running: Sequence[tuple[torch.Tensor, torch.Tensor]],
            first: float) -> torch.Tensor:
    """``sum_k m_k (||mu_k - mu_run|| + ||var_k - var_run||)`` per sample, ``m_0 = first``, others 1.

    ``stats``: ``[mean_0, var_0, mean_1, var_1, ...]``, each ``(N, C_k)`` (what
    :meth:`GradientModel.per_sample` returns); ``running``: the layers' running (mean, var).
    """
    total: torch.Tensor | float = 0.0
    pairs = zip(stats[::2], stats[1::2], strict=True)
    for k, ((mean, var), (run_mean, run_var)) in enumerate(zip(pairs, running, strict=True)):
        weight = first if k == 0 else 1.0
        total = total + weight * ((var - run_var).norm(dim=1) + (mean - run_mean).norm(dim=1))
    return torch.as_tensor(total)


def tv_term(z: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Anisotropic TV per image as breaching computes it: forward differences with zero padding at the far
    border, ``|d| + eps``, horizontal plus vertical, averaged over channels and pixels."""
    dx = F.pad(z, (0, 1))[..., :, 1:] - z
    dy = F.pad(z, (0, 0, 0, 1))[..., 1:, :] - z
    return ((dx.abs() + eps) + (dy.abs() + eps)).flatten(1).mean(1)


def l2_term(z: torch.Tensor) -> torch.Tensor:
    """``1/2 * mean(z^2)`` per image (breaching's ``NormRegularization`` with p = 2)."""
    return 0.5 * z.pow(2).flatten(1).mean(1)


def _shift(z: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """Move image content by (dy, dx) pixels, repeating the edge pixels."""
    if dy == 0 and dx == 0:
        return z
    s = max(abs(dy), abs(dx))
    padded = F.pad(z, (s, s, s, s), mode="replicate")
    h, w = z.shape[-2:]
    return padded[..., s - dy:s - dy + h, s - dx:s - dx + w]


def _transforms(max_shift: int) -> list[tuple[bool, int, int]]:
    r = range(-max_shift, max_shift + 1)
    return [(flip, dy, dx) for flip in (False, True) for dy in r for dx in r]


def _apply(z: torch.Tensor, t: tuple[bool, int, int], inverse: bool = False) -> torch.Tensor:
    flip, dy, dx = t
    if inverse:
        z = _shift(z, -dy, -dx)
        return z.flip(-1) if flip else z
    return _shift(z.flip(-1) if flip else z, dy, dx)


def register_restarts(z: torch.Tensor, max_shift: int, rounds: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """Group consensus of ``z`` ``(B, R, C, H, W)``: align every restart to the current consensus (restart 0
    at first) by the best shift/flip, average, repeat ``rounds`` times. Returns the consensus ``(B, C, H, W)``
    and, per restart, the consensus mapped back into that restart's frame ``(B, R, C, H, W)``."""
    b, r = z.shape[:2]
    ts = _transforms(max_shift)
    flat = z.reshape(b * r, *z.shape[2:])
    moved = torch.stack([_apply(flat, t) for t in ts]).view(len(ts), b, r, *z.shape[2:])
    ref = z[:, 0]
    for _ in range(rounds):
        dist = (moved - ref[None, :, None]).pow(2).flatten(3).sum(3)  # (T, B, R)
        best = dist.argmin(0)  # (B, R)
        aligned = moved.gather(0, best[None, :, :, None, None, None].expand(1, *moved.shape[1:]))[0]
        ref = aligned.mean(1)
    targets = torch.empty_like(z)
    for i in range(b):
        for j in range(r):
            targets[i, j] = _apply(ref[i:i + 1], ts[int(best[i, j])], inverse=True)[0]
    return ref, targets


class GradInversionAttack(Attack):
    """The GradInversion objective and optimiser (module docstring) behind :class:`Attack`'s interface."""

    config: GradInversionConfig
    config_class = GradInversionConfig

    def recover_labels(self, target: list[torch.Tensor], head_index: int) -> torch.Tensor:
        return yin_labels(target, head_index)

    def objective(self, gm: GradientModel, z: torch.Tensor, target: list[torch.Tensor], labels: torch.Tensor,
                  mean: torch.Tensor, std: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every term per row (weights applied), without the group term: ``match``, ``bn``, ``tv``, ``l2``."""
        cfg = self.config
        grads, stats = gm.per_sample(z * std + mean, labels)
        terms = {"match": matching_term(grads, target, cfg.grad_scale),
                 "tv": cfg.tv * tv_term(z), "l2": cfg.image_l2 * l2_term(z)}
        if cfg.bn and gm.track_bn:
            terms["bn"] = cfg.bn * bn_term(stats, gm.bn_running, cfg.first_bn)
        return terms

    def _optimize(self, gm: GradientModel, target: list[torch.Tensor], hard_labels: torch.Tensor,
                  recovered: torch.Tensor, shape: tuple[int, int, int], gens: list[torch.Generator],
                  num_classes: int, show_progress: bool) -> dict[str, Any]:
        cfg = self.config
        b, r = len(gens), cfg.restarts
        n = b * r
        device = target[0].device
        mean, std, lo, hi = normalized_box(gm.net, shape[0])
        z = torch.cat([torch.randn((r, *shape), generator=g) for g in gens]).to(device).requires_grad_(True)
        noise_gens = [torch.Generator().manual_seed(int(torch.randint(0, 2**62, (1,), generator=g)))
                      for g in gens]
        tgt = [t.repeat_interleave(r, dim=0) for t in target]
        labels = hard_labels.repeat_interleave(r)
        opt = torch.optim.Adam([z], lr=cfg.lr)
        ok = torch.ones(n, dtype=torch.bool, device=device)
        best_total = torch.full((n,), math.inf, device=device)
        best_z = z.detach().clone()
        pull: torch.Tensor | None = None
        steps = progress(range(cfg.iterations), total=cfg.iterations, desc=f"{cfg.name} x{b}", unit="it",
                         enabled=show_progress)
        for step in steps:
            if cfg.group and r > 1 and step > 0 and step % cfg.group_every == 0:
                _, back = register_restarts(z.detach().view(b, r, *shape), cfg.max_shift)
                pull = back.view(n, *shape)
            lr = cfg.lr_at(step)
            for group in opt.param_groups:
                group["lr"] = lr
            opt.zero_grad(set_to_none=False)
            total = cast(torch.Tensor, sum(self.objective(gm, z, tgt, labels, mean, std).values()))
            if pull is not None:
                total = total + cfg.group * (z - pull).flatten(1).norm(dim=1)
            total.sum().backward()
            with torch.no_grad():
                grad = cast(torch.Tensor, z.grad)  # set by the backward pass above
                bad = ~torch.isfinite(total) | ~torch.isfinite(grad).flatten(1).all(1)
                ok &= ~bad
                better = ok & (total < best_total)
                best_total = torch.where(better, total.detach(), best_total)
                best_z[better] = z.detach()[better]
                if cfg.langevin:
                    noise = torch.cat([torch.randn((r, *shape), generator=g) for g in noise_gens]).to(device)
                    grad.add_(noise, alpha=cfg.langevin * lr)
                grad[~ok] = 0
            opt.step()
            with torch.no_grad():
                if cfg.boxed:
                    z.copy_(torch.maximum(torch.minimum(z, hi), lo))
            if not ok.any():
                break
        with torch.no_grad():
            match = self.objective(gm, best_z, tgt, labels, mean, std)["match"]
        match = torch.where(ok & torch.isfinite(match), match, torch.full_like(match, math.inf))
        pick = torch.arange(b, device=device) * r + match.view(b, r).argmin(1)
        images = (best_z[pick] * std + mean).clamp(0, 1).nan_to_num(0.0)
        return {"images": images.cpu(), "loss": match[pick].cpu(), "ok": ok.view(b, r).any(1).cpu(),
                "labels": hard_labels.cpu()}


register_attack("gradinversion", GRADINVERSION_DEFAULTS, GradInversionAttack)
