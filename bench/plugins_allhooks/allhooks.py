"""Benchmark plugin: defines all eight inbound hooks, each passing control on.

It measures the cost of hook dispatch itself (a thread hop per hook, per
connection/command/message) with plugins that do nothing.
"""

from mqtwisted import api


def mq_version():  # noqa: ANN201
    return api.MQ_API_VERSION


def mq_smtp_in_connect(ctx, conn):  # noqa: ANN001, ANN201
    return False


def mq_smtp_in_secure(ctx, conn):  # noqa: ANN001, ANN201
    return False


def mq_smtp_in_authenticate(ctx, conn, login, password):  # noqa: ANN001, ANN201
    return False


def mq_smtp_in_mailfrom(ctx, conn, address):  # noqa: ANN001, ANN201
    return False


def mq_smtp_in_rcptto(ctx, conn, address):  # noqa: ANN001, ANN201
    return False


def mq_smtp_in_data(ctx, conn, mime):  # noqa: ANN001, ANN201
    return False


def mq_smtp_in_message(ctx, conn, message):  # noqa: ANN001, ANN201
    return False


def mq_smtp_in_close(ctx, conn):  # noqa: ANN001, ANN201
    return False
