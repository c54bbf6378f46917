"""C plugins: a ``*.so`` with MailerQ's hook signatures becomes a module of Python hooks, so the
plugin runner drives it exactly as it drives a Python plugin (same contexts, threads, control
passing, timeouts, fault handling).

Each hook is a plain function that calls the C hook through cffi (ABI mode: no compiler needed to
call it).  cffi releases the GIL for the call, so a C hook runs in its context thread in parallel
with the reactor, and the ``MQ_*`` functions it calls back take the GIL only for their own work.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from types import ModuleType
from typing import Any

from mqtwisted.cplugins import bridge
from mqtwisted.cplugins.native import HOOK_TYPES, NativeError, ffi

__all__ = ["NativeError", "load_c_plugin"]

#: What mqmta cannot offer, by the symbol a plugin would miss, and why (also in docs/plugins.rst).
UNSUPPORTED = {
    "MQ_ev": "mqmta runs on Twisted's reactor and has no libev loop; use MQ_ioWatch and "
    "MQ_startTimer, which run their callbacks in the context's thread",
}

_loaded: set[str] = set()


def _loadable(path: str) -> str:
    """``path``, or a private copy of it when this process has loaded that file before.

    dlopen hands back the library already loaded under a name, so a reload (SIGHUP) would keep
    the old code and share its globals with the old plugin set; a copy loads afresh.
    """
    real = os.path.realpath(path)
    if real not in _loaded:
        _loaded.add(real)
        return real
    fd, copy = tempfile.mkstemp(prefix="mqmta-plugin-", suffix=".so")
    os.close(fd)
    shutil.copyfile(real, copy)
    return copy


def load_c_plugin(path: str, module_name: str) -> ModuleType:
    """Load the shared object at ``path`` as a plugin module (hooks only for the symbols it has).

    Raises :class:`NativeError` when the ``MQ_*`` library cannot be built (no compiler) and
    OSError (with dlopen's reason) when the object cannot be loaded.
    """
    bridge.install()
    loadable = _loadable(path)
    try:
        lib = ffi.dlopen(loadable, ffi.RTLD_NOW)
    except OSError as e:
        hints = [why for symbol, why in UNSUPPORTED.items() if f"symbol: {symbol}" in str(e)]
        raise OSError(" ".join([str(e), *hints])) from e
    finally:
        if loadable != os.path.realpath(path):
            os.unlink(loadable)
    module = ModuleType(module_name, f"C plugin {path}")
    module.__file__ = path
    module.native_library = lib  # type: ignore[attr-defined]  # keeps the library loaded
    for hook, make in _WRAPPERS.items():
        try:
            fn = getattr(lib, hook)
        except AttributeError:
            continue
        setattr(module, hook, make(fn))
    return module


# -- hook wrappers: Python arguments in, handles out --------------------------------------------

_ctx = bridge.contexts.pointer
_conn = bridge.connections.pointer
_handed_back = bridge.handed_back


def _plain(fn: Any) -> Callable[..., Any]:
    def hook() -> Any:
        return fn()

    return hook


def _per_context(fn: Any) -> Callable[..., Any]:
    def hook(ctx: Any) -> None:
        fn(_ctx(ctx))

    return hook


def _connection(fn: Any) -> Callable[..., Any]:
    def hook(ctx: Any, conn: Any) -> bool:
        verdict = fn(_ctx(ctx), _conn(conn))
        if not verdict:
            _handed_back(conn)
        return verdict

    return hook


def _authenticate(fn: Any) -> Callable[..., Any]:
    def hook(ctx: Any, conn: Any, login: str, password: str) -> bool:
        user = login.encode("utf-8", "surrogateescape")
        secret = password.encode("utf-8", "surrogateescape")
        verdict = fn(_ctx(ctx), _conn(conn), user, len(user), secret, len(secret))
        if not verdict:
            _handed_back(conn)
        return verdict

    return hook


def _address(fn: Any, new_transaction: bool) -> Callable[..., Any]:
    def hook(ctx: Any, conn: Any, address: str) -> bool:
        verdict = fn(_ctx(ctx), _conn(conn), bridge.address(conn, address, new_transaction))
        if not verdict:
            _handed_back(conn)
        return verdict

    return hook


def _data(fn: Any) -> Callable[..., Any]:
    def hook(ctx: Any, conn: Any, mime: bytes) -> bool:
        verdict = fn(_ctx(ctx), _conn(conn), mime, len(mime))
        if not verdict:
            _handed_back(conn)
        return verdict

    return hook


def _message(fn: Any) -> Callable[..., Any]:
    message_pointer = bridge.messages.pointer
    message_state = bridge.message_state

    def hook(ctx: Any, conn: Any, message: Any) -> bool:
        message_state(message, conn)
        verdict = fn(_ctx(ctx), _conn(conn), message_pointer(message))
        if not verdict:
            _handed_back(conn)
        return verdict

    return hook


_WRAPPERS: dict[str, Callable[[Any], Callable[..., Any]]] = {
    "mq_version": _plain,
    "mq_initialize": _plain,
    "mq_cleanup": _plain,
    "mq_context_initialize": _per_context,
    "mq_context_cleanup": _per_context,
    "mq_smtp_in_connect": _connection,
    "mq_smtp_in_secure": _connection,
    "mq_smtp_in_authenticate": _authenticate,
    "mq_smtp_in_mailfrom": lambda fn: _address(fn, True),
    "mq_smtp_in_rcptto": lambda fn: _address(fn, False),
    "mq_smtp_in_data": _data,
    "mq_smtp_in_message": _message,
    "mq_smtp_in_close": _connection,
    "mq_smtp_out_data": _message,
    "mq_smtp_out_sent": _message,
}
assert _WRAPPERS.keys() == HOOK_TYPES.keys()
