"""The replies the MTA itself gives when something local goes wrong, written once, and how a
reply is put on the wire.

Policy and protocol replies that belong to one rule (a syntax error, a bad sequence) stay beside
that rule; these are the ones several layers give for the same cause.
"""

from __future__ import annotations

from mqtwisted.connection import Reply

#: A plugin raised, or building the queued document failed.
LOCAL_ERROR = Reply(451, "Local error in processing", "4.3.0")

#: A plugin held control longer than ``plugin-timeout``.
PLUGIN_TIMEOUT = Reply(451, "Plugin did not answer in time, try again later", "4.4.7")

#: A hook was asked for while its plugins were being stopped.
PLUGINS_STOPPING = Reply(421, "Service shutting down", "4.3.2")

#: An open session is closed because the MTA is shutting down.
SHUTTING_DOWN = Reply(421, "Service shutting down, try again later", "4.3.2")

#: The queue did not accept the message.
QUEUE_UNAVAILABLE = Reply(451, "Queue unavailable, try again later", "4.3.0")

#: An outbound hook (``mq_smtp_out_*``) failed: the attempt is deferred, not bounced.
PLUGIN_FAILURE = Reply(451, "plugin failure", "4.3.0")


def reply_bytes(code: int, lines: list[str], enhanced: str | None = None) -> bytes:
    """A (multi-line) SMTP reply as sent: ``250-first``, ..., ``250 last``, each line with the
    enhanced status code when there is one (RFC 2034 §4)."""
    prefix = f"{enhanced} " if enhanced else ""
    # A line break inside a text (a milter's multi-line reply, a plugin's text) makes more lines,
    # never a bare line end on the wire.
    lines = [part for line in lines for part in (line.splitlines() or [""])]
    out = []
    for i, line in enumerate(lines):
        sep = " " if i == len(lines) - 1 else "-"
        out.append(f"{code}{sep}{prefix}{line}\r\n")
    return "".join(out).encode("utf-8", "replace")
