"""The replies the MTA itself gives when something local goes wrong, written once.

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
