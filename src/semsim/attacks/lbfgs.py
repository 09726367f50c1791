"""L-BFGS for many independent problems at once.

One joint ``torch.optim.LBFGS`` over B stacked problems would share curvature pairs and step sizes between
them, so B images attacked together would not equal B attacks run alone. This optimiser keeps a separate
history per problem and follows ``torch.optim.LBFGS`` without line search (the setting DLG uses: lr 1, history
100) for each row of a ``(B, D)`` variable; every dot product is taken per row.
"""

from __future__ import annotations

import torch


class BatchedLBFGS:
    """Row-wise L-BFGS (two-loop recursion, Nocedal & Wright, Alg. 7.4) on a ``(B, D)`` tensor.

    Call :meth:`step` with the current per-row gradient ``(B, D)``; it updates ``x`` in place for the rows
    in ``active`` and returns the mask of rows that can still move (rows at a stationary point, or without a
    descent direction, stop, exactly as ``torch.optim.LBFGS`` would keep returning without moving).
    """

    def __init__(self, x: torch.Tensor, lr: float = 1.0, history_size: int = 100,
                 tolerance_grad: float = 1e-7, tolerance_change: float = 1e-9) -> None:
        self.x, self.lr, self.m = x, lr, history_size
        self.tol_grad, self.tol_change = tolerance_grad, tolerance_change
        b, d = x.shape
        self.s = torch.zeros(history_size, b, d, dtype=x.dtype, device=x.device)
        self.y = torch.zeros_like(self.s)
        self.rho = torch.zeros(history_size, b, dtype=x.dtype, device=x.device)
        self.count = torch.zeros(b, dtype=torch.long, device=x.device)  # stored pairs per row (<= m)
        self.h_diag = torch.ones(b, dtype=x.dtype, device=x.device)
        self.prev_g: torch.Tensor | None = None
        self.prev_step: torch.Tensor | None = None  # d * t of the last update
        self.n_iter = 0

    def _push(self, rows: torch.Tensor, s: torch.Tensor, y: torch.Tensor, ys: torch.Tensor) -> None:
        """Append (s, y) to the histories of ``rows`` (dropping the oldest when full)."""
        full = rows & (self.count == self.m)
        if full.any():  # shift the oldest pair out for full rows
            self.s[:, full] = torch.roll(self.s[:, full], -1, dims=0)
            self.y[:, full] = torch.roll(self.y[:, full], -1, dims=0)
            self.rho[:, full] = torch.roll(self.rho[:, full], -1, dims=0)
            self.count[full] -= 1
        idx = self.count.clamp(max=self.m - 1)
        r = torch.nonzero(rows).squeeze(1)
        self.s[idx[r], r] = s[r]
        self.y[idx[r], r] = y[r]
        self.rho[idx[r], r] = 1.0 / ys[r]
        self.count[r] += 1
        self.h_diag[r] = ys[r] / (y[r] * y[r]).sum(1)

    def step(self, g: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
        """One L-BFGS iteration of the ``active`` rows given their gradient ``g``; returns the new mask."""
        active = active & (g.abs().amax(1) > self.tol_grad)
        self.n_iter += 1
        if self.n_iter == 1:
            d = -g
        else:
            y = g - self.prev_g
            s = self.prev_step
            ys = (y * s).sum(1)
            self._push(active & (ys > 1e-10), s, y, ys)
            q = -g
            alpha = torch.zeros(self.m, g.shape[0], dtype=g.dtype, device=g.device)
            valid = torch.arange(self.m, device=g.device)[:, None] < self.count[None, :]  # (m, B)
            for i in range(self.m - 1, -1, -1):
                if not valid[i].any():
                    continue
                a = (self.s[i] * q).sum(1) * self.rho[i] * valid[i]
                alpha[i] = a
                q = q - a[:, None] * self.y[i]
            r = q * self.h_diag[:, None]
            for i in range(self.m):
                if not valid[i].any():
                    break
                beta = (self.y[i] * r).sum(1) * self.rho[i]
                r = r + ((alpha[i] - beta) * valid[i])[:, None] * self.s[i]
            d = r
        if self.n_iter == 1:
            t = torch.clamp(1.0 / g.abs().sum(1), max=1.0) * self.lr
        else:
            t = torch.full((g.shape[0],), self.lr, dtype=g.dtype, device=g.device)
        active = active & ((g * d).sum(1) <= -self.tol_change)
        step = d * t[:, None] * active[:, None]
        self.x.add_(step)
        self.prev_g = g.clone()
        self.prev_step = step
        return active
