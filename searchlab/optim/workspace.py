"""Scratch buffers reused across optimizer steps.

On CPU, allocating a model-sized temporary every step costs more than the arithmetic
done in it (fresh pages from the OS, page faults on first touch: measured ~1.7 ms per
4 MB against ~0.1 ms for a foreach pass over it).  A compiled rule therefore takes its
temporaries from a :class:`Workspace` that the optimizer keeps between steps.  A buffer
is one flat tensor split into views shaped like the parameters (so random draws fill it
with one call); a step uses at most as many buffers as the rule has temporaries alive at
once (PowerSign: one).
"""

from __future__ import annotations

from typing import Container, Sequence

import torch
from torch import Tensor

__all__ = ["Workspace"]


class _Buffer:
    __slots__ = ("views", "flat")

    def __init__(self, views: list[Tensor], flat: Tensor | None) -> None:
        self.views = views
        self.flat = flat


def _new_buffer(like: Sequence[Tensor]) -> _Buffer:
    dtypes = {t.dtype for t in like}
    devices = {t.device for t in like}
    if len(dtypes) == 1 and len(devices) == 1:
        numels = [t.numel() for t in like]
        total = sum(numels)
        # an even length, so a float32 buffer can be viewed as int64 for random bits
        flat = torch.empty(total + total % 2, dtype=like[0].dtype, device=like[0].device)
        views = [part.view(t.shape) for part, t in zip(flat[:total].split(numels), like)]
        return _Buffer(views, flat)
    return _Buffer([torch.empty(t.shape, dtype=t.dtype, device=t.device) for t in like], None)


class Session:
    """The buffers of one step: ``take()`` a free one; ``give()`` it back, or let
    ``collect(live)`` return every taken buffer that no live value references."""

    __slots__ = ("_like", "_all", "_free", "_taken", "_by_id")

    def __init__(self, like: Sequence[Tensor], all_buffers: list[_Buffer],
                 by_id: dict[int, _Buffer]) -> None:
        self._like = like
        self._all = all_buffers
        self._free = list(all_buffers)
        self._taken: dict[int, _Buffer] = {}
        self._by_id = by_id

    def take(self) -> list[Tensor]:
        if self._free:
            buf = self._free.pop()
        else:
            buf = _new_buffer(self._like)
            self._all.append(buf)
            self._by_id[id(buf.views)] = buf
        self._taken[id(buf.views)] = buf
        return buf.views

    def give(self, views: list[Tensor]) -> None:
        buf = self._taken.pop(id(views), None)
        if buf is not None:
            self._free.append(buf)

    def collect(self, live: Container[int]) -> None:
        """Free every taken buffer whose ``id(views)`` is not in ``live`` (the ids of the
        tensor lists that live values still hold)."""
        for key in [k for k in self._taken if k not in live]:
            self._free.append(self._taken.pop(key))

    def owns(self, views: list[Tensor] | None) -> bool:
        return views is not None and id(views) in self._taken

    def flat(self, views: list[Tensor]) -> Tensor | None:
        """The flat tensor behind a buffer (None when the tensors mix dtypes/devices); it
        may be one element longer than the views (an even length)."""
        return self._by_id[id(views)].flat


class Workspace:
    """Reusable scratch buffers, keyed by the shapes/dtypes/devices of a tensor list.

    Not part of an optimizer's ``state_dict`` (contents never carry over between steps).
    """

    def __init__(self) -> None:
        self._buffers: dict[tuple, list[_Buffer]] = {}
        self._by_id: dict[int, _Buffer] = {}

    def session(self, like: Sequence[Tensor], tag: str = "") -> Session:
        """The buffers for tensors shaped like ``like``.  A ``tag`` gives a use of its own
        buffers, so that values held across another session's work (the negated
        gradients of ``maximize``, noise drawn ahead of a per-tensor loop) are never
        handed out to it as free."""
        key = (tag,) + tuple((t.shape, t.dtype, t.device) for t in like)
        return Session(like, self._buffers.setdefault(key, []), self._by_id)

    def nbytes(self) -> int:
        """Bytes held by the scratch buffers."""
        return sum(sum(t.numel() for t in b.views) * b.views[0].element_size()
                   for bufs in self._buffers.values() for b in bufs if b.views)

    def clear(self) -> None:
        self._buffers.clear()
        self._by_id.clear()
