"""How the attack loop runs on the hardware: TF32, channels-last and ``torch.compile`` / CUDA graphs.

These options never change what an attack optimises; they change the arithmetic's speed and, for TF32, its
precision (TF32 rounds the inputs of CUDA matrix products and convolutions to a 10-bit mantissa). They are
kept out of :class:`~semsim.attacks.core.AttackConfig`, so set names and the attack settings of a set do not
depend on them (``attack_set`` records them next to the settings).

* ``tf32``: TF32 in CUDA matmuls and cuDNN convolutions while attacking; without it both run in full FP32
  (PyTorch's own default lets cuDNN convolutions use TF32, so the flags are set either way, and restored
  afterwards). No effect on CPU.
* ``channels_last``: dummy images and the model's 4-D weights in channels-last (NHWC) memory order, which
  cuDNN's fastest convolution kernels use; the numbers are the same up to float rounding.
* ``compile``: one attack iteration (per-sample gradients, matching loss, priors and the gradient with respect
  to the dummy images) is traced once with ``torch.func.grad_and_value`` and compiled with ``torch.compile``
  (``mode``: ``"default"``, ``"reduce-overhead"`` = Inductor with CUDA graphs, ``"max-autotune"``). The loop
  has fixed shapes, so it compiles once per batch shape; compiling takes tens of seconds to minutes and pays
  off on long attacks (thousands of iterations).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from semsim.errors import SemsimError

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune")


@dataclass(frozen=True)
class EngineOptions:
    """Speed options of the attack loop (see the module docstring); the defaults run plain eager PyTorch."""

    tf32: bool = False
    channels_last: bool = False
    compile: str | None = None

    def __post_init__(self) -> None:
        if self.compile is not None and self.compile not in COMPILE_MODES:
            raise SemsimError(f"compile mode '{self.compile}': unknown; use one of {', '.join(COMPILE_MODES)}")

    @classmethod
    def parse(cls, text: str) -> EngineOptions:
        """``"eager"`` or ``+``-joined options, e.g. ``"tf32+channels-last+compile"``, ``"cudagraphs"``."""
        words = [w for w in text.lower().replace(",", "+").split("+") if w and w != "eager"]
        modes = {"compile": "default", "cudagraphs": "reduce-overhead", "max-autotune": "max-autotune"}
        unknown = sorted(set(words) - {"tf32", "channels-last", *modes})
        if unknown:
            raise SemsimError(f"engine option(s) {', '.join(unknown)}: unknown; combine eager, tf32, "
                              "channels-last, compile, cudagraphs, max-autotune with '+'")
        chosen = [modes[w] for w in words if w in modes]
        if len(chosen) > 1:
            raise SemsimError(f"engine '{text}': give one of compile, cudagraphs, max-autotune")
        return cls(tf32="tf32" in words, channels_last="channels-last" in words,
                   compile=chosen[0] if chosen else None)

    @property
    def label(self) -> str:
        """The inverse of :meth:`parse`."""
        names = {"default": "compile", "reduce-overhead": "cudagraphs", "max-autotune": "max-autotune"}
        words = (["tf32"] if self.tf32 else []) + (["channels-last"] if self.channels_last else [])
        words += [names[self.compile]] if self.compile else []
        return "+".join(words) or "eager"

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    @contextlib.contextmanager
    def context(self) -> Iterator[None]:
        """TF32 on or off (FP32) for the duration of the attack; the previous flags restored."""
        saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = self.tf32
        try:
            yield
        finally:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved

    def value_and_grad(self, f: Callable[[torch.Tensor], torch.Tensor]
                       ) -> Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
        """``var -> (f(var), d sum(f(var)) / d var)`` for a per-row loss ``f``, eager or compiled."""
        if self.compile is None:
            def eager(var: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
                var = var.detach().requires_grad_(True)
                total = f(var)
                (g,) = torch.autograd.grad(total.sum(), var)
                return total.detach(), g
            return eager

        def summed(var: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            total = f(var)
            return total.sum(), total.detach()

        compiled: Any = torch.compile(torch.func.grad_and_value(summed, has_aux=True), mode=self.compile,
                                      fullgraph=True, dynamic=False)

        def run(var: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            if self.compile == "reduce-overhead":
                torch.compiler.cudagraph_mark_step_begin()
            g, (_, total) = compiled(var.detach())
            return total.clone(), g.clone()
        return run
