r"""The masked autoregressive network (MADE) that every flowkit model is built on."""

from __future__ import annotations

import contextlib
import os
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import Tensor, nn

from flowkit import masks as M
from flowkit.derived import Derived
from flowkit.errors import FlowkitTypeError, FlowkitValueError
from flowkit.validation import (
    broadcast_batch,
    check_context,
    check_finite,
    check_float,
    check_int,
    check_ints,
    check_option,
    check_shape,
)

__all__ = ["MADE", "MaskedLinear", "ConnectivityWarning"]


class ConnectivityWarning(UserWarning):
    """A MADE's masks cannot represent some dependencies that its ordering allows."""


class MaskedLinear(nn.Linear):
    r"""A linear layer whose weight is multiplied by one of ``R`` fixed binary masks.

    .. math:: y = x (W \odot M_r)^T + b

    Arguments:
        masks: the masks, of shape ``(R, out_features, in_features)`` or ``(out, in)``.
        bias: whether the layer has a bias.
        generator: the source of randomness of the initial weights.
        gain: the scale of the initial weights (see :meth:`reset_parameters_masked`).

    In eval mode, with gradients off, the masked weight is kept between calls and recomputed only
    when the weight or the masks change (in place, as optimisers and ``load_state_dict`` do, or by
    being replaced) or another mask set is chosen. Edits through ``.data`` bypass torch's version
    counter: after one in eval mode, call ``eval()`` again to drop the kept product.

    Example:
        >>> layer = MaskedLinear(torch.tensor([[1, 0], [1, 1]]))
        >>> layer(torch.randn(5, 2)).shape
        torch.Size([5, 2])
    """

    def __init__(self, masks: Tensor, bias: bool = True, *, generator: torch.Generator | None = None,
                 gain: float = 1.0):
        masks = masks if masks.dim() == 3 else masks[None]
        super().__init__(masks.shape[2], masks.shape[1], bias=bias)
        self.register_buffer("masks", masks.bool())
        self._derived = Derived()
        self.reset_parameters_masked(generator=generator, gain=gain)

    def reset_parameters_masked(self, *, generator: torch.Generator | None = None, gain: float = 1.0) -> None:
        r"""Draws the weights and biases uniformly on :math:`\pm \text{gain} / \sqrt{\text{fan-in}}`,
        with the fan-in each unit actually has under the first mask (at least 1)."""
        fan_in = self.masks[0].sum(dim=1, keepdim=True).clamp(min=1.0)
        bound = gain / fan_in.sqrt()
        with torch.no_grad():
            self.weight.uniform_(-1.0, 1.0, generator=generator).mul_(bound)
            if self.bias is not None:
                self.bias.uniform_(-1.0, 1.0, generator=generator).mul_(bound.squeeze(1))

    def mask(self, index: int = 0) -> Tensor:
        """Mask set ``index`` as a tensor of the weight's dtype, ``(out_features, in_features)``.

        Kept between calls (a boolean mask would be converted in every product, forward and
        backward) while the masks, the weight's dtype and device and inference mode stay the same.
        """
        return self._mask(index, self.masks, self.weight.dtype)

    def _mask(self, index: int, masks: Tensor, dtype: torch.dtype) -> Tensor:
        if torch.compiler.is_compiling():
            return masks[index].to(dtype)
        context = (dtype, masks.device, torch.is_inference_mode_enabled())
        return self._derived.get(("mask", index), (masks,), lambda: masks[index].to(dtype), context)

    def masked_weight(self, index: int = 0) -> Tensor:
        """The weight under mask set ``index``, shape ``(out_features, in_features)``."""
        # each parameter and buffer read once: nn.Module attribute lookups are a measurable part of
        # a small network's call
        weight, masks = self.weight, self.masks
        if self.training or (weight.requires_grad and torch.is_grad_enabled()):
            self._derived.drop(("weight", index))
            return weight * self._mask(index, masks, weight.dtype)
        context = (weight.dtype, weight.device, torch.is_inference_mode_enabled())
        return self._derived.get(("weight", index), (weight, masks),
                                 lambda: weight * self._mask(index, masks, weight.dtype), context)

    def train(self, mode: bool = True) -> MaskedLinear:
        self._derived.drop()  # what is kept is never pickled (flowkit.derived)
        return super().train(mode)

    def forward(self, x: Tensor, index: int = 0) -> Tensor:
        return nn.functional.linear(x, self.masked_weight(index), self.bias)


class MADE(nn.Module):
    r"""Masked Autoencoder for Distribution Estimation (Germain et al., 2015).

    A multilayer perceptron whose weights are masked so that the ``num_params`` outputs of feature
    :math:`d` depend only on the features that come before :math:`d` in an ordering (and on the
    context, which every unit may see):

    .. math:: h^l = g\big(b^l + (W^l \odot M^l) h^{l-1}\big), \quad
              o = c + (V \odot M^V) h^L \;[\, + (A \odot M^A) x \,]

    Input feature :math:`i` may span ``columns_per_feature`` columns that share its degree (one-hot
    groups for categorical data). The context is appended to the input as columns of degree 0.
    With ``num_masks = R > 1`` the network holds ``R`` mask sets, each with its own hidden degrees
    and, with ``order_agnostic=True``, its own random ordering (connectivity- and order-agnostic
    training): :meth:`next_mask` cycles through them, and every mask set is a different
    autoregressive model sharing the same weights.

    **Mask keys** (the paper's connectivity-agnostic training with a new mask for every
    minibatch). :meth:`draw_masks` ``(k)`` rebuilds the current mask set from the integer key
    :math:`k`, deterministically from the pair ``(mask_seed, k)``, so that any of an unbounded
    number of masks can be rebuilt, for a test-time ensemble, without being stored.
    ``flowkit.train.fit(..., masks="fresh")`` trains with key :math:`t` at step :math:`t`, and
    ``AutoregressiveDensity.log_prob(x, keys=R)`` scores the ensemble of keys ``0..R-1``.

    **Residual blocks** (ResMADE: Nash & Durkan, *Autoregressive Energy Machines*, 2019; the
    conditioner of Durkan et al., *Neural Spline Flows*, 2019). With ``residual_blocks = K > 0``
    and one hidden width :math:`H`, the first masked layer is followed by :math:`K` blocks

    .. math:: h \leftarrow h + (W_2 \odot M)\, g\big((W_1 \odot M)\, g(h) + b_1\big) + b_2,
              \qquad o = c + (V \odot M^V) g(h) \;[\, + (A \odot M^A) x \,]

    where :math:`M_{k'k} = 1[m(k') \ge m(k)]` is the mask of the first hidden layer's degrees
    against themselves: a block's units have the degrees of its input, so the skip adds units of
    equal degree and the network stays autoregressive. Every block's second layer starts near
    zero, so that every block starts near the identity.

    **Dropout** (``dropout = p > 0``) zeroes each hidden activation :math:`g(\cdot)` with
    probability :math:`p` (and scales the others by :math:`1 / (1 - p)`) in training mode; never
    the input, the context or the output, and never in eval mode or with ``deterministic=True``.
    Dimension-by-dimension evaluation (:func:`flowkit.engine.autoregressive`: sampling, MAF
    inversion) never drops units.

    **Initialisation.** Each layer's weights and biases are drawn uniformly on
    :math:`\pm 1/\sqrt{\text{fan-in}}`, with the fan-in each unit has under its mask; the second
    layer of every residual block on :math:`10^{-3}` of that, so that every block starts near the
    identity. (The flows' layers start at the identity transform: see
    :class:`flowkit.transforms.MaskedAutoregressive`.)

    Arguments:
        features: the number of features :math:`D`.
        hidden_features: the widths of the hidden layers (an ``int`` means one layer); one width
            :math:`H` when ``residual_blocks > 0``. Widths below :math:`D - 1` are allowed; the
            masks then cannot represent every dependency and the network warns (see ``strict``).
        num_params: the number of outputs per feature :math:`P`.
        context_features: the width of the context; 0 for an unconditional network.
        order: the ordering of the first mask set: ``"natural"``, ``"reverse"``, ``"random"`` or
            a permutation listing the features in generation order.
        num_masks: the number of mask sets :math:`R`.
        order_agnostic: whether mask sets ``1..R-1`` draw their own random ordering.
        hidden_degrees: ``"random"`` (the paper's rule) or ``"even"`` (deterministic).
        columns_per_feature: the number of input columns each feature owns.
        direct: whether to add the direct input-to-output connection :math:`A \odot M^A`. Its
            weights are ``(features * num_params, features * columns_per_feature)``: quadratic in
            the categories of a categorical MADE (784 features of 4 categories: 9.8 million, of
            256: 40 billion, refused as larger than the machine's memory).
        residual_blocks: the number :math:`K` of residual blocks after the first hidden layer;
            0 for the plain MADE.
        dropout: the probability :math:`p \in [0, 1)` of dropping a hidden activation in training.
        activation: a factory of the elementwise nonlinearity, such as ``nn.ReLU`` or ``nn.Tanh``.
        seed: the seed of the orderings, degrees and initial weights, kept as ``mask_seed``
            (the seed of the mask keys too); ``None`` draws it from torch's global generator.
        strict: raise instead of warning when the masks lose allowed dependencies.

    Shapes:
        ``x: (*batch, features * columns_per_feature)``, ``context: (*batch, context_features)``,
        output ``(*batch, features, num_params)``.

    Attributes:
        layers: the masked layers that change width: the first hidden layer(s), then the output
            layer ``layers[-1]``.
        blocks: the residual blocks, each a pair ``(W_1, W_2)`` of :class:`MaskedLinear` of
            shape ``(H, H)``; empty when ``residual_blocks = 0``.
        direct: the direct connection, a :class:`MaskedLinear`, or ``None``.
        mask_seed: a long scalar buffer, the seed the masks of every key derive from (see
            :meth:`draw_masks`); in the ``state_dict()``, so a loaded network rebuilds the same keys.

    Example:
        >>> made = MADE(5, [32, 32], num_params=2, seed=0)
        >>> made(torch.randn(10, 5)).shape
        torch.Size([10, 5, 2])
        >>> flowkit.check_autoregressive(made).int().tolist()[4]  # feature 4 sees features 0..3
        [1, 1, 1, 1, 0]
        >>> resmade = MADE(5, 32, num_params=2, residual_blocks=2, dropout=0.1, seed=0)
        >>> resmade(torch.randn(10, 5)).shape
        torch.Size([10, 5, 2])
        >>> flowkit.check_autoregressive(resmade).int().tolist()[4]
        [1, 1, 1, 1, 0]
    """

    def __init__(
        self,
        features: int,
        hidden_features: int | Sequence[int],
        num_params: int = 1,
        *,
        context_features: int = 0,
        order: M.OrderSpec = "natural",
        num_masks: int = 1,
        order_agnostic: bool = False,
        hidden_degrees: M.DegreeRule = "random",
        columns_per_feature: int = 1,
        direct: bool = False,
        residual_blocks: int = 0,
        dropout: float = 0.0,
        activation: Callable[[], nn.Module] = nn.ReLU,
        seed: int | None = None,
        strict: bool = False,
    ):
        super().__init__()
        features, num_params, num_masks, columns_per_feature = (
            check_int(name, value, least=1, expected=">= 1")
            for name, value in [("features", features), ("num_params", num_params), ("num_masks", num_masks),
                                ("columns_per_feature", columns_per_feature)]
        )
        hidden = check_ints("hidden_features", hidden_features, least=1, each="every hidden width",
                            expected=">= 1")
        context_features = check_int("context_features", context_features, least=0)
        residual_blocks = check_int("residual_blocks", residual_blocks, least=0)
        if residual_blocks and len(hidden) != 1:
            raise FlowkitValueError(
                f"expected hidden_features to be one width (an int or a one-element list) with "
                f"residual_blocks={residual_blocks}, got {hidden_features!r}"
            )
        dropout = check_float("dropout", dropout, least=0, below=1, expected="to be a probability in [0, 1)")
        check_option("hidden_degrees", hidden_degrees, M.RULES)
        seed = None if seed is None else check_int("seed", seed, least=None)
        elementwise = _activation(activation)

        self.features = features
        self.num_params = num_params
        self.context_features = context_features
        self.columns_per_feature = columns_per_feature
        self.hidden_features = hidden
        self.residual_blocks = residual_blocks
        self.dropout = dropout
        self.order_agnostic = bool(order_agnostic)
        self.degree_rule = hidden_degrees

        if num_masks > 1 and hidden_degrees == "even" and not order_agnostic:
            warnings.warn(
                "with hidden_degrees='even' and order_agnostic=False every mask set is the same; "
                "use hidden_degrees='random' or order_agnostic=True",
                UserWarning, stacklevel=_caller_stacklevel(),
            )
        mask_seed = int(torch.randint(2**62, ())) if seed is None else seed
        generator = torch.Generator()
        generator.manual_seed(mask_seed)
        _check_size(features * columns_per_feature + context_features, hidden, residual_blocks, features * num_params,
                    num_masks, direct)
        orders, mask_sets, directs = self._draw_mask_sets(order, num_masks, generator, direct)
        self.register_buffer("orders", torch.stack(orders))
        self.register_buffer("mask_index", torch.zeros((), dtype=torch.long))
        self.register_buffer("mask_seed", torch.tensor(mask_seed, dtype=torch.long))
        self._index = 0
        self.derived = Derived()  # what others compute from this MADE and keep here (the engine's plans)
        self.activation = elementwise

        self._build_layers(mask_sets, directs if direct else None, generator)
        self.register_load_state_dict_pre_hook(_default_mask_seed)
        self.register_load_state_dict_post_hook(_sync_index)
        self._audit(mask_sets, directs if direct else None, strict)

    def _draw_mask_sets(self, order: M.OrderSpec, num_masks: int, generator: torch.Generator, direct: bool) -> tuple:
        """The orderings, masks and direct masks (``None`` without ``direct``) of every mask set, drawn from
        ``generator``."""
        first = M.ordering(self.features, order, generator=generator)
        orders, mask_sets, directs = [], [], []
        for r in range(num_masks):
            o = M.ordering(self.features, "random", generator=generator) if (self.order_agnostic and r > 0) else first
            masks, direct_mask = M.made_masks(
                o, self.hidden_features, num_params=self.num_params, columns_per_feature=self.columns_per_feature,
                context_features=self.context_features, rule=self.degree_rule, generator=generator,
                residual_blocks=self.residual_blocks, direct=direct,
            )
            orders.append(o)
            mask_sets.append(masks)
            directs.append(direct_mask)
        return orders, mask_sets, directs

    def _build_layers(self, mask_sets: list[list[Tensor]], directs: list[Tensor] | None,
                      generator: torch.Generator) -> None:
        """The masked layers (first, residual blocks, output) and the direct connection, weights from
        ``generator``."""
        hidden, blocks = len(self.hidden_features), self.residual_blocks

        def linear(i: int, gain: float = 1.0) -> MaskedLinear:
            return MaskedLinear(torch.stack([s[i] for s in mask_sets]), generator=generator, gain=gain)

        self.layers = nn.ModuleList(linear(i) for i in range(hidden))
        self.blocks = nn.ModuleList(
            nn.ModuleList([linear(hidden + 2 * k), linear(hidden + 2 * k + 1, _BLOCK_SCALE)]) for k in range(blocks)
        )
        self.layers.append(linear(hidden + 2 * blocks))
        self.direct = None if directs is None else MaskedLinear(torch.stack(directs), bias=False, generator=generator)

    def _audit(self, mask_sets: list[list[Tensor]], directs: list[Tensor] | None, strict: bool) -> None:
        missing = allowed = 0
        for r, (order, masks) in enumerate(zip(self.orders, mask_sets)):
            may = M.allowed_connectivity(order)
            has = M.connectivity(masks, self.features, self.columns_per_feature)
            if directs is not None:
                has = has | M.connectivity([directs[r]], self.features, self.columns_per_feature)
            if bool((has & ~may).any()):  # would be a bug in the mask construction
                raise RuntimeError("MADE masks violate the autoregressive property")
            missing += int((may & ~has).sum())
            allowed += int(may.sum())
            if self.context_features:
                sees = M.context_connectivity(masks, self.features, self.columns_per_feature)
                if directs is not None:
                    sees = sees | M.context_connectivity([directs[r]], self.features, self.columns_per_feature)
                missing += int((~sees).sum())
                allowed += self.features
        if missing:
            what = "dependencies (on earlier features and on the context)" if self.context_features else "dependencies"
            message = (
                f"MADE masks cannot represent {missing} of the {allowed} {what} their "
                f"orderings allow (over {len(mask_sets)} mask set(s)); widen the hidden layers "
                f"(now {list(self.hidden_features)} for {self.features} features), use "
                f"hidden_degrees='even' or direct=True"
            )
            if strict:
                raise FlowkitValueError(message)
            warnings.warn(message, ConnectivityWarning, stacklevel=_caller_stacklevel())

    def train(self, mode: bool = True) -> MADE:
        """Sets the mode and drops what is kept: the masked weights and the engine's plans."""
        self.derived.drop()
        return super().train(mode)

    @property
    def num_masks(self) -> int:
        """The number of mask sets :math:`R`."""
        return self.orders.shape[0]

    @property
    def order(self) -> Tensor:
        """The ordering of the current mask set, a permutation of ``0..D-1``."""
        return self.orders[self._index]

    @property
    def dtype(self) -> torch.dtype:
        """The dtype the network computes in: its weights'."""
        return next(iter(self.layers)).weight.dtype

    @property
    def in_features(self) -> int:
        """The number of input columns the network expects, context excluded."""
        return self.features * self.columns_per_feature

    @property
    def current_mask(self) -> int:
        """The index of the mask set that calls without ``mask=`` use (see :meth:`use_mask`)."""
        return self._index

    def use_mask(self, index: int) -> None:
        """Selects mask set ``index`` (``0 <= index < num_masks``) for later calls."""
        self._index = self.check_mask(index)
        self.mask_index.fill_(self._index)

    def check_mask(self, index: int) -> int:
        """``index`` as an int when it names one of the mask sets, else a FlowkitError."""
        return check_int("mask index", index, least=0, most=self.num_masks - 1)

    def next_mask(self) -> int:
        """Moves to the next mask set, cycling, and returns its index."""
        self.use_mask((self._index + 1) % self.num_masks)
        return self._index

    def draw_masks(self, key: int) -> None:
        r"""Rebuilds the current mask set from the integer ``key``, in place.

        The hidden degrees (by the network's ``hidden_degrees`` rule) and, when
        ``order_agnostic=True``, a random ordering are drawn from
        :func:`flowkit.masks.key_generator` ``(mask_seed, key)``, and the masks from them by
        :func:`flowkit.masks.made_masks`, residual blocks, ``direct``, context and grouped columns
        included; without ``order_agnostic`` the current ordering is kept. Key ``k`` gives the same
        masks on every call, in every process, and in any network loaded from this one's
        ``state_dict()`` (which holds ``mask_seed``). Keys are a stream of their own: key ``r`` is
        not the stored mask set ``r``, which the constructor drew from ``seed`` alone.

        The masks and ordering are written into the current set's buffers, so kept masked weights
        and engine plans are rebuilt on their next use; the stored set they replace is lost unless
        the call is made inside :meth:`restoring_masks`. The connectivity audit is not repeated.

        Arguments:
            key: the mask key, an integer ``>= 0``.

        Example:
            >>> made = MADE(4, 16, order_agnostic=True, seed=0)
            >>> made.draw_masks(3)
            >>> drawn = made.order.tolist()
            >>> made.draw_masks(5); made.draw_masks(3)
            >>> made.order.tolist() == drawn
            True
        """
        order, masks, direct = self.key_masks(key)
        index = self._index
        self.orders[index].copy_(order)
        for linear, mask in zip(self._masked_linears(), [*masks, direct]):
            linear.masks[index].copy_(mask)

    def key_masks(self, key: int) -> tuple[Tensor, list[Tensor], Tensor | None]:
        """The ordering, the masks of :attr:`layers` and blocks in the order the input meets
        them, and the direct mask of ``key`` (``None`` without a direct connection; see
        :meth:`draw_masks`), without installing them."""
        generator = M.key_generator(int(self.mask_seed), key)
        if self.order_agnostic:
            order = M.ordering(self.features, "random", generator=generator)
        else:
            order = self.orders[self._index].cpu()
        masks, direct = M.made_masks(
            order, self.hidden_features, num_params=self.num_params, columns_per_feature=self.columns_per_feature,
            context_features=self.context_features, rule=self.degree_rule, generator=generator,
            residual_blocks=self.residual_blocks, direct=self.direct is not None,
        )
        return order, masks, direct

    @contextlib.contextmanager
    def restoring_masks(self) -> Iterator[MADE]:
        """A context in which the current mask set may be redrawn (:meth:`draw_masks`); its
        ordering and masks are put back on exit, errors included.

        Example:
            >>> made = MADE(4, 16, order_agnostic=True, seed=0)
            >>> with made.restoring_masks():
            ...     made.draw_masks(1)
            >>> made.order.tolist()
            [0, 1, 2, 3]
        """
        index = self._index
        linears = self._masked_linears()
        saved = [self.orders[index].clone(), *(linear.masks[index].clone() for linear in linears)]
        try:
            yield self
        finally:
            self.orders[index].copy_(saved[0])
            for linear, mask in zip(linears, saved[1:]):
                linear.masks[index].copy_(mask)

    def _chain(self) -> list[MaskedLinear]:
        """The masked layers in the order the input meets them: hidden, blocks, output."""
        return [*self.layers[:-1], *(linear for block in self.blocks for linear in block), self.layers[-1]]

    def _masked_linears(self) -> list[MaskedLinear]:
        """Every masked layer: :meth:`_chain`, then the direct connection if there is one."""
        return [*self._chain(), *([self.direct] if self.direct is not None else [])]

    def forward(self, x: Tensor, context: Tensor | None = None, *, mask: int | None = None,
                deterministic: bool = False) -> Tensor:
        """Returns the parameters of every conditional, shape ``(*batch, features, num_params)``.

        Arguments:
            x: the inputs, ``(*batch, features * columns_per_feature)``.
            context: the context, ``(*batch, context_features)``, or ``None``.
            mask: evaluate with this mask set instead of the current one.
            deterministic: evaluate without dropout even in training mode.
        """
        h = self.inputs(x, context)
        index = self._index if mask is None else self.check_mask(mask)
        out = self.hidden(h, index, deterministic=deterministic)
        *_, output = self.layers  # unpacking a ModuleList is cheaper than indexing it
        out = output(out, index)
        direct = self.direct
        if direct is not None:
            out = out + direct(h, index)
        return out.unflatten(-1, (self.features, self.num_params))

    def inputs(self, x: Tensor, context: Tensor | None) -> Tensor:
        """Validates ``x`` and ``context`` and joins them into the network's input columns."""
        check_shape("x", x, self.in_features)
        x = x.to(self.dtype)
        check_finite("x", x)
        context = check_context(context, self.context_features, x.shape[:-1])
        if context is None:
            return x
        batch = broadcast_batch(x.shape[:-1], context.shape[:-1])
        return torch.cat(
            [x.expand(*batch, x.shape[-1]), context.to(x.dtype).expand(*batch, context.shape[-1])],
            dim=-1,
        )

    def hidden(self, h: Tensor, index: int, *, deterministic: bool = False) -> Tensor:
        """The activations that feed the output layer, from the joined input columns ``h``.

        Dropout, if any, is applied to every activation in training mode unless ``deterministic``.
        """
        drop = self.dropout > 0 and self.training and not deterministic
        activation = self.activation
        if self.blocks:
            h = self.layers[0](h, index)
            for first, second in self.blocks:
                inner = activation(first(self._drop(activation(h), drop), index))
                h = h + second(self._drop(inner, drop), index)
            return self._drop(activation(h), drop)
        *layers, _ = self.layers  # one pass over the ModuleList: indexing it costs more
        for layer in layers:
            h = self._drop(activation(layer(h, index)), drop)
        return h

    def _drop(self, h: Tensor, drop: bool) -> Tensor:
        return nn.functional.dropout(h, self.dropout, training=True) if drop else h

    def extra_repr(self) -> str:
        return (
            f"features={self.features}, hidden_features={list(self.hidden_features)}, "
            f"num_params={self.num_params}, context_features={self.context_features}, "
            f"num_masks={self.num_masks}"
            + (f", residual_blocks={self.residual_blocks}" if self.residual_blocks else "")
            + (f", dropout={self.dropout}" if self.dropout else "")
        )


_BLOCK_SCALE = 1e-3  # the initial scale of a residual block's second layer


def _activation(factory: Callable[[], nn.Module]) -> nn.Module:
    """The activation module that ``factory`` (a class such as ``nn.ReLU``, or a function) makes."""
    if isinstance(factory, nn.Module) or not callable(factory):
        got = f"the module {factory!r}" if isinstance(factory, nn.Module) else f"{type(factory).__name__} {factory!r}"
        raise FlowkitTypeError(
            f"expected activation to be a factory of the nonlinearity, such as nn.ReLU (the class), got {got}"
        )
    try:
        module = factory()
    except TypeError as error:
        raise FlowkitTypeError(
            f"expected activation to be a factory of the nonlinearity, such as nn.ReLU; "
            f"activation() failed: {error}"
        ) from None
    if not isinstance(module, nn.Module):
        raise FlowkitTypeError(
            f"expected activation() to return a torch.nn.Module, got {type(module).__name__}"
        )
    return module


def _memory_bytes() -> int | None:
    """This machine's physical memory in bytes, where the system says (``None`` elsewhere)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def _check_size(inputs: int, hidden: list[int], residual_blocks: int, outputs: int, num_masks: int,
                direct: bool) -> None:
    """Refuses, before anything is allocated, a MADE whose weights and masks (a float and ``num_masks``
    booleans per connection) alone would not fit in this machine's memory, saying what to change."""
    memory = _memory_bytes()
    if memory is None:
        return
    blocks = [hidden[-1]] * (2 * residual_blocks) if residual_blocks else []  # hidden may be empty
    widths = [inputs, *hidden, *blocks, outputs]
    per_connection = torch.get_default_dtype().itemsize + num_masks
    layers = sum(a * b for a, b in zip(widths, widths[1:])) * per_connection
    connection = inputs * outputs * per_connection if direct else 0
    if layers + connection <= memory:
        return
    gib = 2.0**30
    remedy = (f"the direct connection alone needs {connection / gib:.1f} GiB ({outputs} x {inputs} weights): pass "
              "direct=False (flowkit fit: --no-direct)" if connection > layers else
              "use narrower hidden layers, fewer mask sets or, for categories, fewer of them")
    raise FlowkitValueError(
        f"a MADE with {inputs} input columns, hidden widths {list(hidden)} and {outputs} outputs needs "
        f"{(layers + connection) / gib:.1f} GiB for its weights and masks, more than this machine's "
        f"{memory / gib:.1f} GiB of memory; {remedy}"
    )


def _caller_stacklevel() -> int:
    """The ``stacklevel`` of the first frame outside flowkit, so warnings point at user code."""
    package = os.path.dirname(os.path.abspath(__file__))
    frame, level = sys._getframe(1), 1
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(package + os.sep):
        frame, level = frame.f_back, level + 1
    return level


def _default_mask_seed(module: MADE, state_dict: dict, prefix: str, *args) -> None:
    # state dicts written before the mask seed was stored keep the receiving network's
    state_dict.setdefault(prefix + "mask_seed", module.mask_seed.clone())


def _sync_index(module: MADE, incompatible) -> None:
    module._index = int(module.mask_index)
