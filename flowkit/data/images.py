r"""Continuous image data: uniform dequantisation and the logit transform (Dinh et al., 2017;
Papamakarios et al., 2017), with the log-Jacobian needed to report densities of the pixels."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from flowkit.errors import FlowkitTypeError, FlowkitValueError
from flowkit.transforms.base import InputOutsideDomain
from flowkit.validation import check_float, check_int

__all__ = ["dequantize", "logit_transform", "bits_per_dim"]


def dequantize(x: Tensor, levels: int = 256, *, generator: torch.Generator | None = None) -> Tensor:
    r"""Uniform dequantisation of intensities :math:`k / \text{levels}`:
    :math:`y = (k + u) / \text{levels}`, :math:`u \sim U[0, 1)`, in :math:`[0, 1)`.

    A continuous density :math:`p(y)` then bounds the discrete likelihood:
    :math:`\log P(k) \ge \mathbb{E}_u[\log p(y)] - D \log \text{levels}`.

    Example:
        >>> y = dequantize(torch.tensor([[0.0, 0.5]]), levels=2, generator=torch.Generator().manual_seed(0))
        >>> bool(((y >= torch.tensor([0.0, 0.5])) & (y < torch.tensor([0.5, 1.0]))).all())
        True
    """
    _check_tensor("x", x)
    levels = check_int("levels", levels, least=1)
    counts = torch.round(x * levels)
    outside = ~((counts >= 0) & (counts <= levels - 1))  # NaN is outside
    if bool(outside.any()):
        bad = x[outside].flatten()[:3].tolist()
        raise FlowkitValueError(f"expected intensities k / {levels} with k in 0..{levels - 1}, got {bad}")
    u = torch.rand(x.shape, generator=generator, dtype=x.dtype if x.dtype.is_floating_point else torch.float32)
    return (counts + u.to(x.device)) / levels


def logit_transform(y: Tensor, alpha: float = 1e-6) -> tuple[Tensor, Tensor]:
    r"""Maps :math:`y \in [0, 1]^D` to :math:`z = \operatorname{logit}(\alpha + (1 - 2\alpha) y)`
    and returns ``(z, log|dz/dy|)`` summed over features, so that
    :math:`\log p(y) = \log p(z) + \log|dz/dy|`.

    Example:
        >>> z, logdet = logit_transform(torch.tensor([[0.5, 0.5]]))
        >>> z.abs().max().item() < 1e-6, round(logdet.item(), 4)
        (True, 2.7726)
    """
    alpha = check_float("alpha", alpha, above=0, below=0.5)
    _check_tensor("y", y)
    outside = ~((y >= 0) & (y <= 1))  # NaN is outside
    if bool(outside.any()):
        bad = y[outside].flatten()[:3].tolist()
        raise InputOutsideDomain(f"expected values in [0, 1] for the logit transform, got {bad}")
    s = alpha + (1 - 2 * alpha) * y
    z = torch.log(s) - torch.log1p(-s)
    logdet = (math.log(1 - 2 * alpha) - torch.log(s) - torch.log1p(-s)).sum(-1)
    return z, logdet


def bits_per_dim(nll_nats: float, features: int, levels: int | None = None) -> float:
    r"""Bits per dimension of a negative log-likelihood in nats over ``features`` dimensions; with
    ``levels``, of the dequantised density of :math:`[0, 1)` data rescaled to pixel counts
    (:math:`\text{nll} / (D \ln 2) + \log_2 \text{levels}`).

    Example:
        >>> round(bits_per_dim(784 * math.log(2), 784), 6)
        1.0
    """
    features = check_int("features", features, least=1)
    levels = None if levels is None else check_int("levels", levels, least=1)
    bits = nll_nats / (features * math.log(2))
    return bits + (math.log2(levels) if levels else 0.0)


def _check_tensor(name: str, x: Tensor) -> None:
    if not isinstance(x, Tensor):
        raise FlowkitTypeError(f"expected {name} to be a torch.Tensor, got {type(x).__name__}")
    if x.dtype == torch.bool or x.dtype.is_complex:
        raise FlowkitTypeError(f"expected {name} to be a tensor of real numbers, got dtype {x.dtype}")
