r"""The masked autoregressive network (MADE) that every flowkit model is built on."""

from __future__ import annotations

import os
import sys
import warnings
import weakref
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from flowkit import masks as M
from flowkit.validation import check_context, check_finite, check_shape

__all__ = ["MADE", "MaskedLinear", "ConnectivityWarning"]


class ConnectivityWarning(UserWarning):
    """A MADE's masks cannot represent some dependencies that its ordering allows."""


class MaskedLinear(nn.Linear):
    r"""A linear layer whose weight is multiplied by one of ``R`` fixed binary masks.

    .. math:: y = x (W \odot M_r)^T + b

    Arguments:
        masks: the masks, of shape ``(R, out_features, in_features)`` or ``(out, in)``.
        bias: whether the layer has a bias.

    In eval mode, with gradients off, the masked weight is kept between calls and recomputed only
    when the weight or the masks change (in place, as optimisers and ``load_state_dict`` do, or by
    being replaced) or another mask set is chosen. Edits through ``.data`` bypass torch's version
    counter: after one in eval mode, call ``eval()`` again to drop the kept product.

    Example:
        >>> layer = MaskedLinear(torch.tensor([[1, 0], [1, 1]]))
        >>> layer(torch.randn(5, 2)).shape
        torch.Size([5, 2])
    """

    def __init__(self, masks: Tensor, bias: bool = True, generator: torch.Generator | None = None):
        masks = masks if masks.dim() == 3 else masks[None]
        super().__init__(masks.shape[2], masks.shape[1], bias=bias)
        self.register_buffer("masks", masks.bool())
        self._cache: tuple | None = None
        self.reset_parameters_masked(generator)

    def reset_parameters_masked(self, generator: torch.Generator | None = None) -> None:
        r"""Draws the weights uniformly on :math:`\pm 1/\sqrt{\text{fan-in}}`, with the fan-in
        each unit actually has under the first mask."""
        fan_in = self.masks[0].sum(dim=1, keepdim=True).clamp(min=1.0)
        bound = 1.0 / fan_in.sqrt()
        with torch.no_grad():
            self.weight.uniform_(-1.0, 1.0, generator=generator).mul_(bound)
            if self.bias is not None:
                self.bias.uniform_(-1.0, 1.0, generator=generator).mul_(bound.squeeze(1))

    def masked_weight(self, index: int = 0) -> Tensor:
        """The weight under mask set ``index``, shape ``(out_features, in_features)``."""
        if self.training or (torch.is_grad_enabled() and self.weight.requires_grad):
            self._cache = None
            return self.weight * self.masks[index]
        key = (index, self.weight._version, self.masks._version, self.weight.dtype, self.weight.device,
               torch.is_inference_mode_enabled())
        cached = self._cache
        if cached is None or cached[0] != key or cached[1]() is not self.weight or cached[2]() is not self.masks:
            product = self.weight * self.masks[index]
            self._cache = (key, weakref.ref(self.weight), weakref.ref(self.masks), product)
            return product
        return cached[3]

    def train(self, mode: bool = True) -> MaskedLinear:
        self._cache = None
        return super().train(mode)

    def forward(self, x: Tensor, index: int = 0) -> Tensor:
        return nn.functional.linear(x, self.masked_weight(index), self.bias)


class MADE(nn.Module):
    r"""Masked Autoencoder for Distribution Estimation (Germain et al., 2015).

    A multilayer perceptron whose weights are masked so that the ``params`` outputs of feature
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

    Arguments:
        features: the number of features :math:`D`.
        hidden_features: the widths of the hidden layers (an ``int`` means one layer). Widths
            below :math:`D - 1` are allowed; the masks then cannot represent every dependency and
            the network warns (see ``strict``).
        params: the number of outputs per feature :math:`P`.
        context_features: the width of the context; 0 for an unconditional network.
        order: the ordering of the first mask set: ``"natural"``, ``"reverse"``, ``"random"`` or
            a permutation listing the features in generation order.
        num_masks: the number of mask sets :math:`R`.
        order_agnostic: whether mask sets ``1..R-1`` draw their own random ordering.
        hidden_degrees: ``"random"`` (the paper's rule) or ``"even"`` (deterministic).
        columns_per_feature: the number of input columns each feature owns.
        direct: whether to add the direct input-to-output connection :math:`A \odot M^A`.
        activation: a factory of the elementwise nonlinearity, such as ``nn.ReLU`` or ``nn.Tanh``.
        seed: the seed of the orderings, degrees and initial weights; ``None`` draws it from
            torch's global generator.
        strict: raise instead of warning when the masks lose allowed dependencies.

    Shapes:
        ``x: (*batch, features * columns_per_feature)``, ``context: (*batch, context_features)``,
        output ``(*batch, features, params)``.

    Example:
        >>> made = MADE(5, [32, 32], params=2, seed=0)
        >>> made(torch.randn(10, 5)).shape
        torch.Size([10, 5, 2])
        >>> flowkit.check_autoregressive(made).int().tolist()[4]  # feature 4 sees features 0..3
        [1, 1, 1, 1, 0]
    """

    def __init__(
        self,
        features: int,
        hidden_features: int | Sequence[int],
        params: int = 1,
        *,
        context_features: int = 0,
        order: M.OrderSpec = "natural",
        num_masks: int = 1,
        order_agnostic: bool = False,
        hidden_degrees: M.DegreeRule = "random",
        columns_per_feature: int = 1,
        direct: bool = False,
        activation: Callable[[], nn.Module] = nn.ReLU,
        seed: int | None = None,
        strict: bool = False,
    ):
        super().__init__()
        hidden = [hidden_features] if isinstance(hidden_features, int) else list(hidden_features)
        for name, value in [("features", features), ("params", params),
                            ("num_masks", num_masks), ("columns_per_feature", columns_per_feature)]:
            M._check_positive(name, value)
        for width in hidden:
            M._check_positive("every hidden width", width)
        if isinstance(context_features, bool) or not isinstance(context_features, int) or context_features < 0:
            raise ValueError(f"expected context_features to be an int >= 0, got {context_features!r}")

        self.features = features
        self.params = params
        self.context_features = context_features
        self.columns_per_feature = columns_per_feature
        self.hidden_features = tuple(hidden)

        if num_masks > 1 and hidden_degrees == "even" and not order_agnostic:
            warnings.warn(
                "with hidden_degrees='even' and order_agnostic=False every mask set is the same; "
                "use hidden_degrees='random' or order_agnostic=True",
                UserWarning, stacklevel=_caller_stacklevel(),
            )
        generator = torch.Generator()
        generator.manual_seed(int(torch.randint(2**62, ())) if seed is None else seed)
        first = M.ordering(features, order, generator)
        orders, mask_sets, directs = [], [], []
        for r in range(num_masks):
            o = M.ordering(features, "random", generator) if (order_agnostic and r > 0) else first
            masks, direct_mask = M.made_masks(
                o, hidden, params=params, columns_per_feature=columns_per_feature,
                context_features=context_features, rule=hidden_degrees, generator=generator,
            )
            orders.append(o)
            mask_sets.append(masks)
            directs.append(direct_mask)

        self.register_buffer("orders", torch.stack(orders))
        self.register_buffer("mask_index", torch.zeros((), dtype=torch.long))
        self._index = 0
        self.layers = nn.ModuleList(
            MaskedLinear(torch.stack([s[i] for s in mask_sets]), generator=generator)
            for i in range(len(hidden) + 1)
        )
        self.activation = activation()
        self.direct = MaskedLinear(torch.stack(directs), bias=False, generator=generator) if direct else None
        self.register_load_state_dict_post_hook(_sync_index)
        self._audit(mask_sets, directs if direct else None, strict)

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
                raise ValueError(message)
            warnings.warn(message, ConnectivityWarning, stacklevel=_caller_stacklevel())

    def train(self, mode: bool = True) -> MADE:
        """Sets the mode and drops the kept masked weights and engine plan (see :class:`MaskedLinear`)."""
        self.__dict__.pop("_engine_plan", None)
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
    def in_features(self) -> int:
        """The number of input columns the network expects, context excluded."""
        return self.features * self.columns_per_feature

    def use_mask(self, index: int) -> None:
        """Selects mask set ``index`` (``0 <= index < num_masks``) for later calls."""
        self._index = self._check_mask(index)
        self.mask_index.fill_(self._index)

    def _check_mask(self, index: int) -> int:
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < self.num_masks:
            raise ValueError(f"expected a mask index in 0..{self.num_masks - 1}, got {index!r}")
        return index

    def next_mask(self) -> int:
        """Moves to the next mask set, cycling, and returns its index."""
        self.use_mask((self._index + 1) % self.num_masks)
        return self._index

    def forward(self, x: Tensor, context: Tensor | None = None, *, mask: int | None = None) -> Tensor:
        """Returns the parameters of every conditional, shape ``(*batch, features, params)``.

        Arguments:
            x: the inputs, ``(*batch, features * columns_per_feature)``.
            context: the context, ``(*batch, context_features)``, or ``None``.
            mask: evaluate with this mask set instead of the current one.
        """
        h = self.inputs(x, context)
        index = self._index if mask is None else self._check_mask(mask)
        out = self.hidden(h, index)
        out = self.layers[-1](out, index)
        if self.direct is not None:
            out = out + self.direct(h, index)
        return out.unflatten(-1, (self.features, self.params))

    def inputs(self, x: Tensor, context: Tensor | None) -> Tensor:
        """Validates ``x`` and ``context`` and joins them into the network's input columns."""
        check_shape("x", x, self.in_features)
        x = x.to(self.layers[0].weight.dtype)
        check_finite("x", x)
        context = check_context(context, self.context_features, x.shape[:-1])
        if context is None:
            return x
        batch = torch.broadcast_shapes(x.shape[:-1], context.shape[:-1])
        return torch.cat(
            [x.expand(*batch, x.shape[-1]), context.to(x.dtype).expand(*batch, context.shape[-1])],
            dim=-1,
        )

    def hidden(self, h: Tensor, index: int) -> Tensor:
        """The last hidden layer's activations from the joined input columns ``h``."""
        for layer in self.layers[:-1]:
            h = self.activation(layer(h, index))
        return h

    def extra_repr(self) -> str:
        return (
            f"features={self.features}, hidden_features={list(self.hidden_features)}, "
            f"params={self.params}, context_features={self.context_features}, "
            f"num_masks={self.num_masks}"
        )


def _caller_stacklevel() -> int:
    """The ``stacklevel`` of the first frame outside flowkit, so warnings point at user code."""
    package = os.path.dirname(os.path.abspath(__file__))
    frame, level = sys._getframe(1), 1
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(package + os.sep):
        frame, level = frame.f_back, level + 1
    return level


def _sync_index(module: MADE, incompatible) -> None:
    module._index = int(module.mask_index)
