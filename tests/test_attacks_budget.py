"""DLG's published budget: 300 ``torch.optim.LBFGS.step`` calls of up to 20 iterations each (DLG's reference
code, torch's default ``max_iter``). semsim counts single L-BFGS iterations, so the default is 6,000; checked
here by running torch's L-BFGS step by step next to semsim's."""

from __future__ import annotations

import torch

from semsim.attacks import create_attack
from semsim.attacks.lbfgs import BatchedLBFGS


def _problem(d: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    a = q @ torch.diag(torch.logspace(-3, 1, d, dtype=torch.float64)) @ q.T  # ill-conditioned: no early stop
    return a, 3 * torch.randn(d, generator=g, dtype=torch.float64)


def _loss(x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    return 0.5 * x @ a @ x + 0.05 * x.pow(4).sum() + torch.cos(x).sum()


def test_defaults_are_300_steps_of_20_iterations() -> None:
    for name in ("dlg", "idlg"):
        cfg = create_attack(name).config
        assert cfg.iterations == 300 * 20 and cfg.optimizer == "lbfgs" and cfg.lr == 1.0
        assert cfg.lbfgs_history == 100


def test_one_lbfgs_step_is_twenty_semsim_iterations() -> None:
    a, x0 = _problem()
    steps = 3
    x = x0.clone().requires_grad_(True)
    opt = torch.optim.LBFGS([x], lr=1.0, history_size=100, max_iter=20, line_search_fn=None)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = _loss(x, a)
        loss.backward()
        return loss

    for _ in range(steps):
        opt.step(closure)
    assert opt.state[opt._params[0]]["n_iter"] == steps * 20  # no early exit on this problem

    ours = x0.clone()[None]
    lbfgs = BatchedLBFGS(ours, lr=1.0, history_size=100)
    active = torch.ones(1, dtype=torch.bool)
    for _ in range(steps * 20):
        v = ours.detach().clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(_loss(v[0], a), v)
        active = lbfgs.step(grad, active)
    assert bool(active.all())
    assert torch.allclose(ours[0], x.detach(), rtol=1e-9, atol=1e-11)
