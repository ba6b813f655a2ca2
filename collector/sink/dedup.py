"""A bounded window of recently seen content keys, in front of the database's unique key."""

from __future__ import annotations

from collections import deque
from typing import Any


class RecentKeys:
    """A bounded window of recently seen content keys: saves round trips for obvious repeats.

    The guarantee is the database's unique key; this only filters what it can cheaply. The
    oldest key leaves first (first in, first out; a repeat does not refresh its key). A set and
    a deque of the same keys: about 50 bytes an entry besides the keys themselves (which the
    rows hold anyway while queued), against about 105 for an OrderedDict.
    """

    def __init__(self, size: int) -> None:
        self._size = size
        self._keys: set[Any] = set()
        self._order: deque[Any] = deque()

    def __len__(self) -> int:
        return len(self._order)

    def seen(self, key: Any) -> bool:
        """Return True if `key` is in the window; otherwise remember it and return False."""
        keys = self._keys
        if key in keys:
            return True
        if self._size <= 0:
            return False
        keys.add(key)
        order = self._order
        order.append(key)
        if len(order) > self._size:
            keys.discard(order.popleft())
        return False
