"""Per-sample gradients of a classifier, the client's observed gradient, and the gradient-matching objectives.

Each image is attacked from its own gradient (one image per gradient, as in the SemSim study), so B images are
B independent problems. They are solved as one batched computation: the parameter gradient of every sample is
taken with ``torch.func.vmap(torch.func.grad(...))`` over ``functional_call``, which stays differentiable with
respect to the (dummy) images.

BatchNorm: a network is differentiated in the mode the threat model names. ``eval`` (the default, like the
``breaching`` library's default) uses the running statistics, so samples never interact. ``train`` normalises
each image with its own statistics (a batch of one, as a client holding one image would), without touching
the running statistics.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, replace_all_batch_norm_modules_, vmap

from semsim.errors import SemsimError
from semsim.victims.defenses import Defense, parse_defense

MODEL_MODES = ("eval", "train")


def input_normalization(model: nn.Module, channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's input normalisation (``mean``/``std`` buffers of semsim classifiers), else the identity."""
    mean, std = getattr(model, "mean", None), getattr(model, "std", None)
    if isinstance(mean, torch.Tensor) and isinstance(std, torch.Tensor):
        return mean.detach().reshape(1, -1, 1, 1), std.detach().reshape(1, -1, 1, 1)
    device = next(model.parameters()).device
    return torch.zeros(1, channels, 1, 1, device=device), torch.ones(1, channels, 1, 1, device=device)


def normalized_box(model: nn.Module, channels: int
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``mean``, ``std`` of the model's input normalisation and the image box [0, 1] in normalised units
    (``lo``, ``hi``): attacks optimise normalised images ``z`` and clamp them to that box."""
    mean, std = input_normalization(model, channels)
    return mean, std, (0 - mean) / std, (1 - mean) / std


def head_weight_index(model: nn.Module) -> int:
    """Position (in ``model.parameters()`` order) of the last linear layer's weight (label recovery)."""
    head = getattr(model, "head", None)
    if isinstance(head, nn.Linear):
        return next(i for i, p in enumerate(model.parameters()) if p is head.weight)
    linear = [i for i, (n, p) in enumerate(model.named_parameters()) if p.ndim == 2 and n.endswith("weight")]
    if not linear:
        raise SemsimError(f"{model.__class__.__name__}: no linear layer; label recovery needs a final "
                          "nn.Linear")
    return linear[-1]


class GradientModel:
    """A classifier viewed as a function ``(images, labels) -> per-sample parameter gradients``.

    ``mode`` is ``eval`` (BatchNorm uses running statistics) or ``train`` (each image's own statistics;
    a copy of the model is used). ``track_bn`` additionally returns, per sample, each BatchNorm layer's
    input mean and variance (for GradInversion's BN prior). In eval mode the model is put in eval mode;
    :meth:`close` restores its previous mode. ``functional``: always use ``torch.func`` (no plain autograd
    for a single sample), as code traced by ``torch.func`` transforms or ``torch.compile`` needs.
    ``memory_format``: the 4-D weights are used in this memory order (channels-last for cuDNN), the model's
    own parameters are not touched.
    """

    def __init__(self, model: nn.Module, mode: str = "eval", track_bn: bool = False, functional: bool = False,
                 memory_format: torch.memory_format = torch.contiguous_format) -> None:
        if mode not in MODEL_MODES:
            raise SemsimError(f"model mode '{mode}': unknown; use one of {', '.join(MODEL_MODES)}")
        self.mode = mode
        self.bn_layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        self.bn_running = [(m.running_mean.detach().clone(), m.running_var.detach().clone())
                           for m in self.bn_layers if m.running_mean is not None and m.running_var is not None]
        self._model, self._was_training = model, model.training
        net = model
        if mode == "train" and self.bn_layers:
            net = copy.deepcopy(model)
            replace_all_batch_norm_modules_(net)  # batch statistics, no running-stat updates
        net.train(mode == "train")
        self.net = net
        self.params = {k: _in_format(v.detach(), memory_format) for k, v in net.named_parameters()}
        self.buffers = {k: v.detach() for k, v in net.named_buffers()}
        self.functional = functional
        # One sample (_single): the network's own parameters when all are trainable and in the asked memory
        # format (no functional_call, whose parameter swapping costs as much as LeNet's forward), else copies.
        own: dict[str, torch.Tensor] = dict(net.named_parameters())
        self._own = all(p.requires_grad and self.params[k].data_ptr() == p.data_ptr() for k, p in own.items())
        self._leaves = own if self._own else {k: v.detach().requires_grad_(True) for k, v in self.params.items()}
        self.head_index = head_weight_index(net)
        self.track_bn = track_bn and bool(self.bn_layers)
        self._stats: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._hooks = []
        if self.track_bn:
            bn_net = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
            self._hooks = [m.register_forward_hook(self._record) for m in bn_net]

    def _record(self, module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        x = inputs[0]
        self._stats.append((x.mean(dim=(0, 2, 3)), x.var(dim=(0, 2, 3), unbiased=False)))

    def _loss(self, params: dict[str, torch.Tensor] | None, image: torch.Tensor, target: torch.Tensor):
        """One sample's loss (and BN statistics) with ``params`` (``None``: the network's own)."""
        return self._batch_loss(params, image.unsqueeze(0), target.unsqueeze(0))

    def _batch_loss(self, params: dict[str, torch.Tensor] | None, images: torch.Tensor, targets: torch.Tensor):
        """:meth:`_loss` of a batch of one, ``(1, C, H, W)`` and ``(1,)`` or ``(1, K)``."""
        self._stats = []
        if params is None:
            logits = self.net(images)
        else:
            logits = functional_call(self.net, (params, self.buffers), (images,))
        if targets.is_floating_point():  # DLG's soft label: logits of a dummy label distribution
            loss = torch.sum(-F.softmax(targets, dim=-1) * F.log_softmax(logits, dim=-1))
        else:
            loss = F.cross_entropy(logits, targets)
        stats = [s for pair in self._stats for s in pair]
        return loss, stats

    def per_sample(self, images: torch.Tensor, targets: torch.Tensor
                   ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Gradients of each sample's loss, one ``(N, *param.shape)`` tensor per parameter, plus BN stats.

        ``targets`` are class indices ``(N,)`` or soft-label logits ``(N, K)``. Differentiable in ``images``.
        """
        if images.shape[0] == 1 and not self.functional:
            return self._single(images, targets)
        per_sample = vmap(grad(self._loss, has_aux=True), in_dims=(None, 0, 0))
        grads, stats = per_sample(self.params, images, targets)
        return list(grads.values()), stats

    def _single(self, images: torch.Tensor, targets: torch.Tensor
                ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """:meth:`per_sample` for one sample with plain autograd (``create_graph`` when the inputs need it):
        the same gradients without ``vmap``'s per-operator overhead, which dominates on small models."""
        differentiable = torch.is_grad_enabled() and (images.requires_grad or targets.requires_grad)
        with torch.enable_grad():
            loss, stats = self._batch_loss(None if self._own else self._leaves, images, targets)
            grads = torch.autograd.grad(loss, list(self._leaves.values()), create_graph=differentiable)
        if not differentiable:
            grads, stats = tuple(g.detach() for g in grads), [s.detach() for s in stats]
        return [g.unsqueeze(0) for g in grads], [s.unsqueeze(0) for s in stats]

    def bn_prior(self, stats: list[torch.Tensor]) -> torch.Tensor:
        """GradInversion's BN prior per sample: sum over layers of ||mu - mu_run|| + ||var - var_run||."""
        if not self.track_bn:
            raise SemsimError("bn_prior needs a GradientModel built with track_bn=True and BatchNorm layers")
        pairs = zip(stats[::2], stats[1::2], strict=True)
        terms = [(mean - run_mean).norm(dim=1) + (var - run_var).norm(dim=1)
                 for (mean, var), (run_mean, run_var) in zip(pairs, self.bn_running, strict=True)]
        return torch.stack(terms).sum(0)

    def close(self) -> None:
        """Remove the hooks and restore the model's train/eval mode."""
        for h in self._hooks:
            h.remove()
        self._hooks = []
        self._model.train(self._was_training)


def _in_format(t: torch.Tensor, memory_format: torch.memory_format) -> torch.Tensor:
    """``t`` in ``memory_format`` when it is 4-D (convolution weights), else unchanged."""
    return t.contiguous(memory_format=memory_format) if t.ndim == 4 else t


def recover_labels(grads: Sequence[torch.Tensor], head_index: int) -> torch.Tensor:
    """iDLG (Zhao et al., 2020): the true class is the last layer's weight-gradient row with negative sum.

    For cross-entropy, ``dL/dW_i = (p_i - y_i) h`` with non-negative features ``h``, so only the true class's
    row is negative. ``grads[head_index]`` has shape ``(N, K, D)``; returns ``(N,)`` class indices.
    """
    return grads[head_index].sum(dim=-1).argmin(dim=-1)


def client_gradients(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                     defense: str | Defense = "none",
                     generators: Sequence[torch.Generator | None] | None = None,
                     mode: str = "eval") -> list[torch.Tensor]:
    """What each client shares: the gradient of its one image, after the defense (its own generator).

    Returns one ``(N, *param.shape)`` tensor per parameter.
    """
    defense = parse_defense(defense)
    gm = GradientModel(model, mode=mode)
    try:
        with torch.no_grad():
            grads, _ = gm.per_sample(images, labels)
    finally:
        gm.close()
    if defense.kind == "none":
        return grads
    gens = list(generators) if generators is not None else [None] * images.shape[0]
    per_image = [defense.apply([g[i] for g in grads], gens[i]) for i in range(images.shape[0])]
    return [torch.stack([p[j] for p in per_image]) for j in range(len(grads))]


def flatten_gradients(grads: Sequence[torch.Tensor] | torch.Tensor) -> torch.Tensor:
    """One ``(N, P)`` tensor of all parameters' per-sample gradients (a tensor given is returned as is)."""
    if isinstance(grads, torch.Tensor):
        return grads
    return torch.cat([g.flatten(1) for g in grads], dim=1)


def l2_distance(dummy: Sequence[torch.Tensor] | torch.Tensor,
                target: Sequence[torch.Tensor] | torch.Tensor) -> torch.Tensor:
    """DLG's objective per sample: ``sum_layers ||grad(x') - grad(x)||^2``.

    Either argument: per-parameter ``(N, ...)`` tensors or their :func:`flatten_gradients` (computed once
    for a fixed target, this saves a copy per iteration)."""
    return (flatten_gradients(dummy) - flatten_gradients(target)).pow(2).sum(1)


def cosine_distance(dummy: Sequence[torch.Tensor] | torch.Tensor,
                    target: Sequence[torch.Tensor] | torch.Tensor) -> torch.Tensor:
    """Inverting Gradients' objective per sample: ``1 - <g', g> / (||g'|| ||g||)`` over all parameters
    (arguments as in :func:`l2_distance`)."""
    d, t = flatten_gradients(dummy), flatten_gradients(target)
    # Products and sums rather than linalg.vecdot / vector_norm: on CPU those run batched as slow bmm / with
    # an extra comparison pass in the backward.
    return 1 - (d * t).sum(1) / (d.pow(2).sum(1).sqrt() * t.pow(2).sum(1).sqrt())


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Anisotropic TV per image as in Inverting Gradients: mean |horizontal diff| + mean |vertical diff|."""
    dx = (x[:, :, :, :-1] - x[:, :, :, 1:]).abs().flatten(1).mean(1)
    dy = (x[:, :, :-1, :] - x[:, :, 1:, :]).abs().flatten(1).mean(1)
    return dx + dy


OBJECTIVES = {"l2": l2_distance, "cosine": cosine_distance}
