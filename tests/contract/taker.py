"""Takes control and hands it back (tests/contract/taker.c is the same plugin in C): at MAIL FROM
from a thread of its own, at RCPT TO from an MQ_startTimer timer (the context's thread), and at
DATA the first time with MQ_retry from its own thread."""

import threading

from mqtwisted import api as mq
from tests.contract.recording import record

DATA_CALLS = []


def mq_version():  # noqa: ANN201
    return mq.MQ_API_VERSION


def mq_smtp_in_mailfrom(ctx, conn, address):  # noqa: ANN001, ANN201
    threading.Timer(0.1, mq.MQ_continue, (conn,)).start()
    record("mailfrom", ctx, conn)
    return True


def resume(ctx, conn):  # noqa: ANN001, ANN201
    record("timer", ctx, conn)
    mq.MQ_continue(conn)


def mq_smtp_in_rcptto(ctx, conn, address):  # noqa: ANN001, ANN201
    mq.MQ_startTimer(ctx, 0.1, resume, ctx, conn)
    record("rcptto", ctx, conn)
    return True


def mq_smtp_in_data(ctx, conn, mime):  # noqa: ANN001, ANN201
    DATA_CALLS.append(conn)
    record("data", ctx, conn)
    if len(DATA_CALLS) == 1:
        threading.Timer(0.05, mq.MQ_retry, (conn,)).start()
        return True
    return False
