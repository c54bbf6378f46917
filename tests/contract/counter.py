"""Counts DATA steps (it runs before the taker, and again after its MQ_retry)."""

from mqtwisted import api as mq
from tests.contract.recording import record


def mq_version():  # noqa: ANN201
    return mq.MQ_API_VERSION


def mq_smtp_in_data(ctx, conn, mime):  # noqa: ANN001, ANN201
    record("count", ctx, conn)
    return False
