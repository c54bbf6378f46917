"""The queue admin (browse, show, retry, replace) on both backends: the spool and a real RabbitMQ."""

from __future__ import annotations

import time

import pytest
import pytest_twisted

from mqtwisted.queue import Publication
from mqtwisted.queue.admins import admin_for
from mqtwisted.queue.spool import SpoolQueue
from tests.conftest_amqp import amqp_prefix_fixture, amqp_queue_fixture  # noqa: F401

MIME = "Subject: admin\r\n\r\nbody\r\n"


def docs(n: int) -> list[Publication]:
    return [Publication("outbox", {"envelope": f"s{i % 2}@example.org", "recipient": f"r{i}@example.com",
                                   "mime": MIME}) for i in range(n)]


@pytest.fixture(params=["spool", "amqp"])
def queue(request, tmp_path):
    if request.param == "spool":
        q = SpoolQueue(str(tmp_path / "spool.sqlite3"))
        pytest_twisted.blockon(q.start())
        yield q
        pytest_twisted.blockon(q.stop())
    else:
        yield request.getfixturevalue("amqp_queue")


@pytest_twisted.ensureDeferred
async def test_browse_search_show_retry_replace(queue):
    admin = admin_for(queue)
    ids = await queue.publish(docs(7))
    page = await admin.browse("outbox", 2, 3)
    assert page.total == 7 and [i for i, _ in page.documents] == ids[2:5]
    assert all("mime" not in d for _, d in page.documents)
    assert [d["recipient"] for _, d in (await admin.browse("outbox", 0, 10, "R3@EXAMPLE")).documents] == ["r3@example.com"]
    assert (await admin.browse("outbox", 0, 10, "s1@example.org")).total == 3
    assert [i for i, _ in (await admin.browse("outbox", 0, 10, ids[6])).documents] == [ids[6]]
    assert (await admin.show("outbox", ids[4]))["mime"] == MIME
    assert await admin.show("outbox", "no-such-id") is None

    moved = await admin.replace("outbox", ids[1], [Publication("local", {**(await admin.show("outbox", ids[1]))})])
    assert moved is not None and len(moved) == 1
    assert (await admin.show("local", moved[0]))["recipient"] == "r1@example.com"
    assert await admin.show("outbox", ids[1]) is None
    assert await admin.replace("outbox", ids[1], []) is None  # gone already
    assert await admin.replace("outbox", ids[2], []) == []
    assert (await admin.browse("outbox", 0, 10)).total == 5

    # A document waiting for its nextattempt, and visible (on RabbitMQ, outbox, local, inbox and
    # dsn hold such documents in delay queues, where the admin does not see them: README).
    later = await queue.publish([Publication("failure", {"recipient": "w@example.com", "mime": MIME,
                                                          "nextattempt": time.time() + 3600})])
    assert await admin.retry("failure", later[0])
    retried = (await admin.browse("failure", 0, 10, "w@example.com")).documents
    assert len(retried) == 1 and "nextattempt" not in retried[0][1]
    assert not await admin.retry("failure", "no-such-id")


@pytest_twisted.ensureDeferred
async def test_amqp_consumers_are_the_nodes(amqp_queue):
    from tests.conftest import sleep

    admin = admin_for(amqp_queue)
    assert await admin.consumers("outbox") == 0
    amqp_queue.consume("outbox", lambda lease: None)
    counted: list[int] = []

    async def seen() -> bool:
        counted.append(await admin.consumers("outbox"))
        return counted[-1] == 1

    for _ in range(50):
        if await seen():
            break
        await sleep(0.1)  # the broker counts the consumer once its basic.consume is done
    assert counted[-1] == 1
