r"""The transform protocol: invertible maps with their log-determinants, data to noise."""

from __future__ import annotations

from collections.abc import Iterable

from torch import Tensor, nn

from flowkit.errors import FlowkitTypeError, FlowkitValueError
from flowkit.validation import check_shape

__all__ = ["Transform", "Transformer", "Composite", "Inverse", "InputOutsideDomain"]


class InputOutsideDomain(FlowkitValueError):
    """A transform was given a value outside the set it is defined on (as
    :func:`flowkit.data.logit_transform` is for a value outside :math:`[0, 1]`).

    The transforms of :mod:`flowkit.transforms` are defined on the whole real line (the spline has
    linear tails), so none of them raises it; it names the error for transforms that have a domain.
    """


class Transform(nn.Module):
    r"""An invertible map :math:`f` with its log-Jacobian determinant.

    ``forward`` goes from data to noise, as in nflows; ``inverse`` from noise to data:

    .. math:: (y, \log|\det J_f(x)|) = f(x), \qquad (x, \log|\det J_{f^{-1}}(y)|) = f^{-1}(y)

    Shapes: ``x, y: (*batch, features)``, ``context: (*batch, context_features)`` or ``None``,
    logabsdet ``(*batch,)``. Transforms that take no context ignore it.
    """

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def inverse(self, y: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        raise NotImplementedError


class Transformer(nn.Module):
    r"""The elementwise transformer protocol: an invertible map of each element :math:`x_d` given
    its own parameters :math:`	heta_d` (which a conditioner, such as a MADE, computes), with the
    elementwise log-derivative.

    .. math:: (y_d, \log|\partial y_d / \partial x_d|) = 	au(x_d; 	heta_d)

    A subclass sets ``num_params``, the number of parameters per element :math:`P`, and implements

    * ``forward(x, params) -> (y, logabsdet)``: ``x: (*batch, D)``, ``params: (*batch, D, P)``,
      ``y`` and ``logabsdet`` ``(*batch, D)`` (the data-to-noise direction of a MAF layer);
    * ``inverse(y, params) -> (x, logabsdet)``: the inverse, with the log-derivative of the map it
      applies (the negative of forward's at the same point);
    * optionally ``identity_params() -> (P,)``: parameters that make the map the identity, which
      :class:`~flowkit.transforms.MaskedAutoregressive` starts from (``None``: there are none).

    :class:`~flowkit.transforms.Affine` and :class:`~flowkit.transforms.RationalQuadraticSpline` are
    the two that flowkit has.
    """

    num_params: int

    def forward(self, x: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def inverse(self, y: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def identity_params(self) -> Tensor | None:
        """The parameters ``(P,)`` of the identity map, or ``None`` when the transformer has none."""
        return None


class Composite(Transform):
    r"""Transforms applied in sequence: :math:`f = f_K \circ \dots \circ f_1`, log-determinants summed.

    Example:
        >>> from flowkit.transforms import ReversePermutation
        >>> t = Composite([ReversePermutation(3), ReversePermutation(3)])
        >>> t(torch.tensor([[1.0, 2.0, 3.0]]))[0]
        tensor([[1., 2., 3.]])
    """

    def __init__(self, transforms: Iterable[Transform]):
        super().__init__()
        self.transforms = nn.ModuleList(transforms)

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        _check_tensor("x", x)
        total = None  # in the dtype the layers compute in, which need not be that of x
        for transform in self.transforms:
            x, logabsdet = transform(x, context)
            total = logabsdet if total is None else total + logabsdet
        return x, (x.new_zeros(()) if total is None else total).expand(x.shape[:-1])

    def inverse(self, y: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        _check_tensor("y", y)
        total = None  # in the dtype the layers compute in, which need not be that of y
        for transform in reversed(self.transforms):
            y, logabsdet = transform.inverse(y, context)
            total = logabsdet if total is None else total + logabsdet
        return y, (y.new_zeros(()) if total is None else total).expand(y.shape[:-1])


class Inverse(Transform):
    r"""The inverse :math:`f^{-1}` of a transform: its ``forward`` is ``f.inverse`` and back.

    An IAF layer is ``Inverse`` of a MAF layer: cheap in the noise-to-data direction.
    """

    def __init__(self, transform: Transform):
        super().__init__()
        self.transform = transform

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self.transform.inverse(x, context)

    def inverse(self, y: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self.transform(y, context)


def _check_tensor(name: str, x: Tensor) -> None:
    if not isinstance(x, Tensor):
        raise FlowkitTypeError(f"expected {name} to be a torch.Tensor, got {type(x).__name__}")


def check_features(name: str, x: Tensor, features: int) -> None:
    """Raises when ``x`` is not a floating tensor of shape ``(*, features)``."""
    check_shape(name, x, features)
    if not x.dtype.is_floating_point:
        raise FlowkitTypeError(f"expected {name} to be a floating tensor, got dtype {x.dtype}")


