"""Figures: grids of images, completions of partly hidden images, learning curves, 2-D densities.

Figures are drawn on :class:`matplotlib.figure.Figure` objects, not through ``pyplot``: importing
this module leaves the user's matplotlib backend alone. Every figure is written atomically.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib
import numpy as np
import torch
from matplotlib.figure import Figure
from torch import Tensor

from flowkit.atomic import save_figure

__all__ = ["image_grid", "save_image_grid", "save_completions", "density_grid", "save_curves", "save_density_2d",
           "save_scatter"]


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
    fig = Figure(figsize=(grid.shape[1] / 8, grid.shape[0] / 8 + (0.4 if title else 0)), dpi=100)
    ax = fig.subplots()
    cmap = matplotlib.colormaps["gray"].with_extremes(bad="#7f7f7f")
    ax.imshow(grid, cmap=cmap, vmin=0.0, vmax=vmax, interpolation="nearest")
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=9)
    return save_figure(fig, path, bbox_inches="tight")


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


def save_curves(
    train_nll: list[float], valid_nll: list[float], path: str | Path, best_epoch: int | None = None
) -> Path:
    """Writes a PNG of the mean training and validation NLL (nats) per epoch, the kept epoch marked."""
    fig = Figure(figsize=(5, 3.2), dpi=100)
    ax = fig.subplots()
    epochs = np.arange(1, len(train_nll) + 1)
    ax.plot(epochs, train_nll, label="train")
    if valid_nll:
        ax.plot(epochs[: len(valid_nll)], valid_nll, label="valid")
    if best_epoch is not None and best_epoch >= 0:
        ax.axvline(best_epoch + 1, color="grey", linestyle=":", label="kept")
    ax.set_xlabel("epoch")
    ax.set_ylabel("NLL (nats)")
    ax.legend(fontsize=8)
    return save_figure(fig, path, bbox_inches="tight")


def _bounds(points: np.ndarray, margin: float = 0.1) -> tuple[float, float, float, float]:
    low, high = np.quantile(points, [0.001, 0.999], axis=0)
    pad = margin * (high - low) + 1e-3
    return float(low[0] - pad[0]), float(high[0] + pad[0]), float(low[1] - pad[1]), float(high[1] + pad[1])


def save_density_2d(data: Tensor, log_prob, path: str | Path, resolution: int = 150) -> Path:
    """Writes a PNG of a 2-D data set ``(N, 2)`` as a histogram beside the model's density
    (``log_prob`` maps ``(N, 2)`` points to ``(N,)``) as a heat map on the same square, both with
    their axes (:math:`x_1`, :math:`x_2`) and a colour bar (points per bin; density)."""
    points = data.detach().cpu().double().numpy()
    x0, x1, y0, y1 = _bounds(points)
    xs, ys, density = density_grid(log_prob, (x0, x1, y0, y1), resolution)
    fig = Figure(figsize=(9.5, 4), dpi=100, layout="constrained")
    left, right = fig.subplots(1, 2, sharex=True, sharey=True)
    *_, counts = left.hist2d(points[:, 0], points[:, 1], bins=resolution // 2, range=[[x0, x1], [y0, y1]],
                             cmap="viridis")
    fig.colorbar(counts, ax=left, label="points per bin")
    left.set_title(f"data ({len(points)} points)", fontsize=9)
    image = right.imshow(density, origin="lower", extent=(x0, x1, y0, y1), cmap="viridis", aspect="auto")
    fig.colorbar(image, ax=right, label="density")
    right.set_title("model density", fontsize=9)
    for ax in (left, right):
        ax.set_xlabel("$x_1$")
        ax.tick_params(labelsize=8)
    left.set_ylabel("$x_2$")
    return save_figure(fig, path)


def save_scatter(points: Tensor, path: str | Path, title: str | None = None) -> Path:
    """Writes a PNG scatter plot of 2-D points ``(N, 2)``."""
    points = points.detach().cpu().double().numpy()
    fig = Figure(figsize=(4, 4), dpi=100)
    ax = fig.subplots()
    ax.scatter(points[:, 0], points[:, 1], s=2, alpha=0.5)
    if title:
        ax.set_title(title, fontsize=9)
    ax.set_xlabel("$x_1$")
    ax.set_ylabel("$x_2$")
    ax.tick_params(labelsize=8)
    ax.set_aspect("equal", adjustable="datalim")
    return save_figure(fig, path, bbox_inches="tight")
