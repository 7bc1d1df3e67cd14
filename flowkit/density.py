r"""Autoregressive densities: a MADE and a head, with exact ``log_prob``, sampling and completion."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from flowkit.embedding import context_widths, embed, embedded_width
from flowkit.engine import autoregressive
from flowkit.errors import FlowkitTypeError, FlowkitValueError
from flowkit.heads import Bernoulli, Categorical, GaussianMixture, Head, Mixed
from flowkit.made import MADE
from flowkit.validation import broadcast_batch, check_context, check_int, check_shape, checked, mask_keys
from flowkit.validation import sample_shape as as_sample_shape

__all__ = ["Density", "AutoregressiveDensity", "BernoulliMADE", "CategoricalMADE", "MADEMoG", "MixedMADE"]


@runtime_checkable
class Density(Protocol):
    r"""The density protocol: what :func:`flowkit.train.fit`, :func:`flowkit.train.evaluate` and the
    ``flowkit`` command accept (with the parameters of an ``nn.Module``).

    ``log_prob(x, context=None)`` returns :math:`\log p(x \mid \text{context})` in nats, one value
    per example: ``x: (*batch, D)`` to ``(*batch,)``. Every flowkit density and flow is one
    (:class:`AutoregressiveDensity` and its subclasses, :class:`flowkit.Flow`,
    :class:`flowkit.DiagonalNormal`).

    Example:
        >>> isinstance(flowkit.BernoulliMADE(3, [8]), Density), isinstance(torch.nn.Linear(2, 2), Density)
        (True, False)
    """

    def log_prob(self, x: Tensor, context: Tensor | None = None) -> Tensor: ...


class AutoregressiveDensity(nn.Module):
    r"""The density :math:`p(x \mid c) = \prod_d p(x_{o_d} \mid x_{o_1}, \dots, x_{o_{d-1}}, c)`
    of a MADE whose outputs parameterise a head, in the MADE's ordering :math:`o`.

    Each of the MADE's ``R`` mask sets is a complete autoregressive model. ``ensemble=R`` uses the
    first ``R`` of them as a uniform mixture,
    :math:`p(x) = \frac{1}{R} \sum_r p_r(x)`, which is a proper density; averaging the networks'
    outputs instead would not be.

    ``keys=R`` does the same with the mask keys ``0..R-1`` (:meth:`flowkit.MADE.draw_masks`),
    rebuilt one at a time, for a network trained with a fresh mask for every minibatch
    (``flowkit.train.fit(..., masks="fresh")``); any number of keys, none of them stored.

    Arguments:
        made: the network; ``made.num_params`` must equal ``head.num_params`` and
            ``made.columns_per_feature`` must equal ``head.columns``.
        head: the conditional family.
        context_features: with an ``embedding``, the width of the raw context it takes
            (required); otherwise the MADE's ``context_features`` (the default).
        embedding: a module applied to the context once per call, before the MADE sees it, and
            trained with the density (a summary network): it maps ``(*batch, context_features)``
            to ``(*batch, made.context_features)``. The subclasses take it as ``embedding=`` with
            ``context_features`` the raw width and find the MADE's width by running it once.

    Example:
        >>> made = flowkit.MADE(3, [16], num_params=1, context_features=4, seed=0)
        >>> summary = torch.nn.Sequential(torch.nn.Linear(10, 4), torch.nn.Tanh())
        >>> model = AutoregressiveDensity(made, Bernoulli(), context_features=10, embedding=summary)
        >>> model.log_prob(torch.ones(5, 3), torch.randn(5, 10)).shape
        torch.Size([5])
    """

    def __init__(self, made: MADE, head: Head, *, context_features: int | None = None,
                 embedding: nn.Module | None = None):
        super().__init__()
        if not isinstance(made, MADE):
            raise FlowkitTypeError(f"expected made to be a flowkit.MADE, got {type(made).__name__}")
        if not isinstance(head, Head):
            raise FlowkitTypeError(f"expected head to be a flowkit.heads.Head, got {type(head).__name__}")
        if made.num_params != head.num_params or made.columns_per_feature != head.columns:
            raise FlowkitValueError(
                f"the head needs num_params={head.num_params} and columns_per_feature={head.columns}, "
                f"the MADE has num_params={made.num_params} and columns_per_feature={made.columns_per_feature}"
            )
        self.context_features, _ = context_widths(embedding, made.context_features, context_features, "density")
        """The width of the context the density takes, zero for none; with an embedding, the raw width."""
        if embedding is None and self.context_features != made.context_features:
            raise FlowkitValueError(f"the MADE takes context_features={made.context_features} but the density has "
                                    f"context_features={self.context_features}: expected the same width")
        self.made = made
        self.head = head
        self.embedding = embedding

    @property
    def features(self) -> int:
        """The number of features :math:`D`."""
        return self.made.features

    def _embed(self, context: Tensor | None) -> Tensor | None:
        return embed(self.embedding, context, self.made.context_features)

    def log_prob(
        self,
        x: Tensor,
        context: Tensor | None = None,
        *,
        ensemble: int | None = None,
        keys: int | Sequence[int] | None = None,
    ) -> Tensor:
        r"""Exact log-likelihood in nats, one value per example.

        Arguments:
            x: values, ``(*batch, D)``, in the head's support.
            context: ``(*batch, context_features)``, or ``None`` for an unconditional model.
            ensemble: score with the first ``ensemble`` mask sets as a uniform mixture,
                :math:`\log \frac{1}{R} \sum_r p_r(x)` (``logsumexp - log R``); the current mask
                set alone when ``None``.
            keys: score with the mask keys ``0..keys-1`` (an ``int``) or the given keys (a
                sequence) as a uniform mixture, each rebuilt in turn into the current mask set
                (:meth:`flowkit.MADE.draw_masks`), which is restored afterwards. The terms are
                accumulated one key at a time (``logaddexp``), without gradients, so memory does
                not grow with the number of keys. Not with ``ensemble``.

        Returns:
            ``(*batch,)``, broadcast over the batch shapes of ``x`` and ``context``.
        """
        if keys is not None and ensemble is not None:
            raise FlowkitValueError("expected ensemble (stored mask sets) or keys (mask keys), got both")
        keys = None if keys is None else mask_keys(keys)
        x = self._check_x(x)
        check_context(context, self.context_features, x.shape[:-1])
        context = self._embed(context)
        with checked():  # x and the context are read once, here, not again inside the network
            h = self.head.encode(x)
            if keys is not None:
                return self._log_prob_keys(h, x, context, keys)
            if ensemble is None:
                return self._log_prob(h, x, context, self.made.current_mask)
            R = self._check_ensemble(ensemble)
            terms = torch.stack([self._log_prob(h, x, context, r) for r in range(R)])
            return torch.logsumexp(terms, dim=0) - math.log(R)

    def _log_prob(self, h: Tensor, x: Tensor, context: Tensor | None, mask: int) -> Tensor:
        params = self.made(h, context, mask=mask)
        return self.head.log_prob(params, x.expand(*params.shape[:-1])).sum(-1)

    @torch.no_grad()
    def _log_prob_keys(self, h: Tensor, x: Tensor, context: Tensor | None, keys: list[int]) -> Tensor:
        total = None
        with self.made.restoring_masks():
            for key in keys:
                self.made.draw_masks(key)
                term = self._log_prob(h, x, context, self.made.current_mask)
                total = term if total is None else torch.logaddexp(total, term, out=total)
        return total - math.log(len(keys))

    @torch.no_grad()
    def sample(
        self,
        sample_shape: int | Sequence[int] = (),
        context: Tensor | None = None,
        *,
        ensemble: int | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        r"""Exact ancestral samples, drawn feature by feature in the model's ordering.

        Arguments:
            sample_shape: the leading shape of the result; an ``int`` ``n`` means ``(n,)``.
            context: ``(*batch, context_features)``: one set of samples per context.
            ensemble: sample from the uniform mixture of the first ``ensemble`` mask sets (each
                sample picks its mask set at random); the current mask set when ``None``.
            generator: the source of randomness (on the model's device).

        Returns:
            ``sample_shape + context.shape[:-1] + (D,)``; floats 0/1 for a Bernoulli head,
            ``long`` categories for a categorical head.
        """
        return self._draw(sample_shape, context, ensemble, generator)

    def _draw(self, sample_shape, context, ensemble, generator, kept: list | None = None) -> Tensor:
        """The draws of :meth:`sample`; ``kept`` (with the current mask set) collects the parameters
        each feature was drawn with."""
        shape = self._sample_batch(sample_shape, context)
        context = self._embed(context)
        context = None if context is None else context.expand(*shape, context.shape[-1])
        x = self._zeros(shape)
        nothing = torch.zeros(x.shape, dtype=torch.bool, device=x.device)
        if ensemble is None:
            which = torch.full(shape, self.made.current_mask, device=x.device)
        else:
            which = torch.randint(self._check_ensemble(ensemble), shape, generator=generator, device=x.device)
        return self._fill(x, nothing, context, which, generator, kept)

    def sample_and_log_prob(
        self,
        sample_shape: int | Sequence[int] = (),
        context: Tensor | None = None,
        *,
        ensemble: int | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, Tensor]:
        r"""Samples, as :meth:`sample` draws them, and their exact log-probabilities.

        With the current mask set, each draw's log-probability is summed from the very network
        outputs that drew it, :math:`\sum_d \log p(x_d \mid \theta_d(x_{<d}))`: no second pass.
        With ``ensemble``, the log-probability is that of the mixture of mask sets
        (:meth:`log_prob` with ``ensemble``), scored after the draw. The same ``generator`` state
        gives the same samples as :meth:`sample`.

        Returns:
            ``(x, log_p)``: ``x`` of shape ``sample_shape + context.shape[:-1] + (D,)``, ``log_p``
            of shape ``sample_shape + context.shape[:-1]``, in nats.

        Example:
            >>> model = flowkit.BernoulliMADE(4, [16], seed=0)
            >>> x, log_p = model.sample_and_log_prob(3)
            >>> torch.allclose(log_p, model.log_prob(x))
            True
        """
        if ensemble is not None:
            x = self.sample(sample_shape, context, ensemble=ensemble, generator=generator)
            return x, self.log_prob(x, context, ensemble=ensemble)
        kept = [None] * self.features  # the parameters each feature was drawn with
        x = self._draw(sample_shape, context, None, generator, kept)
        if kept[0] is None:  # an empty sample
            return x, x.new_zeros(x.shape[:-1], dtype=self._dtype)
        flat = x.reshape(-1, self.features)
        return x, self.head.log_prob(torch.stack(kept, -2), flat).sum(-1).reshape(x.shape[:-1])

    @torch.no_grad()
    def complete(
        self,
        x: Tensor,
        observed: Tensor,
        context: Tensor | None = None,
        *,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        r"""Samples the unobserved features of ``x`` given the observed ones.

        Each example is completed with the mask set whose ordering begins with the longest run of
        its observed features (ties go to the current mask set, then to the lowest index). The
        features are then visited in that ordering: observed ones keep their values, unobserved
        ones are drawn from :math:`p(x_{o_k} \mid x_{o_1}, \dots, x_{o_{k-1}})`.

        Exactness: when an example's observed features all come before its unobserved ones in the
        chosen ordering, its completion is an exact draw from
        :math:`p(x_\text{unobserved} \mid x_\text{observed})`. Otherwise it is not: an unobserved
        feature drawn before an observed one ignores that later evidence (the observed value
        still conditions every feature drawn after it). An order-agnostic model
        (``order_agnostic=True`` with many mask sets) makes the exact case likelier.

        Arguments:
            x: ``(*batch, D)``; unobserved entries may hold anything, NaN included.
            observed: a boolean tensor shaped like ``x``, true where ``x`` is observed.
            context: ``(*batch, context_features)`` or ``None``.
            generator: the source of randomness.

        Returns:
            The completed values, ``(*batch, D)`` (broadcast with the context's batch shape).
        """
        if not isinstance(observed, Tensor) or observed.dtype != torch.bool:
            raise FlowkitTypeError("expected observed to be a boolean tensor shaped like x")
        check_shape("x", x, self.features)
        if x.shape != observed.shape:
            raise FlowkitValueError(
                f"expected observed of the shape of x {tuple(x.shape)}, "
                f"got {tuple(observed.shape)}"
            )
        zero = torch.zeros((), dtype=x.dtype, device=x.device)
        x = self._check_x(torch.where(observed, x, zero))
        check_context(context, self.context_features, x.shape[:-1])
        context = self._embed(context)
        batch = x.shape[:-1] if context is None else broadcast_batch(x.shape[:-1], context.shape[:-1])
        x, observed = x.expand(*batch, self.features), observed.expand(*batch, self.features)
        context = None if context is None else context.expand(*batch, context.shape[-1])

        which = self._completion_masks(observed)
        return self._fill(x, observed, context, which, generator)

    def _completion_masks(self, observed: Tensor) -> Tensor:
        # Length of the run of observed features that each mask set's ordering starts with.
        runs = torch.stack(
            [observed[..., order].long().cumprod(dim=-1).sum(dim=-1) for order in self.made.orders]
        )
        R = self.made.num_masks
        preference = torch.arange(R, 0, -1, device=observed.device)  # lower index first
        preference[self.made.current_mask] = R + 1  # the current mask set before all others
        score = runs * (R + 2) + preference.view(R, *([1] * (runs.dim() - 1)))
        return score.argmax(dim=0)

    def _fill(
        self,
        x: Tensor,
        observed: Tensor,
        context: Tensor | None,
        which: Tensor,
        generator: torch.Generator | None,
        kept: list | None = None,
    ) -> Tensor:
        """Draws the unobserved features of each example with the mask set ``which`` names; ``kept``
        (one mask set, nothing observed) receives the parameters each feature was drawn with."""
        D = self.features
        flat_x = x.reshape(-1, D).clone()
        flat_observed = observed.reshape(-1, D)
        flat_which = which.reshape(-1)
        flat_context = None if context is None else context.reshape(-1, context.shape[-1])
        for r in flat_which.unique().tolist():
            rows = (flat_which == r).nonzero().squeeze(1)
            known = flat_observed[rows]
            if bool(known.all()):
                continue
            noise = self.head.noise((len(rows), D), generator=generator, dtype=self._dtype, device=flat_x.device)

            def draw(d: int, params: Tensor, current: Tensor) -> Tensor:
                return torch.where(known[:, d], current, self.head.draw(params, noise[:, d], d))

            def draw_all(d: int, params: Tensor, current: Tensor) -> Tensor:
                if kept is not None:
                    kept[d] = params.clone()  # valid during the call only
                return self.head.draw(params, noise[:, d], d)

            flat_x[rows] = autoregressive(
                self.made,
                flat_x[rows],
                draw if bool(known.any()) else draw_all,
                encode=self.head.encode,
                context=None if flat_context is None else flat_context[rows],
                mask=r,
                features=(~known).any(dim=0).nonzero().squeeze(1).tolist(),
            )
        return flat_x.reshape(x.shape)

    def _check_x(self, x: Tensor) -> Tensor:
        check_shape("x", x, self.features)
        return self.head.check_support(x)

    def _check_ensemble(self, ensemble: int) -> int:
        R = self.made.num_masks
        return check_int("ensemble", ensemble, least=1, most=R, expected=f"in 1..{R} (the number of mask sets)")

    def _sample_batch(self, sample_shape: int | Sequence[int], context: Tensor | None) -> torch.Size:
        shape = as_sample_shape(sample_shape)
        check_context(context, self.context_features, torch.Size())
        return shape if context is None else shape + context.shape[:-1]

    @property
    def _dtype(self) -> torch.dtype:
        return self.made.dtype

    def _zeros(self, shape: torch.Size) -> Tensor:
        dtype = self.head.value_dtype or self._dtype
        return torch.zeros(*shape, self.features, dtype=dtype, device=self.made.layers[0].weight.device)


def _with_embedding(made_options: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Splits a subclass's options into the MADE's and the density's: with an ``embedding``,
    ``context_features`` is the raw width and the MADE takes the embedding's output width."""
    embedding = made_options.pop("embedding", None)
    if embedding is None:
        return made_options, {}
    raw = made_options.get("context_features")
    if raw is None:
        raise FlowkitValueError("with an embedding, give context_features: the width of the raw context the "
                                "embedding takes")
    made_options["context_features"] = embedded_width(embedding, raw)
    return made_options, {"context_features": raw, "embedding": embedding}


class BernoulliMADE(AutoregressiveDensity):
    r"""A MADE over binary vectors: :math:`p(x_d = 1 \mid x_{<d}) = \sigma(\ell_d(x_{<d}))`.

    Arguments:
        features: the number of binary features :math:`D`.
        hidden_features: the hidden widths of the MADE.
        made_options: any keyword of :class:`flowkit.MADE` (``context_features``, ``order``,
            ``num_masks``, ``order_agnostic``, ``direct``, ``activation``, ``seed``, ...), and
            ``embedding``: a module applied to the context first (see
            :class:`AutoregressiveDensity`), with ``context_features`` the width of the raw context.

    Example:
        >>> model = BernoulliMADE(6, [32], seed=0)
        >>> x = model.sample(4)
        >>> x.shape, model.log_prob(x).shape
        (torch.Size([4, 6]), torch.Size([4]))
    """

    def __init__(self, features: int, hidden_features: int | Sequence[int], **made_options: Any):
        made_options, density_options = _with_embedding(made_options)
        super().__init__(MADE(features, hidden_features, num_params=1, **made_options), Bernoulli(), **density_options)


class CategoricalMADE(AutoregressiveDensity):
    r"""A MADE over vectors of categories :math:`0..K-1`, one-hot inputs and a softmax per feature.

    Arguments:
        features: the number of features :math:`D`.
        categories: the number of categories :math:`K` of every feature, or one count per feature
            ``[K_1, ..., K_D]`` (feature :math:`d` in :math:`0..K_d - 1`; see
            :class:`~flowkit.heads.Categorical`).
        hidden_features: the hidden widths of the MADE.
        made_options: any keyword of :class:`flowkit.MADE`, and ``embedding`` (as for :class:`BernoulliMADE`).

    Example:
        >>> model = CategoricalMADE(5, 3, [32], seed=0)
        >>> x = model.sample(4)
        >>> x.dtype, x.max().item() <= 2
        (torch.int64, True)
    """

    def __init__(
        self, features: int, categories: int, hidden_features: int | Sequence[int], **made_options: Any
    ):
        head = Categorical(categories)
        if head.counts is not None and len(head.counts) != check_int("features", features, least=1):
            raise FlowkitValueError(f"expected one count of categories per feature ({features}), got "
                                    f"{len(head.counts)}: {list(head.counts)}")
        made_options, density_options = _with_embedding(made_options)
        made = MADE(features, hidden_features, num_params=head.categories,
                    columns_per_feature=head.categories, **made_options)
        super().__init__(made, head, **density_options)


class MADEMoG(AutoregressiveDensity):
    r"""A MADE whose conditionals are mixtures of Gaussians (MADE MoG, Papamakarios et al. 2017):
    :math:`p(x_d \mid x_{<d}) = \sum_c \pi_{dc} \mathcal{N}(x_d; \mu_{dc}, \sigma_{dc}^2)`, all
    functions of :math:`x_{<d}` (and the context).

    Exact ``log_prob``, sampling and completion; usable as the base of a :class:`flowkit.Flow`
    (a MAF MoG). ``components=1`` is the Gaussian MADE.

    Arguments:
        features: the number of features :math:`D`.
        components: the number of mixture components :math:`C`.
        hidden_features: the hidden widths of the MADE.
        made_options: any keyword of :class:`flowkit.MADE`, and ``embedding`` (as for :class:`BernoulliMADE`).

    Example:
        >>> model = MADEMoG(2, 3, [32], seed=0)
        >>> x = model.sample(4)
        >>> x.shape, model.log_prob(x).shape
        (torch.Size([4, 2]), torch.Size([4]))
    """

    def __init__(
        self, features: int, components: int, hidden_features: int | Sequence[int], **made_options: Any
    ):
        head = GaussianMixture(components)
        made_options, density_options = _with_embedding(made_options)
        made = MADE(features, hidden_features, num_params=head.num_params, **made_options)
        super().__init__(made, head, **density_options)


class MixedMADE(AutoregressiveDensity):
    r"""One MADE over mixed data: each feature has a conditional family of its own (binary,
    categorical with its own count, continuous), all functions of the earlier features (and the
    context) through one network:

    .. math:: p(x \mid c) = \prod_d p_{o_d}(x_{o_d} \mid \theta_{o_d}(x_{o_1}, \dots, x_{o_{d-1}}, c))

    Exact ``log_prob``, sampling through the incremental engine, ``sample_and_log_prob`` and
    completion, as every :class:`AutoregressiveDensity`. Values are floats, a categorical feature
    holding its category as ``0., 1., ...`` (see :class:`~flowkit.heads.Mixed`). The MADE's
    ordering decides what conditions on what: with the default ``order`` the features are
    modelled left to right, so put the discrete ones first to have the continuous ones depend on
    them (the factorisation of sbi's MNLE, in one network).

    Arguments:
        heads: one head per feature, e.g. ``[Categorical(2), LogNormalMixture(5)]``.
        hidden_features: the hidden widths of the MADE.
        made_options: any keyword of :class:`flowkit.MADE`, and ``embedding`` (as for :class:`BernoulliMADE`).

    Example:
        >>> from flowkit.heads import Bernoulli, Categorical, LogNormalMixture
        >>> model = MixedMADE([Bernoulli(), Categorical(3), LogNormalMixture(4)], [32], context_features=2, seed=0)
        >>> x = model.sample(5, torch.zeros(2))
        >>> x.shape, bool((x[:, 2] > 0).all()), model.log_prob(x, torch.zeros(2)).shape
        (torch.Size([5, 3]), True, torch.Size([5]))
    """

    def __init__(self, heads: Sequence[Head], hidden_features: int | Sequence[int], **made_options: Any):
        head = Mixed(heads)
        made_options, density_options = _with_embedding(made_options)
        made = MADE(head.features, hidden_features, num_params=head.num_params, columns_per_feature=head.columns,
                    **made_options)
        super().__init__(made, head, **density_options)
