r"""Invertible linear layers: the LU-decomposed linear map of Glow, mixing features between layers."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from flowkit.derived import Derived
from flowkit.transforms.base import Transform, check_features
from flowkit.validation import check_finite, check_float, check_int, check_permutation

__all__ = ["LULinear"]


class LULinear(Transform):
    r"""An invertible linear map with its weight kept in LU form, data to noise:

    .. math:: y = W x + b, \qquad W = P L U, \qquad \log|\det J| = \sum_i \log U_{ii}

    :math:`P` is a fixed permutation (:math:`(Pv)_i = v_{\pi(i)}`), :math:`L` is unit lower
    triangular and :math:`U` upper triangular with the positive diagonal
    :math:`U_{ii} = \operatorname{softplus}(s_i) + \epsilon`. Kingma & Dhariwal, *Glow* (2018),
    section 3.2, introduced this parameterisation for invertible :math:`1 \times 1` convolutions;
    Durkan et al., *Neural Spline Flows* (2019), put it, after a random permutation, between
    autoregressive or coupling layers. The log-determinant costs :math:`O(D)` and the inverse
    :math:`x = U^{-1} L^{-1} P^{\top} (y - b)` two triangular solves, :math:`O(D^2)` per row;
    :math:`W^{-1}` is never formed.

    The diagonal goes through a softplus with a floor, as the scale of
    :class:`~flowkit.transforms.Affine` does, rather than Glow's :math:`e^{s}`: it grows linearly
    (a large step cannot overflow it) and stays above :math:`\epsilon` (a step to very negative
    :math:`s` cannot make :math:`U` singular, so the triangular solves and the log-determinant stay
    finite). The sign of :math:`\det W = \det P \prod_i U_{ii}` is that of :math:`\det P`, fixed, as
    in Glow.

    At initialisation :math:`L = U = I` and :math:`b = 0`: with the default :math:`P = I` the layer
    is the identity, so it can be added to a flow without changing the untrained flow.

    In eval mode with gradients off, :math:`W` and the two triangles are kept between calls and
    rebuilt when a parameter changes in place (an optimiser step, ``load_state_dict``), is replaced,
    or changes dtype or device; edits through ``.data`` bypass torch's version counter, so call
    ``eval()`` again after one. What is kept is not saved: ``torch.save`` of the module and
    ``copy.deepcopy`` work in any mode.

    Arguments:
        features: the number of features :math:`D`.
        permutation: the fixed permutation :math:`\pi`, a permutation of ``0..D-1`` (a buffer);
            ``None`` for the identity.
        eps: the floor :math:`\epsilon > 0` of the diagonal of :math:`U`.

    Shapes: ``x, y: (*batch, features)``, logabsdet ``(*batch,)``; the context is ignored.

    Example:
        >>> layer = LULinear(3)
        >>> x = torch.randn(5, 3)
        >>> torch.allclose(layer(x)[0], x)  # the identity at initialisation (to rounding)
        True
        >>> with torch.no_grad():
        ...     _ = layer.lower_upper.normal_()
        >>> y, logabsdet = layer(x)
        >>> x_back, inverse_logabsdet = layer.inverse(y)
        >>> torch.allclose(x_back, x, atol=1e-5), torch.allclose(logabsdet, -inverse_logabsdet)
        (True, True)
    """

    def __init__(self, features: int, permutation: Sequence[int] | Tensor | None = None, *, eps: float = 1e-3):
        super().__init__()
        features = check_int("features", features, least=1)
        self.features, self.eps = features, check_float("eps", eps, above=0, below=1)
        if permutation is None:
            permutation = torch.arange(features)
        perm = check_permutation("permutation", permutation, features)
        self.register_buffer("permutation", perm)
        self.register_buffer("inverse_permutation", torch.argsort(perm))
        # Strictly below the diagonal: L's entries; strictly above: U's; the diagonal is unused.
        self.lower_upper = nn.Parameter(torch.zeros(features, features))
        self.unconstrained_diagonal = nn.Parameter(torch.full((features,), math.log(math.expm1(1 - self.eps))))
        self.bias = nn.Parameter(torch.zeros(features))
        self._derived = Derived()

    def lower(self) -> Tensor:
        """The unit lower-triangular :math:`L`, ``(D, D)``."""
        eye = torch.eye(self.features, dtype=self.lower_upper.dtype, device=self.lower_upper.device)
        return torch.tril(self.lower_upper, diagonal=-1) + eye

    def upper(self) -> Tensor:
        r"""The upper-triangular :math:`U`, ``(D, D)``, with diagonal :math:`\operatorname{softplus}(s) + \epsilon`."""
        return torch.triu(self.lower_upper, diagonal=1) + torch.diag(self.diagonal())

    def diagonal(self) -> Tensor:
        """The diagonal of :math:`U`, ``(D,)``, every entry at least ``eps``."""
        return F.softplus(self.unconstrained_diagonal) + self.eps

    def weight(self) -> Tensor:
        """The dense :math:`W = P L U`, ``(D, D)`` (:math:`O(D^3)`; for inspection and :meth:`forward`)."""
        return (self.lower() @ self.upper())[self.permutation]

    def _factors(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``W``, ``L``, ``U`` and ``log|det W|``, kept between calls in eval mode without gradients."""
        if self.training or (torch.is_grad_enabled() and any(p.requires_grad for p in self.parameters())):
            self._derived.drop()
            return self._build()
        sources = (self.lower_upper, self.unconstrained_diagonal, self.bias, self.permutation)
        context = (self.lower_upper.dtype, self.lower_upper.device, torch.is_inference_mode_enabled())
        return self._derived.get("factors", sources, self._build, context)

    def _build(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        lower, upper = self.lower(), self.upper()
        weight = (lower @ upper)[self.permutation]
        return weight, lower, upper, torch.log(self.diagonal()).sum()

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        check_features("x", x, self.features)
        check_finite("x", x)
        weight, _, _, logabsdet = self._factors()
        y = F.linear(x.to(weight.dtype), weight, self.bias)
        return y, logabsdet.expand(y.shape[:-1])

    def inverse(self, y: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        check_features("y", y, self.features)
        check_finite("y", y)
        _, lower, upper, logabsdet = self._factors()
        y = y.to(lower.dtype)
        v = (y - self.bias)[..., self.inverse_permutation].reshape(math.prod(y.shape[:-1]), self.features)
        # Rows: v = x U^T L^T, so x solves x U^T = u and u solves u L^T = v.
        u = torch.linalg.solve_triangular(lower.mT, v, upper=True, left=False, unitriangular=True)
        x = torch.linalg.solve_triangular(upper.mT, u, upper=False, left=False)
        return x.reshape(y.shape), (-logabsdet).expand(y.shape[:-1])

    def train(self, mode: bool = True) -> LULinear:
        self._derived.drop()
        return super().train(mode)

    def extra_repr(self) -> str:
        return f"features={self.features}, eps={self.eps}"
