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

A residual MADE (``residual_blocks > 0``) is served the same way: a block's units have the degrees
of the block's input, so at step ``t`` the engine computes the units of degree ``t`` of the first
hidden layer, then of each block in turn (the skip adds the block input's units of the same
degree), then the activations that feed the output. A unit's schedule degree is the largest
effective degree it has in any block (for masks built by :mod:`flowkit.masks`, its degree).

The engine evaluates the network deterministically: dropout is never applied, in either path,
even when the MADE is in training mode (sampling and inversion are evaluation).

When gradients are required (a parameter, ``x`` or the context requires grad and grad mode is
on), the engine runs the plain loop instead: ``D`` network passes, out of place, so that
autograd can differentiate through every step. The incremental path writes into preallocated
buffers and does not record a graph.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from flowkit.errors import FlowkitValueError
from flowkit.made import MADE
from flowkit.validation import check_context, check_finite, check_ints, check_shape

__all__ = ["autoregressive"]

Step = Callable[[int, Tensor, Tensor], Tensor]

_IN_PLACE = {nn.ReLU: torch.relu_, nn.Tanh: torch.tanh_, nn.Sigmoid: torch.sigmoid_}


def _identity(x: Tensor, feature: int | None = None) -> Tensor:
    return x


def autoregressive(
    made: MADE,
    x: Tensor,
    step: Step,
    *,
    encode: Callable[[Tensor, int | None], Tensor] = _identity,
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
            feature ``d``. ``params`` and ``current`` are valid during the call only (the engine
            reuses their memory): copy them to keep them.
        encode: ``encode(values, feature)`` maps the values ``(*batch, D)`` of all features
            (``feature=None``) to their input columns ``(*batch, D * columns_per_feature)``, and
            the values ``(*batch, 1)`` of feature ``d`` alone (``feature=d``) to
            ``(*batch, columns_per_feature)`` (one-hot for categories; see
            :meth:`flowkit.heads.Head.encode`).
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
    index = made.current_mask if mask is None else made.check_mask(mask)
    order = made.orders[index].tolist()
    visit = set(order)
    if features is not None:
        visit = set(check_ints("features", features, least=None, each="every feature"))
        if not visit <= set(order):
            raise FlowkitValueError(f"expected features in 0..{made.features - 1}, got {sorted(visit - set(order))}")
    check_shape("x", x, made.features)
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
        params = made(encode(x, None), context, mask=index, deterministic=True)[..., d, :]
        # Out of place, so that gradients flow through every step.
        x = torch.where(columns[d], step(d, params, x[..., d]).unsqueeze(-1).to(x.dtype), x)
    return x


@dataclass
class _Layer:
    weight: Tensor  # (units, units below), sorted and masked
    bias: Tensor  # (units, 1), sorted
    offsets: list[int]  # offsets[t]: the units of effective degree <= t


@dataclass
class _Residual:
    first: _Layer  # the first hidden layer, whose outputs start the residual stream
    blocks: list[tuple[Tensor, Tensor, Tensor, Tensor]]  # per block: (W_1, b_1, W_2, b_2), sorted
    offsets: list[int]  # offsets[t]: the hidden units of schedule degree <= t


@dataclass
class _Plan:
    order: list[int]
    inputs: list[int]  # inputs[t]: the input columns of degree <= t (context first)
    layers: list[_Layer]  # the plain hidden layers; empty for a residual MADE
    output: Tensor  # (D, P, last hidden units), sorted columns
    output_bias: Tensor  # (D, P, 1)
    direct: Tensor | None  # (D, P, input columns), sorted columns
    residual: _Residual | None = None
    workspaces: dict = field(default_factory=dict)


def _effective_degrees(mask: Tensor, below: Tensor) -> Tensor:
    if not mask.shape[1]:
        return mask.new_zeros(mask.shape[0], dtype=torch.long)
    return (mask.long() * below[None, :]).amax(dim=1)


def _plan(made: MADE, index: int) -> _Plan:
    """The plan of mask set ``index``, kept by the MADE (:attr:`MADE.derived`, one per mask set) while
    its weights, biases, masks and orderings are unchanged."""
    sources = [made.orders]
    for linear in made._masked_linears():
        sources += [linear.weight, linear.masks] + ([] if linear.bias is None else [linear.bias])
    weight = made.layers[0].weight
    return made.derived.get(("engine plan", index), sources, lambda: _build_plan(made, index),
                            (weight.dtype, weight.device))


def _build_plan(made: MADE, index: int) -> _Plan:
    D, P, C, per = made.features, made.num_params, made.context_features, made.columns_per_feature
    order = made.orders[index].cpu()
    feature_degree = torch.empty(D, dtype=torch.long)
    feature_degree[order] = torch.arange(1, D + 1)
    input_degree = torch.cat([feature_degree.repeat_interleave(per), torch.zeros(C, dtype=torch.long)])
    input_sort = torch.sort(input_degree, stable=True).indices
    device = made.layers[0].weight.device

    def offsets(sorted_degrees: Tensor) -> list[int]:
        return torch.searchsorted(sorted_degrees, torch.arange(D + 1), right=True).tolist()

    layers, below, below_sort, residual = [], input_degree, input_sort, None
    if made.blocks:
        residual, below, below_sort = _residual_plan(made, index, input_degree, input_sort, offsets)
    for linear in made.layers[:-1] if not made.blocks else []:
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
        direct = (made.direct.weight * made.direct.masks[index])[:, input_sort.to(device)]
        direct = direct.reshape(D, P, -1).contiguous()
    return _Plan(order.tolist(), offsets(input_degree[input_sort]), layers, output, output_bias, direct, residual)


def _residual_plan(made: MADE, index: int, input_degree: Tensor, input_sort: Tensor, offsets) -> tuple:
    """The first layer and blocks of a residual MADE, with one schedule degree per hidden unit.

    Every block reads and writes the same units, so a unit gets one degree for all of them: the
    smallest that is at least its effective degree in the first layer and at least the degree of
    every unit it reads in any block. At step ``t`` the blocks run in order, so each block finds
    the units of degree ``<= t`` below it final.
    """
    first = made.layers[0]
    device = first.weight.device
    degree = _effective_degrees(first.masks[index].cpu(), input_degree)
    masks = [linear.masks[index].cpu() for block in made.blocks for linear in block]
    while True:
        raised = torch.stack([degree, *(_effective_degrees(mask, degree) for mask in masks)]).amax(0)
        if torch.equal(raised, degree):
            break
        degree = raised
    sort = torch.sort(degree, stable=True).indices
    rows = sort.to(device)
    weight = (first.weight * first.masks[index])[rows][:, input_sort.to(device)]
    head = _Layer(weight.contiguous(), first.bias[rows].unsqueeze(1), offsets(degree[sort]))
    blocks = []
    for inner, outer in made.blocks:
        w1 = (inner.weight * inner.masks[index])[rows][:, rows].contiguous()
        w2 = (outer.weight * outer.masks[index])[rows][:, rows].contiguous()
        blocks.append((w1, inner.bias[rows].unsqueeze(1), w2, outer.bias[rows].unsqueeze(1)))
    return _Residual(head, blocks, head.offsets), degree, sort


@dataclass
class _Workspace:
    """Buffers for one batch size and every step's views into them, built once and reused."""

    inputs: Tensor  # (input columns, B), feature-major
    values: Tensor  # (D, B), feature-major
    params: Tensor  # (P, B)
    layers: list[list[tuple[Tensor, Tensor, Tensor, Tensor]]]  # per step: (out, bias, weight, below)
    outputs: list[tuple[Tensor, Tensor, Tensor, Tensor | None, Tensor | None]]  # per step
    writes: list[Tensor]  # per step: the (B, columns) view that receives the encoded feature
    residual: list[tuple | None] | None = None  # per step, for a residual MADE: see _residual_step


def _workspace(plan: _Plan, made: MADE, B: int, dtype: torch.dtype, device: torch.device) -> _Workspace:
    key = (B, dtype, device)
    if key in plan.workspaces:
        return plan.workspaces[key]
    D, C, P, per = made.features, made.context_features, made.num_params, made.columns_per_feature
    inputs = torch.zeros(C + D * per, B, dtype=dtype, device=device)
    hidden = [torch.zeros(layer.weight.shape[0], B, dtype=dtype, device=device) for layer in plan.layers]
    below = [inputs, *hidden[:-1]]
    ends_below = [plan.inputs] + [layer.offsets for layer in plan.layers[:-1]]
    last, last_ends = (hidden[-1], plan.layers[-1].offsets) if hidden else (inputs, plan.inputs)
    residual = None
    if plan.residual is not None:
        residual, last = _residual_jobs(plan, inputs, B, dtype, device)
        last_ends = plan.residual.offsets
    params = torch.zeros(P, B, dtype=dtype, device=device)
    layers, outputs, writes = [], [], []
    for t, d in enumerate(plan.order):
        jobs = []
        for layer, h, h_below, ends in zip(plan.layers, hidden, below, ends_below):
            lo, hi = (layer.offsets[t - 1] if t else 0), layer.offsets[t]
            if hi > lo:
                k = ends[t]
                jobs.append((h[lo:hi], layer.bias[lo:hi], layer.weight[lo:hi, :k], h_below[:k]))
        layers.append(jobs)
        k, j = last_ends[t], plan.inputs[t]
        direct = None if plan.direct is None else plan.direct[d, :, :j]
        seen = inputs[:j] if plan.direct is not None else None
        outputs.append((plan.output_bias[d], plan.output[d, :, :k], last[:k], direct, seen))
        writes.append(inputs[C + t * per : C + (t + 1) * per].T)
    workspace = _Workspace(inputs, torch.zeros(D, B, dtype=dtype, device=device), params, layers, outputs, writes,
                           residual)
    plan.workspaces.clear()  # keep one batch size: memory stays bounded
    plan.workspaces[key] = workspace
    return workspace


def _residual_jobs(plan: _Plan, inputs: Tensor, B: int, dtype: torch.dtype, device: torch.device) -> tuple:
    """Per step, the views :func:`_residual_step` works on, and the buffer that feeds the output.

    Buffers, ``(H, B)`` each: the residual stream (pre-activation, updated in place by every block),
    the activated stream that enters each block and the output layer, and each block's inner
    activations.
    """
    res = plan.residual
    H, K = res.first.weight.shape[0], len(res.blocks)
    stream = torch.zeros(H, B, dtype=dtype, device=device)
    entering = [torch.zeros(H, B, dtype=dtype, device=device) for _ in range(K + 1)]
    inner = [torch.zeros(H, B, dtype=dtype, device=device) for _ in range(K)]
    jobs = []
    for t in range(len(plan.order)):
        lo, hi = (res.offsets[t - 1] if t else 0), res.offsets[t]
        if hi == lo:
            jobs.append(None)
            continue
        k, j = res.offsets[t], plan.inputs[t]
        head = (stream[lo:hi], res.first.bias[lo:hi], res.first.weight[lo:hi, :j], inputs[:j])
        blocks = [
            (entering[b][lo:hi], inner[b][lo:hi], b1[lo:hi], w1[lo:hi, :k], entering[b][:k],
             b2[lo:hi], w2[lo:hi, :k], inner[b][:k])
            for b, (w1, b1, w2, b2) in enumerate(res.blocks)
        ]
        jobs.append((head, blocks, entering[K][lo:hi]))
    return jobs, entering[K]


def _residual_step(job: tuple, activation: nn.Module, activate) -> None:
    """Computes the units of one degree through the first layer and every residual block."""
    (stream, bias, weight, below), blocks, final = job
    torch.addmm(bias, weight, below, out=stream)
    for entering, inner, b1, w1, entering_below, b2, w2, inner_below in blocks:
        _activate_into(entering, stream, activation, activate)
        torch.addmm(b1, w1, entering_below, out=inner)
        _activate_into(inner, inner, activation, activate)
        stream.add_(b2).addmm_(w2, inner_below)
    _activate_into(final, stream, activation, activate)


def _activate_into(out: Tensor, x: Tensor, activation: nn.Module, activate) -> None:
    if activate is None:
        out.copy_(activation(x))
        return
    if out is not x:
        out.copy_(x)
    activate(out)


def _incremental(made, x, step, encode, context, index, visit) -> Tensor:
    plan = _plan(made, index)
    D, C = made.features, made.context_features
    batch = x.shape[:-1]
    flat = x.reshape(-1, D)
    B = flat.shape[0]
    weight = made.layers[0].weight
    space = _workspace(plan, made, B, weight.dtype, weight.device)
    # Activations are feature-major, (units, batch), so that the units of one degree are a
    # contiguous block of rows that addmm writes in place. Every unit is written before it is read.
    if C:
        space.inputs[:C] = context.expand(*batch, C).reshape(B, C).T
    values = space.values
    if flat.dtype != values.dtype:
        values = torch.empty(D, B, dtype=flat.dtype, device=flat.device)
    values.copy_(flat.T)
    rows = values.unbind(0)
    params = space.params.T if len(batch) == 1 else space.params.T.reshape(*batch, space.params.shape[0])
    activate = _IN_PLACE.get(type(made.activation))
    residual = space.residual
    for t, d in enumerate(plan.order):
        for out, bias, weight_block, below in space.layers[t]:
            torch.addmm(bias, weight_block, below, out=out)
            if activate is not None:
                activate(out)
            else:
                out.copy_(made.activation(out))
        if residual is not None and residual[t] is not None:
            _residual_step(residual[t], made.activation, activate)
        if d in visit:
            bias, weight_block, last, direct, inputs = space.outputs[t]
            torch.addmm(bias, weight_block, last, out=space.params)
            if direct is not None:
                space.params.addmm_(direct, inputs)
            current = rows[d] if len(batch) == 1 else rows[d].reshape(batch)
            rows[d].copy_(step(d, params, current).reshape(-1))
        space.writes[t].copy_(encode(rows[d].unsqueeze(-1), d))
    return values.T.reshape(x.shape).clone()
