"""2-D toy densities for figures and tests."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from flowkit.validation import check_float, check_int

__all__ = ["TOY", "checkerboard", "eight_gaussians", "pinwheel", "rings", "two_moons", "two_spirals"]


def two_moons(n: int, noise: float = 0.05, *, seed: int = 0) -> Tensor:
    r"""``n`` points of two interleaved half circles with Gaussian noise, standardised roughly to
    unit scale: the upper moon :math:`(\cos t, \sin t)`, the lower :math:`(1 - \cos t, 0.5 - \sin t)`,
    :math:`t \sim U[0, \pi]`, then shifted by ``(-0.5, -0.25)`` and scaled by 2.

    Example:
        >>> two_moons(1000).shape
        torch.Size([1000, 2])
    """
    n, generator = _checked(n, seed)
    noise = check_float("noise", noise, least=0)
    t = torch.rand(n, generator=generator, dtype=torch.float64) * math.pi
    upper = torch.rand(n, generator=generator) < 0.5
    x = torch.where(upper, torch.cos(t), 1 - torch.cos(t))
    y = torch.where(upper, torch.sin(t), 0.5 - torch.sin(t))
    points = torch.stack([x, y], -1) + noise * torch.randn(n, 2, generator=generator, dtype=torch.float64)
    return ((points - torch.tensor([0.5, 0.25], dtype=torch.float64)) * 2).float()


def eight_gaussians(n: int, *, seed: int = 0) -> Tensor:
    r"""``n`` points from an equal mixture of eight Gaussians with standard deviation 0.1, centred
    on the circle of radius 2 at angles :math:`k \pi / 4`, :math:`k = 0, \dots, 7`.

    Example:
        >>> x = eight_gaussians(1000)
        >>> x.shape, bool((x.norm(dim=-1) - 2).abs().mean() < 0.2)
        (torch.Size([1000, 2]), True)
    """
    n, generator = _checked(n, seed)
    angle = torch.randint(8, (n,), generator=generator).double() * math.pi / 4
    centres = 2 * torch.stack([torch.cos(angle), torch.sin(angle)], -1)
    return (centres + 0.1 * torch.randn(n, 2, generator=generator, dtype=torch.float64)).float()


def checkerboard(n: int, *, seed: int = 0) -> Tensor:
    r"""``n`` points uniform on the dark squares of a 4 x 4 board covering :math:`[-2, 2]^2`: the unit
    cells :math:`[i, i + 1) \times [j, j + 1)` with :math:`i + j` even, :math:`i, j \in \{-2, \dots, 1\}`.

    Example:
        >>> cells = checkerboard(1000).floor().long()
        >>> bool(((cells[:, 0] + cells[:, 1]) % 2 == 0).all())
        True
    """
    n, generator = _checked(n, seed)
    i = torch.randint(4, (n,), generator=generator)
    j = 2 * torch.randint(2, (n,), generator=generator) + i % 2
    corner = torch.stack([i, j], -1).double() - 2
    return (corner + torch.rand(n, 2, generator=generator, dtype=torch.float64)).float()


def two_spirals(n: int, *, seed: int = 0) -> Tensor:
    r"""``n`` points on two interleaved Archimedean spirals :math:`r = \theta / \pi`,
    :math:`\theta = 3 \pi \sqrt{u}` (one and a half turns, out to radius 3), the second spiral the
    first rotated by :math:`\pi`, with Gaussian noise of standard deviation 0.1.

    Example:
        >>> two_spirals(1000).shape
        torch.Size([1000, 2])
    """
    n, generator = _checked(n, seed)
    theta = 3 * math.pi * torch.rand(n, generator=generator, dtype=torch.float64).sqrt()
    sign = 2 * torch.randint(2, (n,), generator=generator).double() - 1
    points = sign[:, None] * (theta / math.pi)[:, None] * torch.stack([torch.cos(theta), torch.sin(theta)], -1)
    return (points + 0.1 * torch.randn(n, 2, generator=generator, dtype=torch.float64)).float()


def pinwheel(n: int, *, seed: int = 0) -> Tensor:
    r"""``n`` points on five curved arms: each point starts at :math:`(r, t)` with
    :math:`r \sim \mathcal{N}(1, 0.3^2)`, :math:`t \sim \mathcal{N}(0, 0.05^2)`, and is rotated by
    :math:`2 \pi k / 5 + 0.25\, e^{r}` for its arm :math:`k`, so arms bend more further out.

    Example:
        >>> pinwheel(1000).shape
        torch.Size([1000, 2])
    """
    n, generator = _checked(n, seed)
    arm = torch.randint(5, (n,), generator=generator).double()
    r = 1 + 0.3 * torch.randn(n, generator=generator, dtype=torch.float64)
    t = 0.05 * torch.randn(n, generator=generator, dtype=torch.float64)
    angle = 2 * math.pi * arm / 5 + 0.25 * torch.exp(r)
    cos, sin = torch.cos(angle), torch.sin(angle)
    return torch.stack([cos * r - sin * t, sin * r + cos * t], -1).float()


def rings(n: int, *, seed: int = 0) -> Tensor:
    r"""``n`` points on four concentric circles of radii 0.5, 1, 1.5 and 2, each circle chosen with
    probability proportional to its radius (equal density along the curves), with radial Gaussian
    noise of standard deviation 0.03.

    Example:
        >>> radius = rings(1000).norm(dim=-1)
        >>> bool(((radius * 2).round() / 2 - radius).abs().max() < 0.2)
        True
    """
    n, generator = _checked(n, seed)
    radii = torch.tensor([0.5, 1.0, 1.5, 2.0], dtype=torch.float64)
    circle = (torch.multinomial(radii, n, replacement=True, generator=generator) if n
              else torch.zeros(0, dtype=torch.long))
    radius = radii[circle]
    radius = radius + 0.03 * torch.randn(n, generator=generator, dtype=torch.float64)
    angle = 2 * math.pi * torch.rand(n, generator=generator, dtype=torch.float64)
    return (radius[:, None] * torch.stack([torch.cos(angle), torch.sin(angle)], -1)).float()


def _checked(n: int, seed: int) -> tuple[int, torch.Generator]:
    """The number of points, checked, and the generator of ``seed``."""
    n = check_int("n", n, least=0)
    return n, torch.Generator().manual_seed(check_int("seed", seed, least=None))


TOY: dict[str, Callable[..., Tensor]] = {
    "two_moons": two_moons, "eight_gaussians": eight_gaussians, "checkerboard": checkerboard,
    "two_spirals": two_spirals, "pinwheel": pinwheel, "rings": rings,
}
"""The toy densities by name; each is called as ``TOY[name](n, seed=seed)`` and returns ``(n, 2)`` float32."""
