"""The ``MQ_*`` functions for C plugins: cffi callbacks the shim forwards to, each translating
handles and C strings and calling the same :mod:`mqtwisted.api` function a Python plugin calls.
So per-plugin data, control passing, timers and logging are the Python plugins' machinery.

Memory rules (documented for plugin authors in docs/plugins.rst): strings returned to C
(``MQ_recipient``, ``MQ_mime``, ``MQ_email``) stay valid while their message or address does and
until the next call of the same function on it; an ``MQ_Address`` lives for its SMTP transaction;
``MQ_json``'s object until the hook hands control back, when the plugin's edits are written to
the message.
"""

from __future__ import annotations

import json
import weakref
from typing import Any

from twisted.logger import Logger

from mqtwisted import api
from mqtwisted.contexts import current_plugin
from mqtwisted.cplugins import native
from mqtwisted.cplugins.handles import Handles, numbers
from mqtwisted.cplugins.native import ffi
from mqtwisted.jsonvalues import dump_mime

log = Logger()

contexts = Handles("MQ_Context *")
connections = Handles("MQ_Connection *")
messages = Handles("MQ_Message *")
timers = Handles("MQ_Timer *")
watchers = Handles("MQ_IOWatcher *")

CONTROL = (api.MQ_continue, api.MQ_complete, api.MQ_retry)
#: MailerQ's MQ_log priorities (MQ_CRIT 1, MQ_WARN 2, MQ_INFO 3) as mqtwisted.api's
PRIORITIES = {1: api.MQ_CRIT, 2: api.MQ_WARN, 3: api.MQ_INFO}
_DOCUMENT_KEYS = ("envelope", "recipient", "mime")


class Address:
    """An ``MQ_Address``: the text of MAIL FROM / RCPT TO, or a message's envelope."""

    __slots__ = ("text", "email")

    def __init__(self, text: str | None) -> None:
        self.text = text
        self.email: Any = None


class MessageState:
    """A message as C sees it: the strings handed out, and the ``MQ_json`` tree while open."""

    __slots__ = ("document", "conn_id", "strings", "envelope", "tree", "baseline")

    def __init__(self, document: dict[str, Any]) -> None:
        # No reference to the message or its connection: this state must not keep them alive.
        self.document = document
        self.conn_id = 0
        self.strings: dict[int, Any] = {}
        self.envelope = 0
        self.tree: Any = ffi.NULL
        self.baseline: dict[str, Any] = {}


# Plain dicts, cleaned up by weakref.finalize as their connection or message dies: these are
# touched on every hook call, where a WeakKeyDictionary costs several times as much.
#: handle number -> Address; an address is dropped with its transaction, connection or message
_addresses: dict[int, Address] = {}
#: connection id -> the handle numbers of its transaction's addresses
_transactions: dict[int, list[int]] = {}
#: id(message) -> its state
_message_states: dict[int, MessageState] = {}
#: connection id -> messages whose MQ_json tree is open
_trees: dict[int, list[MessageState]] = {}


def _new_address(text: str | None) -> int:
    n = next(numbers)
    _addresses[n] = Address(text)
    return n


def _drop_addresses(numbers_: list[int]) -> None:
    for n in numbers_:
        _addresses.pop(n, None)


def _connection_gone(conn_id: int) -> None:
    _drop_addresses(_transactions.pop(conn_id, []))
    _trees.pop(conn_id, None)


def _message_gone(key: int) -> None:
    m = _message_states.pop(key, None)
    if m is not None and m.envelope:
        _addresses.pop(m.envelope, None)


def message_state(message: Any, conn: Any = None) -> MessageState:
    state = _message_states.get(id(message))
    if state is None:
        state = _message_states[id(message)] = MessageState(message.document)
        weakref.finalize(message, _message_gone, id(message))
    if conn is not None:
        state.conn_id = conn.id
    return state


def address(conn: Any, text: str, new_transaction: bool = False) -> Any:
    """The ``MQ_Address *`` for a MAIL FROM (``new_transaction``) or RCPT TO argument."""
    held = _transactions.get(conn.id)
    if held is None:
        held = _transactions[conn.id] = []
        weakref.finalize(conn, _connection_gone, conn.id)
    elif new_transaction:
        _drop_addresses(held)
        held.clear()
    n = _new_address(text)
    held.append(n)
    return ffi.cast("MQ_Address *", n)


def handed_back(conn: Any) -> None:
    """Control returns to mqmta for ``conn``: write the open JSON trees back to their messages."""
    if _trees:
        for m in _trees.pop(conn.id, ()):
            _close_tree(m)


# -- JSON --------------------------------------------------------------------------------------


def _plain(value: Any) -> Any:
    if isinstance(value, bytes):
        return dump_mime(value)
    raise TypeError(f"{type(value).__name__} is not JSON")


def _tree_to_python(fj: Any, tree: Any) -> Any:
    return json.loads(ffi.string(fj.fjson_object_to_json_string_ext(tree, 0)).decode("utf-8", "surrogateescape"))


def _open_tree(m: MessageState) -> Any:
    fj = native.fjson()
    tree = fj.fjson_tokener_parse(json.dumps(m.document, default=_plain).encode())
    if tree == ffi.NULL:
        api.MQ_log(api.MQ_CRIT, "MQ_json: libfastjson could not parse the message's JSON")
        return ffi.NULL
    # What the plugin's edits are measured against: the document as libfastjson renders it, so
    # that only what the plugin changed is written back (the mime above all stays untouched).
    m.baseline = _tree_to_python(fj, tree)
    m.tree = tree
    if m.conn_id:
        _trees.setdefault(m.conn_id, []).append(m)
    return tree


def _close_tree(m: MessageState) -> None:
    tree, m.tree = m.tree, ffi.NULL
    if tree == ffi.NULL:
        return
    fj = native.fjson()
    try:
        edited = _tree_to_python(fj, tree)
    finally:
        fj.fjson_object_put(tree)
    document, baseline = m.document, m.baseline
    m.baseline = {}
    if not isinstance(edited, dict):
        api.MQ_log(api.MQ_CRIT, "MQ_json: the object was replaced by a non-object; edits ignored")
        return
    for key, value in edited.items():
        if key not in baseline or baseline[key] != value:
            document[key] = value
    for key in baseline.keys() - edited.keys():
        document.pop(key, None)


# -- the callbacks ------------------------------------------------------------------------------


def _failed(exc_type: Any, exc: Any, tb: Any) -> None:
    # A callback must not raise into C: log (as the calling plugin) and return the default.
    from twisted.python.failure import Failure

    log.failure(
        "plugin {plugin}: an MQ_* call failed", Failure(exc, exc_type, tb), plugin=current_plugin.get() or "?"
    )


def _control(conn_n: int, kind: int) -> None:
    conn = connections.get(conn_n)
    if conn is None:
        api.MQ_log(api.MQ_WARN, f"MQ_continue/complete/retry with unknown connection handle {conn_n}")
        return
    handed_back(conn)
    CONTROL[kind](conn)


def _file_descriptor(conn_n: int) -> int:
    conn = connections.get(conn_n)
    return -1 if conn is None else api.MQ_fileDescriptor(conn)


def _send(conn_n: int, buffer: Any, size: int) -> int:
    conn = connections.get(conn_n)
    if conn is None or conn.transport is None:
        return 0
    api.MQ_send(conn, ffi.buffer(ffi.cast("const char *", buffer), size)[:])
    return size


def _flag(n: int, which: int) -> bool:
    if which == 2:
        message = messages.get(n)
        return message is not None and api.MQ_local(message)
    conn = connections.get(n)
    if conn is None:
        return False
    return api.MQ_authenticated(conn) if which == 0 else api.MQ_secure(conn)


def _set_flag(n: int, which: int, value: bool) -> None:
    if which == 2:
        message = messages.get(n)
        if message is not None:
            api.MQ_setLocal(message, value)
            _sync_tree(message, "local")
        return
    conn = connections.get(n)
    if conn is not None:
        api.MQ_setAuthenticated(conn, value)


def _data(n: int, which: int) -> Any:
    owner = connections.get(n) if which == 0 else contexts.get(n)
    if owner is None:
        return ffi.NULL
    value = api.MQ_connectionData(owner) if which == 0 else api.MQ_contextData(owner)
    return ffi.NULL if value is None else ffi.cast("void *", value)


def _set_data(n: int, which: int, data: Any) -> None:
    owner = connections.get(n) if which == 0 else contexts.get(n)
    if owner is None:
        return
    value = int(ffi.cast("uintptr_t", data)) or None
    if which == 0:
        api.MQ_setConnectionData(owner, value)
    else:
        api.MQ_setContextData(owner, value)


def _text(p: Any) -> str:
    return ffi.string(p).decode("utf-8", "replace")


def _set_response(conn_n: int, code: int, text: Any, enhanced: Any) -> None:
    conn = connections.get(conn_n)
    if conn is None:
        return
    api.MQ_setResponse(
        conn, code, _text(text) if text != ffi.NULL else "", _text(enhanced) if enhanced != ffi.NULL else None
    )


def _start_timer(ctx_n: int, timeout: float, callback: Any, data: Any) -> int:
    ctx = contexts.get(ctx_n)
    if ctx is None:
        return 0
    # The Timer object lives while armed (the reactor holds it): after it fired or was stopped
    # its handle finds nothing, which is MailerQ's rule (neither is legal afterwards).
    return timers.number(api.MQ_startTimer(ctx, timeout, callback, data))


def _timer(timer_n: int, op: int, timeout: float) -> None:
    timer = timers.get(timer_n)
    if timer is None or timer.fired:  # a fired timer may live on a moment (the reactor's frame)
        api.MQ_log(api.MQ_WARN, "MQ_stopTimer/MQ_resetTimer on a timer that fired or was stopped")
        return
    if op == 0:
        api.MQ_stopTimer(timer)
    else:
        api.MQ_resetTimer(timer, timeout)


def _io_watch(ctx_n: int, fd: int, events: int, callback: Any, data: Any) -> int:
    ctx = contexts.get(ctx_n)
    if ctx is None:
        return 0
    holder: list[Any] = []

    def ready(fd: int, event: int) -> None:
        callback(holder[0], fd, event, data)

    watcher = api.MQ_ioWatch(ctx, fd, events, ready)
    holder.append(watchers.pointer(watcher))
    return int(ffi.cast("uintptr_t", holder[0]))


def _io_unwatch(watcher_n: int) -> None:
    watcher = watchers.get(watcher_n)
    if watcher is not None:
        api.MQ_ioUnwatch(watcher)


def _json(message_n: int) -> Any:
    message = messages.get(message_n)
    if message is None:
        return ffi.NULL
    m = message_state(message)
    return m.tree if m.tree != ffi.NULL else _open_tree(m)


def _envelope(message_n: int) -> int:
    message = messages.get(message_n)
    if message is None:
        return 0
    text = api.MQ_envelope(message)
    m = message_state(message)
    kept = _addresses.get(m.envelope)
    if kept is None or kept.text != text:
        _addresses.pop(m.envelope, None)
        m.envelope = _new_address(text)
    return m.envelope


def _string(n: int, which: int) -> Any:
    if which == 3:
        a = _addresses.get(n)
        if a is None or not a.text:
            return ffi.NULL  # MailerQ: NULL for the null sender
        if a.email is None:
            a.email = ffi.new("char[]", api.MQ_email(a.text).encode("utf-8", "surrogateescape"))
        return a.email
    message = messages.get(n)
    if message is None:
        return ffi.NULL
    value: Any = api.MQ_recipient(message) if which == 1 else api.MQ_mime(message)
    if value is None:
        return ffi.NULL
    if isinstance(value, str):
        value = value.encode("utf-8", "surrogateescape")
    m = message_state(message)
    kept = m.strings.get(which)
    if kept is None or kept[0] != value:
        kept = m.strings[which] = (value, ffi.new("char[]", value))
    return kept[1]


def _set_string(message_n: int, which: int, value: Any, size: int) -> None:
    message = messages.get(message_n)
    if message is None:
        return
    raw = ffi.buffer(value, size)[:]
    if which == 2:
        api.MQ_setMime(message, raw)
    else:
        text = raw.decode("utf-8", "surrogateescape")
        (api.MQ_setEnvelope if which == 0 else api.MQ_setRecipient)(message, text)
    _sync_tree(message, _DOCUMENT_KEYS[which])


def _sync_tree(message: Any, key: str) -> None:
    """A setter changed ``key`` while the plugin holds MQ_json's tree: mirror it there (and in the
    baseline), so the plugin reads what it set and the hand-back does not undo it."""
    m = _message_states.get(id(message))
    if m is None or m.tree == ffi.NULL or message.outgoing:
        return
    fj = native.fjson()
    child = fj.fjson_tokener_parse(json.dumps(message.document.get(key), default=_plain).encode())
    if child != ffi.NULL:
        m.baseline[key] = _tree_to_python(fj, child)  # as libfastjson renders it, like the rest
        fj.fjson_object_object_add(m.tree, key.encode(), child)


def _log(priority: int, message: Any) -> None:
    text = _text(message) if message != ffi.NULL else ""
    level = PRIORITIES.get(priority)
    if level is None:
        level, text = api.MQ_INFO, "(invalid priority) " + text
    api.MQ_log(level, text)


_TABLE = {
    "control": _control,
    "file_descriptor": _file_descriptor,
    "send": _send,
    "flag": _flag,
    "set_flag": _set_flag,
    "data": _data,
    "set_data": _set_data,
    "set_response": _set_response,
    "start_timer": _start_timer,
    "timer": _timer,
    "io_watch": _io_watch,
    "io_unwatch": _io_unwatch,
    "json": _json,
    "envelope": _envelope,
    "string": _string,
    "set_string": _set_string,
    "log": _log,
}
_installed: list[Any] = []


def install() -> Any:
    """Build and load the shim (once per process) and point its table at these callbacks."""
    lib = native.shim()
    if not _installed:
        table = ffi.new("struct mq_shim *")
        for name, fn in _TABLE.items():
            ctype = ffi.typeof(getattr(table, name))
            cb = ffi.callback(ctype, fn, onerror=_failed)
            _installed.append(cb)  # a callback lives as long as its cdata
            setattr(table, name, cb)
        lib.mq_shim_install(table)
        _installed.append(table)
    return lib
