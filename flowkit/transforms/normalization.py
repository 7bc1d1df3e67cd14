r"""Normalising layers: batch normalisation as an invertible flow layer (Papamakarios et al., 2017,
section 3.4) and a fixed standardisation built from data."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from flowkit.errors import FlowkitValueError
from flowkit.transforms.base import Transform, check_features
from flowkit.validation import check_finite, check_float, check_int, check_option

__all__ = ["BatchNorm", "Standardize"]


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


class Standardize(Transform):
    r"""A fixed elementwise affine map that standardises data, data to noise:

    .. math:: y = \frac{x - \mu}{\sigma}, \qquad \log|\det J| = -\sum_i \log \sigma_i

    Placed first in a flow, it lets the layers after it see data of zero mean and unit scale (the
    z-scoring of sbi's density estimators); the log-determinant keeps the flow's density that of
    the data. :math:`\mu` and :math:`\sigma` are buffers (saved in the ``state_dict``, never
    trained); :meth:`from_data` computes them from a batch.

    Arguments:
        shift: :math:`\mu`, ``(D,)``.
        scale: :math:`\sigma`, ``(D,)``, every entry positive and finite.

    Example:
        >>> x = torch.tensor([[1.0, 10.0], [3.0, 30.0]])
        >>> layer = Standardize.from_data(x)
        >>> layer(x)[0]
        tensor([[-1., -1.],
                [ 1.,  1.]])
    """

    def __init__(self, shift: Tensor, scale: Tensor):
        super().__init__()
        for name, value in (("shift", shift), ("scale", scale)):
            if not isinstance(value, Tensor) or value.dim() != 1 or not value.dtype.is_floating_point:
                got = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
                raise FlowkitValueError(f"expected {name} to be a 1-d floating tensor, got {got}")
        if shift.shape != scale.shape:
            raise FlowkitValueError(f"expected shift and scale of one shape, got {tuple(shift.shape)} and "
                                    f"{tuple(scale.shape)}")
        if not bool(torch.isfinite(shift).all()) or not bool(((scale > 0) & torch.isfinite(scale)).all()):
            raise FlowkitValueError("expected a finite shift and a positive, finite scale")
        self.features = shift.shape[0]
        self.register_buffer("shift", shift.detach().clone())
        self.register_buffer("scale", scale.detach().clone())

    @classmethod
    def from_data(cls, x: Tensor, *, constant: str = "error") -> Standardize:
        r"""The standardisation of the batch ``x: (N, D)``: its mean and (population) standard deviation.

        A feature of zero standard deviation (constant in ``x``) has no scale to divide by: with
        ``constant="error"`` (the default) it raises, naming the features; with ``"keep"`` such a
        feature is only shifted (:math:`\sigma_i = 1`).
        """
        check_option("constant", constant, ("error", "keep"))
        if not isinstance(x, Tensor) or x.dim() != 2 or not x.dtype.is_floating_point or len(x) < 2:
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise FlowkitValueError(f"expected a floating batch x of shape (N, D) with N >= 2, got {got}")
        check_finite("x", x)
        shift, scale = x.mean(0), x.std(0, unbiased=False)
        flat = scale <= torch.finfo(x.dtype).eps * shift.abs().clamp(min=1.0)
        if bool(flat.any()):
            if constant == "error":
                raise FlowkitValueError(
                    f"features {flat.nonzero().squeeze(1).tolist()} of x are constant: no scale to standardise "
                    "them by (drop them, or pass constant='keep' to only shift them)")
            scale = torch.where(flat, torch.ones_like(scale), scale)
        return cls(shift, scale)

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        check_features("x", x, self.features)
        check_finite("x", x)
        y = (x.to(self.scale.dtype) - self.shift) / self.scale
        return y, (-torch.log(self.scale).sum()).expand(y.shape[:-1])

    def inverse(self, y: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        check_features("y", y, self.features)
        check_finite("y", y)
        x = y.to(self.scale.dtype) * self.scale + self.shift
        return x, torch.log(self.scale).sum().expand(x.shape[:-1])
