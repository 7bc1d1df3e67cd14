r"""Monotonic rational-quadratic splines, the elementwise transformer of neural spline flows.

Durkan, Bekasov, Murray & Papamakarios, *Neural Spline Flows* (NeurIPS 2019), after Gregory &
Delbourgo, *Piecewise rational quadratic interpolation to monotonic data* (IMA J. Numer. Anal. 1982).

On :math:`[-B, B]` the map is a strictly increasing rational-quadratic spline with :math:`K` bins;
outside it is the identity. The boundary derivatives are 1, so the map is :math:`C^1` everywhere.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from flowkit.errors import FlowkitTypeError, FlowkitValueError
from flowkit.transforms.base import Transformer
from flowkit.validation import check_float, check_int

__all__ = ["rational_quadratic_spline", "RationalQuadraticSpline"]


def rational_quadratic_spline(
    x: Tensor,
    params: Tensor,
    *,
    inverse: bool = False,
    bound: float = 3.0,
    min_bin_width: float = 1e-3,
    min_bin_height: float = 1e-3,
    min_derivative: float = 1e-3,
) -> tuple[Tensor, Tensor]:
    r"""Applies the monotonic rational-quadratic spline elementwise, or its inverse.

    The :math:`3K - 1` unconstrained parameters of each element are split into widths
    :math:`\tilde w`, heights :math:`\tilde h` (:math:`K` each) and interior derivatives
    :math:`\tilde d` (:math:`K - 1`). They become bin widths and heights on :math:`[-B, B]`

    .. math:: w_k = 2B \left(w_{\min} + (1 - K w_{\min}) \operatorname{softmax}(\tilde w)_k\right),
        \quad h_k = 2B \left(h_{\min} + (1 - K h_{\min}) \operatorname{softmax}(\tilde h)_k\right),

    knots :math:`x_0 = -B < x_1 < \dots < x_K = B` (cumulative widths), :math:`y_0 = -B < \dots
    < y_K = B` (cumulative heights), and derivatives :math:`\delta_k = d_{\min} +
    \operatorname{softplus}(\tilde d_k)` at the interior knots, :math:`\delta_0 = \delta_K = 1`.
    In bin :math:`k`, with :math:`s_k = h_k / w_k` and :math:`\xi = (x - x_k) / w_k \in [0, 1]`,

    .. math:: y = y_k + \frac{h_k \left(s_k \xi^2 + \delta_k \xi (1 - \xi)\right)}
        {s_k + (\delta_{k+1} + \delta_k - 2 s_k) \xi (1 - \xi)},

    .. math:: \frac{dy}{dx} = \frac{s_k^2 \left(\delta_{k+1} \xi^2 + 2 s_k \xi (1 - \xi)
        + \delta_k (1 - \xi)^2\right)}{\left(s_k + (\delta_{k+1} + \delta_k - 2 s_k)
        \xi (1 - \xi)\right)^2}.

    Outside :math:`[-B, B]` the map is the identity with log-determinant 0. The inverse solves
    the quadratic :math:`a \xi^2 + b \xi + c = 0` of the bin that holds :math:`y` for its root in
    :math:`[0, 1]`, in the cancellation-free form and measured from the nearer end of the bin.

    Arguments:
        x: the inputs, ``(*shape)`` (the outputs :math:`y` when ``inverse``).
        params: the unconstrained parameters, ``(*shape, 3K - 1)``, laid out as
            ``[widths (K), heights (K), interior derivatives (K - 1)]``.
        inverse: whether to apply the inverse map.
        bound: the half-width :math:`B > 0` of the interval where the spline acts.
        min_bin_width: the smallest bin width, as a fraction of :math:`2B`.
        min_bin_height: the smallest bin height, as a fraction of :math:`2B`.
        min_derivative: the smallest interior derivative.

    Returns:
        The outputs and :math:`\log |dy / dx|` (of the inverse when ``inverse``), both ``(*shape)``.

    Example:
        >>> x = torch.tensor([-5.0, -1.0, 0.0, 2.5])
        >>> params = torch.randn(4, 3 * 8 - 1, generator=torch.Generator().manual_seed(0))
        >>> y, ladj = rational_quadratic_spline(x, params)
        >>> y[0], ladj[0]
        (tensor(-5.), tensor(0.))
        >>> z, inv_ladj = rational_quadratic_spline(y, params, inverse=True)
        >>> torch.allclose(z, x, atol=1e-5), torch.allclose(inv_ladj, -ladj, atol=1e-5)
        (True, True)
    """
    bins, bound, minima, min_derivative = _check_arguments(
        x, params, bound, min_bin_width, min_bin_height, min_derivative
    )
    table = _table(params, bins, bound, minima, min_derivative)
    inside = x.abs() <= bound
    # The spline is evaluated everywhere at a clamped input and discarded outside, so that neither
    # the values nor the gradients of the unused branch can be NaN.
    xc = x.clamp(-bound, bound)
    k = _bin_index(table[1] if inverse else table[0], xc).unsqueeze(0).expand(3, 1, *x.shape)
    x_k, y_k, d0 = table.gather(1, k).squeeze(1).unbind(0)
    x_k1, y_k1, d1 = table.gather(1, k + 1).squeeze(1).unbind(0)
    w, h = x_k1 - x_k, y_k1 - y_k
    s = h / w

    # The spline is symmetric under xi -> 1 - xi, delta_k <-> delta_{k+1}: measured from the top of
    # the bin it has the same form as from the bottom. Working from the nearer end keeps the
    # fraction of the bin below 1/2, which makes the knots exact and avoids the cancellations of
    # the inverse's quadratic at the far end.
    low, high = (y_k, y_k1) if inverse else (x_k, x_k1)
    above, below = xc - low, high - xc
    upper = below < above
    dist = torch.where(upper, below, above)
    near, far = torch.where(upper, d1, d0), torch.where(upper, d0, d1)
    curvature = near + far - 2 * s

    if inverse:
        xi = _inverse_fraction(h, s, near, curvature, dist)
        shift = xi * w
        out = torch.where(upper, x_k1 - shift, x_k + shift)
    else:
        xi = (dist / w).clamp(0, 1)
        t = xi * (1 - xi)
        shift = h * (s * xi.square() + near * t) / (s + curvature * t)
        out = torch.where(upper, y_k1 - shift, y_k + shift)

    t = xi * (1 - xi)
    numerator = far * xi.square() + 2 * s * t + near * (1 - xi).square()
    ladj = 2 * torch.log(s) + torch.log(numerator) - 2 * torch.log(s + curvature * t)
    if inverse:
        ladj = -ladj
    return torch.where(inside, out, x), torch.where(inside, ladj, torch.zeros_like(x))


def _check_arguments(x, params, bound, min_bin_width, min_bin_height, min_derivative):
    """The bin count and the checked bounds of :func:`rational_quadratic_spline`'s arguments."""
    for name, tensor in (("x", x), ("params", params)):
        if not isinstance(tensor, Tensor) or not tensor.dtype.is_floating_point:
            got = f"dtype {tensor.dtype}" if isinstance(tensor, Tensor) else type(tensor).__name__
            raise FlowkitTypeError(f"expected {name} to be a floating tensor, got {got}")
    if params.dim() == 0:
        raise FlowkitValueError("expected params of shape (*x.shape, 3K - 1), got a scalar")
    bins = _bins_of(params.shape[-1])
    bound, min_bin_width, min_bin_height, min_derivative = _check_bounds(
        bins, bound, min_bin_width, min_bin_height, min_derivative
    )
    if params.shape[:-1] != x.shape:
        raise FlowkitValueError(
            f"expected params of shape (*x.shape, 3K - 1) = {(*x.shape, params.shape[-1])}, "
            f"got {tuple(params.shape)}"
        )
    return bins, bound, (min_bin_width, min_bin_height), min_derivative


def _table(params: Tensor, bins: int, bound: float, minima: tuple[float, float], min_derivative: float) -> Tensor:
    """One table of the x knots, y knots and derivatives, ``(3, K + 1, *shape)``, so that a bin's
    two ends come out of two gathers."""
    # Bins lead: (3K - 1, *shape). Reductions over a short trailing dimension are slow on a CPU;
    # over the leading one they run across the whole batch.
    p = params.movedim(-1, 0).contiguous()
    knots = _knots(p[: 2 * bins].unflatten(0, (2, bins)), bound, minima)
    ones = torch.ones_like(p[:1])
    derivatives = torch.cat([ones, min_derivative + F.softplus(p[2 * bins :]), ones], dim=0)
    return torch.cat([knots, derivatives.unsqueeze(0)], dim=0)


def _inverse_fraction(h: Tensor, s: Tensor, near: Tensor, curvature: Tensor, dist: Tensor) -> Tensor:
    """The fraction of the bin, from its nearer end, that the inverse maps ``dist`` back to: the root
    in [0, 1] of a xi^2 + b xi + c = 0."""
    a = h * (s - near) + dist * curvature
    b = h * near - dist * curvature
    c = -s * dist
    # With q = -(b + sign(b) sqrt(b^2 - 4ac)) / 2 the roots are q / a and c / q; the one in [0, 1]
    # is c / q when b >= 0, q / a when b < 0 (a > 0 then, as a + b = h s > 0).
    sqrt_disc = (b.square() - 4 * a * c).clamp(min=0).sqrt()
    positive = b >= 0
    q = -0.5 * (b + torch.where(positive, sqrt_disc, -sqrt_disc))
    q_safe = torch.where(positive, q, -torch.ones_like(q))
    a_safe = torch.where(positive, torch.ones_like(a), a)
    return torch.where(positive, c / q_safe, q / a_safe).clamp(0, 1)


class RationalQuadraticSpline(Transformer):
    r"""The monotonic rational-quadratic spline as an elementwise transformer.

    Durkan et al., *Neural Spline Flows* (NeurIPS 2019). Each element :math:`x` is mapped by its
    own spline with :math:`K` bins on :math:`[-B, B]`, described by ``num_params = 3K - 1``
    unconstrained numbers (typically the output of a conditioner network):

    .. math:: y = y_k + \frac{h_k \left(s_k \xi^2 + \delta_k \xi (1 - \xi)\right)}
        {s_k + (\delta_{k+1} + \delta_k - 2 s_k) \xi (1 - \xi)},
        \qquad \xi = \frac{x - x_k}{w_k}, \quad s_k = \frac{h_k}{w_k},

    in the bin :math:`[x_k, x_{k+1}]` that holds :math:`x`. The parameter layout is
    ``[widths (K), heights (K), interior derivatives (K - 1)]``: widths and heights go through a
    softmax with a floor, derivatives through a softplus with a floor (see
    :func:`rational_quadratic_spline`). The tails are linear: outside :math:`[-B, B]` the map is
    the identity, and the boundary derivatives are 1, so the map is :math:`C^1` and invertible on
    the whole real line.

    :meth:`forward` is the spline itself (the data-to-noise direction), :meth:`inverse` its inverse;
    both return the outputs and the elementwise :math:`\log |\det J|` of the map they apply.

    Arguments:
        bins: the number of bins :math:`K \ge 1`.
        bound: the half-width :math:`B > 0` of the interval where the spline acts.
        min_bin_width: the smallest bin width, as a fraction of :math:`2B`; ``bins * min_bin_width < 1``.
        min_bin_height: the smallest bin height, as a fraction of :math:`2B`; ``bins * min_bin_height < 1``.
        min_derivative: the smallest derivative at an interior knot.

    Example:
        >>> spline = RationalQuadraticSpline(bins=4, bound=2.0)
        >>> spline.num_params
        11
        >>> x = torch.tensor([[-3.0, 0.5], [1.0, 1.9]])
        >>> y, ladj = spline(x, torch.randn(2, 2, spline.num_params))
        >>> y.shape, ladj.shape, y[0, 0].item()
        (torch.Size([2, 2]), torch.Size([2, 2]), -3.0)
    """

    num_params: int

    def __init__(
        self,
        bins: int = 8,
        bound: float = 3.0,
        min_bin_width: float = 1e-3,
        min_bin_height: float = 1e-3,
        min_derivative: float = 1e-3,
    ):
        super().__init__()
        self.bins = check_int("bins", bins, least=1)
        self.bound, self.min_bin_width, self.min_bin_height, self.min_derivative = _check_bounds(
            self.bins, bound, min_bin_width, min_bin_height, min_derivative
        )
        self.num_params = 3 * bins - 1

    def identity_params(self) -> Tensor:
        r"""The parameters of the identity, ``(3K - 1,)``: equal widths and heights (every bin of
        width and height :math:`2B / K`, every slope :math:`s_k = 1`) and interior derivatives
        :math:`\tilde d` with :math:`d_{\min} + \operatorname{softplus}(\tilde d) = 1`. With every
        slope and derivative 1 the rational-quadratic reduces to :math:`y = x`. In float64, so that
        it can be cast to any dtype without losing the identity.

        Example:
            >>> spline = RationalQuadraticSpline(bins=4)
            >>> x = torch.linspace(-4.0, 4.0, 9, dtype=torch.float64)
            >>> params = spline.identity_params().expand(9, -1)
            >>> y, ladj = spline(x, params)
            >>> (y - x).abs().max().item() < 1e-12, ladj.abs().max().item() < 1e-12
            (True, True)
        """
        if self.min_derivative >= 1:
            raise FlowkitValueError(f"interior derivatives min_derivative + softplus(d) with min_derivative = "
                             f"{self.min_derivative} >= 1 cannot be 1: no identity")
        derivative = math.log(math.expm1(1.0 - self.min_derivative))
        return torch.cat([torch.zeros(2 * self.bins, dtype=torch.float64),
                          torch.full((self.bins - 1,), derivative, dtype=torch.float64)])

    def forward(self, x: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        """The spline: ``x: (*shape)``, ``params: (*shape, 3K - 1)`` to ``y, log |dy/dx|: (*shape)``."""
        return self._transform(x, params, inverse=False)

    def inverse(self, y: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        """Its inverse: ``y: (*shape)``, ``params: (*shape, 3K - 1)`` to ``x, log |dx/dy|: (*shape)``."""
        return self._transform(y, params, inverse=True)

    def _transform(self, x: Tensor, params: Tensor, inverse: bool) -> tuple[Tensor, Tensor]:
        if not isinstance(params, Tensor):
            raise FlowkitTypeError(f"expected params to be a floating tensor, got {type(params).__name__}")
        if params.shape[-1:] != (self.num_params,):
            raise FlowkitValueError(
                f"expected params of shape (*, {self.num_params}) for {self.bins} bins, "
                f"got {tuple(params.shape)}"
            )
        return rational_quadratic_spline(
            x,
            params,
            inverse=inverse,
            bound=self.bound,
            min_bin_width=self.min_bin_width,
            min_bin_height=self.min_bin_height,
            min_derivative=self.min_derivative,
        )

    def extra_repr(self) -> str:
        return (
            f"bins={self.bins}, bound={self.bound}, min_bin_width={self.min_bin_width}, "
            f"min_bin_height={self.min_bin_height}, min_derivative={self.min_derivative}"
        )


def _bins_of(size: int) -> int:
    if size < 2 or (size + 1) % 3 != 0:
        raise FlowkitValueError(
            f"expected a last dimension of params of the form 3K - 1 (K >= 1 bins: 2, 5, 8, ...), got {size}"
        )
    return (size + 1) // 3


def _check_bounds(
    bins: int, bound: float, min_bin_width: float, min_bin_height: float, min_derivative: float
) -> tuple[float, float, float, float]:
    """The bound and the three minimums as floats, checked (finite, positive, the bins' floors < 1)."""
    bound = check_float("bound", bound, above=0)
    min_bin_width, min_bin_height, min_derivative = (
        check_float(name, value, above=0)
        for name, value in [("min_bin_width", min_bin_width), ("min_bin_height", min_bin_height),
                            ("min_derivative", min_derivative)]
    )
    for name, value in [("min_bin_width", min_bin_width), ("min_bin_height", min_bin_height)]:
        if value * bins >= 1:
            raise FlowkitValueError(f"expected {name} * bins < 1, got {value} * {bins} = {value * bins}")
    return bound, min_bin_width, min_bin_height, min_derivative


def _knots(raw: Tensor, bound: float, minimum: tuple[float, float]) -> Tensor:
    """The ``K + 1`` knots ``-bound = t_0 < ... < t_K = bound`` of ``K`` floored softmax bins, for
    the widths and the heights at once: ``raw: (2, K, *shape)`` to ``(2, K + 1, *shape)``."""
    bins = raw.shape[1]
    e = (raw - raw.amax(1, keepdim=True)).exp()
    softmax = e / e.sum(1, keepdim=True)
    if minimum[0] == minimum[1]:
        fractions = minimum[0] + (1 - minimum[0] * bins) * softmax
    else:
        floor = torch.tensor(minimum, dtype=raw.dtype, device=raw.device).view(2, *[1] * (raw.dim() - 1))
        fractions = floor + (1 - floor * bins) * softmax
    inner = -bound + 2 * bound * torch.cumsum(fractions, dim=1)[:, :-1]
    edge = torch.full_like(raw[:, :1], bound)
    return torch.cat([-edge, inner, edge], dim=1)


def _bin_index(knots: Tensor, value: Tensor) -> Tensor:
    """The bin ``k`` with ``knots[k] <= value < knots[k + 1]``, clamped to ``0..K-1``; ``value: (*shape)``
    and ``knots: (K + 1, *shape)`` to ``(1, *shape)``."""
    return (value >= knots[1:-1]).sum(dim=0, keepdim=True)
