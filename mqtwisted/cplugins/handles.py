"""Opaque handles: the ``MQ_Connection *`` and friends C plugins hold are small integers, never
addresses of Python objects, so a stale or forged handle finds nothing instead of crashing.
"""

from __future__ import annotations

import itertools
import weakref
from typing import Any

from mqtwisted.cplugins.native import ffi

#: handle numbers, unique across kinds and never reused (0 is NULL)
numbers = itertools.count(1)


class Handles:
    """Objects of one kind and the pointers C sees for them.  An object's handle lives as long as
    the object; looking it up again is one dict access (this runs on every hook call)."""

    def __init__(self, ctype: str) -> None:
        self.ctype = ctype
        self._pointers: dict[int, Any] = {}  # id(object) -> pointer
        self._objects: dict[int, weakref.ref[Any]] = {}  # number -> object

    def pointer(self, obj: Any) -> Any:
        """The handle of ``obj`` (made on first use), as a ``ctype`` cdata."""
        p = self._pointers.get(id(obj))
        return p if p is not None else self._register(obj)

    def _register(self, obj: Any) -> Any:
        n = next(numbers)
        key = id(obj)
        p = self._pointers[key] = ffi.cast(self.ctype, n)
        self._objects[n] = weakref.ref(obj)
        # Runs as the object dies, before its id() can be given to another object.
        weakref.finalize(obj, self._forget, key, n)
        return p

    def _forget(self, key: int, n: int) -> None:
        self._pointers.pop(key, None)
        self._objects.pop(n, None)

    def number(self, obj: Any) -> int:
        """The handle of ``obj`` as the integer the shim passes around."""
        return int(ffi.cast("uintptr_t", self.pointer(obj)))

    def get(self, number: int) -> Any:
        """The object behind a handle, or None when it is unknown or gone."""
        ref = self._objects.get(number)
        return None if ref is None else ref()
