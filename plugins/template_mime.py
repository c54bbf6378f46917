"""Example plugin: build the outgoing MIME from a JSON template in ``mq_smtp_out_data``.

A message published to the outbox without ``mime`` (or with one to replace) carries::

    "template": {"from": "News <news@example.org>", "subject": "Hello {$firstname}",
                 "text": "Dear {$firstname}, ...", "html": "<p>Dear {$firstname}</p>",
                 "headers": {"List-Unsubscribe": "<mailto:u@example.org>"}},
    "data": {"firstname": "Ann"}

``{$name}`` is MailerQ's personalisation syntax, filled from ``data``.  The MIME is set with
``MQ_setMime``, so it changes only what is sent: the queued JSON keeps the template, and a retry
builds the message again.
"""

from __future__ import annotations

import re
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import formatdate, make_msgid
from typing import Any

from mqtwisted import api as mq

_VAR = re.compile(r"\{\$([A-Za-z0-9_.-]+)\}")


def mq_version() -> int:
    return mq.MQ_API_VERSION


def render(text: str, data: dict[str, Any]) -> str:
    """Replace ``{$name}`` with ``data[name]`` (empty when missing)."""
    return _VAR.sub(lambda m: str(data.get(m.group(1), "")), text)


def build_mime(template: dict[str, Any], data: dict[str, Any], recipient: str) -> bytes:
    msg = EmailMessage(policy=SMTP)
    msg["From"] = render(str(template.get("from", "")), data)
    msg["To"] = render(str(template.get("to", recipient)), data)
    msg["Subject"] = render(str(template.get("subject", "")), data)
    msg["Date"] = formatdate()
    msg["Message-ID"] = make_msgid()
    for name, value in dict(template.get("headers") or {}).items():
        msg[name] = render(str(value), data)
    text, html = template.get("text"), template.get("html")
    msg.set_content(render(str(text or ""), data))
    if html:
        msg.add_alternative(render(str(html), data), subtype="html")
    return msg.as_bytes()


def mq_smtp_out_data(ctx: Any, conn: Any, message: Any) -> bool:
    document = mq.MQ_json(message)
    template = document.get("template")
    if isinstance(template, dict):
        data = document.get("data") if isinstance(document.get("data"), dict) else {}
        mq.MQ_setMime(message, build_mime(template, data, mq.MQ_recipient(message)))
    return False  # go on: nothing asynchronous to wait for
