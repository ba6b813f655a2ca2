"""A bounded window of recently seen content keys, in front of the database's unique key."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any


class RecentKeys:
    """A bounded window of recently seen content keys: saves round trips for obvious repeats.

    The guarantee is the database's unique key; this only filters what it can cheaply.
    """

    def __init__(self, size: int) -> None:
        self._size = size
        self._keys: OrderedDict[Any, None] = OrderedDict()

    def seen(self, key: Any) -> bool:
        """Return True if `key` is in the window; otherwise remember it and return False."""
        if key in self._keys:
            return True
        self._keys[key] = None
        if len(self._keys) > self._size:
            self._keys.popitem(last=False)
        return False
