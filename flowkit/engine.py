r"""Dimension-by-dimension evaluation of a MADE: the one loop every sequential operation uses.

Sampling, completion, MAF inversion and IAF densities all need the parameters of feature
:math:`d` once the features before it are final. :func:`autoregressive` is that loop; callers say
what to do with each feature's parameters through a ``step`` function.

The incremental engine
----------------------
A hidden unit whose inputs all come from features ``1..m`` of the ordering (its *effective
degree* is ``m``; for a MADE built by :mod:`flowkit.masks` this is its degree) never changes once
those features are final. The engine sorts each layer's units by effective degree and, after
feature ``t`` of the ordering is fixed, computes exactly the units of degree ``t`` from the final
units below them, then the parameters of feature ``t + 1`` from the final units of the last layer.
Every unit is computed once: sampling all ``D`` features costs about one network pass of
arithmetic instead of ``D`` passes.

Effective degrees are read off the masks (the largest effective degree among a unit's inputs;
context columns have degree 0), so the engine serves any autoregressive mask set, including masks
that were not built by flowkit. The per-step plan (sorted, masked weights and the slices of each
step) is computed once per mask set and kept while the weights and masks stay unchanged.

When gradients are required (a parameter, ``x`` or the context requires grad and grad mode is
on), the engine runs the plain loop instead: ``D`` network passes, out of place, so that
autograd can differentiate through every step. The incremental path writes into preallocated
buffers and does not record a graph.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from flowkit.made import MADE
from flowkit.validation import check_context, check_finite

__all__ = ["autoregressive"]

Step = Callable[[int, Tensor, Tensor], Tensor]

_IN_PLACE = {nn.ReLU: torch.relu_, nn.Tanh: torch.tanh_, nn.Sigmoid: torch.sigmoid_}


def _identity(x: Tensor) -> Tensor:
    return x


def autoregressive(
    made: MADE,
    x: Tensor,
    step: Step,
    *,
    encode: Callable[[Tensor], Tensor] = _identity,
    context: Tensor | None = None,
    mask: int | None = None,
    features: list[int] | Tensor | None = None,
) -> Tensor:
    r"""Fills ``x`` feature by feature in the ordering of a mask set.

    For each feature :math:`d` in the ordering, computes the parameters
    ``made(encode(x), context)[..., d, :]`` with every earlier feature already final, and sets
    ``x[..., d] = step(d, params_d, x[..., d])``. Features not visited keep their values (and
    condition the later ones). Without gradients this runs the incremental engine (about one
    network pass in all); with gradients, the plain loop (``D`` passes). Both give the same result
    up to floating-point rounding.

    Arguments:
        made: the network; its activation must act elementwise.
        x: the starting values, ``(*batch, D)``, with the full batch shape (that of the context
            included); not modified: a filled copy is returned.
        step: ``(d, params: (*batch, P), current: (*batch,)) -> (*batch,)``, the new values of
            feature ``d``.
        encode: maps values ``(*batch, k)`` of ``k`` features to their input columns
            ``(*batch, k * columns_per_feature)``, feature by feature (one-hot for categories).
        context: the context, ``(*batch, context_features)``, or ``None``.
        mask: the mask set whose ordering and masks are used; the current one when ``None``.
        features: only visit these features (ints or an integer tensor); all when ``None``.

    Returns:
        The filled values, shape and dtype of ``x``.

    Example:
        >>> made = flowkit.MADE(3, [8], seed=0)
        >>> ones = autoregressive(made, torch.zeros(2, 3), lambda d, p, cur: torch.ones_like(cur))
        >>> ones.tolist()
        [[1.0, 1.0, 1.0], [1.0, 1.0, 1.0]]
    """
    index = made._index if mask is None else made._check_mask(mask)
    order = made.orders[index].tolist()
    visit = set(order)
    if features is not None:
        visit = {int(d) for d in features}
        if not visit <= set(order):
            raise ValueError(f"expected features in 0..{made.features - 1}, got {sorted(visit - set(order))}")
    if x.dim() < 1 or x.shape[-1] != made.features:
        raise ValueError(f"expected x of shape (*, {made.features}), got {tuple(x.shape)}")
    check_finite("x", x)
    check_context(context, made.context_features, x.shape[:-1])
    if _needs_grad(made, x, context):
        return _plain(made, x, step, encode, context, index, order, visit)
    with torch.no_grad():
        return _incremental(made, x, step, encode, context, index, visit)


def _needs_grad(made: MADE, x: Tensor, context: Tensor | None) -> bool:
    if not torch.is_grad_enabled():
        return False
    if x.requires_grad or (context is not None and context.requires_grad):
        return True
    return any(p.requires_grad for p in made.parameters())


def _plain(made, x, step, encode, context, index, order, visit) -> Tensor:
    columns = torch.eye(made.features, dtype=torch.bool, device=x.device)
    for d in order:
        if d not in visit:
            continue
        params = made(encode(x), context, mask=index)[..., d, :]
        # Out of place, so that gradients flow through every step.
        x = torch.where(columns[d], step(d, params, x[..., d]).unsqueeze(-1).to(x.dtype), x)
    return x


@dataclass
class _Layer:
    weight: Tensor  # (units, units below), sorted and masked
    bias: Tensor  # (units, 1), sorted
    offsets: list[int]  # offsets[t]: the units of effective degree <= t


@dataclass
class _Plan:
    key: tuple
    order: list[int]
    inputs: list[int]  # inputs[t]: the input columns of degree <= t (context first)
    layers: list[_Layer]
    output: Tensor  # (D, P, last hidden units), sorted columns
    output_bias: Tensor  # (D, P, 1)
    direct: Tensor | None  # (D, P, input columns), sorted columns


def _effective_degrees(mask: Tensor, below: Tensor) -> Tensor:
    return (mask.long() * below[None, :]).amax(dim=1) if mask.shape[1] else mask.new_zeros(mask.shape[0], dtype=torch.long)


def _plan(made: MADE, index: int) -> _Plan:
    linears = list(made.layers) + ([made.direct] if made.direct is not None else [])
    key = (index, tuple((m.weight._version, m.weight.data_ptr(), m.masks._version, m.masks.data_ptr())
                        for m in linears), made.layers[0].weight.dtype, made.layers[0].weight.device)
    cached = getattr(made, "_engine_plan", None)
    if cached is not None and cached.key == key:
        return cached

    D, P, C, per = made.features, made.params, made.context_features, made.columns_per_feature
    order = made.orders[index].cpu()
    feature_degree = torch.empty(D, dtype=torch.long)
    feature_degree[order] = torch.arange(1, D + 1)
    input_degree = torch.cat([feature_degree.repeat_interleave(per), torch.zeros(C, dtype=torch.long)])
    input_sort = torch.sort(input_degree, stable=True).indices
    device = made.layers[0].weight.device

    def offsets(sorted_degrees: Tensor) -> list[int]:
        return torch.searchsorted(sorted_degrees, torch.arange(D + 1), right=True).tolist()

    layers, below, below_sort = [], input_degree, input_sort
    for linear in made.layers[:-1]:
        mask = linear.masks[index].cpu()
        degree = _effective_degrees(mask, below)
        sort = torch.sort(degree, stable=True).indices
        weight = (linear.weight * linear.masks[index])[sort.to(device)][:, below_sort.to(device)]
        layers.append(_Layer(weight.contiguous(), linear.bias[sort.to(device)].unsqueeze(1), offsets(degree[sort])))
        below, below_sort = degree, sort

    last = made.layers[-1]
    mask = last.masks[index].cpu()
    if bool(((mask.long() * below[None, :]).amax(1) >= feature_degree.repeat_interleave(P)).any()):
        raise RuntimeError(f"mask set {index} of the MADE is not autoregressive")
    weight = (last.weight * last.masks[index])[:, below_sort.to(device)]
    output = weight.reshape(D, P, -1).contiguous()
    output_bias = last.bias.reshape(D, P, 1)
    direct = None
    if made.direct is not None:
        direct = (made.direct.weight * made.direct.masks[index])[:, input_sort.to(device)].reshape(D, P, -1).contiguous()
    plan = _Plan(key, order.tolist(), offsets(input_degree[input_sort]), layers, output, output_bias, direct)
    made._engine_plan = plan
    return plan


def _incremental(made, x, step, encode, context, index, visit) -> Tensor:
    plan = _plan(made, index)
    D, C, per = made.features, made.context_features, made.columns_per_feature
    batch = x.shape[:-1]
    values = x.reshape(-1, D).clone()
    B = values.shape[0]
    weight = made.layers[0].weight
    dtype, device = weight.dtype, weight.device

    # Activations are kept feature-major, (units, batch), so that the units of one degree are a
    # contiguous block of rows that addmm can write in place.
    inputs = torch.zeros(C + D * per, B, dtype=dtype, device=device)
    if C:
        inputs[:C] = context.expand(*batch, C).reshape(B, C).T.to(dtype)
    hidden = [torch.zeros(layer.weight.shape[0], B, dtype=dtype, device=device) for layer in plan.layers]
    below = [inputs, *hidden[:-1]]
    last = hidden[-1] if hidden else inputs
    activate = _IN_PLACE.get(type(made.activation))

    offsets_below = [plan.inputs] + [layer.offsets for layer in plan.layers[:-1]]
    for t, d in enumerate(plan.order):
        for layer, h, h_below, ends_below in zip(plan.layers, hidden, below, offsets_below):
            lo, hi = (layer.offsets[t - 1] if t else 0), layer.offsets[t]
            if hi > lo:
                k = ends_below[t]
                block = h[lo:hi]
                torch.addmm(layer.bias[lo:hi], layer.weight[lo:hi, :k], h_below[:k], out=block)
                if activate is not None:
                    activate(block)
                else:
                    block.copy_(made.activation(block))
        if d in visit:
            k = plan.layers[-1].offsets[t] if plan.layers else plan.inputs[t]
            params = torch.addmm(plan.output_bias[d], plan.output[d, :, :k], last[:k])
            if plan.direct is not None:
                params = params.addmm_(plan.direct[d, :, : plan.inputs[t]], inputs[: plan.inputs[t]])
            params = params.T.reshape(*batch, params.shape[0])
            values[:, d] = step(d, params, values[:, d].reshape(batch)).reshape(B)
        start = C + t * per
        inputs[start : start + per] = encode(values[:, d : d + 1]).T
    return values.reshape(x.shape)
