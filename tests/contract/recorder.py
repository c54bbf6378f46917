"""The contract recorder in Python (tests/contract/recorder.c is the same plugin in C): one line
per hook in $MQ_TEST_RECORD, "hook context connection thread extra...", and a refusal at the hook
named by $MQ_TEST_REFUSE.  In mq_smtp_in_message it edits the JSON."""

import os

from mqtwisted import api as mq
from tests.contract.recording import record


def step(hook, ctx, conn, *extra):  # noqa: ANN001, ANN201
    record(hook, ctx, conn, *extra)
    if os.environ.get("MQ_TEST_REFUSE") == hook:
        mq.MQ_setResponse(conn, 550 if hook in ("mailfrom", "rcptto") else 554, f"refused at {hook}", "5.7.1")
    return False


def mq_version():  # noqa: ANN201
    return mq.MQ_API_VERSION


def mq_context_initialize(ctx):  # noqa: ANN001, ANN201
    record("context_initialize", ctx, None)


def mq_context_cleanup(ctx):  # noqa: ANN001, ANN201
    record("context_cleanup", ctx, None)


def mq_smtp_in_connect(ctx, conn):  # noqa: ANN001, ANN201
    return step("connect", ctx, conn)


def mq_smtp_in_secure(ctx, conn):  # noqa: ANN001, ANN201
    return step("secure", ctx, conn, int(mq.MQ_secure(conn)))


def mq_smtp_in_authenticate(ctx, conn, login, password):  # noqa: ANN001, ANN201
    return step("authenticate", ctx, conn, login, password)


def mq_smtp_in_mailfrom(ctx, conn, address):  # noqa: ANN001, ANN201
    return step("mailfrom", ctx, conn, mq.MQ_email(address) or "-", int(mq.MQ_authenticated(conn)))


def mq_smtp_in_rcptto(ctx, conn, address):  # noqa: ANN001, ANN201
    return step("rcptto", ctx, conn, mq.MQ_email(address))


def mq_smtp_in_data(ctx, conn, mime):  # noqa: ANN001, ANN201
    return step("data", ctx, conn, mime.hex())


def mq_smtp_in_message(ctx, conn, message):  # noqa: ANN001, ANN201
    mq.MQ_json(message).setdefault("tags", []).append("recorded")
    mq.MQ_json(message)["recorder-saw"] = mq.MQ_recipient(message)
    return step("message", ctx, conn, mq.MQ_recipient(message))


def mq_smtp_in_close(ctx, conn):  # noqa: ANN001, ANN201
    return step("close", ctx, conn)
