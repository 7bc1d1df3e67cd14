r"""Variational inference: the evidence lower bound, the importance-weighted bound, a reverse-KL
loss, and amortised IAF posteriors.

For a model :math:`p(x, z)` and a posterior :math:`q(z \mid x)`, with :math:`z_k \sim q` and
importance weights :math:`w_k = p(x, z_k) / q(z_k \mid x)`,

.. math::
    \mathcal{L}_{\text{ELBO}} = \mathbb{E}_q[\log w]
    \;\le\; \mathcal{L}_K = \mathbb{E}\Big[\log \frac{1}{K} \sum_{k=1}^K w_k\Big]
    \;\le\; \log p(x),

where :math:`\log p(x) - \mathcal{L}_{\text{ELBO}} = \mathrm{KL}(q \,\|\, p(\cdot \mid x))`,
:math:`\mathcal{L}_K` grows with :math:`K` and tends to :math:`\log p(x)` (Burda et al., 2016).
Both estimators are reparameterised (pathwise): gradients reach the posterior's parameters, and
through its context the encoder that produced it.

A posterior is any of

- a flowkit density with ``sample_and_log_prob(sample_shape, context)``: a :class:`flowkit.Flow`
  (an IAF scores its own samples in one pass per layer) or a
  :class:`flowkit.flows.DiagonalNormal`, with or without a context;
- a :class:`torch.distributions.Distribution` with ``rsample``, Pyro's included
  (``Independent(Normal(loc, scale), 1)``, ``dist.Normal(loc, scale).to_event(1)``,
  ``MultivariateNormal``, ``flow.distribution(h)``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, Union

import torch
from torch import Tensor, nn
from torch.distributions import Distribution

from flowkit.errors import FlowkitTypeError, FlowkitValueError
from flowkit.flows import IAF, DiagonalNormal, Flow, FlowDistribution
from flowkit.transforms import Composite
from flowkit.validation import check_int, validation_enabled

__all__ = ["log_weights", "elbo", "iwae", "reverse_kl", "amortized_iaf"]

Posterior = Union[Flow, DiagonalNormal, Distribution]
LogDensity = Callable[[Tensor], Tensor]


def log_weights(
    log_joint: LogDensity,
    posterior: Posterior,
    samples: int = 1,
    *,
    context: Tensor | None = None,
    chunk: int | None = None,
) -> Tensor:
    r"""Log importance weights :math:`\log w_k = \log p(x, z_k) - \log q(z_k)`, :math:`z_k \sim q`.

    Arguments:
        log_joint: ``z -> log p(x, z)`` for the data being explained; it receives ``z`` of shape
            ``(samples, *batch, D)`` and returns ``(samples, *batch)``.
        posterior: the variational density :math:`q` (see the module docstring).
        samples: the number of draws :math:`K` per example.
        context: the context of a conditional flowkit posterior (an encoder's output for
            :math:`x`), shape ``(*batch, C)``; ``batch`` is its batch shape. A torch distribution
            carries its own batch shape and takes no context.
        chunk: draw the samples this many at a time (memory for ``chunk`` draws under
            ``torch.no_grad()``); the weights are the same estimator.

    Returns:
        ``(samples, *batch)`` log-weights, differentiable in the posterior's parameters and in
        ``log_joint``'s.

    Example:
        >>> from torch.distributions import Independent, Normal
        >>> q = Independent(Normal(torch.zeros(3, 2), torch.ones(3, 2)), 1)
        >>> log_p = lambda z: Independent(Normal(0.0, torch.ones(2)), 1).log_prob(z)
        >>> log_weights(log_p, q, 5).abs().max().item()   # q is p: every weight is 1
        0.0
    """
    samples = check_int("samples", samples, least=1, expected=">= 1")
    if not callable(log_joint):
        raise FlowkitTypeError(f"expected log_joint to be a function z -> log p(x, z), got {type(log_joint).__name__}")
    if chunk is not None:
        size = check_int("chunk", chunk, least=1, expected=">= 1")
        return torch.cat([log_weights(log_joint, posterior, min(size, samples - start), context=context)
                          for start in range(0, samples, size)])
    z, log_q = _draw(posterior, samples, context)
    log_p = log_joint(z)
    if not isinstance(log_p, Tensor) or log_p.shape != log_q.shape:
        got = tuple(log_p.shape) if isinstance(log_p, Tensor) else type(log_p).__name__
        raise FlowkitValueError(
            f"expected log_joint(z) for z of shape {tuple(z.shape)} to return shape {tuple(log_q.shape)} "
            f"(samples, *batch), got {got}; a torch posterior over a vector needs event_shape (D,), "
            "e.g. Independent(Normal(loc, scale), 1)"
        )
    if validation_enabled() and bool(torch.isnan(log_p).any()):
        raise FlowkitValueError("log_joint(z) returned NaN")
    return log_p - log_q


def elbo(
    log_joint: LogDensity, posterior: Posterior, samples: int = 1, *, context: Tensor | None = None
) -> Tensor:
    r"""The evidence lower bound, :math:`\frac{1}{K}\sum_k \log w_k`, one value per example.

    An unbiased estimate of :math:`\mathbb{E}_q[\log p(x, z) - \log q(z)] = \log p(x) -
    \mathrm{KL}(q \,\|\, p(\cdot \mid x))`; maximise ``elbo(...).mean()``. Arguments as in
    :func:`log_weights`.

    Example:
        >>> q = amortized_iaf(2, context_features=4, transforms=1, hidden_features=[16], seed=0)
        >>> h = torch.randn(8, 4)                                  # an encoder's output for 8 x
        >>> log_joint = lambda z: -0.5 * z.pow(2).sum(-1)          # any log p(x, z)
        >>> elbo(log_joint, q, samples=3, context=h).shape
        torch.Size([8])
    """
    return log_weights(log_joint, posterior, samples, context=context).mean(0)


def iwae(
    log_joint: LogDensity,
    posterior: Posterior,
    samples: int,
    *,
    context: Tensor | None = None,
    chunk: int | None = None,
) -> Tensor:
    r"""The importance-weighted bound :math:`\log \frac{1}{K} \sum_{k=1}^K w_k` (Burda et al., 2016),
    one value per example.

    Its expectation lies between the ELBO (:math:`K = 1`) and :math:`\log p(x)`, and rises to
    :math:`\log p(x)` as :math:`K` grows; with :math:`K` in the thousands it is the usual estimate of
    a latent-variable model's test log-likelihood. ``chunk`` draws the :math:`K` samples that many
    at a time (memory :math:`O(\text{chunk})` under ``torch.no_grad()``); the value is the same
    estimator. Other arguments as in :func:`log_weights`.

    Example:
        >>> from torch.distributions import Independent, Normal
        >>> q = Independent(Normal(torch.zeros(4, 2), 2 * torch.ones(4, 2)), 1)
        >>> log_joint = lambda z: Independent(Normal(0.0, torch.ones(2)), 1).log_prob(z)   # log p(x) = 0
        >>> _ = torch.manual_seed(0)
        >>> bound = iwae(log_joint, q, samples=5000, chunk=1000)
        >>> bool((bound < 0.05).all() and (bound > -0.1).all())
        True
    """
    weights = log_weights(log_joint, posterior, samples, context=context, chunk=chunk)
    return torch.logsumexp(weights, 0) - math.log(weights.shape[0])


def reverse_kl(
    log_density: LogDensity, posterior: Posterior, samples: int = 1, *, context: Tensor | None = None
) -> Tensor:
    r"""The reverse-KL loss for fitting :math:`q` to an unnormalised density
    :math:`\tilde p = Z p`: :math:`\frac{1}{K}\sum_k [\log q(z_k) - \log \tilde p(z_k)]`, one value
    per example.

    Its expectation is :math:`\mathrm{KL}(q \,\|\, p) - \log Z \ge -\log Z`, with equality exactly
    when :math:`q = p`: minimise ``reverse_kl(...).mean()``. It is the negative ELBO with
    ``log_density`` in the place of the joint (Rezende & Mohamed, 2015). ``log_density`` maps
    ``(samples, *batch, D) -> (samples, *batch)``, for instance :math:`-U(z)` for an energy
    :math:`U`.

    Example:
        >>> flow = flowkit.IAF(2, transforms=2, hidden_features=[16], seed=0)
        >>> log_density = lambda z: -0.5 * z.pow(2).sum(-1)        # N(0, I) times 2 pi
        >>> loss = reverse_kl(log_density, flow, samples=64).mean()
        >>> loss.backward()
    """
    return -elbo(log_density, posterior, samples, context=context)


def amortized_iaf(
    features: int,
    transforms: int = 2,
    hidden_features: int | Sequence[int] = (),
    *,
    context_features: int,
    transformer: str | nn.Module = "affine",
    permutation: str | None = "reverse",
    seed: int | None = None,
    **options: Any,
) -> Flow:
    r"""An amortised posterior :math:`q(z \mid x)` (Kingma et al., 2016): a diagonal Gaussian whose
    mean and scale are affine in a context :math:`h` that an encoder computes from :math:`x`
    (:class:`~flowkit.flows.DiagonalNormal`), followed by ``transforms`` IAF steps, each a MADE
    that sees :math:`z` and :math:`h`, with the order reversed between steps.

    ``transforms=0`` gives the diagonal Gaussian posterior of a plain VAE as a :class:`Flow`, so
    the two posteriors are used by the same code. ``flow.sample_and_log_prob(n, context=h)`` draws
    and scores in one pass per step, with shapes ``(n, *batch, features)`` and ``(n, *batch)``
    for ``h`` of shape ``(*batch, context_features)``. Other keywords (``bins``, ``batch_norm``,
    the MADE's options) go to :func:`flowkit.IAF`.

    The arguments come in the order of :func:`flowkit.IAF` (``features, transforms,
    hidden_features``), and ``context_features``, the width of the encoder's output, is required
    and keyword-only: a call in the old order, ``amortized_iaf(features, context_features, ...)``,
    raises a ``TypeError`` (a missing ``context_features``, or two values for ``transforms``)
    instead of taking the context width for the number of steps.

    Example:
        >>> q = amortized_iaf(2, 2, [32], context_features=5, seed=0)
        >>> h = torch.randn(3, 7, 5)
        >>> z, log_q = q.sample_and_log_prob(10, context=h)
        >>> z.shape, log_q.shape
        (torch.Size([10, 3, 7, 2]), torch.Size([10, 3, 7]))
    """
    context_features = check_int("context_features", context_features, least=1,
                                 expected="to be an int >= 1 (the encoder's output)")
    transforms = check_int("transforms", transforms, least=0)
    seed = None if seed is None else check_int("seed", seed, least=None)
    if transforms == 0 and (options or _given(hidden_features)):
        raise FlowkitValueError(
            "transforms=0 is the diagonal Gaussian alone: it takes no hidden_features or IAF options"
        )
    if transforms > 0 and not _given(hidden_features):
        raise FlowkitValueError("expected hidden_features, the widths of each IAF step's MADE")
    base = DiagonalNormal(features, context_features=context_features, seed=seed)
    if transforms == 0:
        return Flow(Composite([]), base, context_features=context_features)
    return IAF(features, transforms, hidden_features, transformer=transformer, context_features=context_features,
               permutation=permutation, base=base, seed=None if seed is None else seed + 1, **options)


def _given(hidden_features: int | Sequence[int]) -> bool:
    """Whether hidden widths were given: an int, or a non-empty sequence (``()`` is the default)."""
    return not (isinstance(hidden_features, Sequence) and not isinstance(hidden_features, str)
                and len(hidden_features) == 0)


def _draw(posterior: Posterior, samples: int, context: Tensor | None) -> tuple[Tensor, Tensor]:
    """``samples`` reparameterised draws of the posterior and their log-densities, ``(samples, *batch)``."""
    if isinstance(posterior, FlowDistribution):
        if context is not None:
            raise FlowkitValueError("flow.distribution(context) already holds its context; pass no context")
        posterior, context = posterior.flow, posterior.context
    if isinstance(posterior, Distribution):
        if context is not None:
            raise FlowkitValueError(
                f"a torch distribution ({type(posterior).__name__}) holds its own parameters and takes no "
                "context; context is for flowkit posteriors"
            )
        if posterior.has_rsample:
            z = posterior.rsample((samples,))
        elif torch.is_grad_enabled():
            raise FlowkitValueError(
                f"the posterior {type(posterior).__name__} has no rsample: the bounds are reparameterised "
                "estimators; use a reparameterisable posterior, or evaluate under torch.no_grad()"
            )
        else:
            z = posterior.sample((samples,))
        return z, posterior.log_prob(z)
    if hasattr(posterior, "sample_and_log_prob"):
        return posterior.sample_and_log_prob(samples, context)
    raise FlowkitTypeError(
        "expected the posterior to be a flowkit Flow or DiagonalNormal or a torch Distribution, "
        f"got {type(posterior).__name__}"
    )
