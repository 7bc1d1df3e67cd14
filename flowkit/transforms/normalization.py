r"""Batch normalisation as an invertible flow layer (Papamakarios et al., 2017, section 3.4)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from flowkit.errors import FlowkitValueError
from flowkit.transforms.base import Transform, check_features
from flowkit.validation import check_finite, check_float, check_int

__all__ = ["BatchNorm"]


class BatchNorm(Transform):
    r"""Batch normalisation as a bijection, data to noise:

    .. math:: y = e^{\gamma} \frac{x - \mu}{\sqrt{v + \epsilon}} + \beta, \qquad
              \log|\det J| = \sum_i \gamma_i - \tfrac12 \log(v_i + \epsilon)

    In training mode :math:`\mu, v` are the statistics of the batch (and the running averages are
    updated with ``momentum``); in eval mode they are the running averages, and ``inverse`` is
    then the exact inverse of ``forward``. ``inverse`` always uses the running averages. A feature
    with zero variance stays finite through :math:`\epsilon`.

    Arguments:
        features: the number of features.
        eps: added to the variance.
        momentum: the weight of the newest batch in the running averages.

    Example:
        >>> bn = BatchNorm(2).eval()
        >>> x = torch.randn(5, 2)
        >>> torch.allclose(bn.inverse(bn(x)[0])[0], x, atol=1e-6)
        True
    """

    def __init__(self, features: int, eps: float = 1e-5, momentum: float = 0.1):
        super().__init__()
        features = check_int("features", features, least=1)
        momentum = check_float("momentum", momentum, above=0, most=1)
        eps = check_float("eps", eps, above=0)
        self.features, self.eps, self.momentum = features, eps, momentum
        self.log_gamma = nn.Parameter(torch.zeros(features))
        self.beta = nn.Parameter(torch.zeros(features))
        self.register_buffer("running_mean", torch.zeros(features))
        self.register_buffer("running_var", torch.ones(features))

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        check_features("x", x, self.features)
        check_finite("x", x)
        x = x.to(self.log_gamma.dtype)
        if self.training:
            flat = x.reshape(-1, self.features)
            if flat.shape[0] < 2:
                raise FlowkitValueError(
                    f"BatchNorm in training mode needs a batch of at least 2 examples, got {flat.shape[0]}"
                )
            mean, var = flat.mean(0), flat.var(0, unbiased=False)
            with torch.no_grad():
                # A batch whose statistics overflow (values near the dtype's largest) leaves the
                # running averages of those features as they were, so the layer stays usable.
                fresh_mean, fresh_var = mean.detach(), flat.var(0, unbiased=True).detach()
                usable = fresh_mean.isfinite() & fresh_var.isfinite()
                self.running_mean.copy_(torch.where(usable, self.running_mean.lerp(fresh_mean, self.momentum),
                                                    self.running_mean))
                self.running_var.copy_(torch.where(usable, self.running_var.lerp(fresh_var, self.momentum),
                                                   self.running_var))
        else:
            mean, var = self.running_mean, self.running_var
        y = (x - mean) / torch.sqrt(var + self.eps) * torch.exp(self.log_gamma) + self.beta
        logabsdet = (self.log_gamma - 0.5 * torch.log(var + self.eps)).sum()
        return y, logabsdet.expand(x.shape[:-1])

    def inverse(self, y: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        check_features("y", y, self.features)
        y = y.to(self.log_gamma.dtype)
        std = torch.sqrt(self.running_var + self.eps)
        x = (y - self.beta) * torch.exp(-self.log_gamma) * std + self.running_mean
        logabsdet = (0.5 * torch.log(self.running_var + self.eps) - self.log_gamma).sum()
        return x, logabsdet.expand(y.shape[:-1])

    def extra_repr(self) -> str:
        return f"features={self.features}, eps={self.eps}, momentum={self.momentum}"
