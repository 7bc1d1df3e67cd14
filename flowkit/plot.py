"""Figures: grids of images and completions of partly hidden images."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import Tensor  # noqa: E402

__all__ = ["image_grid", "save_image_grid", "save_completions", "density_grid"]


def image_grid(images: Tensor, shape: tuple[int, int], columns: int = 10, pad: int = 1) -> np.ndarray:
    """Tiles ``images: (N, H * W)`` into one array, ``columns`` per row, with ``pad`` pixels between.

    Example:
        >>> image_grid(torch.ones(3, 4), (2, 2), columns=2).shape
        (7, 7)
    """
    h, w = shape
    images = images.detach().cpu().double().reshape(-1, h, w).numpy()
    rows = math.ceil(len(images) / columns)
    grid = np.full((rows * (h + pad) + pad, columns * (w + pad) + pad), np.nan)
    for i, image in enumerate(images):
        r, c = divmod(i, columns)
        grid[pad + r * (h + pad) : pad + r * (h + pad) + h, pad + c * (w + pad) : pad + c * (w + pad) + w] = image
    return grid


def save_image_grid(images: Tensor, path: str | Path, shape: tuple[int, int], columns: int = 10,
                    title: str | None = None, vmax: float = 1.0) -> Path:
    """Writes a PNG grid of images (white = ``vmax``, padding grey)."""
    grid = image_grid(images, shape, columns)
    fig, ax = plt.subplots(figsize=(grid.shape[1] / 8, grid.shape[0] / 8 + (0.4 if title else 0)), dpi=100)
    cmap = plt.get_cmap("gray").with_extremes(bad="#7f7f7f")
    ax.imshow(grid, cmap=cmap, vmin=0.0, vmax=vmax, interpolation="nearest")
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=9)
    path = Path(path)
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return path


def save_completions(originals: Tensor, observed: Tensor, completions: Tensor, path: str | Path,
                     shape: tuple[int, int], vmax: float = 1.0) -> Path:
    """Writes a PNG: per example one row of the original, the observed part (hidden pixels
    grey) and the completions ``(N, S, H * W)``."""
    n, s = completions.shape[:2]
    shown = originals.double().masked_fill(~observed, float("nan"))
    rows = torch.cat([originals.double()[:, None], shown[:, None], completions.double()], dim=1)
    title = "original | observed (grey hidden) | completions"
    return save_image_grid(rows.reshape(n * (s + 2), -1), path, shape, columns=s + 2, title=title, vmax=vmax)


@torch.no_grad()
def density_grid(log_prob, bounds: tuple[float, float, float, float], resolution: int = 200,
                 dtype: torch.dtype = torch.float32) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Evaluates a 2-D density on a grid: returns ``(xs, ys, density)`` with ``density[i, j]`` at
    ``(xs[j], ys[i])``; ``log_prob`` maps ``(N, 2)`` points to ``(N,)`` log-densities.

    Example:
        >>> xs, ys, p = density_grid(lambda z: -z.pow(2).sum(-1), (-1, 1, -1, 1), resolution=3)
        >>> p.shape, float(p[1, 1])
        ((3, 3), 1.0)
    """
    x0, x1, y0, y1 = bounds
    xs = torch.linspace(x0, x1, resolution, dtype=dtype)
    ys = torch.linspace(y0, y1, resolution, dtype=dtype)
    grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), -1).reshape(-1, 2)
    density = torch.cat([log_prob(chunk).exp() for chunk in grid.split(10000)])
    return xs.numpy(), ys.numpy(), density.reshape(resolution, resolution).cpu().double().numpy()
