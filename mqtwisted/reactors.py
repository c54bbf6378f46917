"""The reactor an object was given, else the global one, looked up on first use.

Looked up late, not at import or construction: importing must not install a reactor (twistd
chooses it), and an object that pickles into a TAP file must not hold one.
"""

from __future__ import annotations

from typing import Any


class LazyReactor:
    """A descriptor for ``reactor``: the instance's ``_reactor`` if set, else the global reactor."""

    def __get__(self, obj: Any, owner: type | None = None) -> Any:
        if obj is None:
            return self
        reactor = obj.__dict__.get("_reactor")
        if reactor is None:
            from twisted.internet import reactor

            # Cached in the instance's own slot, where classes that take a reactor keep it.
            obj.__dict__["_reactor"] = reactor
        return reactor
