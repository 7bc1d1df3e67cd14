r"""flowkit's densities as `sbi <https://sbi-dev.github.io/sbi>`_ estimators (NPE, NLE, MNLE).

The only module of flowkit that imports sbi (``pip install "flowkit[sbi]"``); ``import flowkit``
does not import it. :class:`FlowkitEstimator` is an sbi ``ConditionalDensityEstimator`` around any
flowkit density with a context; the builders take sbi's arguments ``(batch_input, batch_condition,
**options)``, so they go where sbi takes a ``density_estimator``::

    NPE(prior, density_estimator=flowkit.sbi.build_maf)
    NPE(prior, density_estimator=functools.partial(flowkit.sbi.build_maf, transformer="spline"))
    NLE(prior, density_estimator=flowkit.sbi.likelihood(flowkit.sbi.build_maf))

**Which variable is conditioned.** A builder models its first argument given its second. sbi's
trainers call the builder as ``build(theta, x)`` in NPE *and* in NLE (``nle_base.py`` calls
``self._build_neural_net(theta, x)``; the swap for NLE lives in sbi's own ``likelihood_nn`` wrapper,
not in the trainer, which then calls ``loss(x, condition=theta)``). So for NPE a builder is passed
as it is (it models :math:`p(\theta \mid x)`), and for NLE or MNLE through :func:`likelihood`, which
swaps the two batches (it models :math:`p(x \mid \theta)`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

try:
    from sbi.neural_nets.estimators import ConditionalDensityEstimator, MixedDensityEstimator
except ImportError as error:  # pragma: no cover - sbi is an optional extra
    raise ImportError(f"flowkit.sbi needs sbi (pip install \"flowkit[sbi]\"): {error}") from error

from flowkit.density import MADEMoG, MixedMADE
from flowkit.errors import FlowkitTypeError, FlowkitValueError
from flowkit.flows import MAF, Flow
from flowkit.heads import Categorical, GaussianMixture, LogNormalMixture
from flowkit.transforms import Composite, Standardize
from flowkit.validation import (
    broadcast_batch,
    check_finite,
    check_float,
    check_int,
    check_ints,
    check_option,
    checked,
    validate,
)
from flowkit.validation import sample_shape as as_sample_shape

__all__ = ["FlowkitEstimator", "MixedFlowkitEstimator", "ZScore", "standardize_from_data", "build_maf", "build_made",
           "build_mnle", "likelihood"]

Z_SCORES = ("none", "independent", "structured", None)


class ZScore(nn.Module):
    r"""Fixed z-scoring of a condition of any event shape, :math:`c \mapsto (c - \mu) / \sigma`,
    elementwise over the flattened event (a :class:`~flowkit.transforms.Standardize` inside).

    Shapes: ``(*batch, *event_shape) -> (*batch, *event_shape)``.

    Example:
        >>> z = ZScore.from_data(torch.tensor([[1.0, 10.0], [3.0, 30.0]]))
        >>> z(torch.tensor([2.0, 20.0]))
        tensor([0., 0.])
    """

    def __init__(self, standardize: Standardize, event_shape: Sequence[int]):
        super().__init__()
        self.standardize = standardize
        self.event_shape = torch.Size(event_shape)

    @classmethod
    def from_data(cls, batch: Tensor, structured: bool = False) -> ZScore:
        """The z-scoring of ``batch: (N, *event_shape)``, see :func:`standardize_from_data`."""
        return cls(standardize_from_data(batch, structured), batch.shape[1:])

    def forward(self, condition: Tensor) -> Tensor:
        events = len(self.event_shape)
        flat = condition.flatten(-events) if events else condition.unsqueeze(-1)
        return self.standardize(flat)[0].reshape(condition.shape)


def standardize_from_data(batch: Tensor, structured: bool = False) -> Standardize:
    r"""The :class:`~flowkit.transforms.Standardize` of ``batch: (N, *event_shape)``, flattened.

    Independent: every feature by its own mean and standard deviation. Structured (a time series,
    an image): one mean :math:`\mu` and one standard deviation :math:`\sigma` of all entries, for every
    feature. A constant feature is only shifted (:math:`\sigma = 1`).

    Example:
        >>> standardize_from_data(torch.tensor([[0.0, 2.0], [2.0, 6.0]]), structured=True).scale
        tensor([2.1794, 2.1794])
    """
    flat = batch.reshape(len(batch), -1)
    if not structured:
        return Standardize.from_data(flat, constant="keep")
    check_finite("the batch to z-score", flat)
    shift, scale = flat.mean(), flat.std(unbiased=False)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    return Standardize(shift.expand(flat.shape[1]).clone(), scale.expand(flat.shape[1]).clone())


class FlowkitEstimator(ConditionalDensityEstimator):
    r"""A flowkit density :math:`q(u \mid c)` as an sbi ``ConditionalDensityEstimator``: the input
    :math:`u` is what it models (:math:`\theta` for NPE, :math:`x` for NLE), the condition
    :math:`c` what it conditions on, first through ``embedding_net`` :math:`e`:

    .. math:: \log q(u \mid c) = \log p_\text{net}(\operatorname{vec} u \mid e(c))

    Shapes (sbi's): ``log_prob(input: (S, B, *input_shape) or (B, *input_shape), condition: (B,
    *condition_shape) or (S, B, *condition_shape)) -> (S, B)`` (``S = 1`` for an input without
    one; sample and batch sizes broadcast); ``loss(input: (B, *input_shape), condition: (B,
    *condition_shape)) -> (B,)``, the negative log-density; ``sample(sample_shape, condition: (B,
    *condition_shape)) -> (*sample_shape, B, *input_shape)``; ``sample_and_log_prob`` draws and
    scores in one pass.

    Checks: every call checks shapes, and ``log_prob``, ``sample`` and ``sample_and_log_prob``
    check their tensors for NaN and infinities once, at the entry, raising
    :class:`~flowkit.FlowkitValueError`. ``loss`` reads no value on the host (sbi's training loop
    calls it once per minibatch, and sbi checks the simulations when they are appended and the
    loss after it): it runs with flowkit's value checks off (:func:`flowkit.validate`).

    Arguments:
        net: a flowkit density with a context: ``features`` (the input's number of elements),
            ``context_features`` (the embedding's width), ``log_prob(u, context)``,
            ``sample(sample_shape, context)`` and ``sample_and_log_prob(sample_shape, context)``,
            such as a conditional :class:`flowkit.Flow` or :class:`flowkit.MADEMoG`.
        input_shape: the event shape of the input.
        condition_shape: the event shape of the condition.
        embedding_net: maps a condition ``(N, *condition_shape)`` to ``(N, context_features)``
            (or to ``(N, *shape)`` with that many elements); the identity when ``None``.

    Example:
        >>> net = flowkit.MAF(2, transforms=2, hidden_features=[16], context_features=3, seed=0)
        >>> estimator = FlowkitEstimator(net, (2,), (3,))
        >>> samples = estimator.sample((4,), torch.randn(5, 3))
        >>> samples.shape, estimator.log_prob(samples, torch.randn(5, 3)).shape
        (torch.Size([4, 5, 2]), torch.Size([4, 5]))
    """

    def __init__(self, net: nn.Module, input_shape: Sequence[int], condition_shape: Sequence[int],
                 embedding_net: nn.Module | None = None):
        # ConditionalDensityEstimator's own __init__, named: MixedFlowkitEstimator's MRO puts sbi's
        # MixedDensityEstimator (whose __init__ wants sbi's sub-networks) between the two
        ConditionalDensityEstimator.__init__(self, net, torch.Size(input_shape), torch.Size(condition_shape))
        _check_net(net, math.prod(self.input_shape))
        if embedding_net is not None and not isinstance(embedding_net, nn.Module):
            raise FlowkitTypeError(f"expected embedding_net to be a torch module, got {type(embedding_net).__name__}")
        self._embedding_net = nn.Identity() if embedding_net is None else embedding_net

    @property
    def embedding_net(self) -> nn.Module:
        """The network applied to the condition (with its z-scoring, if any) before the density."""
        return self._embedding_net

    def log_prob(self, input: Tensor, condition: Tensor) -> Tensor:
        r""":math:`\log q(u \mid c)`: ``(S, B)`` for ``input: (S, B, *input_shape)`` or ``(B, ...)`` and
        ``condition: (B, *condition_shape)`` or ``(S, B, ...)``; NaN and infinities raise."""
        u = self._input(input)
        self._lead("condition", condition, self.condition_shape, (1, 2),
                   "(B, *condition_shape) or (S, B, *condition_shape)")
        check_finite("input", u)
        check_finite("condition", condition)
        with checked():
            return self._log_prob(u, condition)

    def loss(self, input: Tensor, condition: Tensor) -> Tensor:
        r"""The training loss, :math:`-\log q(u \mid c)`, ``(B,)``, without value checks (no host read)."""
        self._lead("input", input, self.input_shape, (1,), "(B, *input_shape)")
        self._lead("condition", condition, self.condition_shape, (1,), "(B, *condition_shape)")
        with validate(False):
            return -self._log_prob(self._input(input), condition)[0]

    def sample(self, sample_shape: int | Sequence[int], condition: Tensor) -> Tensor:
        """Draws without gradients, ``(*sample_shape, B, *input_shape)`` for ``condition: (B, *condition_shape)``."""
        with torch.no_grad():
            return self._draw(sample_shape, condition, scored=False)

    def sample_and_log_prob(self, sample_shape: int | Sequence[int], condition: Tensor) -> tuple[Tensor, Tensor]:
        """Draws and their log-densities from the one pass that drew them (gradients flow)."""
        return self._draw(sample_shape, condition, scored=True)

    def _log_prob(self, u: Tensor, condition: Tensor) -> Tensor:
        """``u: (S, B, D)`` under ``condition: (B, *c) or (S, B, *c)``, shape-checked: ``(S, B)``."""
        context = self._embed(condition)
        context = context if context.dim() == 3 else context.unsqueeze(0)
        lead = broadcast_batch(u.shape[:2], context.shape[:2], names=("input (S, B)", "condition (S, B)"))
        return self.net.log_prob(u.expand(*lead, u.shape[-1]), context.expand(*lead, context.shape[-1]))

    def _draw(self, sample_shape, condition: Tensor, scored: bool):
        shape = as_sample_shape(sample_shape)
        self._lead("condition", condition, self.condition_shape, (1,), "(B, *condition_shape)")
        check_finite("condition", condition)
        with checked():
            context = self._embed(condition)
            if scored:
                u, log_q = self.net.sample_and_log_prob(shape, context)
                return u.reshape(*u.shape[:-1], *self.input_shape), log_q
            u = self.net.sample(shape, context)
            return u.reshape(*u.shape[:-1], *self.input_shape)

    def _input(self, input: Tensor) -> Tensor:
        """``input`` as ``(S, B, D)``, its event flattened."""
        lead = self._lead("input", input, self.input_shape, (1, 2), "(B, *input_shape) or (S, B, *input_shape)")
        u = input.reshape(*input.shape[:lead], -1) if self.input_shape else input.unsqueeze(-1)
        return u if lead == 2 else u.unsqueeze(0)

    def _embed(self, condition: Tensor) -> Tensor:
        """``condition: (*lead, *condition_shape)`` through the embedding: ``(*lead, context_features)``."""
        lead = condition.shape[:condition.dim() - len(self.condition_shape)]
        embedded = self._embedding_net(condition.reshape(-1, *self.condition_shape))
        width = self.net.context_features
        if not isinstance(embedded, Tensor) or embedded.dim() < 1 or embedded.shape[1:].numel() != width \
                or len(embedded) != lead.numel():
            got = tuple(embedded.shape) if isinstance(embedded, Tensor) else type(embedded).__name__
            raise FlowkitValueError(f"expected embedding_net to map conditions ({lead.numel()}, "
                                    f"*{tuple(self.condition_shape)}) to ({lead.numel()}, {width}), got {got}")
        return embedded.reshape(*lead, width)

    def _lead(self, name: str, value: Any, event: torch.Size, leads: tuple[int, ...], layout: str) -> int:
        """The number of leading (sample, batch) dimensions of ``value``, checked against ``leads``."""
        if not isinstance(value, Tensor):
            raise FlowkitTypeError(f"expected {name} to be a torch.Tensor, got {type(value).__name__}")
        lead = value.dim() - len(event)
        if lead not in leads or value.shape[lead:] != event or not value.dtype.is_floating_point:
            raise FlowkitValueError(f"expected {name} of shape {layout}, {name}_shape = {tuple(event)}, floating; "
                                    f"got {tuple(value.shape)} ({value.dtype})")
        return lead


class MixedFlowkitEstimator(FlowkitEstimator, MixedDensityEstimator):
    """A :class:`FlowkitEstimator` of mixed discrete and continuous data: what sbi's ``MNLE`` and
    ``MNPE`` trainers require (an instance of sbi's ``MixedDensityEstimator``), with one flowkit
    density over all the columns instead of sbi's pair of networks. Same interface and shapes."""


def _check_net(net: Any, features: int) -> None:
    if not isinstance(net, nn.Module) or not all(callable(getattr(net, name, None))
                                                 for name in ("log_prob", "sample", "sample_and_log_prob")):
        raise FlowkitTypeError(f"expected net to be a flowkit density module with log_prob, sample and "
                               f"sample_and_log_prob, got {type(net).__name__}")
    if getattr(net, "features", None) != features or not getattr(net, "context_features", 0):
        raise FlowkitValueError(f"expected net to be a conditional density of {features} features (the elements of "
                                f"input_shape), got features={getattr(net, 'features', None)} and "
                                f"context_features={getattr(net, 'context_features', None)}")


def _check_batches(batch_input: Any, batch_condition: Any) -> None:
    for name, batch in (("batch_input", batch_input), ("batch_condition", batch_condition)):
        if not isinstance(batch, Tensor) or batch.dim() < 2 or not batch.dtype.is_floating_point or len(batch) < 2:
            got = tuple(batch.shape) if isinstance(batch, Tensor) else type(batch).__name__
            raise FlowkitValueError(f"expected {name} to be a floating tensor (N, *event_shape) with N >= 2, got {got}")
    if len(batch_input) != len(batch_condition):
        raise FlowkitValueError(f"expected batch_input and batch_condition of one length, got {len(batch_input)} "
                                f"and {len(batch_condition)}")


def _z_scoring(name: str, option: str | None) -> tuple[bool, bool]:
    """``(z-score?, structured?)`` for a ``z_score_x`` or ``z_score_y`` option."""
    option = check_option(name, option, Z_SCORES)
    return option not in ("none", None), option == "structured"


def _input_standardize(batch_input: Tensor, z_score_x: str | None) -> list[Standardize]:
    """The flow's first layer (``[]`` for none): the z-scoring of the input, with its log-determinant."""
    wanted, structured = _z_scoring("z_score_x", z_score_x)
    return [standardize_from_data(batch_input, structured)] if wanted else []


def _condition_embedding(batch_condition: Tensor, z_score_y: str | None, embedding_net: nn.Module | None
                         ) -> tuple[nn.Module, int]:
    """The condition's z-scoring, then ``embedding_net``; and the width it produces."""
    if embedding_net is not None and not isinstance(embedding_net, nn.Module):
        raise FlowkitTypeError(f"expected embedding_net to be a torch module, got {type(embedding_net).__name__}")
    wanted, structured = _z_scoring("z_score_y", z_score_y)
    parts = ([ZScore.from_data(batch_condition, structured)] if wanted else []) + (
        [embedding_net] if embedding_net is not None else [])
    embedding = nn.Identity() if not parts else parts[0] if len(parts) == 1 else nn.Sequential(*parts)
    with torch.no_grad():
        embedded = embedding(batch_condition[:2])
    if not isinstance(embedded, Tensor) or embedded.dim() < 1 or len(embedded) != 2:
        got = tuple(embedded.shape) if isinstance(embedded, Tensor) else type(embedded).__name__
        raise FlowkitValueError(f"expected embedding_net to map conditions (2, *{tuple(batch_condition.shape[1:])}) "
                                f"to (2, features), got {got}")
    return embedding, embedded[0].numel()


def _hidden(hidden_features: int | Sequence[int], residual_blocks: int = 0) -> tuple[int, ...]:
    """The MADE's hidden widths: an int ``h`` is two layers of ``h`` (sbi's two blocks), or with
    residual blocks their one width; a sequence as given."""
    widths = check_ints("hidden_features", hidden_features, least=1, each="every hidden width", expected=">= 1")
    return widths * (1 if residual_blocks else 2) if isinstance(hidden_features, int) else widths


def _residual_blocks(residual_blocks: int | None, default: int) -> int:
    return default if residual_blocks is None else check_int("residual_blocks", residual_blocks, least=0)


def _spline_options(transformer: Any, num_bins: int | None, tail_bound: float | None) -> dict[str, Any]:
    """``bins`` and ``bound`` of flowkit's spline: sbi's NSF defaults (10 bins, :math:`B = 3`) unless given."""
    if transformer != "spline":
        given = [name for name, value in (("num_bins", num_bins), ("tail_bound", tail_bound)) if value is not None]
        if given:
            raise FlowkitValueError(f"{' and '.join(given)} are options of the spline transformer: expected "
                                    f"transformer='spline' with them, got transformer={transformer!r}")
        return {}
    bins = 10 if num_bins is None else check_int("num_bins", num_bins, least=1)
    bound = 3.0 if tail_bound is None else check_float("tail_bound", tail_bound, above=0)
    return {"bins": bins, "bound": bound}


def build_maf(batch_input: Tensor, batch_condition: Tensor, *, transformer: str = "affine",
              hidden_features: int | Sequence[int] = 50, num_transforms: int = 5, num_bins: int | None = None,
              tail_bound: float | None = None, residual_blocks: int | None = None,
              z_score_x: str | None = "independent", z_score_y: str | None = "independent",
              embedding_net: nn.Module | None = None, **options: Any) -> FlowkitEstimator:
    r"""A conditional :func:`flowkit.MAF` of ``batch_input`` given ``batch_condition``, as an sbi
    estimator (sbi's builder convention; for NLE wrap it in :func:`likelihood`).

    .. math:: \log q(u \mid c) = \log \mathrm{MAF}\big(\tfrac{u - \mu_u}{\sigma_u} \,\big|\,
              e(\tfrac{c - \mu_c}{\sigma_c})\big) - \textstyle\sum_i \log \sigma_{u,i}

    Arguments:
        batch_input: ``(N, *input_shape)``, the modelled variable (:math:`\theta` in NPE); its
            shape, and its statistics for ``z_score_x``.
        batch_condition: ``(N, *condition_shape)``, the conditioning variable (:math:`x` in NPE).
        transformer: ``"affine"`` (MAF, Papamakarios et al. 2017) or ``"spline"`` (rational-quadratic,
            Durkan et al. 2019, on the same autoregressive layers).
        hidden_features: the MADE's hidden widths; an int ``h`` means two layers of ``h``, or with
            residual blocks their width.
        num_transforms: the number of autoregressive layers.
        num_bins, tail_bound: the spline's bins and interval :math:`[-B, B]` (of the z-scored input);
            10 and 3 by default, as sbi's ``nsf``. Spline only.
        residual_blocks: masked residual blocks of the MADE (:class:`flowkit.MADE`); by default 2
            for the spline (the conditioner of sbi's ``nsf`` and of the NSF paper, a residual net of
            two blocks; on the two moons of ``experiments/sbi_benchmark.py`` the held-out
            log-density of the spline MAF was 3.05 without them, two seeds, and is 3.22 with them,
            six seeds, sbi's ``nsf`` 3.07) and none for the affine layers (sbi's ``maf``).
        z_score_x: ``"independent"`` (each feature by its own mean and standard deviation),
            ``"structured"`` (one of each for all features) or ``"none"``: a fixed
            :class:`~flowkit.transforms.Standardize`, the flow's first layer, with its log-determinant.
        z_score_y: the same for the condition, applied before ``embedding_net``.
        embedding_net: a module from ``(N, *condition_shape)`` to ``(N, E)``, trained with the flow.
        options: further options of :func:`flowkit.MAF` (``permutation``, ``linear``, ``batch_norm``,
            ``seed``) and of :class:`flowkit.MADE` (``activation``, ``dropout``...).

    Example:
        >>> theta, x = torch.randn(100, 2), torch.randn(100, 3)
        >>> estimator = build_maf(theta, x, hidden_features=16, num_transforms=2, seed=0)
        >>> estimator.loss(theta, x).shape, estimator.sample((7,), x[:4]).shape
        (torch.Size([100]), torch.Size([7, 4, 2]))
    """
    _check_batches(batch_input, batch_condition)
    transforms = check_int("num_transforms", num_transforms, least=1)
    spline = _spline_options(transformer, num_bins, tail_bound)
    standardize = _input_standardize(batch_input, z_score_x)
    embedding, width = _condition_embedding(batch_condition, z_score_y, embedding_net)
    blocks = _residual_blocks(residual_blocks, 2 if transformer == "spline" else 0)
    maf = MAF(batch_input[0].numel(), transforms, _hidden(hidden_features, blocks), transformer=transformer,
              context_features=width, residual_blocks=blocks, **spline, **options)
    flow = Flow(Composite([*standardize, *maf.transform.transforms]), maf.base)
    return FlowkitEstimator(flow, batch_input.shape[1:], batch_condition.shape[1:], embedding)


def build_made(batch_input: Tensor, batch_condition: Tensor, *, hidden_features: int | Sequence[int] = 50,
               num_mixture_components: int = 10, z_score_x: str | None = "independent",
               z_score_y: str | None = "independent", embedding_net: nn.Module | None = None,
               **made_options: Any) -> FlowkitEstimator:
    r"""A conditional :class:`flowkit.MADEMoG` (a MADE with a mixture of Gaussians for every
    conditional) of ``batch_input`` given ``batch_condition``, as an sbi estimator:

    .. math:: q(u \mid c) = \prod_d \sum_k \pi_{dk} \mathcal{N}(\tilde u_d; \mu_{dk}, \sigma_{dk}^2)
              \Big/ \prod_d \sigma_{u,d}, \qquad \tilde u = \tfrac{u - \mu_u}{\sigma_u}

    the parameters functions of :math:`\tilde u_{<d}` and the embedded condition. The z-scoring
    is a :class:`~flowkit.transforms.Standardize` before the MADE MoG, as a flow of that one layer.

    Arguments:
        batch_input, batch_condition, hidden_features, z_score_x, z_score_y, embedding_net: as in
            :func:`build_maf`.
        num_mixture_components: the components :math:`K` of every conditional.
        made_options: further options of :class:`flowkit.MADE` (``activation``, ``residual_blocks``,
            ``seed``...).

    Example:
        >>> theta, x = torch.randn(100, 2), torch.randn(100, 3)
        >>> estimator = build_made(theta, x, hidden_features=16, num_mixture_components=3, seed=0)
        >>> u, log_q = estimator.sample_and_log_prob((5,), x[:2])
        >>> u.shape, torch.allclose(log_q, estimator.log_prob(u, x[:2]), atol=1e-4)
        (torch.Size([5, 2, 2]), True)
    """
    _check_batches(batch_input, batch_condition)
    components = check_int("num_mixture_components", num_mixture_components, least=1)
    standardize = _input_standardize(batch_input, z_score_x)
    embedding, width = _condition_embedding(batch_condition, z_score_y, embedding_net)
    mog = MADEMoG(batch_input[0].numel(), components, _hidden(hidden_features, made_options.get("residual_blocks", 0)),
                  context_features=width, **made_options)
    return FlowkitEstimator(Flow(Composite(standardize), mog), batch_input.shape[1:], batch_condition.shape[1:],
                            embedding)


def build_mnle(batch_input: Tensor, batch_condition: Tensor, *,
               num_categories_per_variable: Sequence[int] | None = None, hidden_features: int | Sequence[int] = 50,
               num_components: int = 5, log_transform_x: bool = False, residual_blocks: int = 2,
               z_score_x: str | None = "independent", z_score_y: str | None = "independent",
               embedding_net: nn.Module | None = None, **made_options: Any) -> MixedFlowkitEstimator:
    r"""A density of mixed data, continuous columns first and ``k`` discrete ones last (sbi's layout),
    given ``batch_condition``, for sbi's ``MNLE`` (through :func:`likelihood`) and ``MNPE``: one
    :class:`flowkit.MixedMADE` whose autoregressive order takes the discrete columns first, so that
    the continuous ones condition on them (the factorisation of sbi's MNLE, Boelts et al. 2022):

    .. math:: q(u \mid c) = \prod_{j \le k} \operatorname{Cat}(u_{\text{disc}, j} \mid u_{\text{disc}, <j}, e(c))
              \prod_i q(u_{\text{cont}, i} \mid u_{\text{cont}, <i}, u_\text{disc}, e(c))

    each continuous conditional a mixture of ``num_components`` Gaussians, or with
    ``log_transform_x`` (positive data: reaction times) of log-normals. The columns keep their
    order in and out; categories are the floats ``0., 1., ...``.

    Arguments:
        batch_input: ``(N, D)``, the mixed variable (:math:`x` in MNLE).
        batch_condition: ``(N, *condition_shape)``.
        num_categories_per_variable: the count of categories of each discrete column (the last
            ``k``); by default the trailing columns whose values are all integers, each with
            ``max + 1`` categories (every category should occur in the batch).
        hidden_features: the MADE's hidden widths; an int ``h`` means two layers of ``h``, or with
            residual blocks their width.
        num_components: the mixture components of every continuous conditional.
        residual_blocks: masked residual blocks of the MADE, 2 by default (on the choices-and-times
            task of ``experiments/sbi_benchmark.py`` they took the likelihood gap from 0.048 to 0.041
            nats, the mean of its seeds 0 to 2; with 3 mixture components 0.038 there, but 0.045
            against 0.041 on seeds 3 to 5; 8 components or 64 hidden units did no better); 0 for a
            MADE of ``hidden_features`` layers.
        log_transform_x: model the continuous columns as log-normal mixtures (positive values).
        z_score_x: the continuous columns' z-scoring (a :class:`~flowkit.transforms.Standardize`
            before the MADE that leaves the discrete columns as they are); with
            ``log_transform_x``, a scaling only, by the geometric mean, so that values stay positive.
        z_score_y, embedding_net: as in :func:`build_maf`.
        made_options: further options of :class:`flowkit.MADE`.

    Example:
        >>> theta = torch.rand(200, 2)
        >>> x = torch.cat([torch.rand(200, 1) + 0.1, torch.bernoulli(theta[:, 1:])], dim=1)  # time, choice
        >>> estimator = likelihood(build_mnle, hidden_features=16, log_transform_x=True, seed=0)(theta, x)
        >>> u = estimator.sample((3,), theta[:4])
        >>> u.shape, sorted(u[..., 1].unique().tolist()) in ([0.0], [1.0], [0.0, 1.0])
        (torch.Size([3, 4, 2]), True)
    """
    _check_batches(batch_input, batch_condition)
    if batch_input.dim() != 2:
        raise FlowkitValueError(f"expected batch_input of shape (N, D) for mixed data, got {tuple(batch_input.shape)}")
    counts = _category_counts(batch_input, num_categories_per_variable)
    continuous = batch_input.shape[1] - len(counts)
    components = check_int("num_components", num_components, least=1)
    family = LogNormalMixture if log_transform_x else GaussianMixture
    heads = [family(components) for _ in range(continuous)] + [Categorical(k) for k in counts]
    order = list(range(continuous, batch_input.shape[1])) + list(range(continuous))  # the discrete columns first
    embedding, width = _condition_embedding(batch_condition, z_score_y, embedding_net)
    blocks = _residual_blocks(residual_blocks, 2)
    made = MixedMADE(heads, _hidden(hidden_features, blocks), context_features=width, order=order,
                     residual_blocks=blocks, **made_options)
    standardize = _mixed_standardize(batch_input[:, :continuous], len(counts), z_score_x, bool(log_transform_x))
    return MixedFlowkitEstimator(Flow(Composite(standardize), made), batch_input.shape[1:], batch_condition.shape[1:],
                                 embedding)


def _category_counts(batch: Tensor, given: Sequence[int] | None) -> tuple[int, ...]:
    """The counts of the trailing discrete columns: ``given``, or inferred from the integer-valued ones."""
    if given is not None:
        counts = check_ints("num_categories_per_variable", given, least=2, each="every count of categories")
        if not 0 < len(counts) < batch.shape[1]:
            raise FlowkitValueError(f"expected num_categories_per_variable to count 1 to {batch.shape[1] - 1} "
                                    f"discrete columns (the last ones), got {len(counts)}")
        return counts
    check_finite("batch_input", batch)
    integral = (batch == batch.round()).all(0) & (batch >= 0).all(0)
    k = int(integral.flip(0).long().cumprod(0).sum())  # the trailing run of integer-valued columns
    if not 0 < k < batch.shape[1]:
        raise FlowkitValueError(f"expected the last columns of batch_input to be discrete (categories 0, 1, ...) and "
                                f"the first continuous, got {k} integer-valued trailing columns of "
                                f"{batch.shape[1]}: give num_categories_per_variable")
    return tuple(max(2, int(column.max()) + 1) for column in batch[:, -k:].T)


def _mixed_standardize(continuous: Tensor, discrete: int, z_score_x: str | None, positive: bool) -> list[Standardize]:
    """The z-scoring of the continuous columns, the discrete ones kept (shift 0, scale 1)."""
    wanted, structured = _z_scoring("z_score_x", z_score_x)
    if not wanted:
        return []
    if positive:
        check_finite("batch_input", continuous)
        if not bool((continuous > 0).all()):
            raise FlowkitValueError("log_transform_x needs positive continuous columns, got values <= 0")
        logs = continuous.log()
        scale = (logs.mean() if structured else logs.mean(0)).exp().expand(continuous.shape[1])
        part = Standardize(torch.zeros_like(scale), scale.clone())
    else:
        part = standardize_from_data(continuous, structured)
    ones = torch.ones(discrete, dtype=part.scale.dtype)
    return [Standardize(torch.cat([part.shift, ones - 1]), torch.cat([part.scale, ones]))]


def likelihood(builder: Callable[..., ConditionalDensityEstimator] = build_maf, /, **options: Any
               ) -> Callable[[Tensor, Tensor], ConditionalDensityEstimator]:
    r"""The builder for sbi's ``NLE`` and ``MNLE``: ``builder(batch_x, batch_theta, **options)``
    called as sbi's trainers call a builder, ``(batch_theta, batch_x)``, so that it models
    :math:`p(x \mid \theta)` (see the module's notes). Picklable, like the builders.

    Example:
        >>> theta, x = torch.randn(100, 2), torch.randn(100, 5)
        >>> build = likelihood(build_maf, hidden_features=32, num_transforms=2)
        >>> estimator = build(theta, x)        # as NLE calls it
        >>> estimator.input_shape, estimator.condition_shape
        (torch.Size([5]), torch.Size([2]))
    """
    if not callable(builder):
        raise FlowkitTypeError(f"expected builder to be a function like build_maf, got {type(builder).__name__}")
    return functools.partial(_swapped, builder, **options)


def _swapped(builder: Callable[..., ConditionalDensityEstimator], batch_theta: Tensor, batch_x: Tensor,
             **options: Any) -> ConditionalDensityEstimator:
    return builder(batch_x, batch_theta, **options)
