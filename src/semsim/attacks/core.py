"""Gradient-inversion attacks behind one interface.

``create_attack(name, **overrides).reconstruct(model, gradients, labels, image_shape)`` returns the
reconstructions (``(B, C, H, W)`` in [0, 1]) and one record per image (iterations, final loss, seconds,
recovered label, status). B images, each with its own gradient, are solved in one batched optimisation; the
math is row-wise, so a batch equals the same images attacked one at a time (up to float rounding).

Published settings (all overridable):

* ``dlg``: Zhu et al., "Deep Leakage from Gradients", NeurIPS 2019. L-BFGS (lr 1, history 100, no line search)
  on a random dummy image and a dummy soft label, L2 gradient matching. The reference code runs 300
  ``LBFGS.step`` calls of up to 20 iterations each (torch's ``max_iter=20``); ``iterations`` counts single
  L-BFGS iterations (torch's ``n_iter``), so the published budget is the default, 6,000 = 300 x 20.
* ``idlg``: Zhao et al., "iDLG", 2020. The label is read off the last layer's weight gradient (the row with
  negative sum), then DLG on the image alone.
* ``invgrad``: Geiping et al., "Inverting Gradients", NeurIPS 2020. Cosine gradient matching + total
  variation (1e-4), Adam on signed gradients, lr 0.1, step decay x0.1 at 3/8, 5/8, 7/8 of the iterations,
  images boxed to the valid range, restarts with the best (lowest matching loss) kept. 24,000 iterations as
  in the paper for CIFAR ResNets; the SemSim study (Sun et al., NeurIPS 2023) used 8,000. Labels are taken as
  known when given (the paper's setting), else recovered as in iDLG.
* ``gradinversion``: Yin et al., "See through Gradients", CVPR 2021: :mod:`semsim.attacks.gradinversion`
  (registered there with :func:`register_attack`).

The optimisation variable lives in the model's normalised input space (the space these papers optimise in);
reconstructions are mapped back to [0, 1] pixels and clamped.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from semsim.attacks.engine import EngineOptions
from semsim.attacks.gradients import (
    MODEL_MODES,
    OBJECTIVES,
    GradientModel,
    flatten_gradients,
    normalized_box,
    recover_labels,
    total_variation,
)
from semsim.attacks.lbfgs import BatchedLBFGS
from semsim.common.progress import progress
from semsim.errors import SemsimError

LABEL_MODES = ("optimize", "recover", "given")
SCHEDULES = ("none", "multistep", "cosine")
STOP_CHECK = 25  # iterations between checks whether every row has stopped (each check waits for the device)


@dataclass(frozen=True)
class AttackConfig:
    """Every setting of an attack; :func:`create_attack` fills in the published defaults."""

    name: str
    iterations: int
    optimizer: str = "adam"  # "adam" or "lbfgs"
    lr: float = 0.1
    objective: str = "cosine"  # "cosine" or "l2"
    label: str = "given"  # "optimize" (DLG soft label), "recover" (iDLG), "given" (falls back to recover)
    tv: float = 0.0
    image_l2: float = 0.0
    bn: float = 0.0
    group: float = 0.0
    restarts: int = 1
    signed: bool = False
    schedule: str = "none"
    boxed: bool = False
    lbfgs_history: int = 100
    model_mode: str = "eval"

    def __post_init__(self) -> None:
        checks = [
            (self.iterations >= 1, "iterations must be at least 1"),
            (self.optimizer in ("adam", "lbfgs"), "optimizer must be adam or lbfgs"),
            (self.lr > 0, "lr must be positive"),
            (self.objective in OBJECTIVES, f"objective must be one of {', '.join(OBJECTIVES)}"),
            (self.label in LABEL_MODES, f"label must be one of {', '.join(LABEL_MODES)}"),
            (min(self.tv, self.image_l2, self.bn, self.group) >= 0, "regulariser weights must be >= 0"),
            (self.restarts >= 1, "restarts must be at least 1"),
            (self.schedule in SCHEDULES, f"schedule must be one of {', '.join(SCHEDULES)}"),
            (self.model_mode in MODEL_MODES, f"model_mode must be one of {', '.join(MODEL_MODES)}"),
            (not (self.optimizer == "lbfgs" and (self.restarts > 1 or self.group > 0)),
             "the L-BFGS attacks take one restart and no group term"),
            (not (self.label == "optimize" and self.optimizer != "lbfgs"),
             "label optimisation (DLG's soft label) runs with the L-BFGS optimizer only"),
        ]
        for ok, message in checks:
            if not ok:
                raise SemsimError(f"attack '{self.name}': {message}")

    def lr_at(self, step: int) -> float:
        """Learning rate of iteration ``step`` (0-based) under the schedule."""
        if self.schedule == "multistep":  # Inverting Gradients: x0.1 at 3/8, 5/8 and 7/8 of the run
            milestones = [int(self.iterations * f) for f in (3 / 8, 5 / 8, 7 / 8)]
            return self.lr * 0.1 ** sum(step >= m for m in milestones)
        if self.schedule == "cosine":
            return self.lr * 0.5 * (1 + math.cos(math.pi * step / self.iterations))
        return self.lr


LBFGS_STEPS, LBFGS_MAX_ITER = 300, 20  # DLG's reference: 300 LBFGS.step calls, torch's default max_iter 20
ATTACK_DEFAULTS: dict[str, dict[str, Any]] = {
    "dlg": dict(iterations=LBFGS_STEPS * LBFGS_MAX_ITER, optimizer="lbfgs", lr=1.0, objective="l2",
                label="optimize"),
    "idlg": dict(iterations=LBFGS_STEPS * LBFGS_MAX_ITER, optimizer="lbfgs", lr=1.0, objective="l2",
                 label="recover"),
    "invgrad": dict(iterations=24_000, optimizer="adam", lr=0.1, objective="cosine", label="given", tv=1e-4,
                    restarts=1, signed=True, schedule="multistep", boxed=True),
}
ATTACK_CLASSES: dict[str, type[Attack]] = {}  # attacks registered by their own modules (register_attack)


@dataclass
class AttackOutput:
    """Reconstructions ``(B, C, H, W)`` in [0, 1] and one record per image."""

    images: torch.Tensor
    records: list[dict[str, Any]] = field(default_factory=list)
    iterations_run: int | None = None  # loop iterations actually run (fewer when every image stopped early)


class Attack:
    """A gradient-inversion attack; see the module docstring for the four configurations."""

    config_class: type[AttackConfig] = AttackConfig  # subclasses with more settings name their own

    def __init__(self, config: AttackConfig, engine: EngineOptions | None = None) -> None:
        self.config = config
        self.engine = engine or EngineOptions()

    def recover_labels(self, target: list[torch.Tensor], head_index: int) -> torch.Tensor:
        """Labels read off the observed gradients when not given: iDLG's rule (subclasses may differ)."""
        return recover_labels(target, head_index)

    @property
    def name(self) -> str:
        return self.config.name

    def reconstruct(self, model: nn.Module,
                    gradients: Sequence[torch.Tensor] | Sequence[Sequence[torch.Tensor]],
                    labels: torch.Tensor | Sequence[int] | None, image_shape: Sequence[int],
                    generators: Sequence[torch.Generator] | None = None,
                    show_progress: bool = False) -> AttackOutput:
        """Reconstruct one image per observed gradient.

        ``gradients``: one gradient (a list of tensors shaped like ``model.parameters()``), a list of such
        gradients, or one ``(B, *param.shape)`` tensor per parameter (what
        :func:`~semsim.attacks.gradients.client_gradients` returns).
        ``labels``: the true classes when the threat model gives them (ignored by DLG's label optimisation).
        ``generators``: one CPU generator per image for the random initialisation (reproducible per image).
        """
        cfg = self.config
        params = list(model.parameters())
        target = _stack_gradients(gradients, params, labels)
        b = target[0].shape[0]
        device = params[0].device
        target = [t.to(device=device, dtype=torch.float32) for t in target]
        c, h, w = (int(v) for v in image_shape)
        gens = (list(generators) if generators is not None
                else [torch.Generator().manual_seed(i) for i in range(b)])
        if len(gens) != b:
            raise SemsimError(f"{len(gens)} generators for {b} gradients; give one generator per image")
        start = time.perf_counter()
        gm = GradientModel(model, mode=cfg.model_mode, track_bn=cfg.bn > 0,
                           functional=self.engine.compile is not None, memory_format=self.engine.memory_format)
        try:
            num_classes = target[gm.head_index].shape[1]
            given = None if labels is None else torch.as_tensor(labels).reshape(-1).long().to(device)
            if given is not None and ((given < 0) | (given >= num_classes)).any():
                bad = int(given[(given < 0) | (given >= num_classes)][0])
                raise SemsimError(f"label {bad}: outside the model's {num_classes} classes "
                                  f"(0..{num_classes - 1}); use labels of the model's classes")
            recovered = self.recover_labels(target, gm.head_index)
            hard = given if (cfg.label == "given" and given is not None) else recovered
            _check_shape(gm.net, (c, h, w), device)
            with self.engine.context():
                result = self._optimize(gm, target, hard, recovered, (c, h, w), gens, num_classes,
                                        show_progress)
        finally:
            gm.close()
        seconds = (time.perf_counter() - start) / b
        records = []
        for i in range(b):
            label = int(result["labels"][i])
            records.append({"attack": cfg.name, "iterations": cfg.iterations,
                            "loss": float(result["loss"][i]), "seconds": round(seconds, 3),
                            "recovered_label": label,
                            "status": "ok" if result["ok"][i] else "failed: nan"})
        return AttackOutput(result["images"], records, result.get("iterations_run"))

    def _optimize(self, gm: GradientModel, target: list[torch.Tensor], hard_labels: torch.Tensor,
                  recovered: torch.Tensor, shape: tuple[int, int, int], gens: list[torch.Generator],
                  num_classes: int, show_progress: bool) -> dict[str, Any]:
        cfg = self.config
        b, r = len(gens), cfg.restarts
        n = b * r
        device = target[0].device
        mean, std, lo, hi = normalized_box(gm.net, shape[0])
        # Random starts drawn per image from its own generator: an image gets the same start in any batch.
        z0, soft0 = [], []
        for g in gens:
            z0.append(torch.randn((r, *shape), generator=g))
            if cfg.label == "optimize":
                soft0.append(torch.randn((r, num_classes), generator=g))
        z = torch.cat(z0).to(device)
        soft = torch.cat(soft0).to(device) if soft0 else None
        tgt = flatten_gradients([t.repeat_interleave(r, dim=0) for t in target])
        labels_n = hard_labels.repeat_interleave(r)

        def objective(z_: torch.Tensor, soft_: torch.Tensor | None, with_prior: bool = True
                      ) -> tuple[torch.Tensor, torch.Tensor]:
            x = (z_ * std + mean).contiguous(memory_format=self.engine.memory_format)
            grads, stats = gm.per_sample(x, soft_ if soft_ is not None else labels_n)
            match = OBJECTIVES[cfg.objective](grads, tgt)
            total = match
            if with_prior:
                if cfg.tv:
                    total = total + cfg.tv * total_variation(z_)
                if cfg.image_l2:
                    total = total + cfg.image_l2 * z_.pow(2).flatten(1).sum(1)
                if cfg.bn and gm.track_bn:
                    total = total + cfg.bn * gm.bn_prior(stats)
                if cfg.group and r > 1:
                    center = z_.detach().view(b, r, *shape).mean(1).repeat_interleave(r, dim=0)
                    total = total + cfg.group * (z_ - center).pow(2).flatten(1).sum(1)
            return total, match

        ok = torch.ones(n, dtype=torch.bool, device=device)
        steps = progress(range(cfg.iterations), total=cfg.iterations, desc=f"{cfg.name} x{b}", unit="it",
                         enabled=show_progress)
        if cfg.optimizer == "lbfgs":
            z, soft, ok, ran = self._run_lbfgs(objective, z, soft, ok, steps)
        else:
            z, ok, ran = self._run_adam(objective, z, ok, lo, hi, steps)
        z = z.detach()
        _, match = objective(z.clamp(lo, hi) if cfg.boxed else z, soft, with_prior=False)
        match = match.detach()
        match = torch.where(ok & torch.isfinite(match), match, torch.full_like(match, math.inf))
        best = match.view(b, r).argmin(1)
        pick = torch.arange(b, device=device) * r + best
        images = (z[pick] * std + mean).clamp(0, 1).nan_to_num(0.0)
        labels_out = soft.detach()[pick].argmax(1) if soft is not None else recovered
        return {"images": images.cpu(), "loss": match[pick].cpu(), "ok": ok.view(b, r).any(1).cpu(),
                "labels": labels_out.cpu(), "iterations_run": ran}

    def _run_adam(self, objective: Callable, z: torch.Tensor, ok: torch.Tensor, lo: torch.Tensor,
                  hi: torch.Tensor, steps: Iterable[int]) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Adam works per element, so rows stay independent and one optimiser serves every problem.

        A row whose loss or gradient turns non-finite stops (its gradient zeroed, its last finite image kept);
        masks are applied with ``torch.where``, so an iteration never waits for the device.
        """
        cfg = self.config
        z = z.clone().contiguous(memory_format=self.engine.memory_format).requires_grad_(True)
        opt = torch.optim.Adam([z], lr=cfg.lr)
        last_good = z.detach().clone()
        value_and_grad = self.engine.value_and_grad(lambda v: objective(v, None)[0])
        rows = (-1,) + (1,) * (z.ndim - 1)
        lr = cfg.lr
        ran = 0
        for step in steps:
            ran = step + 1
            if cfg.lr_at(step) != lr:
                lr = cfg.lr_at(step)
                opt.param_groups[0]["lr"] = lr
            total, g = value_and_grad(z)
            with torch.no_grad():
                ok &= torch.isfinite(total) & torch.isfinite(g).flatten(1).all(1)
                g = torch.where(ok.view(rows), g, torch.zeros_like(g))
                z.grad = g.sign() if cfg.signed else g
                opt.step()
                if cfg.boxed:
                    z.copy_(torch.maximum(torch.minimum(z, hi), lo))
                z.copy_(torch.where(ok.view(rows), z, last_good))
                last_good.copy_(z)
            if step % STOP_CHECK == STOP_CHECK - 1 and not ok.any():
                break
        return z.detach(), ok, ran

    def _run_lbfgs(self, objective: Callable, z: torch.Tensor, soft: torch.Tensor | None, ok: torch.Tensor,
                   steps: Iterable[int]) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, int]:
        """DLG's L-BFGS, run per problem (:class:`BatchedLBFGS`) on the image (and the soft label)."""
        cfg = self.config
        n = z.shape[0]
        size_z = z[0].numel()
        flat = torch.cat([z.reshape(n, -1)] + ([soft] if soft is not None else []), dim=1)
        opt = BatchedLBFGS(flat, lr=cfg.lr, history_size=cfg.lbfgs_history)
        active = ok.clone()

        def split(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
            return v[:, :size_z].view_as(z), (v[:, size_z:] if soft is not None else None)

        value_and_grad = self.engine.value_and_grad(lambda v: objective(*split(v))[0])
        ran = 0
        for step in steps:
            ran = step + 1
            total, g = value_and_grad(flat)
            with torch.no_grad():
                ok &= torch.isfinite(total) & torch.isfinite(g).all(1)
                active &= ok
                g = torch.where(ok[:, None], g, torch.zeros_like(g))
                before = flat.clone()
                active = opt.step(g, active)
                moved_bad = ~torch.isfinite(flat).all(1)
                flat.copy_(torch.where(moved_bad[:, None], before, flat))
                active &= ~moved_bad
            if step % STOP_CHECK == STOP_CHECK - 1 and not active.any():
                break
        z_, s_ = split(flat.detach())
        return z_.clone(), (s_.clone() if s_ is not None else None), ok, ran


def _stack_gradients(gradients: Sequence[Any], params: Sequence[torch.Tensor],
                     labels: torch.Tensor | Sequence[int] | None) -> list[torch.Tensor]:
    """Bring the accepted gradient forms to one ``(B, *param.shape)`` tensor per parameter."""
    if len(gradients) == 0:
        raise SemsimError("no gradients given; pass the observed gradient of each image")
    if isinstance(gradients[0], torch.Tensor):
        if len(gradients) != len(params):
            raise SemsimError(f"the gradient has {len(gradients)} tensors but the model has {len(params)} "
                              "parameters; the gradient belongs to another architecture")
        if all(g.shape == p.shape for g, p in zip(gradients, params, strict=True)):
            stacked = [g.unsqueeze(0) for g in gradients]
        else:
            stacked = list(gradients)
    else:
        for k, grad in enumerate(gradients):
            if len(grad) != len(params):
                raise SemsimError(f"gradient {k} has {len(grad)} tensors but the model has {len(params)} "
                                  "parameters; it belongs to another architecture")
        stacked = [torch.stack([grad[j] for grad in gradients]) for j in range(len(params))]
    b = stacked[0].shape[0]
    for j, (g, p) in enumerate(zip(stacked, params, strict=True)):
        if tuple(g.shape[1:]) != tuple(p.shape) or g.shape[0] != b:
            expected = ", ".join(map(str, p.shape))
            raise SemsimError(f"gradient tensor {j} has shape {tuple(g.shape)}, expected (B, {expected}); "
                              "the gradient belongs to another architecture")
    if labels is not None and torch.as_tensor(labels).numel() != b:
        raise SemsimError(f"{torch.as_tensor(labels).numel()} labels for {b} gradients; "
                          "give one label per image")
    return [g.detach() for g in stacked]


def _check_shape(net: nn.Module, shape: tuple[int, int, int], device: torch.device) -> None:
    """Refuse an image shape the network cannot take, with a one-line error."""
    try:
        with torch.no_grad():
            net(torch.zeros((1, *shape), device=device))
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise SemsimError(f"image shape {shape}: the model cannot take it ({first}); "
                          "use images of the size the model was trained on") from None


def register_attack(name: str, defaults: dict[str, Any], cls: type[Attack]) -> None:
    """Make ``create_attack(name)`` build ``cls`` with ``defaults`` (attacks that live in their own module)."""
    ATTACK_DEFAULTS[name] = defaults
    ATTACK_CLASSES[name] = cls


def list_attacks() -> list[str]:
    """Names accepted by :func:`create_attack`."""
    return list(ATTACK_DEFAULTS)


def create_attack(name: str, engine: EngineOptions | None = None, **overrides: Any) -> Attack:
    """Build an attack by name (``dlg``, ``idlg``, ``invgrad``, ``gradinversion``), settings overridden;
    ``engine``: how its loop runs (:class:`~semsim.attacks.engine.EngineOptions`, default eager)."""
    key = name.lower()
    if key not in ATTACK_DEFAULTS:
        raise SemsimError(f"attack '{name}': unknown; choose one of {', '.join(ATTACK_DEFAULTS)}")
    cls = ATTACK_CLASSES.get(key, Attack)
    fields = {f.name for f in dataclasses.fields(cls.config_class)} - {"name"}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise SemsimError(f"attack '{name}': unknown setting(s) {', '.join(unknown)}; "
                          f"settings are {', '.join(sorted(fields))}")
    settings = {**ATTACK_DEFAULTS[key], **{k: v for k, v in overrides.items() if v is not None}}
    return cls(cls.config_class(name=key, **settings), engine)
