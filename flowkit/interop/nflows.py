r"""nflows interop: flowkit transforms inside nflows flows, nflows transforms inside flowkit flows,
and conversion of nflows' masked autoregressive layers into flowkit's, weights included.

nflows uses the same conventions as flowkit (``forward`` maps data to noise and returns
``(outputs, logabsdet)``), so the adapters only translate batch shapes: nflows transforms take
``(batch, features)``; flowkit's take any ``(*batch, features)``.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from nflows.transforms import Transform as NflowsTransform
from nflows.transforms.autoregressive import (
    MaskedAffineAutoregressiveTransform,
    MaskedPiecewiseRationalQuadraticAutoregressiveTransform,
)
from torch import Tensor, nn

from flowkit.errors import FlowkitTypeError, FlowkitValueError
from flowkit.made import ConnectivityWarning
from flowkit.transforms import Affine, MaskedAutoregressive, RationalQuadraticSpline, Transform
from flowkit.validation import broadcast_batch

__all__ = ["to_nflows", "from_nflows", "convert_autoregressive"]

_ACTIVATIONS = {F.relu: nn.ReLU, torch.relu: nn.ReLU, F.tanh: nn.Tanh, torch.tanh: nn.Tanh,
                F.elu: nn.ELU, F.gelu: nn.GELU, torch.sigmoid: nn.Sigmoid}


class _ToNflows(NflowsTransform):
    def __init__(self, transform: Transform):
        super().__init__()
        self.transform = transform

    def forward(self, inputs: Tensor, context: Tensor | None = None):
        return self.transform(inputs, context)

    def inverse(self, inputs: Tensor, context: Tensor | None = None):
        return self.transform.inverse(inputs, context)


class _FromNflows(Transform):
    def __init__(self, transform: NflowsTransform):
        super().__init__()
        self.transform = transform

    def _call(self, method, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        batch = x.shape[:-1] if context is None else broadcast_batch(x.shape[:-1], context.shape[:-1])
        flat_x = x.expand(*batch, x.shape[-1]).reshape(-1, x.shape[-1])
        flat_c = None if context is None else context.expand(*batch, context.shape[-1]).reshape(-1, context.shape[-1])
        y, logabsdet = method(flat_x, flat_c)
        return y.reshape(*batch, y.shape[-1]), logabsdet.reshape(batch)

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self._call(self.transform.forward, x, context)

    def inverse(self, y: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self._call(self.transform.inverse, y, context)


def to_nflows(transform: Transform) -> NflowsTransform:
    """A flowkit transform as an ``nflows.transforms.Transform`` (for ``nflows.flows.Flow``).

    Example:
        >>> from nflows.distributions import StandardNormal
        >>> from nflows.flows import Flow as NflowsFlow
        >>> layer = flowkit.transforms.MaskedAutoregressive(2, [8], seed=0)
        >>> NflowsFlow(to_nflows(layer), StandardNormal([2])).log_prob(torch.zeros(3, 2)).shape
        torch.Size([3])
    """
    if not isinstance(transform, Transform):
        raise FlowkitTypeError(f"expected transform to be a flowkit Transform, got {type(transform).__name__}")
    return _ToNflows(transform)


def from_nflows(transform: NflowsTransform) -> Transform:
    """An nflows transform as a flowkit :class:`~flowkit.transforms.Transform` (any batch shape).

    Example:
        >>> from nflows.transforms import ReversePermutation
        >>> t = from_nflows(ReversePermutation(3))
        >>> t(torch.tensor([[[1.0, 2.0, 3.0]]]))[0]
        tensor([[[3., 2., 1.]]])
    """
    if not isinstance(transform, NflowsTransform):
        raise FlowkitTypeError(f"expected transform to be an nflows Transform, got {type(transform).__name__}")
    return _FromNflows(transform)


def convert_autoregressive(layer: NflowsTransform) -> MaskedAutoregressive:
    r"""A flowkit :class:`~flowkit.transforms.MaskedAutoregressive` computing the same function as an
    nflows masked affine or rational-quadratic (``tails="linear"``) autoregressive layer, with
    its weights and masks copied.

    nflows' affine layer and flowkit's :class:`~flowkit.transforms.Affine` share the scale
    parameterisation (``softplus(u) + 1e-3``) and layout; nflows' spline layer and flowkit's
    :class:`~flowkit.transforms.RationalQuadraticSpline` share the layout and constraints. Supported:
    feed-forward blocks (``use_residual_blocks=False``), no batch norm or dropout in the blocks, and
    no context (nflows adds the context through a separate unmasked layer after the first masked
    one, which flowkit's MADE, taking the context as degree-0 inputs, does not reproduce).

    Example:
        >>> from nflows.transforms import MaskedAffineAutoregressiveTransform
        >>> theirs = MaskedAffineAutoregressiveTransform(3, 8, use_residual_blocks=False)
        >>> ours = convert_autoregressive(theirs)
        >>> x = torch.randn(4, 3)
        >>> torch.allclose(ours(x)[1], theirs(x)[1], atol=1e-6)
        True
    """
    if isinstance(layer, MaskedAffineAutoregressiveTransform):
        transformer: nn.Module = Affine(eps=layer._epsilon)
    elif isinstance(layer, MaskedPiecewiseRationalQuadraticAutoregressiveTransform):
        if layer.tails != "linear":
            raise FlowkitValueError(f"only tails='linear' splines convert, got tails={layer.tails!r}")
        transformer = RationalQuadraticSpline(
            bins=layer.num_bins, bound=layer.tail_bound, min_bin_width=layer.min_bin_width,
            min_bin_height=layer.min_bin_height, min_derivative=layer.min_derivative,
        )
    else:
        raise FlowkitTypeError(
            "expected layer to be nflows' MaskedAffineAutoregressiveTransform or "
            f"MaskedPiecewiseRationalQuadraticAutoregressiveTransform, got {type(layer).__name__}"
        )
    net = layer.autoregressive_net
    if net.use_residual_blocks:
        raise FlowkitValueError("residual blocks do not convert: build the nflows layer with use_residual_blocks=False")
    if hasattr(net, "context_layer"):
        raise FlowkitValueError("layers with a context do not convert (nflows feeds the context differently)")
    if any(block.batch_norm or block.dropout.p > 0 for block in net.blocks):
        raise FlowkitValueError("blocks with batch norm or dropout do not convert")
    activation = _ACTIVATIONS.get(net.activation)
    if activation is None:
        raise FlowkitValueError(f"activation {net.activation!r} has no flowkit counterpart here")

    theirs = [net.initial_layer, *(block.linear for block in net.blocks), net.final_layer]
    features = net.initial_layer.in_features
    hidden = [linear.out_features for linear in theirs[:-1]]
    # A wide 'even' MADE first, so the audit passes; nflows' masks then replace its own.
    with warnings.catch_warnings():  # the placeholder masks may be narrow; nflows' own replace them
        warnings.simplefilter("ignore", ConnectivityWarning)
        ours = MaskedAutoregressive(features, hidden, transformer, hidden_degrees="even", activation=activation, seed=0)
    ours = ours.to(dtype=net.initial_layer.weight.dtype, device=net.initial_layer.weight.device)
    with torch.no_grad():
        for mine, their in zip(ours.made.layers, theirs):
            mine.weight.copy_(their.weight)
            mine.bias.copy_(their.bias)
            mine.masks[0] = their.mask.bool()
    return ours
