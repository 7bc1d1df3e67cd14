r"""Flows: a base distribution and a transform, and the flow as a torch distribution. The bases live
in :mod:`flowkit.bases`, the MAF and IAF builders in :mod:`flowkit.builders`; both are re-exported here."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.distributions import Distribution, constraints

from flowkit.bases import DiagonalNormal, FlowBase, StandardNormal  # noqa: F401 (re-exported)
from flowkit.embedding import context_widths, embed
from flowkit.errors import FlowkitTypeError, FlowkitValueError
from flowkit.transforms import (
    Transform,
)
from flowkit.transforms.base import check_features
from flowkit.validation import check_context, check_finite, checked
from flowkit.validation import sample_shape as as_sample_shape

# The bases (flowkit.bases) and the builders (flowkit.builders) are importable from here too.
__all__ = ["Flow", "FlowDistribution"]


def _context_width(module: nn.Module) -> int:
    """The context width a module and its parts take: the largest ``context_features`` among them
    (0 when none is conditional); parts of different nonzero widths raise."""
    widths = {part.context_features for part in module.modules()
              if isinstance(getattr(part, "context_features", None), int) and part.context_features > 0}
    if len(widths) > 1:
        raise FlowkitValueError(f"the parts of {type(module).__name__} take contexts of different widths "
                                f"{sorted(widths)}: expected one width")
    return widths.pop() if widths else 0


class Flow(nn.Module):
    r"""A normalising flow: a base density :math:`p_0` and a transform :math:`f` (data to noise),

    .. math:: \log p(x \mid c) = \log p_0(f(x; c) \mid c) + \log|\det J_f(x; c)|

    Arguments:
        transform: a :class:`~flowkit.transforms.Transform`.
        base: a density with ``log_prob(z, context)`` and ``sample(sample_shape, context)``
            (and ``rsample`` for reparameterised samples), such as :class:`StandardNormal` or
            :class:`flowkit.MADEMoG` (a MAF MoG).
        context_features: the width of the context the flow requires; by default inferred from its
            parts (the conditioners of the transform and a conditional base, which must agree),
            0 when none takes a context. With an ``embedding``, the width of the raw context that
            the embedding takes (required).
        embedding: a module applied to the context once, before any layer sees it, and trained
            with the flow (a summary network of simulation-based inference): it maps a context
            ``(*batch, context_features)`` to ``(*batch, C)``, ``C`` the width the parts take.

    Shapes follow torch: ``log_prob(x: (*batch, D), context: (*batch, C)) -> (*batch,)``;
    ``sample(sample_shape, context)`` returns ``sample_shape + context.shape[:-1] + (D,)``.

    Example:
        >>> flow = flowkit.MAF(2, transforms=2, hidden_features=[16], seed=0)
        >>> x = flow.sample(4)
        >>> x.shape, flow.log_prob(x).shape
        (torch.Size([4, 2]), torch.Size([4]))
        >>> conditional = flowkit.MAF(2, 2, [16], context_features=4, seed=0)
        >>> summary = torch.nn.Sequential(torch.nn.Linear(10, 4), torch.nn.Tanh())  # a 10-wide raw context
        >>> flow = Flow(conditional.transform, conditional.base, context_features=10, embedding=summary)
        >>> flow.log_prob(x, torch.randn(4, 10)).shape, flow.sample(3, torch.randn(10)).shape
        (torch.Size([4]), torch.Size([3, 2]))
    """

    def __init__(self, transform: Transform, base: nn.Module, *, context_features: int | None = None,
                 embedding: nn.Module | None = None):
        super().__init__()
        if not isinstance(transform, nn.Module) or not callable(getattr(transform, "inverse", None)):
            raise FlowkitTypeError(
                f"expected transform to be a flowkit Transform (a module with forward and inverse), "
                f"got {type(transform).__name__}"
            )
        _check_base(base)
        widths = {part: width for part, width in (("transform", _context_width(transform)),
                                                  ("base", _context_width(base))) if width}
        if len(set(widths.values())) > 1:
            raise FlowkitValueError(
                f"the transform takes a context of width {widths['transform']} but the base one of width "
                f"{widths['base']}: expected the same width"
            )
        inferred = next(iter(widths.values()), 0)
        context_features, embedded = context_widths(embedding, inferred, context_features, "flow")
        if inferred and inferred != context_features and embedding is None:
            part = next(iter(widths))
            raise FlowkitValueError(
                f"the {part} is conditional with context_features={inferred} but the flow has "
                f"context_features={context_features}: expected the same width (or leave it out to infer it)"
            )
        self.transform = transform
        self.base = base
        self.embedding = embedding
        self.features = base.features
        self.context_features = context_features
        self.embedded_features = embedded

    def _embed(self, context: Tensor | None) -> Tensor | None:
        """The context as the parts see it: through the embedding, if any, once per call."""
        return embed(self.embedding, context, self.embedded_features)

    def log_prob(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """Exact log-density in nats, one value per example."""
        check_features("x", x, self.features)
        check_finite("x", x)
        check_context(context, self.context_features, x.shape[:-1])
        context = self._embed(context)
        with checked():  # x and the context are read once, here, not again in every layer
            z, logabsdet = self.transform(x, context)
            return self.base.log_prob(z, self._base_context(context)) + logabsdet

    def _base_context(self, context: Tensor | None) -> Tensor | None:
        # A conditional flow may have an unconditional base (a standard normal, a plain MADE MoG).
        return context if getattr(self.base, "context_features", 0) else None

    def rsample(self, sample_shape: int | Sequence[int] = (), context: Tensor | None = None,
                *, generator: torch.Generator | None = None) -> Tensor:
        """Reparameterised samples: gradients reach the transforms' parameters, and the base's
        when it has an ``rsample`` (a standard normal has no parameters; a MADE MoG has none)."""
        return self._draw(sample_shape, context, generator)[0]

    def sample(self, sample_shape: int | Sequence[int] = (), context: Tensor | None = None,
               *, generator: torch.Generator | None = None) -> Tensor:
        """Samples without gradients."""
        with torch.no_grad():
            return self._draw(sample_shape, context, generator, reparameterised=False)[0]

    def sample_and_log_prob(self, sample_shape: int | Sequence[int] = (), context: Tensor | None = None,
                            *, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        r"""Samples and their log-densities, in the noise-to-data direction only:
        :math:`\log p(x) = \log p_0(z) - \log|\det J_{f^{-1}}(z)|`. One pass for an IAF.
        Gradients flow (reparameterised) when the base allows it."""
        return self._draw(sample_shape, context, generator)

    def _draw(self, sample_shape, context=None, generator=None, reparameterised=True) -> tuple[Tensor, Tensor]:
        check_context(context, self.context_features, torch.Size())
        context = self._embed(context)
        shape = as_sample_shape(sample_shape)
        expanded = None if context is None else context.expand(*shape, *context.shape)
        if self._base_context(context) is None:  # an unconditional base draws the context's batch too
            draw_args = one_pass_args = (shape if expanded is None else expanded.shape[:-1], None)
        else:
            draw_args, one_pass_args = ((), expanded), (shape, context)
        if hasattr(self.base, "sample_and_log_prob"):
            # draws and scores in one go; a conditional base broadcasts its context over the samples itself
            z, log_base = self.base.sample_and_log_prob(*one_pass_args, generator=generator)
        else:
            draw = getattr(self.base, "rsample" if reparameterised and hasattr(self.base, "rsample") else "sample")
            z = draw(*draw_args, generator=generator)
            log_base = self.base.log_prob(z, draw_args[1])
        x, logabsdet = self.transform.inverse(z, expanded)
        return x, log_base - logabsdet

    def distribution(self, context: Tensor | None = None) -> FlowDistribution:
        """The flow as a :class:`torch.distributions.Distribution` (batch shape of the context).

        Where Pyro is installed, the object is also a Pyro distribution (it mixes in Pyro's
        ``TorchDistributionMixin``), so ``pyro.sample("z", flow.distribution(h))`` works in models
        and guides, reparameterised, with ``SVI`` and ``Trace_ELBO``."""
        check_context(context, self.context_features, torch.Size())
        return _distribution_class()(self, context)


class FlowDistribution(Distribution):
    """A :class:`Flow` (with a fixed context) behind torch's ``Distribution`` interface."""

    arg_constraints: dict = {}
    support = constraints.real_vector
    has_rsample = True

    def __init__(self, flow: Flow, context: Tensor | None = None):
        self.flow, self.context = flow, context
        self.has_rsample = hasattr(flow.base, "rsample")
        batch = torch.Size() if context is None else context.shape[:-1]
        super().__init__(batch_shape=batch, event_shape=torch.Size([flow.features]), validate_args=False)

    def rsample(self, sample_shape: torch.Size = torch.Size()) -> Tensor:
        return self.flow.rsample(sample_shape, self.context)

    def sample(self, sample_shape: torch.Size = torch.Size()) -> Tensor:
        return self.flow.sample(sample_shape, self.context)

    def log_prob(self, value: Tensor) -> Tensor:
        return self.flow.log_prob(value, self.context)

    def __call__(self, sample_shape: torch.Size = torch.Size()) -> Tensor:
        """A draw, reparameterised when possible: the calling convention of Pyro's ``pyro.sample``."""
        return self.rsample(sample_shape) if self.has_rsample else self.sample(sample_shape)


@functools.cache
def _distribution_class() -> type[FlowDistribution]:
    try:
        from pyro.distributions.torch_distribution import TorchDistributionMixin
    except ImportError:
        return FlowDistribution
    return type("PyroFlowDistribution", (FlowDistribution, TorchDistributionMixin), {"__module__": __name__})


def _check_base(base: Any) -> None:
    if not isinstance(base, nn.Module) or not isinstance(base, FlowBase):
        raise FlowkitTypeError(
            f"expected base to be a density module with features, log_prob and sample (such as "
            f"StandardNormal or MADEMoG), got {type(base).__name__}"
        )


# the builders make Flows: imported last, once Flow exists
from flowkit.builders import IAF, MAF, AutoregressiveFlowBuilder, FlowFactory  # noqa: E402, F401
