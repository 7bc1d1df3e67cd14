"""Reference densities that MADE models are measured against."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from flowkit.errors import FlowkitTypeError, FlowkitValueError
from flowkit.heads import Bernoulli
from flowkit.validation import check_float, check_shape

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
        if not isinstance(train, Tensor):
            raise FlowkitTypeError(f"expected train to be a torch.Tensor, got {type(train).__name__}")
        if train.dim() != 2 or len(train) == 0:
            raise FlowkitValueError(f"expected train of shape (N, D) with N >= 1, got {tuple(train.shape)}")
        smoothing = check_float("smoothing", smoothing, least=0)
        self.head = Bernoulli()
        x = self.head.check_support(train).double()
        p = (x.sum(0) + smoothing) / (len(x) + 2 * smoothing)
        self.register_buffer("log_p", torch.log(p).float())
        self.register_buffer("log_q", torch.log1p(-p).float())

    def log_prob(self, x: Tensor, ensemble: int | None = None) -> Tensor:
        """Log-probability in nats, ``x: (*batch, D)`` to ``(*batch,)``; ``ensemble`` is ignored."""
        check_shape("x", x, self.log_p.shape[0])
        x = self.head.check_support(x)
        return torch.where(x.bool(), self.log_p, self.log_q).sum(-1)
