"""L-BFGS for many independent problems at once.

One joint ``torch.optim.LBFGS`` over B stacked problems would share curvature pairs and step sizes between
them, so B images attacked together would not equal B attacks run alone. This optimiser keeps a separate
history per problem and follows ``torch.optim.LBFGS`` without line search (the setting DLG uses: lr 1, history
100) for each row of a ``(B, D)`` variable.

``torch.optim.LBFGS`` applies the inverse-Hessian approximation with the two-loop recursion: 4m small vector
operations per iteration for m stored pairs, each launched from Python. Here the same matrix is applied in its
compact form (Byrd, Nocedal & Schnabel, "Representations of quasi-Newton matrices and their use in limited
memory methods", Math. Programming 63, 1994, Theorem 2.2 with H0 = gamma I):

    H g = gamma g + S p - gamma Y v,   v = R^-1 S^T g,   p = R^-T ((D + gamma Y^T Y) v - gamma Y^T g)

with S, Y the stored steps and gradient changes (oldest first), R the upper triangle of S^T Y and D its
diagonal. Per iteration that is one pass over the stored pairs for all inner products with the new pair and the
gradient, one pass to combine them, and two m x m triangular solves per row (float64), all batched over rows:
a fixed sequence of kernels with no host synchronisation. ``S^T Y`` and ``Y^T Y`` are kept up to date as pairs
arrive (one new row and column per pair). The pairs themselves live in a ring buffer (a new pair overwrites
the row's oldest one in place, as ``torch.optim.LBFGS`` drops its oldest pair once it holds ``history_size``);
the small matrices are kept oldest first. Empty slots hold zeros and act as identity rows of R.
"""

from __future__ import annotations

import torch


class BatchedLBFGS:
    """Row-wise L-BFGS (compact representation of the inverse Hessian) on a ``(B, D)`` tensor ``x``.

    Call :meth:`step` with the current per-row gradient ``(B, D)``; it updates ``x`` in place for the rows
    in ``active`` and returns the mask of rows that can still move (rows at a stationary point, or without a
    descent direction, stop, exactly as ``torch.optim.LBFGS`` would keep returning without moving). A row that
    stopped never moves again: ``active`` must be a subset of the mask returned by the previous call.
    """

    def __init__(self, x: torch.Tensor, lr: float = 1.0, history_size: int = 100,
                 tolerance_grad: float = 1e-7, tolerance_change: float = 1e-9) -> None:
        self.x, self.lr, self.m = x, lr, history_size
        self.tol_grad, self.tol_change = tolerance_grad, tolerance_change
        b, d = x.shape
        # Ring buffer: slots 0..m-1 hold the steps s, slots m..2m-1 the gradient changes y of the same pairs.
        self.pairs = torch.zeros(b, 2 * history_size, d, dtype=x.dtype, device=x.device)
        self.sy = torch.zeros(b, history_size, history_size, dtype=torch.float64, device=x.device)  # s_i . y_j
        self.yy = torch.zeros_like(self.sy)  # y_i . y_j (both oldest first)
        self.h_diag = torch.ones(b, dtype=x.dtype, device=x.device)
        self.head = torch.full((b,), history_size - 1, dtype=torch.long, device=x.device)  # newest slot
        self.prev_g = torch.zeros_like(x)  # gradient and step (d * t) of the last update
        self.prev_step = torch.zeros_like(x)
        self.n_iter = 0
        self._rows = torch.arange(b, device=x.device)
        self._age = torch.arange(history_size - 1, -1, -1, device=x.device)  # oldest first

    def _push(self, push: torch.Tensor, s: torch.Tensor, y: torch.Tensor) -> None:
        """Write (s, y) into the next ring slot of the rows in ``push``; other rows keep theirs."""
        self.head = torch.where(push, (self.head + 1) % self.m, self.head)
        keep = ~push.unsqueeze(1)
        for offset, new in ((0, s), (self.m, y)):
            at = (self._rows, self.head + offset)
            self.pairs[at] = torch.where(keep, self.pairs[at], new)

    def _record(self, push: torch.Tensor, prods: torch.Tensor, slots: torch.Tensor) -> None:
        """Append the new pair's row and column to ``S^T Y`` and ``Y^T Y`` (oldest dropped) for ``push``."""
        m = self.m
        s_y = prods[:, 0, m:].double().gather(1, slots)  # s_new . y_j
        y_s = prods[:, 1, :m].double().gather(1, slots)  # s_i . y_new
        y_y = prods[:, 1, m:].double().gather(1, slots)
        shift = push[:, None, None]
        for name, row, col in (("sy", s_y, y_s), ("yy", y_y, y_y)):
            old = getattr(self, name)
            new = old.roll((-1, -1), dims=(1, 2))
            new[:, -1, :] = row
            new[:, :, -1] = col
            setattr(self, name, torch.where(shift, new, old))

    def _direction(self, g: torch.Tensor, prods: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
        """``-H g`` for each row (compact form, see the module docstring); ``prods[:, 2]`` holds S^T g, Y^T g."""
        m = self.m
        gamma = self.h_diag.double()[:, None, None]
        u = prods[:, 2, :m].double().gather(1, slots).unsqueeze(2)
        w = prods[:, 2, m:].double().gather(1, slots).unsqueeze(2)
        diag = self.sy.diagonal(dim1=1, dim2=2)
        r = self.sy.triu() + torch.diag_embed((diag == 0).double())  # empty slots: identity rows
        v = torch.linalg.solve_triangular(r, u, upper=True)
        rhs = diag.unsqueeze(2) * v + gamma * torch.bmm(v.mT, self.yy).mT - gamma * w  # Y^T Y is symmetric
        p = torch.linalg.solve_triangular(r.mT, rhs, upper=False)
        coef = torch.zeros(g.shape[0], 2 * m, dtype=torch.float64, device=g.device)
        coef.scatter_(1, slots, p.squeeze(2))
        coef.scatter_(1, slots + m, (-gamma * v).squeeze(2))
        hg = self.h_diag.unsqueeze(1) * g + torch.bmm(coef.to(g.dtype).unsqueeze(1), self.pairs).squeeze(1)
        return -hg

    def step(self, g: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
        """One L-BFGS iteration of the ``active`` rows given their gradient ``g``; returns the new mask."""
        active = active & (g.abs().amax(1) > self.tol_grad)
        self.n_iter += 1
        if self.n_iter == 1:
            d = -g
            t = torch.clamp(1.0 / g.abs().sum(1), max=1.0) * self.lr
        else:
            y = g - self.prev_g
            s = self.prev_step
            ys = _rowdot(y, s)
            push = active & (ys > 1e-10)  # as torch.optim.LBFGS: keep the pair only with positive curvature
            self._push(push, s, y)
            slots = (self.head.unsqueeze(1) - self._age) % self.m  # ring slot of each pair, oldest first
            prods = torch.bmm(torch.stack([s, y, g], 1), self.pairs.mT)  # (B, 3, 2m): one pass over the pairs
            self._record(push, prods, slots)
            self.h_diag = torch.where(push, ys / _rowdot(y, y), self.h_diag)
            d = self._direction(g, prods, slots)
            t = torch.full((g.shape[0],), self.lr, dtype=g.dtype, device=g.device)
        active = active & (_rowdot(g, d) <= -self.tol_change)
        step = torch.where(active.unsqueeze(1), d * t.unsqueeze(1), torch.zeros_like(d))
        self.x.add_(step)
        self.prev_g = g.clone()
        self.prev_step = step
        return active


def _rowdot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise dot products of two ``(B, D)`` tensors (``linalg.vecdot`` runs as a slow batched bmm on CPU)."""
    return (a * b).sum(1)
