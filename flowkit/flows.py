r"""Flows: a base distribution and a transform, with MAF and IAF built on the shared MADE."""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Mapping, Sequence
from dataclasses import MISSING, dataclass, field, fields
from types import MappingProxyType
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor, nn
from torch.distributions import Distribution, constraints

from flowkit.embedding import context_widths, embed
from flowkit.errors import FlowkitTypeError, FlowkitValueError
from flowkit.made import MADE
from flowkit.transforms import (
    BatchNorm,
    Composite,
    Inverse,
    LULinear,
    MaskedAutoregressive,
    RandomPermutation,
    ReversePermutation,
    Transform,
)
from flowkit.transforms.autoregressive import (
    TRANSFORMER_OPTIONS,
    Affine,
    make_transformer,
    resolve_transformer_options,
)
from flowkit.transforms.base import check_features
from flowkit.validation import check_context, check_finite, check_int, check_ints, check_option, checked
from flowkit.validation import sample_shape as as_sample_shape

__all__ = ["FlowBase", "StandardNormal", "DiagonalNormal", "Flow", "FlowDistribution", "MAF", "IAF",
           "AutoregressiveFlowBuilder", "FlowFactory"]


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
        scale, loc = self.affine._scale_shift(self._params(context))
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


_ARGUMENTS = r"""
    Arguments:
        features: the number of features :math:`D`.
        transforms: the number of autoregressive layers.
        hidden_features: the hidden widths of each layer's MADE.
        transformer: ``"affine"`` or ``"spline"`` (rational-quadratic, Durkan et al. 2019), or a
            transformer module (shared by every layer).
        context_features: the width of the context (conditional flow); 0 for none.
        batch_norm: insert :class:`~flowkit.transforms.BatchNorm` between layers.
        permutation: ``"reverse"``, ``"random"`` or ``None`` between layers.
        linear: ``"lu"`` for an :class:`~flowkit.transforms.LULinear` between layers (after the
            permutation; it starts as the identity), or ``None``.
        identity_init: whether every autoregressive layer starts within a tiny distance of the
            identity (see :class:`~flowkit.transforms.MaskedAutoregressive`), so that the untrained
            flow is close to its base; ``False`` keeps the MADE's initialisation.
        base: the base density; a standard normal by default (a :class:`flowkit.MADEMoG` makes
            a MAF MoG).
        seed: the seed of every layer's masks and weights (layer ``i`` uses ``seed + i``).
        bins, bound: the spline's number of bins and interval :math:`[-B, B]`.
        min_bin_width, min_bin_height, min_derivative: the spline's smallest bin width and height
            (fractions of :math:`2B`) and smallest interior derivative.
        eps: the affine transformer's smallest scale :math:`\epsilon`.
        made_options: further keywords of :class:`flowkit.MADE`.

    The transformer's options (``bins`` .. ``eps``) are those of
    :class:`~flowkit.transforms.MaskedAutoregressive`, by the same names; ``None`` keeps the
    transformer's default (8 bins, :math:`B = 3`, ``1e-3`` for the others). An option of the other
    transformer (``bins`` with ``"affine"``) raises :class:`~flowkit.FlowkitValueError`.
"""

_POSITIONAL = ("features", "transforms", "hidden_features")
# set by every layer itself, not through the MADE's keywords
_LAYER_SET = frozenset({"features", "hidden_features", "num_params", "context_features", "seed", "transformer_options"})


def _made_keywords() -> frozenset[str] | None:
    """The MADE keywords a layer passes on (``None``: any, if the MADE ever takes ``**options``)."""
    parameters = inspect.signature(MADE).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return None
    return frozenset(p.name for p in parameters) - _LAYER_SET


def _check_base(base: Any) -> None:
    if not isinstance(base, nn.Module) or not isinstance(base, FlowBase):
        raise FlowkitTypeError(
            f"expected base to be a density module with features, log_prob and sample (such as "
            f"StandardNormal or MADEMoG), got {type(base).__name__}"
        )


@dataclass(frozen=True, kw_only=True)
class AutoregressiveFlowBuilder:
    r"""The options of a MAF or an IAF, checked once, and the flow they describe: the one
    definition behind :func:`MAF` (:meth:`flow` with ``inverse=False``) and :func:`IAF`
    (``inverse=True``, every layer inverted), whose signatures are made from its fields.

    Data to noise, for ``transforms = K`` (:math:`A_i` the autoregressive layers, each a
    :class:`~flowkit.transforms.MaskedAutoregressive`, or its
    :class:`~flowkit.transforms.Inverse` in an IAF):

    .. math:: A_1,\ [\mathrm{BN},]\ [\Pi_2,]\ [\mathrm{LU}_2,]\ A_2,\ \dots,\
        [\mathrm{BN},]\ [\Pi_K,]\ [\mathrm{LU}_K,]\ A_K

    Every field is keyword-only; ``hidden_features`` is kept as a tuple of ints, ``made_options``
    as a read-only mapping. Construction raises :class:`~flowkit.FlowkitValueError` or
    :class:`~flowkit.FlowkitTypeError` naming the first bad option, before anything is built (no
    random number is drawn). :meth:`layers` builds new layers on every call; :meth:`flow` uses
    ``base`` itself (not a copy), so two flows built with one ``base`` share it. The arguments
    (below) are those of :func:`MAF` and :func:`IAF`, except ``made_options``, a dict here.
        """

    features: int
    transforms: int
    hidden_features: int | Sequence[int]
    transformer: str | nn.Module = "affine"
    context_features: int = 0
    batch_norm: bool = False
    permutation: str | None = "reverse"
    linear: str | None = None
    identity_init: bool = True
    base: nn.Module | None = None
    seed: int | None = None
    bins: int | None = None
    bound: float | None = None
    min_bin_width: float | None = None
    min_bin_height: float | None = None
    min_derivative: float | None = None
    eps: float | None = None
    made_options: Mapping[str, Any] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        def normalise(name: str, value: Any) -> None:
            object.__setattr__(self, name, value)

        normalise("features", check_int("features", self.features, least=1))
        normalise("transforms", check_int("transforms", self.transforms, least=1))
        normalise("hidden_features", check_ints("hidden_features", self.hidden_features, least=1,
                                                each="every hidden width", expected=">= 1"))
        normalise("context_features", check_int("context_features", self.context_features, least=0))
        check_option("permutation", self.permutation, ("reverse", "random", None))
        check_option("linear", self.linear, ("lu", None))
        if self.seed is not None:
            normalise("seed", check_int("seed", self.seed, least=None))
        options = resolve_transformer_options(self.transformer, self._named_transformer_options())
        make_transformer(self.transformer, **options)  # checks the options' values; draws nothing
        if not isinstance(self.made_options, Mapping):
            raise FlowkitTypeError(f"expected made_options to be a dict of MADE keywords, "
                                   f"got {type(self.made_options).__name__}")
        known = _made_keywords()
        unknown = sorted(set(self.made_options) - known) if known is not None else []
        if unknown:
            hint = ("; give the transformer's options as keywords (bins=, bound=, ...)"
                    if "transformer_options" in unknown else "")
            raise FlowkitTypeError(
                f"unexpected option(s) {', '.join(unknown)}: the further options of a MAF or IAF are the "
                f"MADE's ({', '.join(sorted(known))}){hint}"
            )
        normalise("made_options", MappingProxyType(dict(self.made_options)))
        if self.base is not None:
            _check_base(self.base)
            if self.base.features != self.features:
                raise FlowkitValueError(f"the base has {self.base.features} features but the flow "
                                        f"features={self.features}: expected the same number")

    def _named_transformer_options(self) -> dict[str, Any]:
        return {name: getattr(self, name) for names in TRANSFORMER_OPTIONS.values() for name in names}

    @property
    def transformer_options(self) -> dict[str, Any]:
        """The transformer's options that were given (not ``None``), by name."""
        return resolve_transformer_options(self.transformer, self._named_transformer_options())

    def layers(self, inverse: bool = False) -> Composite:
        """The transform, data to noise: new layers, MAF layers or (``inverse``) IAF layers."""
        features, transforms, seed = self.features, self.transforms, self.seed
        layers: list[Transform] = []
        for i in range(transforms):
            if i > 0 and self.permutation == "reverse":
                layers.append(ReversePermutation(features))
            elif i > 0 and self.permutation == "random":
                layers.append(RandomPermutation(features, seed=None if seed is None else seed + 1000 + i))
            if i > 0 and self.linear == "lu":
                layers.append(LULinear(features))
            layer = MaskedAutoregressive(
                features, self.hidden_features, self.transformer, context_features=self.context_features,
                identity_init=self.identity_init, seed=None if seed is None else seed + i,
                **self.transformer_options, **self.made_options,
            )
            layers.append(Inverse(layer) if inverse else layer)
            if self.batch_norm and i < transforms - 1:
                layers.append(BatchNorm(features))
        return Composite(layers)

    def flow(self, inverse: bool = False) -> Flow:
        """The flow: :meth:`layers` over ``base`` (a new standard normal when it is ``None``)."""
        base = StandardNormal(self.features) if self.base is None else self.base
        return Flow(self.layers(inverse), base, context_features=self.context_features)


# the options are described once, in _ARGUMENTS: here, and in MAF's and IAF's docstrings
AutoregressiveFlowBuilder.__doc__ = AutoregressiveFlowBuilder.__doc__.rstrip() + "\n" + _ARGUMENTS + r"""
    Example:
        >>> builder = AutoregressiveFlowBuilder(features=3, transforms=2, hidden_features=[16],
        ...                                     transformer="spline", bins=4, seed=0)
        >>> builder.hidden_features, builder.transformer_options
        ((16,), {'bins': 4})
        >>> [type(t).__name__ for t in builder.layers(inverse=True).transforms]
        ['Inverse', 'ReversePermutation', 'Inverse']
        >>> builder.flow().log_prob(torch.randn(5, 3)).shape
        torch.Size([5])
    """


class FlowFactory(Protocol):
    """The static type of :func:`MAF` and :func:`IAF`: the required arguments and the result
    (their full signature, for ``inspect.signature`` and ``help``, is the builder's)."""

    def __call__(self, features: int, transforms: int, hidden_features: int | Sequence[int],
                 **options: Any) -> Flow: ...


def _factory(name: str, inverse: bool, doc: str) -> FlowFactory:
    """``MAF`` or ``IAF``: a function whose signature is :class:`AutoregressiveFlowBuilder`'s fields
    (``features, transforms, hidden_features``, then the options keyword-only, then
    ``**made_options``), which builds ``AutoregressiveFlowBuilder(...).flow(inverse)``."""
    P = inspect.Parameter
    parameters = [
        P(f.name, P.POSITIONAL_OR_KEYWORD if f.name in _POSITIONAL else P.KEYWORD_ONLY, annotation=f.type,
          default=P.empty if f.default is MISSING else f.default)
        for f in fields(AutoregressiveFlowBuilder) if f.name != "made_options"
    ]
    signature = inspect.Signature([*parameters, P("made_options", P.VAR_KEYWORD, annotation="Any")],
                                  return_annotation="Flow")

    def factory(*args: Any, **kwargs: Any) -> Flow:
        try:
            arguments = signature.bind(*args, **kwargs).arguments
        except TypeError as error:
            raise FlowkitTypeError(f"{name}(): {error}") from None
        return AutoregressiveFlowBuilder(**arguments).flow(inverse=inverse)

    factory.__name__ = factory.__qualname__ = name
    factory.__doc__ = doc
    factory.__signature__ = signature  # type: ignore[attr-defined]
    factory.__annotations__ = {p.name: p.annotation for p in signature.parameters.values()} | {"return": "Flow"}
    return factory


MAF = _factory("MAF", False, r"""A masked autoregressive flow (Papamakarios et al., 2017): ``transforms``
    MADE-conditioned layers, data to noise in one pass each, with a permutation between layers
    (reversing the order, as in the paper, or random), optionally followed by a learned
    LU-decomposed linear map, and optional batch norm between them.

    The layers, data to noise, for ``transforms = K`` (:math:`A_i` the autoregressive layers):

    .. math:: A_1,\ [\mathrm{BN},]\ [\Pi_2,]\ [\mathrm{LU}_2,]\ A_2,\ \dots,\
        [\mathrm{BN},]\ [\Pi_K,]\ [\mathrm{LU}_K,]\ A_K

    with batch norm when ``batch_norm``, the permutation :math:`\Pi_i` unless ``permutation`` is
    ``None``, and :class:`~flowkit.transforms.LULinear` when ``linear="lu"``. A random permutation
    followed by an LU layer is the linear step of Durkan et al., *Neural Spline Flows* (2019),
    who also put one before the first and after the last layer; here it goes between layers only,
    like the permutations (a flow of one layer has none).

    ``MAF(...)`` is ``AutoregressiveFlowBuilder(...).flow()`` (see
    :class:`AutoregressiveFlowBuilder`, which checks the options).
""" + _ARGUMENTS + r"""
    Example:
        >>> flow = MAF(3, transforms=2, hidden_features=[16], transformer="spline", bins=4, seed=0)
        >>> flow.log_prob(torch.randn(5, 3)).shape
        torch.Size([5])
        >>> lu = MAF(3, transforms=2, hidden_features=[16], permutation="random", linear="lu", seed=0)
        >>> [type(t).__name__ for t in lu.transform.transforms]
        ['MaskedAutoregressive', 'RandomPermutation', 'LULinear', 'MaskedAutoregressive']
    """)

IAF = _factory("IAF", True, r"""An inverse autoregressive flow (Kingma et al., 2016): each layer is the inverse of a MAF
    layer, so sampling, and scoring the samples (:meth:`Flow.sample_and_log_prob`), take one pass
    per layer; the density of an arbitrary point goes feature by feature. Same options as
    :func:`MAF`; ``IAF(...)`` is ``AutoregressiveFlowBuilder(...).flow(inverse=True)``.
""" + _ARGUMENTS + r"""
    Example:
        >>> flow = IAF(3, transforms=2, hidden_features=[16], seed=0)
        >>> x, log_p = flow.sample_and_log_prob(5)
        >>> torch.allclose(flow.log_prob(x), log_p, atol=1e-4)
        True
    """)
