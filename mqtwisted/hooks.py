"""The names of every hook a plugin may define, in one place.

A plugin is a module whose functions carry these names (MailerQ's C API, in Python).  The server's
transition table, cleanup, the delivery client and the plugin runner all name hooks through these
constants, so a misspelt hook is an ``AttributeError`` at import time, not a hook that never runs.
See docs/architecture.rst for where each one is called.
"""

from __future__ import annotations

#: ``mq_version()`` must return ``api.MQ_API_VERSION``; checked when the plugin loads.
VERSION = "mq_version"

# Life cycle: called once per plugin (initialize, cleanup) or once per context thread.
INITIALIZE = "mq_initialize"
CLEANUP = "mq_cleanup"
CONTEXT_INITIALIZE = "mq_context_initialize"
CONTEXT_CLEANUP = "mq_context_cleanup"

# Inbound connection hooks, in the order a complete session meets them.
IN_CONNECT = "mq_smtp_in_connect"
IN_SECURE = "mq_smtp_in_secure"
IN_AUTHENTICATE = "mq_smtp_in_authenticate"
IN_MAILFROM = "mq_smtp_in_mailfrom"
IN_RCPTTO = "mq_smtp_in_rcptto"
IN_DATA = "mq_smtp_in_data"
IN_MESSAGE = "mq_smtp_in_message"
IN_CLOSE = "mq_smtp_in_close"

# Outbound connection hooks: before DATA is sent, and after the server's answer to it.
OUT_DATA = "mq_smtp_out_data"
OUT_SENT = "mq_smtp_out_sent"

#: Every inbound hook, in the order a complete session meets them.
IN_HOOKS: tuple[str, ...] = (
    IN_CONNECT, IN_SECURE, IN_AUTHENTICATE, IN_MAILFROM, IN_RCPTTO, IN_DATA, IN_MESSAGE, IN_CLOSE,
)

#: Every outbound hook, in the order one delivery attempt meets them.
OUT_HOOKS: tuple[str, ...] = (OUT_DATA, OUT_SENT)

#: Hooks that run with a connection and may take control (the plugin runner schedules these).
CONNECTION_HOOKS: tuple[str, ...] = IN_HOOKS + OUT_HOOKS

#: Hooks called without a connection, once per plugin or per context thread.
LIFE_CYCLE_HOOKS: tuple[str, ...] = (INITIALIZE, CONTEXT_INITIALIZE, CONTEXT_CLEANUP, CLEANUP)

#: Every hook name, the version check first.
ALL_HOOKS: tuple[str, ...] = (VERSION,) + LIFE_CYCLE_HOOKS + CONNECTION_HOOKS
