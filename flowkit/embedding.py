r"""The embedding slot of conditional models: a module applied to the raw context once, before any
part of the model sees it, and trained with the model (a summary network of simulation-based
inference). :class:`flowkit.Flow` and :class:`flowkit.AutoregressiveDensity` share these rules.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from flowkit.errors import FlowkitTypeError, FlowkitValueError
from flowkit.validation import check_int

__all__ = ["context_widths", "embed", "embedded_width"]


def context_widths(embedding: nn.Module | None, inferred: int, context_features: int | None,
                   model: str = "model") -> tuple[int, int]:
    r"""The raw and the embedded context widths of a model whose parts take a context of width
    ``inferred`` (0: unconditional); ``model`` names the model in messages.

    Without an embedding, ``context_features`` defaults to ``inferred`` and must equal it. With one,
    the parts must be conditional and ``context_features`` (the width of the raw context the
    embedding takes) is required.

    Returns:
        ``(context_features, embedded_features)``.

    Example:
        >>> context_widths(torch.nn.Linear(10, 4), 4, 10), context_widths(None, 3, None)
        ((10, 4), (3, 3))
    """
    if embedding is None:
        context_features = inferred if context_features is None else context_features
        return check_int("context_features", context_features, least=0), inferred
    if not isinstance(embedding, nn.Module):
        raise FlowkitTypeError(f"expected embedding to be a torch module, got {type(embedding).__name__}")
    if not inferred:
        raise FlowkitValueError(f"an embedding needs a conditional {model}, "
                                f"but no part of this {model} takes a context")
    if context_features is None:
        raise FlowkitValueError("with an embedding, give context_features: the width of the raw context the "
                                f"embedding takes (its output is the parts' width, {inferred})")
    return check_int("context_features", context_features, least=1), inferred


def embed(embedding: nn.Module | None, context: Tensor | None, embedded_features: int) -> Tensor | None:
    """The context as the model's parts see it: ``embedding(context)``, checked to be
    ``(*batch, embedded_features)``; the context itself without an embedding."""
    if embedding is None or context is None:
        return context
    embedded = embedding(context)
    expected = (*context.shape[:-1], embedded_features)
    if not isinstance(embedded, Tensor) or tuple(embedded.shape) != expected:
        got = tuple(embedded.shape) if isinstance(embedded, Tensor) else type(embedded).__name__
        raise FlowkitValueError(f"expected the embedding to map the context {tuple(context.shape)} to {expected}, "
                                f"got {got}")
    return embedded


def embedded_width(embedding: nn.Module, context_features: int) -> int:
    """The output width of ``embedding`` on a raw context of width ``context_features``, found by
    running it once, without gradients and in eval mode (its mode is restored), on two zero rows.

    Example:
        >>> embedded_width(torch.nn.Sequential(torch.nn.Linear(10, 4), torch.nn.Tanh()), 10)
        4
    """
    if not isinstance(embedding, nn.Module):
        raise FlowkitTypeError(f"expected embedding to be a torch module, got {type(embedding).__name__}")
    context_features = check_int("context_features", context_features, least=1)
    weight = next(embedding.parameters(), None)
    probe = torch.zeros(2, context_features, dtype=torch.get_default_dtype() if weight is None else weight.dtype,
                        device=None if weight is None else weight.device)
    training = embedding.training
    embedding.eval()
    try:
        with torch.no_grad():
            out = embedding(probe)
    except Exception as error:
        raise FlowkitValueError(f"the embedding failed on a context of width {context_features} "
                                f"(context_features): {error}") from error
    finally:
        embedding.train(training)
    if not isinstance(out, Tensor) or out.dim() != 2 or out.shape[0] != 2 or out.shape[1] < 1:
        got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise FlowkitValueError(f"expected the embedding to map a context (N, {context_features}) to (N, C), got "
                                f"{got} for N = 2")
    return int(out.shape[1])
