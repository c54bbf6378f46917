"""Opaque handles: the ``MQ_Connection *`` and friends C plugins hold are small integers, never
addresses of Python objects, so a stale or forged handle finds nothing instead of crashing.
"""

from __future__ import annotations

import itertools
import weakref
from typing import Any

from mqtwisted.cplugins.native import ffi

_numbers = itertools.count(1)


class Handles:
    """Objects of one kind and the pointers C sees for them; an object's handle lives as long as
    the object (weak references both ways)."""

    def __init__(self, ctype: str) -> None:
        self.ctype = ctype
        self._pointers: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()
        self._objects: weakref.WeakValueDictionary[int, Any] = weakref.WeakValueDictionary()

    def pointer(self, obj: Any) -> Any:
        """The handle of ``obj`` (made on first use), as a ``ctype`` cdata."""
        p = self._pointers.get(obj)
        if p is None:
            n = next(_numbers)
            self._objects[n] = obj
            p = self._pointers[obj] = ffi.cast(self.ctype, n)
        return p

    def number(self, obj: Any) -> int:
        """The handle of ``obj`` as the integer the shim passes around."""
        return int(ffi.cast("uintptr_t", self.pointer(obj)))

    def get(self, number: int) -> Any:
        """The object behind a handle, or None when it is unknown or gone."""
        return self._objects.get(number)
