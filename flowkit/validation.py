r"""Checks of user input that raise errors naming what was expected and what came.

Every check raises a :class:`~flowkit.FlowkitError`: a :class:`~flowkit.FlowkitValueError` for a
wrong value, a :class:`~flowkit.FlowkitTypeError` for a wrong type.

**Numbers.** Counts, sizes, indices, keys and seeds go through :func:`check_int` (:func:`check_ints`
for a list of widths), rates and bounds through :func:`check_float`, one policy for all of them:
anything ``operator.index`` takes (Python and numpy integers, 0-d integer tensors) is an integer and
comes back as a Python ``int``; any real number (Python, numpy) is a number and comes back as a
``float``; ``bool`` is neither. A wrong type raises :class:`NumberTypeError` (a FlowkitTypeError),
a wrong value a FlowkitValueError, and both messages name the
argument, what it should be and what came:

    >>> import numpy as np
    >>> check_int("features", np.int64(4), least=1)
    4
    >>> check_int("features", 0, least=1)
    Traceback (most recent call last):
    ...
    flowkit.errors.FlowkitValueError: expected features to be an int >= 1, got 0
    >>> check_int("num_masks", 2.5, least=1)
    Traceback (most recent call last):
    ...
    flowkit.validation.NumberTypeError: expected num_masks to be an int >= 1, got float 2.5
"""

from __future__ import annotations

import contextlib
import math
import numbers
import operator
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor

from flowkit.errors import FlowkitTypeError, FlowkitValueError

__all__ = ["validate", "set_validation", "validation_enabled", "checked", "check_shape", "check_finite", "all_finite",
           "check_context", "sample_shape", "check_int", "check_ints", "check_float", "check_option",
           "check_permutation", "mask_keys", "broadcast_batch", "NumberTypeError"]


class NumberTypeError(FlowkitTypeError):
    """An argument that should be a number (an int for a count, a real for a rate) and is not: a
    :class:`~flowkit.FlowkitTypeError` (a wrong type), never a ``ValueError`` (a wrong value)."""

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
        flowkit.errors.FlowkitValueError: x contains NaN values
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
        raise FlowkitTypeError(f"expected {name} to be a torch.Tensor, got {type(x).__name__}")
    if x.dim() < 1 or x.shape[-1] != features:
        raise FlowkitValueError(f"expected {name} of shape (*, {features}), got {tuple(x.shape)}")


def sample_shape(shape: int | Sequence[int]) -> torch.Size:
    """A ``sample_shape`` as torch takes it: an int ``n`` means ``(n,)``; every size an integer
    ``>= 0`` (numpy integers welcome, ``bool`` refused, see :func:`check_int`).

    Example:
        >>> import numpy as np
        >>> sample_shape(3), sample_shape((2, 4)), sample_shape(np.int64(2))
        (torch.Size([3]), torch.Size([2, 4]), torch.Size([2]))
    """
    if _index(shape) is not None:
        return torch.Size([check_int("sample_shape", shape)])
    if isinstance(shape, Tensor) and shape.dim() == 1:
        shape = shape.tolist()
    if isinstance(shape, (str, bytes)) or not isinstance(shape, Sequence):
        raise NumberTypeError(f"expected sample_shape to be an int or a sequence of ints, got {_describe(shape)}")
    return torch.Size(check_int("every size of sample_shape", n) for n in shape)


def check_finite(name: str, x: Tensor) -> None:
    """Raises :class:`~flowkit.FlowkitValueError` when a floating tensor holds NaN or infinite
    values (unless value checks are off, or inside :func:`checked`)."""
    if _ENABLED and not _CHECKED and x.dtype.is_floating_point:
        require(all_finite(x), lambda: raise_not_finite(name, x), f"{name} contains NaN or infinite values")


def all_finite(x: Tensor) -> bool | Tensor:
    """Whether every element of the floating tensor ``x`` is finite: ``True`` or a boolean tensor.

    One reduction where it can: a sum is finite exactly when no element is NaN or infinite, unless
    finite elements overflow when added up, so only a sum that is not finite (bad input, or
    values near the dtype's largest) has the elements examined one by one. On a CPU that is
    several times faster than ``isfinite(x).all()`` (11 against 170 microseconds for a
    ``(100, 784)`` float32 batch). Under ``torch.compile`` it is ``isfinite(x).all()``.
    """
    if not torch.compiler.is_compiling():
        total = x.sum(dtype=torch.float32 if x.element_size() < 4 else None)  # half: no overflow at 65504
        if bool(torch.isfinite(total)):
            return True
    return torch.isfinite(x).all()


def require(ok: bool | Tensor, fail: Callable[[], None], message: str) -> None:
    """Calls ``fail`` (which raises a named error) when ``ok`` (a boolean tensor, or a bool) is false.

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
    raise FlowkitValueError(f"{name} contains {bad} values")


def check_context(
    context: Tensor | None, context_features: int, batch: torch.Size
) -> Tensor | None:
    """Checks a context against a model's ``context_features`` and the batch shape of ``x``."""
    if context_features == 0:
        if context is not None:
            raise FlowkitValueError(
                "this model is unconditional (context_features=0) but a context was given"
            )
        return None
    if context is None:
        raise FlowkitValueError(
            f"this model is conditional: expected a context of shape (*, {context_features}), got None"
        )
    if not isinstance(context, Tensor):
        raise FlowkitTypeError(f"expected context to be a torch.Tensor, got {type(context).__name__}")
    if context.dim() < 1 or context.shape[-1] != context_features:
        raise FlowkitValueError(
            f"expected context of shape (*, {context_features}), got {tuple(context.shape)}"
        )
    broadcast_batch(batch, context.shape[:-1], names=("x", "context"))
    check_finite("context", context)
    return context


def broadcast_batch(*shapes: Sequence[int], names: Sequence[str] | None = None) -> torch.Size:
    """The broadcast of batch shapes, by NumPy's rule, or a :class:`~flowkit.FlowkitValueError`
    that names the shapes.

    The same result as ``torch.broadcast_shapes``, in plain Python: the torch function imports
    sympy on its first call (about 0.6 s, once per process), which every first ``log_prob`` or
    ``sample`` with a context would pay.

    Example:
        >>> broadcast_batch((5, 1), (3,))
        torch.Size([5, 3])
    """
    result: list[int] = []
    for shape in shapes:
        shape = tuple(shape)
        width = max(len(result), len(shape))
        result = [1] * (width - len(result)) + result
        for i, size in enumerate((1,) * (width - len(shape)) + shape):
            if size != result[i] and size != 1 and result[i] != 1:
                labels = names if names is not None else [f"#{k}" for k in range(len(shapes))]
                described = " and ".join(f"of {label} {tuple(s)}" for label, s in zip(labels, shapes))
                raise FlowkitValueError(f"the batch shapes {described} do not broadcast")
            if result[i] == 1:
                result[i] = size
    return torch.Size(result)


def check_int(
    name: str, value: Any, *, least: int | None = 0, most: int | None = None, expected: str | None = None
) -> int:
    """Returns ``value`` as a Python ``int`` when it is an integer in ``least..most``.

    An integer is anything ``operator.index`` takes (``int``, numpy integers, a 0-d integer
    tensor) except ``bool``. A wrong type raises :class:`NumberTypeError`, a wrong value
    :class:`~flowkit.FlowkitValueError`; both messages name the argument, what it should be and
    what came.

    Arguments:
        name: the argument as the message names it (``"features"``, ``"every hidden width"``).
        value: what was given.
        least: the smallest value allowed; ``None`` for no bound below.
        most: the largest value allowed; ``None`` for no bound above.
        expected: the requirement as the message for a wrong value states it, after the name
            (``"in 1..3 (the number of mask sets)"``); by default ``"to be an int >= least"``, or
            ``"in least..most"``.

    Example:
        >>> check_int("ensemble", 2, least=1, most=3)
        2
        >>> check_int("ensemble", 4, least=1, most=3)
        Traceback (most recent call last):
        ...
        flowkit.errors.FlowkitValueError: expected ensemble in 1..3, got 4
        >>> check_int("num_masks", True, least=1)
        Traceback (most recent call last):
        ...
        flowkit.validation.NumberTypeError: expected num_masks to be an int >= 1, got bool True
    """
    if most is not None:
        requirement = f"in {least}..{most}" if least is not None else f"to be an int <= {most}"
    else:
        requirement = "to be an int" + ("" if least is None else f" >= {least}")
    number = _index(value)
    if number is None:
        raise NumberTypeError(f"expected {name} {requirement}, got {_describe(value)}")
    if (least is not None and number < least) or (most is not None and number > most):
        raise FlowkitValueError(f"expected {name} {expected or requirement}, got {number}")
    return number


def check_ints(
    name: str, values: Any, *, least: int | None = 0, each: str | None = None, expected: str | None = None
) -> tuple[int, ...]:
    """Returns ``values``, an integer or a sequence of integers (the hidden widths of a network),
    as a tuple of Python ints, each checked by :func:`check_int`.

    Arguments:
        name: the argument as the message names it.
        values: an integer (one value) or an iterable of integers (a list, a tuple, a 1-d tensor or
            array); not a string.
        least, expected: as in :func:`check_int`, for every value.
        each: how the message names one value; ``"every value of {name}"`` by default.

    Example:
        >>> check_ints("hidden_features", 16, least=1), check_ints("hidden_features", [8, 4], least=1)
        ((16,), (8, 4))
        >>> check_ints("hidden_features", [8, 0], least=1, each="every hidden width")
        Traceback (most recent call last):
        ...
        flowkit.errors.FlowkitValueError: expected every hidden width to be an int >= 1, got 0
    """
    each = each or f"every value of {name}"
    if _index(values) is not None:
        return (check_int(each, values, least=least, expected=expected),)
    if isinstance(values, Tensor) or (hasattr(values, "tolist") and hasattr(values, "ndim")):  # tensors, arrays
        values = values.tolist() if values.ndim == 1 else values
    if isinstance(values, (str, bytes, Tensor)) or not isinstance(values, Iterable):
        raise NumberTypeError(f"expected {name} to be an int or a sequence of ints, got {_describe(values)}")
    return tuple(check_int(each, value, least=least, expected=expected) for value in values)


def check_float(
    name: str,
    value: Any,
    *,
    above: float | None = None,
    least: float | None = None,
    below: float | None = None,
    most: float | None = None,
    expected: str | None = None,
) -> float:
    """Returns ``value`` as a Python ``float`` when it is a finite real number in the interval
    the bounds describe (``above`` and ``below`` exclusive, ``least`` and ``most`` inclusive).

    A real number is an ``int``, a ``float`` or a numpy number, not ``bool``. A wrong type raises
    :class:`NumberTypeError`; NaN, an infinity or a value out of the interval
    :class:`~flowkit.FlowkitValueError`. ``expected`` words the requirement for a wrong value, as in
    :func:`check_int`.

    Example:
        >>> check_float("eps", 1e-3, above=0)
        0.001
        >>> check_float("momentum", 0, above=0, most=1)
        Traceback (most recent call last):
        ...
        flowkit.errors.FlowkitValueError: expected momentum to be a number in (0, 1], got 0.0
        >>> check_float("bound", "3", above=0)
        Traceback (most recent call last):
        ...
        flowkit.validation.NumberTypeError: expected bound to be a finite number > 0, got str '3'
    """
    low = (above, "(", ">") if above is not None else (least, "[", ">=") if least is not None else None
    high = (below, ")", "<") if below is not None else (most, "]", "<=") if most is not None else None
    if low and high:
        requirement = f"to be a number in {low[1]}{low[0]:g}, {high[0]:g}{high[1]}"
    elif low or high:
        bound, _, relation = low or high
        requirement = f"to be a finite number {relation} {bound:g}"
    else:
        requirement = "to be a finite number"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise NumberTypeError(f"expected {name} {requirement}, got {_describe(value)}")
    number = float(value)
    if not (
        math.isfinite(number)
        and (above is None or number > above) and (least is None or number >= least)
        and (below is None or number < below) and (most is None or number <= most)
    ):
        raise FlowkitValueError(f"expected {name} {expected or requirement}, got {number}")
    return number


def check_option(name: str, value: Any, options: Sequence[str | None]) -> Any:
    """Returns ``value`` when it is one of ``options`` (strings, and ``None`` where it is allowed);
    otherwise raises :class:`~flowkit.FlowkitValueError` listing them.

    Example:
        >>> check_option("permutation", "sideways", ("reverse", "random", None))
        Traceback (most recent call last):
        ...
        flowkit.errors.FlowkitValueError: expected permutation 'reverse', 'random' or None, got 'sideways'
    """
    if (value is None and None in options) or (isinstance(value, str) and value in options):
        return value
    names = [repr(option) for option in options]
    listed = names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"
    raise FlowkitValueError(f"expected {name} {listed}, got {_short_repr(value)}")


def check_permutation(name: str, value: Any, size: int | None = None) -> Tensor:
    """Returns ``value`` (a sequence, array or tensor of integers) as a long CPU tensor when it is a
    permutation of ``0..size-1``; of ``0..n-1``, ``n >= 1`` its length, when ``size`` is ``None``.

    Example:
        >>> check_permutation("order", [2, 0, 1]).tolist()
        [2, 0, 1]
        >>> check_permutation("order", [0, 0, 1], 3)
        Traceback (most recent call last):
        ...
        flowkit.errors.FlowkitValueError: expected order to be a permutation of 0..2, got [0, 0, 1]
    """
    try:
        explicit = torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError):
        raise FlowkitTypeError(f"expected {name} to be a permutation of integers, got {_describe(value)}") from None
    if size is None:
        size = explicit.numel() if explicit.dim() == 1 and explicit.numel() else None
    span = "0..D-1 (D >= 1)" if size is None else f"0..{size - 1}"
    if size is None or explicit.dim() != 1 or explicit.numel() != size:
        raise FlowkitValueError(f"expected {name} to be a permutation of {span}, got shape {tuple(explicit.shape)}")
    if explicit.dtype.is_floating_point or explicit.dtype.is_complex or explicit.dtype == torch.bool:
        raise FlowkitTypeError(f"expected {name} to be a permutation of integers, got dtype {explicit.dtype}")
    explicit = explicit.long().cpu()
    if not torch.equal(explicit.sort().values, torch.arange(size)):
        raise FlowkitValueError(f"expected {name} to be a permutation of {span}, got {_short_repr(explicit.tolist())}")
    return explicit


def mask_keys(keys: Any) -> list[int]:
    """The list of mask keys that ``keys`` names: a count ``R`` (the keys ``0..R-1``) or a non-empty
    sequence of keys, each an integer ``>= 0`` (see :meth:`flowkit.MADE.draw_masks`).

    Example:
        >>> mask_keys(3), mask_keys([7, 2])
        ([0, 1, 2], [7, 2])
        >>> mask_keys([1, -1])
        Traceback (most recent call last):
        ...
        flowkit.errors.FlowkitValueError: expected every mask key >= 0, got -1
    """
    wanted = "to be a number of keys >= 1 or a non-empty sequence of keys"
    if _index(keys) is not None:
        return list(range(check_int("keys", keys, least=1, expected=wanted)))
    if isinstance(keys, Tensor) or (hasattr(keys, "tolist") and hasattr(keys, "ndim")):  # tensors, arrays
        keys = keys.tolist() if keys.ndim == 1 else keys
    if isinstance(keys, (str, bytes, Tensor)) or not isinstance(keys, Sequence):
        raise NumberTypeError(f"expected keys {wanted}, got {_describe(keys)}")
    if len(keys) == 0:
        raise FlowkitValueError(f"expected keys {wanted}, got {_short_repr(keys)}")
    return [check_int("every mask key", key, least=0, expected=">= 0") for key in keys]


def _index(value: Any) -> int | None:
    """``value`` as an int when it is an integer (not a bool, not a tensor of one element or more
    dimensions), else ``None``."""
    if type(value) is int:
        return value
    if isinstance(value, bool) or (isinstance(value, Tensor) and (value.dim() > 0 or value.dtype == torch.bool)):
        return None
    try:
        return operator.index(value)
    except TypeError:
        return None


def _describe(value: Any) -> str:
    """What came, for a message: its type and value (``float 2.5``, ``str '3'``), or a tensor's dtype
    and shape."""
    if isinstance(value, Tensor):
        return f"a tensor of dtype {value.dtype} and shape {tuple(value.shape)}"
    return f"{type(value).__name__} {_short_repr(value)}"


def _short_repr(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
