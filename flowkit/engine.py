r"""Dimension-by-dimension evaluation of a MADE: the one loop every sequential operation uses.

Sampling, completion (and, later, MAF inversion and IAF densities) all need the parameters of
feature :math:`d` after the features before it are final. :func:`autoregressive` is that loop;
callers say what to do with each feature's parameters through a ``step`` function.

This is the plain reference loop: one network pass per feature, :math:`D` passes in all.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from flowkit.made import MADE

__all__ = ["autoregressive"]

Step = Callable[[int, Tensor, Tensor], Tensor]


def autoregressive(
    made: MADE,
    x: Tensor,
    step: Step,
    *,
    encode: Callable[[Tensor], Tensor] = lambda x: x,
    context: Tensor | None = None,
    mask: int | None = None,
    features: list[int] | None = None,
) -> Tensor:
    r"""Fills ``x`` feature by feature in the ordering of a mask set.

    For each feature :math:`d` in the ordering, computes the parameters
    ``made(encode(x), context)[..., d, :]`` with every earlier feature already final, and sets
    ``x[..., d] = step(d, params_d, x[..., d])``.

    Arguments:
        made: the network.
        x: the starting values, ``(*batch, D)``, with the full batch shape (that of the context
            included); not modified: a filled copy is returned.
        step: ``(d, params: (*batch, P), current: (*batch,)) -> (*batch,)``, the new values of
            feature ``d``.
        encode: maps values ``(*batch, D)`` to the network's input columns.
        context: the context, ``(*batch, context_features)``, or ``None``.
        mask: the mask set whose ordering and masks are used; the current one when ``None``.
        features: only visit these features (ints or an integer tensor; the others keep their
            values); all when ``None``.

    Returns:
        The filled values, shape and dtype of ``x``.

    Example:
        >>> made = flowkit.MADE(3, [8], seed=0)
        >>> ones = autoregressive(made, torch.zeros(2, 3), lambda d, p, cur: torch.ones_like(cur))
        >>> ones.tolist()
        [[1.0, 1.0, 1.0], [1.0, 1.0, 1.0]]
    """
    index = made._index if mask is None else mask
    order = made.orders[index].tolist()
    if features is not None:
        wanted = {int(d) for d in features}
        if not wanted <= set(order):
            raise ValueError(f"expected features in 0..{made.features - 1}, got {sorted(wanted - set(order))}")
        order = [d for d in order if d in wanted]
    x = x.clone()
    for d in order:
        params = made(encode(x), context, mask=index)[..., d, :]
        x[..., d] = step(d, params, x[..., d])
    return x
