"""Shared by the tests that need Redis: the check that it answers, and a URL whose key prefix
is the test's own (its keys are deleted afterwards).  Imported by those tests, like
``conftest_amqp``."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator

import pytest

REDIS_URL = os.environ.get("MQMTA_REDIS_URL", "redis://127.0.0.1:6379/0")


def require_redis() -> None:
    """Skip (or fail, under ``MQMTA_REQUIRE_AMQP=1``, the switch of the broker tests) when no
    Redis answers."""
    from urllib.parse import urlsplit

    parts = urlsplit(REDIS_URL)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 6379), timeout=1.0):
            return
    except OSError:
        why = f"no Redis answers on {parts.hostname}:{parts.port or 6379}"
    if os.environ.get("MQMTA_REQUIRE_AMQP") == "1":
        pytest.fail(f"{why} and MQMTA_REQUIRE_AMQP=1")
    pytest.skip(f"{why} (apt-get install redis-server; set MQMTA_REQUIRE_AMQP=1 to make this a failure)")


@pytest.fixture
def redis_url() -> Iterator[str]:
    require_redis()
    import redis

    prefix = f"mqtest-{uuid.uuid4().hex[:10]}:"
    yield f"{REDIS_URL}?prefix={prefix}"
    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(match=prefix + "*"))
    if keys:
        client.delete(*keys)
    client.close()
