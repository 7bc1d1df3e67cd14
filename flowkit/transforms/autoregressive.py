r"""Masked autoregressive transforms (MAF, and IAF as their inverse) on the shared MADE.

Papamakarios, Pavlakou & Murray, *Masked Autoregressive Flow for Density Estimation* (2017);
Kingma et al., *Improved Variational Inference with Inverse Autoregressive Flow* (2016).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from flowkit.engine import autoregressive
from flowkit.errors import FlowkitTypeError, FlowkitValueError
from flowkit.made import MADE
from flowkit.transforms.base import Transform, Transformer, check_features
from flowkit.transforms.spline import RationalQuadraticSpline
from flowkit.validation import broadcast_batch, check_context, check_finite, check_float, check_option

__all__ = ["Affine", "MaskedAutoregressive", "make_transformer", "resolve_transformer_options", "TRANSFORMER_OPTIONS",
           "IDENTITY_WEIGHT_BOUND"]

IDENTITY_WEIGHT_BOUND = 1e-3
"""The largest output weight of a MADE when a :class:`MaskedAutoregressive` starts at the identity."""


class Affine(Transformer):
    r"""The affine transformer, data to noise: :math:`y = s x + t`, :math:`\log|dy/dx| = \log s`.

    The scale is :math:`s = \operatorname{softplus}(u) + \epsilon`: positive, growing linearly
    for large :math:`u` (no overflow, unlike :math:`e^u`) and bounded away from zero by
    :math:`\epsilon`, so the inverse :math:`x = (y - t) / s` is always well conditioned. This is
    the parameterisation of nflows' ``MaskedAffineAutoregressiveTransform`` (0.14), with the same
    layout: ``params[..., 0]`` is :math:`u`, ``params[..., 1]`` is :math:`t`.

    Example:
        >>> affine = Affine()
        >>> y, logabsdet = affine(torch.tensor([1.0]), torch.tensor([[0.0, 2.0]]))
        >>> torch.allclose(affine.inverse(y, torch.tensor([[0.0, 2.0]]))[0], torch.tensor([1.0]))
        True
    """

    num_params = 2

    def __init__(self, eps: float = 1e-3):
        super().__init__()
        self.eps = check_float("eps", eps, above=0)

    def identity_params(self) -> Tensor:
        r"""The parameters of the identity, ``(2,)``: :math:`u` with
        :math:`\operatorname{softplus}(u) + \epsilon = 1`, and :math:`t = 0`; in float64.

        Example:
            >>> affine = Affine()
            >>> y, logabsdet = affine(torch.tensor([0.7], dtype=torch.float64), affine.identity_params()[None])
            >>> y.item(), abs(logabsdet.item()) < 1e-15
            (0.7, True)
        """
        if self.eps >= 1:
            raise FlowkitValueError(f"a scale softplus(u) + eps with eps = {self.eps} >= 1 cannot be 1: no identity")
        return torch.tensor([math.log(math.expm1(1.0 - self.eps)), 0.0], dtype=torch.float64)

    def scale_shift(self, params: Tensor) -> tuple[Tensor, Tensor]:
        r"""The scale :math:`\sigma = \operatorname{softplus}(u) + \epsilon` and the shift :math:`t` of
        parameters ``params: (*shape, 2)`` laid out as ``[u, t]``, each ``(*shape)``."""
        # one copy into (2, *shape), contiguous: softplus and the products on the strided views
        # params[..., 0] and params[..., 1] run several times slower on a CPU
        raw, shift = params.movedim(-1, 0).contiguous()
        return F.softplus(raw) + self.eps, shift

    def forward(self, x: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        scale, shift = self.scale_shift(params)
        return x * scale + shift, torch.log(scale)

    def inverse(self, y: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        scale, shift = self.scale_shift(params)
        return (y - shift) / scale, -torch.log(scale)


TRANSFORMER_OPTIONS: dict[str, tuple[str, ...]] = {
    "affine": ("eps",),
    "spline": ("bins", "bound", "min_bin_width", "min_bin_height", "min_derivative"),
}
"""The options of each named transformer: the keywords of :class:`Affine` and of
:class:`~flowkit.transforms.RationalQuadraticSpline`, spelled the same on
:class:`MaskedAutoregressive`, :func:`flowkit.MAF` and :func:`flowkit.IAF`."""

_SPLINE_OPTIONS = TRANSFORMER_OPTIONS["spline"]


def resolve_transformer_options(
    transformer: str | nn.Module,
    options: Mapping[str, Any] | None = None,
    transformer_options: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The options of ``transformer``, checked, from keywords or from a dict (not both).

    Arguments:
        transformer: ``"affine"``, ``"spline"`` or a transformer module (which takes no options
            here: it was built with its own).
        options: the options as keywords, by the names of :data:`TRANSFORMER_OPTIONS`; ``None``
            for an option that was not given.
        transformer_options: the same options as one dict (the older spelling of
            :class:`MaskedAutoregressive`); every value in it counts as given.

    Raises :class:`~flowkit.FlowkitValueError` for an unknown transformer name, for options given
    both ways, for an option of the other transformer and for options with a transformer module,
    and :class:`~flowkit.FlowkitTypeError` for a name that neither transformer takes; each message
    names the options.

    Example:
        >>> resolve_transformer_options("spline", {"bins": 4, "bound": None})
        {'bins': 4}
        >>> resolve_transformer_options("affine", {"bins": 4})
        Traceback (most recent call last):
        ...
        flowkit.errors.FlowkitValueError: bins apply to the spline transformer, not to 'affine'
    """
    given = {name: value for name, value in (options or {}).items() if value is not None}
    if transformer_options is not None:
        if not isinstance(transformer_options, Mapping):
            raise FlowkitTypeError(
                f"expected transformer_options to be a dict of the transformer's options, "
                f"got {type(transformer_options).__name__}"
            )
        if given:
            raise FlowkitValueError(
                f"{', '.join(sorted(given))} given both as keywords and with transformer_options: "
                "give the transformer's options one way (the keywords, e.g. bins=8, bound=3.0)"
            )
        given = dict(transformer_options)
    if isinstance(transformer, nn.Module):
        if given:
            raise FlowkitValueError(
                f"{', '.join(sorted(given))} are options of the named transformers 'affine' and 'spline'; "
                f"a transformer module ({type(transformer).__name__}) is built with its own options"
            )
        return {}
    check_option("transformer", transformer, tuple(TRANSFORMER_OPTIONS))
    known = TRANSFORMER_OPTIONS[transformer]
    for other, names in TRANSFORMER_OPTIONS.items():
        foreign = sorted(set(given) & set(names) - set(known))
        if foreign:
            raise FlowkitValueError(
                f"{', '.join(foreign)} apply to the {other} transformer, not to {transformer!r}"
            )
    unknown = sorted(set(given) - set(known))
    if unknown:
        raise FlowkitTypeError(
            f"unexpected option(s) {', '.join(unknown)} for the {transformer!r} transformer; "
            f"it takes {', '.join(sorted(known))}"
        )
    return given


def make_transformer(transformer: str | Transformer, **options: Any) -> Transformer:
    """An elementwise transformer (:class:`~flowkit.transforms.Transformer`) from its name
    (``"affine"`` or ``"spline"``) and options (checked by :func:`resolve_transformer_options`),
    or the given instance (with no options). A module that is not a ``Transformer`` but has
    ``params``, ``forward(x, params)`` and ``inverse(y, params)`` is taken as one."""
    options = resolve_transformer_options(transformer, transformer_options=options)
    if isinstance(transformer, nn.Module):
        missing = [name for name in ("num_params", "forward", "inverse") if not hasattr(transformer, name)]
        if missing:
            raise FlowkitTypeError(
                f"expected the transformer module to have params, forward(x, params) and inverse(y, params); "
                f"{type(transformer).__name__} has no {', '.join(missing)}"
            )
        return transformer
    return Affine(**options) if transformer == "affine" else RationalQuadraticSpline(**options)


class MaskedAutoregressive(Transform):
    r"""An autoregressive transform whose elementwise transformer is conditioned by a MADE.

    Data to noise, in one network pass: :math:`y_i = \tau(x_i; \theta_i(x_{<i}, c))`, with
    :math:`\log|\det J| = \sum_i \log|\partial \tau / \partial x_i|` (the Jacobian is triangular in
    the MADE's ordering). Noise to data goes feature by feature through
    :func:`flowkit.engine.autoregressive`, exactly. Used as is, it is a MAF layer; wrapped in
    :class:`~flowkit.transforms.Inverse`, an IAF layer.

    Arguments:
        features: the number of features :math:`D`.
        hidden_features: the hidden widths of the MADE.
        transformer: ``"affine"``, ``"spline"`` or a transformer module (with ``num_params``,
            ``forward(x, params)`` and ``inverse(y, params)``, elementwise).
        context_features: the width of the context (0: unconditional).
        transformer_options: the transformer's options as one dict (``{"bins": 8}``), the older
            spelling of the keywords below; not together with them.
        identity_init: start within a tiny distance of the identity (see below); ``False`` keeps
            the MADE's own initialisation of its output layer.
        bins, bound, min_bin_width, min_bin_height, min_derivative: the spline's options (see
            :class:`~flowkit.transforms.RationalQuadraticSpline`): :math:`K` bins on
            :math:`[-B, B]`, the smallest bin width and height (fractions of :math:`2B`) and the
            smallest interior derivative; ``None`` keeps the spline's default (8 bins,
            :math:`B = 3`, ``1e-3``).
        eps: the affine transformer's smallest scale :math:`\epsilon` (see :class:`Affine`);
            ``None`` keeps ``1e-3``.
        made_options: any keyword of :class:`flowkit.MADE` (``order``, ``hidden_degrees``,
            ``activation``, ``direct``, ``seed``, ...).

    The transformer's options have the same names here as on :func:`flowkit.MAF` and
    :func:`flowkit.IAF`. An option of the other transformer (``bins`` with ``"affine"``), any
    option with a transformer module, or the keywords together with ``transformer_options`` raise
    :class:`~flowkit.FlowkitValueError` naming them.

    With ``identity_init`` (the default) the MADE's output layer starts with its bias equal to the
    transformer's ``identity_params()`` for every feature and its weights rescaled to at most
    ``IDENTITY_WEIGHT_BOUND`` (:math:`10^{-3}`, the scale of nflows' zero initialisation of
    residual blocks) in magnitude, keeping the MADE's seeded draw; the direct connection, if any,
    starts at zero. Every output is then the identity's parameter plus a perturbation of about
    :math:`10^{-3} \sqrt{H}`, so an untrained flow stays close to its base whatever its depth
    (layers that start far from the identity compound their scales: an untrained 5-layer affine
    MAF of 63 features drew samples up to :math:`10^{13}`), while no weight is zero and every
    weight receives a gradient. The hidden layers keep the MADE's initialisation. A transformer
    module without ``identity_params`` keeps the MADE's initialisation throughout.

    Example:
        >>> layer = MaskedAutoregressive(3, [16], seed=0)
        >>> x = torch.randn(5, 3)
        >>> y, logabsdet = layer(x)
        >>> torch.allclose(layer.inverse(y)[0], x, atol=1e-5)
        True
        >>> spline = MaskedAutoregressive(3, [16], "spline", bins=4, bound=2.0, seed=0)
        >>> spline.transformer.bins, spline.transformer.bound
        (4, 2.0)
    """

    def __init__(
        self,
        features: int,
        hidden_features: int | Sequence[int],
        transformer: str | nn.Module = "affine",
        *,
        context_features: int = 0,
        transformer_options: Mapping[str, Any] | None = None,
        identity_init: bool = True,
        bins: int | None = None,
        bound: float | None = None,
        min_bin_width: float | None = None,
        min_bin_height: float | None = None,
        min_derivative: float | None = None,
        eps: float | None = None,
        **made_options: Any,
    ):
        super().__init__()
        named = dict(bins=bins, bound=bound, min_bin_width=min_bin_width, min_bin_height=min_bin_height,
                     min_derivative=min_derivative, eps=eps)
        options = resolve_transformer_options(transformer, named, transformer_options)
        self.transformer = make_transformer(transformer, **options)
        self.made = MADE(features, hidden_features, num_params=self.transformer.num_params,
                         context_features=context_features, **made_options)
        identity = getattr(self.transformer, "identity_params", lambda: None)() if identity_init else None
        if identity is not None:
            self._start_at(identity)

    def _start_at(self, identity: Tensor) -> None:
        output = self.made.layers[-1]  # rows d * P .. d * P + P - 1 belong to feature d
        identity = identity.to(output.bias)
        with torch.no_grad():
            largest = output.weight.abs().max()
            if largest > 0:
                output.weight.mul_(IDENTITY_WEIGHT_BOUND / largest)
            output.bias.copy_(identity.repeat(self.features))
            if self.made.direct is not None:
                self.made.direct.weight.zero_()

    @property
    def features(self) -> int:
        """The number of features :math:`D`."""
        return self.made.features

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        made = self.made
        features = made.features
        check_features("x", x, features)
        x = x.to(made.dtype)
        params = made(x, context)
        y, logabsdet = self.transformer(x.expand(*params.shape[:-2], features), params)
        return y, logabsdet.sum(-1)

    def inverse(self, y: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        check_features("y", y, self.features)
        check_finite("y", y)
        check_context(context, self.made.context_features, y.shape[:-1])
        y = y.to(self.made.dtype)
        if context is not None:
            batch = broadcast_batch(y.shape[:-1], context.shape[:-1])
            y = y.expand(*batch, self.features)
            context = context.expand(*batch, context.shape[-1])
        logabsdet = {}

        def invert(d: int, params: Tensor, current: Tensor) -> Tensor:
            x_d, logabsdet[d] = self.transformer.inverse(y[..., d], params)
            return x_d

        x = autoregressive(self.made, y, invert, context=context)
        return x, torch.stack(list(logabsdet.values()), -1).sum(-1)
