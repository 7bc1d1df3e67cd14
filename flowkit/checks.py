r"""An autograd check of the autoregressive property, independent of how the masks were built."""

from __future__ import annotations

import torch
from torch import BoolTensor, nn

from flowkit import masks as M
from flowkit.made import MADE

__all__ = ["check_autoregressive", "AutoregressiveError"]


class AutoregressiveError(AssertionError):
    """An output depends on an input that does not come before it in the ordering."""


def check_autoregressive(model: nn.Module, *, batch: int = 16, seed: int = 0) -> BoolTensor:
    r"""Verifies by autograd that output :math:`d` depends only on inputs before :math:`d`.

    For every mask set of the model's MADE, differentiates the outputs of each feature with
    respect to the inputs at ``batch`` random points (and random contexts) and checks that
    :math:`\partial o_{d} / \partial x_j \neq 0` only where feature :math:`j` precedes feature
    :math:`d` in that mask set's ordering. The masks are not consulted, so the check also catches
    a wrong mask construction. The network is evaluated without dropout, in any mode.

    Arguments:
        model: a :class:`flowkit.MADE`, or any module with a ``made`` attribute (the densities).
        batch: the number of random points.
        seed: the seed of the random points.

    Returns:
        The observed dependencies of the current mask set, ``(D, D)``: ``[d, j]`` is true when
        output ``d`` changed with input ``j`` at some point.

    Raises:
        AutoregressiveError: naming the mask set and the offending (output, input) pairs.

    Example:
        >>> made = flowkit.MADE(3, [16], seed=0, order=[2, 0, 1])
        >>> check_autoregressive(made).int().tolist()
        [[0, 0, 1], [1, 0, 1], [0, 0, 0]]
    """
    made = model if isinstance(model, MADE) else getattr(model, "made", None)
    if not isinstance(made, MADE):
        raise TypeError(f"expected a MADE or a module with a .made attribute, got {type(model).__name__}")
    weight = made.layers[0].weight
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, made.in_features, generator=generator, dtype=torch.float64)
    x = x.to(dtype=weight.dtype, device=weight.device).requires_grad_(True)
    context = None
    if made.context_features:
        context = torch.randn(batch, made.context_features, generator=generator, dtype=torch.float64)
        context = context.to(dtype=weight.dtype, device=weight.device)

    found = None
    with torch.enable_grad():
        for r in range(made.num_masks):
            out = made(x, context, mask=r, deterministic=True)
            rows = []
            for d in range(made.features):
                (grad,) = torch.autograd.grad(out[:, d, :].sum(), x, retain_graph=True, allow_unused=True)
                grad = torch.zeros_like(x) if grad is None else grad
                rows.append(grad.abs().sum(0).view(made.features, made.columns_per_feature).sum(-1) > 0)
            depends = torch.stack(rows).cpu()
            allowed = M.allowed_connectivity(made.orders[r].cpu())
            bad = (depends & ~allowed).nonzero().tolist()
            if bad:
                pairs = ", ".join(f"output {d} <- input {j}" for d, j in bad[:10])
                raise AutoregressiveError(
                    f"mask set {r} (order {made.orders[r].tolist()}) breaks the autoregressive "
                    f"property: {pairs}{' ...' if len(bad) > 10 else ''}"
                )
            if r == made.current_mask:
                found = depends
    return found
