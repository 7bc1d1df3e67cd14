r"""Continuous image data: uniform dequantisation and the logit transform (Dinh et al., 2017;
Papamakarios et al., 2017), with the log-Jacobian needed to report densities of the pixels."""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["dequantize", "logit_transform", "bits_per_dim"]


def dequantize(x: Tensor, levels: int = 256, generator: torch.Generator | None = None) -> Tensor:
    r"""Uniform dequantisation of intensities :math:`k / \text{levels}`:
    :math:`y = (k + u) / \text{levels}`, :math:`u \sim U[0, 1)`, in :math:`[0, 1)`.

    A continuous density :math:`p(y)` then bounds the discrete likelihood:
    :math:`\log P(k) \ge \mathbb{E}_u[\log p(y)] - D \log \text{levels}`.

    Example:
        >>> y = dequantize(torch.tensor([[0.0, 0.5]]), levels=2, generator=torch.Generator().manual_seed(0))
        >>> bool(((y >= torch.tensor([0.0, 0.5])) & (y < torch.tensor([0.5, 1.0]))).all())
        True
    """
    counts = torch.round(x * levels)
    if bool(((counts < 0) | (counts > levels - 1)).any()):
        raise ValueError(f"expected intensities k / {levels} with k in 0..{levels - 1}")
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
    if not 0 < alpha < 0.5:
        raise ValueError(f"expected alpha in (0, 0.5), got {alpha}")
    if bool(((y < 0) | (y > 1)).any()):
        raise ValueError("expected values in [0, 1] for the logit transform")
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
    bits = nll_nats / (features * math.log(2))
    return bits + (math.log2(levels) if levels else 0.0)
