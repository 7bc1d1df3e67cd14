r"""Heads: the conditionals :math:`p(x_d \mid x_{<d})` a MADE's parameters describe.

A head knows how many parameters each feature needs (``params``), how its values are fed to the
network (``columns`` input columns per feature, through :meth:`Head.encode`), the log-probability
of values under the parameters, and how to draw one feature.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from flowkit.validation import check_finite, validation_enabled

__all__ = ["Head", "Bernoulli", "Categorical"]


class Head(nn.Module):
    """Base class of the heads. Subclasses set ``params`` and ``columns``."""

    params: int
    columns: int

    def validate(self, x: Tensor) -> Tensor:
        """Checks that ``x`` lies in the support and returns it in the head's value dtype."""
        raise NotImplementedError

    def encode(self, x: Tensor) -> Tensor:
        """The network's input for values ``x: (*batch, D)``, shape ``(*batch, D * columns)``."""
        raise NotImplementedError

    def log_prob(self, params: Tensor, x: Tensor) -> Tensor:
        """Log-probabilities per feature: ``params: (*batch, D, P)``, ``x: (*batch, D)`` to ``(*batch, D)``."""
        raise NotImplementedError

    def sample(self, params: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """One draw per row of ``params: (*batch, P)``, shape ``(*batch,)``."""
        raise NotImplementedError


class Bernoulli(Head):
    r"""Binary conditionals with one logit :math:`\ell` per feature:
    :math:`\log p(x) = x \ell - \log(1 + e^{\ell})`.

    Example:
        >>> head = Bernoulli()
        >>> head.log_prob(torch.zeros(1, 2, 1), torch.tensor([[0.0, 1.0]])).exp()
        tensor([[0.5000, 0.5000]])
    """

    params = 1
    columns = 1

    def validate(self, x: Tensor) -> Tensor:
        if x.dtype == torch.bool:
            return x.float()
        if validation_enabled():
            check_finite("x", x)
            if not bool(((x == 0) | (x == 1)).all()):
                bad = x[(x != 0) & (x != 1)].flatten()[:3].tolist()
                raise ValueError(f"expected binary values 0 or 1 for a Bernoulli model, got {bad}")
        return x if x.dtype.is_floating_point else x.float()

    def encode(self, x: Tensor) -> Tensor:
        return x

    def log_prob(self, params: Tensor, x: Tensor) -> Tensor:
        logits = params[..., 0]
        return -F.binary_cross_entropy_with_logits(logits, x.to(logits.dtype), reduction="none")

    def sample(self, params: Tensor, generator: torch.Generator | None = None) -> Tensor:
        probs = torch.sigmoid(params[..., 0])
        u = torch.rand(probs.shape, generator=generator, device=probs.device, dtype=probs.dtype)
        return (u < probs).to(probs.dtype)


class Categorical(Head):
    r"""Conditionals over ``categories`` values :math:`0..K-1`, with :math:`K` logits per feature
    and one-hot inputs: :math:`\log p(x = k) = \ell_k - \log \sum_j e^{\ell_j}`.

    Example:
        >>> head = Categorical(3)
        >>> head.encode(torch.tensor([[2, 0]]))
        tensor([[0., 0., 1., 1., 0., 0.]])
    """

    columns: int

    def __init__(self, categories: int):
        super().__init__()
        if isinstance(categories, bool) or not isinstance(categories, int) or categories < 2:
            raise ValueError(f"expected categories to be an int >= 2, got {categories!r}")
        self.categories = categories
        self.params = categories
        self.columns = categories

    def validate(self, x: Tensor) -> Tensor:
        if x.dtype == torch.bool:
            raise TypeError("expected integer category indices for a categorical model, got dtype torch.bool")
        if x.dtype.is_floating_point:
            check_finite("x", x)
            if validation_enabled() and not bool((x == x.round()).all()):
                bad = x[x != x.round()].flatten()[:3].tolist()
                raise ValueError(f"expected integer category indices, got non-integer values {bad}")
        x = x.long()
        if validation_enabled() and not bool(((x >= 0) & (x < self.categories)).all()):
            bad = x[(x < 0) | (x >= self.categories)].flatten()[:3].tolist()
            raise ValueError(
                f"expected categories in 0..{self.categories - 1}, got values {bad}"
            )
        return x

    def encode(self, x: Tensor) -> Tensor:
        return F.one_hot(x.long(), self.categories).flatten(-2).float()

    def log_prob(self, params: Tensor, x: Tensor) -> Tensor:
        logp = torch.log_softmax(params, dim=-1)
        return logp.gather(-1, x.long().unsqueeze(-1)).squeeze(-1)

    def sample(self, params: Tensor, generator: torch.Generator | None = None) -> Tensor:
        # Gumbel-max: argmax(logits + Gumbel noise) is an exact categorical draw.
        u = torch.rand(params.shape, generator=generator, device=params.device, dtype=params.dtype)
        gumbel = -torch.log(-torch.log(u.clamp(min=torch.finfo(u.dtype).tiny)))
        return (params + gumbel).argmax(dim=-1)

    def extra_repr(self) -> str:
        return f"categories={self.categories}"
