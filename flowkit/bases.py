r"""Bases of flows: the protocol a base meets, the standard normal and the diagonal normal (a
learned or amortised Gaussian, the first step of an IAF posterior)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from flowkit.transforms.autoregressive import (
    Affine,
)
from flowkit.transforms.base import check_features
from flowkit.validation import check_context, check_finite, check_int
from flowkit.validation import sample_shape as as_sample_shape

__all__ = ["FlowBase", "StandardNormal", "DiagonalNormal"]


@runtime_checkable
class FlowBase(Protocol):
    r"""The base protocol: the distribution of the noise :math:`z` that a :class:`Flow` maps to data.

    ``features`` is :math:`D`; ``log_prob(z, context=None)`` maps ``z: (*batch, D)`` to
    ``(*batch,)``; ``sample(sample_shape=(), context=None, generator=None)`` returns
    ``sample_shape + context.shape[:-1] + (D,)``. Optional: ``rsample`` (reparameterised draws,
    for variational inference), ``sample_and_log_prob`` (both in one pass) and
    ``context_features`` (a conditional base). :class:`StandardNormal`, :class:`DiagonalNormal`
    and :class:`flowkit.MADEMoG` are bases.
    """

    features: int

    def log_prob(self, z: Tensor, context: Tensor | None = None) -> Tensor: ...

    def sample(self, sample_shape: int | Sequence[int] = (), context: Tensor | None = None,
               *, generator: torch.Generator | None = None) -> Tensor: ...


def _standard_normal_log_prob(z: Tensor) -> Tensor:
    r""":math:`\log \mathcal{N}(z; 0, I)`, summed over the last dimension."""
    return -0.5 * (z.pow(2).sum(-1) + z.shape[-1] * math.log(2 * math.pi))


class StandardNormal(nn.Module):
    r"""The standard normal base :math:`\mathcal{N}(0, I_D)`; it ignores the context except for its
    batch shape.

    Example:
        >>> StandardNormal(2).log_prob(torch.zeros(1, 2))
        tensor([-1.8379])
    """

    def __init__(self, features: int):
        super().__init__()
        self.features = check_int("features", features, least=1)
        self.register_buffer("_origin", torch.zeros(features), persistent=False)

    def log_prob(self, z: Tensor, context: Tensor | None = None) -> Tensor:
        check_features("z", z, self.features)
        return _standard_normal_log_prob(z)

    def rsample(self, sample_shape: int | Sequence[int] = (), context: Tensor | None = None,
                *, generator: torch.Generator | None = None) -> Tensor:
        shape = as_sample_shape(sample_shape) + (() if context is None else context.shape[:-1])
        o = self._origin
        return torch.randn(*shape, self.features, generator=generator, dtype=o.dtype, device=o.device)

    def sample(self, sample_shape: int | Sequence[int] = (), context: Tensor | None = None,
               *, generator: torch.Generator | None = None) -> Tensor:
        return self.rsample(sample_shape, context, generator=generator)


class DiagonalNormal(nn.Module):
    r"""A Gaussian with diagonal covariance, :math:`\mathcal{N}(\mu, \operatorname{diag}\sigma^2)`,
    as a flow base or as a posterior; with a context it is amortised.

    Without context, :math:`\mu` and :math:`\sigma` are parameters (initially 0 and 1). With
    ``context_features = C`` they are an affine function of the context,
    :math:`(u, \mu) = A c + b`, :math:`\sigma = \operatorname{softplus}(u) + \epsilon`: the
    Gaussian posterior :math:`q(z \mid x)` of a variational autoencoder (Kingma & Welling, 2014)
    whose encoder produces :math:`c`, and the first step of an IAF posterior (Kingma et al., 2016).
    The scale has the parameterisation of :class:`~flowkit.transforms.Affine`, which draws
    :math:`z = \sigma \odot \varepsilon + \mu` from :math:`\varepsilon \sim \mathcal{N}(0, I)`.

    Shapes: ``log_prob(z: (*batch, D), context: (*batch, C)) -> (*batch,)``;
    ``rsample(sample_shape, context) -> sample_shape + context.shape[:-1] + (D,)``.

    Example:
        >>> q = DiagonalNormal(3, context_features=4, seed=0)
        >>> h = torch.randn(5, 4)
        >>> z = q.rsample(2, h)
        >>> z.shape, q.log_prob(z, h).shape
        (torch.Size([2, 5, 3]), torch.Size([2, 5]))
    """

    def __init__(self, features: int, *, context_features: int = 0, eps: float = 1e-3, seed: int | None = None):
        super().__init__()
        features = check_int("features", features, least=1)
        context_features = check_int("context_features", context_features, least=0)
        seed = None if seed is None else check_int("seed", seed, least=None)
        self.features, self.context_features = features, context_features
        self.affine = Affine(eps)
        identity = self.affine.identity_params().to(torch.get_default_dtype())  # unit scale, zero shift
        generator = torch.Generator()
        generator.manual_seed(int(torch.randint(2**62, ())) if seed is None else seed)
        if context_features:
            bound = 1 / math.sqrt(context_features)
            weight = torch.rand(2 * features, context_features, generator=generator) * 2 * bound - bound
            self.linear = nn.Linear(context_features, 2 * features)
            with torch.no_grad():
                self.linear.weight.copy_(weight)
                self.linear.bias.copy_(identity.repeat(features))
        else:
            self.params = nn.Parameter(identity.repeat(features, 1))

    def _params(self, context: Tensor | None) -> Tensor:
        if not self.context_features:
            return self.params
        return self.linear(context.to(self.linear.weight.dtype)).unflatten(-1, (self.features, 2))

    def loc_scale(self, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """The mean and the standard deviations, each of shape ``context.shape[:-1] + (D,)``."""
        check_context(context, self.context_features, torch.Size())
        scale, loc = self.affine.scale_shift(self._params(context))
        return loc, scale

    def log_prob(self, z: Tensor, context: Tensor | None = None) -> Tensor:
        check_features("z", z, self.features)
        check_finite("z", z)
        check_context(context, self.context_features, z.shape[:-1])
        params = self._params(context)
        noise, logabsdet = self.affine.inverse(z.to(params.dtype), params)
        return _standard_normal_log_prob(noise) + logabsdet.sum(-1)

    def sample_and_log_prob(self, sample_shape: int | Sequence[int] = (), context: Tensor | None = None,
                            *, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Reparameterised draws and their log-densities, scored from the noise that made them:
        the mean and scale are computed once, from the context as given (not once per sample).
        Gradients reach the mean and scale, and through a context the encoder that produced it."""
        check_context(context, self.context_features, torch.Size())
        params = self._params(context)
        shape = as_sample_shape(sample_shape) + (() if context is None else context.shape[:-1])
        noise = torch.randn(*shape, self.features, generator=generator, dtype=params.dtype, device=params.device)
        z, log_scale = self.affine(noise, params)
        return z, _standard_normal_log_prob(noise) - log_scale.sum(-1)

    def rsample(self, sample_shape: int | Sequence[int] = (), context: Tensor | None = None,
                *, generator: torch.Generator | None = None) -> Tensor:
        """Reparameterised draws (see :meth:`sample_and_log_prob`)."""
        return self.sample_and_log_prob(sample_shape, context, generator=generator)[0]

    def sample(self, sample_shape: int | Sequence[int] = (), context: Tensor | None = None,
               *, generator: torch.Generator | None = None) -> Tensor:
        with torch.no_grad():
            return self.rsample(sample_shape, context, generator=generator)
