r"""Normalising layers: batch normalisation as an invertible flow layer (Papamakarios et al., 2017,
section 3.4) and a fixed standardisation built from data."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from flowkit.errors import FlowkitValueError
from flowkit.transforms.base import Transform, check_features
from flowkit.validation import check_finite, check_float, check_int, check_option

__all__ = ["BatchNorm", "Standardize", "set_population_statistics"]


class BatchNorm(Transform):
    r"""Batch normalisation as a bijection, data to noise:

    .. math:: y = e^{\gamma} \frac{x - \mu}{\sqrt{v + \epsilon}} + \beta, \qquad
              \log|\det J| = \sum_i \gamma_i - \tfrac12 \log(v_i + \epsilon)

    In training mode :math:`\mu, v` are the statistics of the batch (and the running averages are
    updated with ``momentum``); in eval mode they are the running averages, and ``inverse`` is
    then the exact inverse of ``forward``. ``inverse`` always uses the running averages. A feature
    with zero variance stays finite through :math:`\epsilon`.

    With ``sync = True`` and a :mod:`torch.distributed` process group, the training statistics are
    those of the global minibatch, every rank's piece together (one differentiable all-reduce of
    the counts, sums and squares per layer, as :class:`torch.nn.SyncBatchNorm`), so that data-parallel
    training takes the steps of one process. :func:`flowkit.train.fit` sets it while it trains
    across ranks; every rank must then run each training forward pass, an empty piece included.

    Arguments:
        features: the number of features.
        eps: added to the variance.
        momentum: the weight of the newest batch in the running averages.

    Example:
        >>> bn = BatchNorm(2).eval()
        >>> x = torch.randn(5, 2)
        >>> torch.allclose(bn.inverse(bn(x)[0])[0], x, atol=1e-6)
        True
    """

    sync: bool = False
    """Training statistics over every rank's piece (see above); a class default, so that a layer
    pickled before the attribute existed loads with it off."""

    def __init__(self, features: int, eps: float = 1e-5, momentum: float = 0.1):
        super().__init__()
        features = check_int("features", features, least=1)
        momentum = check_float("momentum", momentum, above=0, most=1)
        eps = check_float("eps", eps, above=0)
        self.features, self.eps, self.momentum = features, eps, momentum
        self.log_gamma = nn.Parameter(torch.zeros(features))
        self.beta = nn.Parameter(torch.zeros(features))
        self.register_buffer("running_mean", torch.zeros(features))
        self.register_buffer("running_var", torch.ones(features))

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        check_features("x", x, self.features)
        check_finite("x", x)
        x = x.to(self.log_gamma.dtype)
        if self.training:
            flat = x.reshape(-1, self.features)
            if self.sync and torch.distributed.is_available() and torch.distributed.is_initialized():
                mean, var, count = self._global_moments(flat)
            else:
                mean, var, count = flat.mean(0), flat.var(0, unbiased=False), flat.shape[0]
            if count < 2:
                raise FlowkitValueError(
                    f"BatchNorm in training mode needs a batch of at least 2 examples, got {count}"
                )
            with torch.no_grad():
                # A batch whose statistics overflow (values near the dtype's largest) leaves the
                # running averages of those features as they were, so the layer stays usable.
                fresh_mean, fresh_var = mean.detach(), var.detach() * (count / (count - 1))
                usable = fresh_mean.isfinite() & fresh_var.isfinite()
                self.running_mean.copy_(torch.where(usable, self.running_mean.lerp(fresh_mean, self.momentum),
                                                    self.running_mean))
                self.running_var.copy_(torch.where(usable, self.running_var.lerp(fresh_var, self.momentum),
                                                   self.running_var))
        else:
            mean, var = self.running_mean, self.running_var
        y = (x - mean) / torch.sqrt(var + self.eps) * torch.exp(self.log_gamma) + self.beta
        logabsdet = (self.log_gamma - 0.5 * torch.log(var + self.eps)).sum()
        return y, logabsdet.expand(x.shape[:-1])

    def _global_moments(self, flat: Tensor) -> tuple[Tensor, Tensor, int]:
        """The mean, biased variance and count of the rows of every rank, differentiable: sums of
        the rows and their squares about the running mean (the same on every rank), all-reduced."""
        from torch.distributed.nn.functional import all_reduce

        centre = self.running_mean.to(flat.dtype)
        centred = flat - centre
        local = torch.cat([centred.new_full((1,), flat.shape[0]), centred.sum(0), centred.square().sum(0)])
        total = all_reduce(local)
        count = int(total[0].item())
        if count < 2:
            return flat.mean(0), flat.var(0, unbiased=False), count
        offset = total[1:1 + self.features] / count
        var = (total[1 + self.features:] / count - offset.square()).clamp_min(0)
        return centre + offset, var, count

    def inverse(self, y: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        check_features("y", y, self.features)
        y = y.to(self.log_gamma.dtype)
        std = torch.sqrt(self.running_var + self.eps)
        x = (y - self.beta) * torch.exp(-self.log_gamma) * std + self.running_mean
        logabsdet = (0.5 * torch.log(self.running_var + self.eps) - self.log_gamma).sum()
        return x, logabsdet.expand(y.shape[:-1])

    def extra_repr(self) -> str:
        return f"features={self.features}, eps={self.eps}, momentum={self.momentum}"


class Standardize(Transform):
    r"""A fixed elementwise affine map that standardises data, data to noise:

    .. math:: y = \frac{x - \mu}{\sigma}, \qquad \log|\det J| = -\sum_i \log \sigma_i

    Placed first in a flow, it lets the layers after it see data of zero mean and unit scale (the
    z-scoring of sbi's density estimators); the log-determinant keeps the flow's density that of
    the data. :math:`\mu` and :math:`\sigma` are buffers (saved in the ``state_dict``, never
    trained); :meth:`from_data` computes them from a batch.

    Arguments:
        shift: :math:`\mu`, ``(D,)``.
        scale: :math:`\sigma`, ``(D,)``, every entry positive and finite.

    Example:
        >>> x = torch.tensor([[1.0, 10.0], [3.0, 30.0]])
        >>> layer = Standardize.from_data(x)
        >>> layer(x)[0]
        tensor([[-1., -1.],
                [ 1.,  1.]])
    """

    def __init__(self, shift: Tensor, scale: Tensor):
        super().__init__()
        for name, value in (("shift", shift), ("scale", scale)):
            if not isinstance(value, Tensor) or value.dim() != 1 or not value.dtype.is_floating_point:
                got = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
                raise FlowkitValueError(f"expected {name} to be a 1-d floating tensor, got {got}")
        if shift.shape != scale.shape:
            raise FlowkitValueError(f"expected shift and scale of one shape, got {tuple(shift.shape)} and "
                                    f"{tuple(scale.shape)}")
        if not bool(torch.isfinite(shift).all()) or not bool(((scale > 0) & torch.isfinite(scale)).all()):
            raise FlowkitValueError("expected a finite shift and a positive, finite scale")
        self.features = shift.shape[0]
        self.register_buffer("shift", shift.detach().clone())
        self.register_buffer("scale", scale.detach().clone())

    @classmethod
    def from_data(cls, x: Tensor, *, constant: str = "error") -> Standardize:
        r"""The standardisation of the batch ``x: (N, D)``: its mean and (population) standard deviation.

        A feature of zero standard deviation (constant in ``x``) has no scale to divide by: with
        ``constant="error"`` (the default) it raises, naming the features; with ``"keep"`` such a
        feature is only shifted (:math:`\sigma_i = 1`).
        """
        check_option("constant", constant, ("error", "keep"))
        if not isinstance(x, Tensor) or x.dim() != 2 or not x.dtype.is_floating_point or len(x) < 2:
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise FlowkitValueError(f"expected a floating batch x of shape (N, D) with N >= 2, got {got}")
        check_finite("x", x)
        shift, scale = x.mean(0), x.std(0, unbiased=False)
        flat = scale <= torch.finfo(x.dtype).eps * shift.abs().clamp(min=1.0)
        if bool(flat.any()):
            if constant == "error":
                raise FlowkitValueError(
                    f"features {flat.nonzero().squeeze(1).tolist()} of x are constant: no scale to standardise "
                    "them by (drop them, or pass constant='keep' to only shift them)")
            scale = torch.where(flat, torch.ones_like(scale), scale)
        return cls(shift, scale)

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        check_features("x", x, self.features)
        check_finite("x", x)
        y = (x.to(self.scale.dtype) - self.shift) / self.scale
        return y, (-torch.log(self.scale).sum()).expand(y.shape[:-1])

    def inverse(self, y: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        check_features("y", y, self.features)
        check_finite("y", y)
        x = y.to(self.scale.dtype) * self.scale + self.shift
        return x, torch.log(self.scale).sum().expand(x.shape[:-1])


class _Reached(Exception):
    """Stops a pass once the batch-norm layer being measured has seen its input."""


@torch.no_grad()
def set_population_statistics(model: nn.Module, x: Tensor, context: Tensor | None = None, *,
                              batch_size: int = 8192) -> int:
    r"""Sets every :class:`BatchNorm` layer of ``model`` to the exact mean and variance of its input
    over the data ``x``, the statistics the MAF paper uses at test time (Papamakarios et al., 2017,
    section 3.4), instead of the running averages of training.

    The layers are visited in the order ``model.log_prob`` reaches them; each is measured with the
    layers before it already set (one pass over ``x`` per layer, each stopped at the layer it
    measures), in float64, batch by batch, so memory does not grow with ``x``. The model is left in
    the mode it was in.

    Arguments:
        model: a density with ``log_prob(x, context)`` (a :class:`flowkit.Flow`, say).
        x: ``(N, D)``, the data (a training set or a large sample of one).
        context: ``(N, C)`` or ``None``.
        batch_size: rows per pass.

    Returns:
        The number of batch-norm layers set.

    Example:
        >>> flow = flowkit.Flow(BatchNorm(2), flowkit.flows.StandardNormal(2))
        >>> x = torch.randn(1000, 2) * 3 + 1
        >>> set_population_statistics(flow, x)
        1
        >>> torch.allclose(flow.transform.running_mean, x.mean(0)), torch.allclose(flow.transform.running_var, x.var(0))
        (True, True)
    """
    batch_size = check_int("batch_size", batch_size, least=1)
    if not isinstance(x, Tensor):
        raise FlowkitValueError(f"expected x to be a tensor of shape (N, D), got {type(x).__name__}")
    if x.dim() != 2 or len(x) < 2:
        raise FlowkitValueError(f"expected x of shape (N, D) with N >= 2, got {tuple(x.shape)}")
    training = model.training
    model.eval()
    try:
        layers = _reached_order(model, x[:2], None if context is None else context[:2])
        for layer in layers:
            _measure(model, layer, x, context, batch_size)
    finally:
        model.train(training)
    return len(layers)


def _reached_order(model: nn.Module, x: Tensor, context: Tensor | None) -> list[BatchNorm]:
    reached: list[BatchNorm] = []
    hooks = [m.register_forward_pre_hook(lambda m, args: reached.append(m) if m not in reached else None)
             for m in model.modules() if isinstance(m, BatchNorm)]
    try:
        model.log_prob(x, context)
    finally:
        for hook in hooks:
            hook.remove()
    return reached


def _measure(model: nn.Module, layer: BatchNorm, x: Tensor, context: Tensor | None, batch_size: int) -> None:
    total = torch.zeros(layer.features, dtype=torch.float64, device=layer.running_mean.device)
    squares, count = torch.zeros_like(total), 0

    def grab(module: nn.Module, args: tuple) -> None:
        nonlocal count
        inputs = args[0].reshape(-1, layer.features).double()
        total.add_(inputs.sum(0))
        squares.add_(inputs.pow(2).sum(0))
        count += len(inputs)
        raise _Reached

    hook = layer.register_forward_pre_hook(grab)
    try:
        for start in range(0, len(x), batch_size):
            try:
                rows = slice(start, start + batch_size)
                model.log_prob(x[rows], None if context is None else context[rows])
            except _Reached:
                pass
    finally:
        hook.remove()
    mean = total / count
    var = (squares - count * mean.pow(2)).clamp(min=0) / max(count - 1, 1)
    layer.running_mean.copy_(mean)
    layer.running_var.copy_(var)
