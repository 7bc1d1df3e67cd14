r"""The MAF and IAF builders: one typed description of an autoregressive flow
(:class:`AutoregressiveFlowBuilder`) and the two factories made from its fields."""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from dataclasses import MISSING, dataclass, field, fields
from types import MappingProxyType
from typing import Any, Protocol

from torch import nn

from flowkit.bases import StandardNormal
from flowkit.errors import FlowkitTypeError, FlowkitValueError
from flowkit.flows import Flow, _check_base
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
    make_transformer,
    resolve_transformer_options,
)
from flowkit.validation import check_int, check_ints, check_option

__all__ = ["MAF", "IAF", "AutoregressiveFlowBuilder", "FlowFactory"]


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
