"""2-D toy densities for figures and tests."""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["two_moons"]


def two_moons(n: int, noise: float = 0.05, seed: int = 0) -> Tensor:
    r"""``n`` points of two interleaved half circles with Gaussian noise, standardised roughly to
    unit scale: the upper moon :math:`(\cos t, \sin t)`, the lower :math:`(1 - \cos t, 0.5 - \sin t)`,
    :math:`t \sim U[0, \pi]`, then shifted by ``(-0.5, -0.25)`` and scaled by 2.

    Example:
        >>> two_moons(1000).shape
        torch.Size([1000, 2])
    """
    generator = torch.Generator().manual_seed(seed)
    t = torch.rand(n, generator=generator, dtype=torch.float64) * math.pi
    upper = torch.rand(n, generator=generator) < 0.5
    x = torch.where(upper, torch.cos(t), 1 - torch.cos(t))
    y = torch.where(upper, torch.sin(t), 0.5 - torch.sin(t))
    points = torch.stack([x, y], -1) + noise * torch.randn(n, 2, generator=generator, dtype=torch.float64)
    return ((points - torch.tensor([0.5, 0.25], dtype=torch.float64)) * 2).float()
