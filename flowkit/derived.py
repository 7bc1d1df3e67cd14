r"""Values a module derives from its own tensors, kept between calls: the one cache mechanism.

A masked weight :math:`W \odot M` in eval mode, a mask as floats, the engine's sampling plan of a
mask set, the dense matrix of an LU layer: each is a function of some of its owner's tensors, worth
keeping while they do not change. A :class:`Derived` keeps such values, one per *slot* (a name and
whatever else tells two values apart, such as a mask-set index), each with the tensors it was
computed from. An entry is reused while each of those tensors is the same object with the same
version counter (in-place edits by optimisers and ``load_state_dict`` bump it) and the *context*
(dtype, device, inference mode) is the same; otherwise it is computed again. Its owner drops every
entry when its mode changes (``train()``/``eval()``), and a :class:`Derived` is never pickled:
``torch.save`` of the whole module and ``copy.deepcopy`` carry an empty one.

Edits through ``.data`` bypass the version counter; after one, call ``eval()`` (or ``train()``)
again to drop what is kept.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from typing import Any, TypeVar

from torch import Tensor

__all__ = ["Derived"]

T = TypeVar("T")


class Derived:
    """Derived values kept per slot, valid while their source tensors are unchanged.

    Example:
        >>> import torch
        >>> weight, built = torch.ones(2), []
        >>> kept = Derived()
        >>> double = lambda: built.append(1) or weight * 2
        >>> _ = kept.get("double", (weight,), double); _ = kept.get("double", (weight,), double)
        >>> len(built)
        1
        >>> _ = weight.add_(1)  # an in-place edit: computed again
        >>> kept.get("double", (weight,), double).tolist(), len(built)
        ([4.0, 4.0], 2)
    """

    def __init__(self) -> None:
        self._entries: dict[Hashable, tuple[tuple[Tensor, ...], tuple[int, ...], Hashable, Any]] = {}

    def get(self, slot: Hashable, sources: Sequence[Tensor], build: Callable[[], T], context: Hashable = ()) -> T:
        """The value in ``slot`` if it was computed from ``sources`` as they are now and in
        ``context``; else ``build()``, kept in ``slot``."""
        entry = self._entries.get(slot)
        if entry is not None and entry[2] == context and len(entry[0]) == len(sources):
            # a plain loop, not all(generator): this runs for every masked layer of every call
            for kept, tensor, version in zip(entry[0], sources, entry[1]):
                if kept is not tensor or tensor._version != version:
                    break
            else:
                return entry[3]
        sources = tuple(sources)
        versions = tuple(tensor._version for tensor in sources)
        value = build()
        self._entries[slot] = (sources, versions, context, value)
        return value

    def drop(self, slot: Hashable | None = None) -> None:
        """Forgets the value in ``slot``, or every value."""
        if slot is None:
            self._entries.clear()
        else:
            self._entries.pop(slot, None)

    def __len__(self) -> int:
        return len(self._entries)

    def __reduce__(self):
        return (Derived, ())  # what is kept is derived: it is never pickled or copied
