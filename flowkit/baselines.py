"""Reference densities that MADE models are measured against."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from flowkit.heads import Bernoulli

__all__ = ["IndependentBernoulli"]


class IndependentBernoulli(nn.Module):
    r"""Independent Bernoulli pixels, fitted in closed form with additive smoothing:
    :math:`p_d = (\sum_n x_{nd} + \alpha) / (N + 2\alpha)`.

    Example:
        >>> model = IndependentBernoulli(torch.tensor([[1.0, 0.0], [1.0, 1.0]]), smoothing=0.0)
        >>> model.log_prob(torch.tensor([[1.0, 1.0], [0.0, 1.0]])).exp()
        tensor([0.5000, 0.0000])
    """

    def __init__(self, train: Tensor, smoothing: float = 1.0):
        super().__init__()
        self.head = Bernoulli()
        x = self.head.validate(train).double()
        p = (x.sum(0) + smoothing) / (len(x) + 2 * smoothing)
        self.register_buffer("log_p", torch.log(p).float())
        self.register_buffer("log_q", torch.log1p(-p).float())

    def log_prob(self, x: Tensor, ensemble: int | None = None) -> Tensor:
        """Log-probability in nats, ``x: (*batch, D)`` to ``(*batch,)``; ``ensemble`` is ignored."""
        x = self.head.validate(x)
        return torch.where(x.bool(), self.log_p, self.log_q).sum(-1)
