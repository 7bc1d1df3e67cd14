"""Checks of user input that raise errors naming what was expected and what came."""

from __future__ import annotations

import contextlib
import operator
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import Tensor

__all__ = ["validate", "set_validation", "validation_enabled", "checked", "check_shape", "check_finite",
           "check_context", "sample_shape"]

_ENABLED = True
_CHECKED = 0  # depth of checked() scopes: values inside were checked where they came in


def set_validation(enabled: bool) -> None:
    """Turns the value checks (NaN, infinities, support) on or off globally.

    Shape, dtype and context checks cost nothing and always run. The value checks read the data,
    which on a GPU is a synchronisation; a tight training loop on trusted data may turn them off.
    """
    global _ENABLED
    _ENABLED = bool(enabled)


def validation_enabled() -> bool:
    """Whether the value checks are on."""
    return _ENABLED


@contextlib.contextmanager
def validate(enabled: bool) -> Iterator[None]:
    """Context manager form of :func:`set_validation`.

    Example:
        >>> with validate(False):
        ...     validation_enabled()
        False
    """
    previous = _ENABLED
    set_validation(enabled)
    try:
        yield
    finally:
        set_validation(previous)


@contextlib.contextmanager
def checked() -> Iterator[None]:
    """A scope whose inputs were already checked where they entered the package.

    An entry point (a density's or a flow's ``log_prob``) checks its ``x`` and ``context`` for
    NaN and infinities once, then runs its layers inside this scope, where :func:`check_finite`
    does not read the data again: one pass over the input per call instead of one per layer.
    Shape and context checks still run.

    Example:
        >>> with checked():
        ...     check_finite("x", torch.tensor([float("nan")]))  # not read again
        >>> check_finite("x", torch.tensor([float("nan")]))
        Traceback (most recent call last):
        ...
        ValueError: x contains NaN values
    """
    global _CHECKED
    _CHECKED += 1
    try:
        yield
    finally:
        _CHECKED -= 1


def check_shape(name: str, x: Tensor, features: int) -> None:
    """Raises when ``x`` is not a tensor of shape ``(*, features)``."""
    if not isinstance(x, Tensor):
        raise TypeError(f"expected {name} to be a torch.Tensor, got {type(x).__name__}")
    if x.dim() < 1 or x.shape[-1] != features:
        raise ValueError(f"expected {name} of shape (*, {features}), got {tuple(x.shape)}")


def sample_shape(shape: int | Sequence[int]) -> torch.Size:
    """A ``sample_shape`` as torch takes it: an int ``n`` means ``(n,)``; numpy integers welcome.

    Example:
        >>> sample_shape(3), sample_shape((2, 4))
        (torch.Size([3]), torch.Size([2, 4]))
    """
    try:
        return torch.Size([operator.index(shape)])
    except TypeError:
        return torch.Size(operator.index(n) for n in shape)


def check_finite(name: str, x: Tensor) -> None:
    """Raises ``ValueError`` when a floating tensor holds NaN or infinite values (unless value
    checks are off, or inside :func:`checked`)."""
    if _ENABLED and not _CHECKED and x.dtype.is_floating_point:
        require(torch.isfinite(x).all(), lambda: raise_not_finite(name, x), f"{name} contains NaN or infinite values")


def require(ok: Tensor, fail: Callable[[], None], message: str) -> None:
    """Calls ``fail`` (which raises a named error) when the boolean tensor ``ok`` is false.

    Reading ``ok`` on the host is the one synchronisation of a check. Under ``torch.compile`` the
    check becomes an asynchronous assertion with ``message`` inside the graph, so that checks do
    not break the graph.
    """
    if torch.compiler.is_compiling():
        torch._assert_async(ok, message)
    elif not bool(ok):
        fail()


def raise_not_finite(name: str, x: Tensor) -> None:
    """Raises the error of :func:`check_finite` for ``x``, known to hold a NaN or an infinity."""
    bad = "NaN" if bool(torch.isnan(x).any()) else "infinite"
    raise ValueError(f"{name} contains {bad} values")


def check_context(
    context: Tensor | None, context_features: int, batch: torch.Size
) -> Tensor | None:
    """Checks a context against a model's ``context_features`` and the batch shape of ``x``."""
    if context_features == 0:
        if context is not None:
            raise ValueError(
                "this model is unconditional (context_features=0) but a context was given"
            )
        return None
    if context is None:
        raise ValueError(
            f"this model is conditional: expected a context of shape (*, {context_features}), got None"
        )
    if not isinstance(context, Tensor):
        raise TypeError(f"expected context to be a torch.Tensor, got {type(context).__name__}")
    if context.dim() < 1 or context.shape[-1] != context_features:
        raise ValueError(
            f"expected context of shape (*, {context_features}), got {tuple(context.shape)}"
        )
    try:
        torch.broadcast_shapes(batch, context.shape[:-1])
    except RuntimeError:
        raise ValueError(
            f"the batch shape of x {tuple(batch)} and of context {tuple(context.shape[:-1])} "
            "do not broadcast"
        ) from None
    check_finite("context", context)
    return context
