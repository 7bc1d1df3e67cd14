r"""The one error type for the user's mistakes.

Everything flowkit refuses because of what it was asked to do (a tensor of the wrong shape, a NaN,
a value outside a model's support, a missing context, a bad option, a damaged or foreign file, a
run directory that does not match) raises a :class:`FlowkitError`. The concrete classes also derive
from the built-in exception a Python user expects (``ValueError`` for a wrong value, ``TypeError``
for a wrong type), so ``except ValueError`` keeps working. Any other exception escaping flowkit is a
bug: the ``flowkit`` command turns a :class:`FlowkitError` into one ``flowkit: error:`` line and exit
status 2, and lets anything else show its traceback.

Example:
    >>> import torch
    >>> try:
    ...     flowkit.BernoulliMADE(3, [8]).log_prob(torch.ones(2, 4))
    ... except FlowkitError as error:
    ...     print(error)
    expected x of shape (*, 3), got (2, 4)
    >>> issubclass(FlowkitValueError, ValueError) and issubclass(FlowkitValueError, FlowkitError)
    True
"""

from __future__ import annotations

__all__ = ["FlowkitError", "FlowkitValueError", "FlowkitTypeError", "FileProblem"]


class FlowkitError(Exception):
    """A mistake in what flowkit was asked to do; the message names it (what was expected, what came)."""


class FlowkitValueError(FlowkitError, ValueError):
    """A value flowkit cannot take: a wrong shape, a NaN, a value outside the support, a bad option."""


class FlowkitTypeError(FlowkitError, TypeError):
    """An argument of the wrong type (a list where a tensor is expected, a float where a count is)."""


class FileProblem(FlowkitValueError):
    """A file that is missing, damaged or not what it should be; the message names the file, what is
    wrong with it and what to do."""
