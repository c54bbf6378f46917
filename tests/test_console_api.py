"""The REST API and the console's access rules, over real loopback HTTP against an MTA in this
process (the spool; delivery off unless a test needs it)."""

from __future__ import annotations

import hashlib
import time

import pytest
import pytest_twisted

from mqtwisted.console.api_status import mask
from mqtwisted.console.series import Series
from mqtwisted.metrics import METRICS
from mqtwisted.options import ConfigError
from mqtwisted.testing import mta_options
from tests.conftest import wait_until
from tests.consolehelpers import Client, console_mta

MIME = "From: a@example.org\r\nTo: x@example.com\r\nSubject: api\r\n\r\nHello.\r\n"
AUTH = {"www_auth": "hardcoded://admin:s3cret", "rest_tokens": "hardcoded://tok-1,tok-2"}


def doc(recipient: str, **extra: object) -> dict:
    return {"envelope": "a@example.org", "recipient": recipient, "mime": MIME, **extra}


@pytest_twisted.ensureDeferred
async def test_bearer_tokens_sessions_and_csrf(tmp_path):
    mta, client = await console_mta(str(tmp_path), **AUTH)
    try:
        assert (await client.call("GET", "/v1/queues")).status == 401
        answer = await client.call("GET", "/")
        assert answer.status == 303 and answer.header("Location") == "/login"
        client.token = "wrong"
        assert (await client.call("GET", "/v1/queues")).status == 401
        client.token = "tok-2"
        assert (await client.call("GET", "/v1/queues")).status == 200
        # A bearer token is never sent by a browser on its own: no CSRF token needed.
        assert (await client.call("POST", "/v1/inject", [doc("x@example.com")])).status == 200

        browser = Client(client.base)
        refused = await browser.login("admin", "wrong")
        assert refused.status == 303 and refused.header("Location") == "/login?failed=1"
        assert browser.cookie is None
        answer = await browser.login("admin", "s3cret")
        assert answer.header("Location") == "/" and "HttpOnly" in answer.header("Set-Cookie")
        assert "SameSite=strict" in answer.header("Set-Cookie")
        assert (await browser.call("GET", "/")).status == 200
        assert (await browser.call("GET", "/v1/queues")).status == 200
        csrf, browser.csrf = browser.csrf, None
        no_csrf = await browser.call("POST", "/v1/inject", [doc("y@example.com")])
        assert no_csrf.status == 403 and no_csrf.json["field"] == "X-CSRF-Token"
        browser.csrf = "not-the-token"
        assert (await browser.call("POST", "/v1/inject", [doc("y@example.com")])).status == 403
        browser.csrf = csrf
        assert (await browser.call("POST", "/v1/inject", [doc("y@example.com")])).status == 200
        assert (await browser.call("POST", "/logout")).status == 303
        assert (await browser.call("GET", "/v1/queues")).status == 401
    finally:
        await mta.stop()


@pytest_twisted.ensureDeferred
async def test_open_mode_refuses_other_origins(tmp_path):
    mta, client = await console_mta(str(tmp_path))
    try:
        assert (await client.call("GET", "/v1/queues")).status == 200
        page = await client.call("GET", "/")
        assert page.status == 200 and b"mqmta console" in page.body
        assert "default-src 'self'" in page.header("Content-Security-Policy")
        evil = await client.call("POST", "/v1/inject", [doc("x@example.com")], headers={"Origin": "http://evil.test"})
        assert evil.status == 403 and evil.json["field"] == "Origin"
        assert (await client.call("POST", "/v1/inject", [doc("x@example.com")])).status == 200
    finally:
        await mta.stop()


@pytest_twisted.ensureDeferred
async def test_errors_are_json(tmp_path):
    mta, client = await console_mta(str(tmp_path), www_max_body="2000")
    try:
        wrong = await client.call("PUT", "/v1/queues")
        assert wrong.status == 405 and wrong.header("Allow") == "GET" and "PUT" in wrong.json["error"]
        assert (await client.call("GET", "/v1/nothing")).json["status"] == 404
        assert (await client.call("GET", "/nothing")).status == 404
        big = await client.call("POST", "/v1/inject", [doc("x@example.com", pad="x" * 5000)])
        assert big.status == 413 and big.json["status"] == 413
        assert (await client.call("POST", "/v1/inject", raw=b"{}", content_type="text/plain")).status == 415
        bad = await client.call("POST", "/v1/inject", raw=b"{nope", content_type="application/json")
        assert bad.status == 400 and bad.json["field"] == "body"
        missing = await client.call("POST", "/v1/inject", [doc("x@example.com"), {"envelope": "", "recipient": "y@x.org"}])
        assert missing.status == 400 and missing.json["field"] == "/1/mime"
        address = await client.call("POST", "/v1/inject", [doc("x@example.com"), doc("nobody")])
        assert address.status == 400 and address.json["field"] == "/1/recipient"
        pool = await client.call("POST", "/v1/inject", doc("x@example.com", maxattempts="many"))
        assert pool.status == 400 and pool.json["field"] == "/maxattempts"
        many = await client.call("POST", "/v1/inject", {"envelope": "", "recipients": ["a@b.c", "bad"], "mime": "x"})
        assert many.status == 400 and many.json["field"] == "/recipients/1"
        assert (await client.call("GET", "/v1/queues/outbox?limit=0")).json["field"] == "limit"
        assert (await client.call("GET", "/v1/queues/bad%20name")).json["field"] == "name"
        assert (await mta.documents()) == []  # nothing refused was queued
        await mta.queue.stop()
        down = await client.call("POST", "/v1/inject", [doc("x@example.com")])
        assert down.status == 503 and "queue" in down.json["error"]
        assert (await client.call("GET", "/v1/queues")).status == 503
        assert b"Traceback" not in down.body
    finally:
        await mta.stop()


@pytest_twisted.ensureDeferred
async def test_inject_and_queue_actions(tmp_path):
    METRICS.reset()
    mta, client = await console_mta(str(tmp_path))
    try:
        one = await client.call("POST", "/v1/inject", doc("x@example.com", tags=["t1"]))
        assert one.status == 200
        [queued] = one.json["queued"]
        many = await client.call("POST", "/v1/inject", [
            {"envelope": "b@example.org", "recipients": ["p@example.net", "q@example.net"], "mime": MIME},
            doc("r@example.com", nextattempt=time.time() + 3600)])
        ids = [q["id"] for q in many.json["queued"]]
        assert len(ids) == 3 and METRICS.injected == 4
        stored = await mta.queue.show("outbox", ids[1])
        assert stored["recipient"] == "q@example.net" and stored["mime"] == MIME and stored["envelope"] == "b@example.org"
        assert (await mta.queue.show("outbox", queued["id"]))["tags"] == ["t1"]

        page = (await client.call("GET", "/v1/queues/outbox?limit=2")).json
        assert page["total"] == 4 and [d["id"] for d in page["documents"]] == [queued["id"], ids[0]]
        assert "mime" not in page["documents"][0]["document"]
        assert (await client.call("GET", "/v1/queues/outbox?offset=2&limit=2")).json["documents"][1]["id"] == ids[2]
        found = (await client.call("GET", "/v1/queues/outbox?search=Q@EXAMPLE")).json
        assert [d["id"] for d in found["documents"]] == [ids[1]]
        assert (await client.call("GET", "/v1/queues/outbox?search=b@example.org")).json["total"] == 2
        assert (await client.call("GET", f"/v1/queues/outbox?search={ids[2]}")).json["total"] == 1

        assert (await client.call("POST", f"/v1/queues/outbox/{ids[2]}/retry")).json == {"ok": True}
        retried = await mta.queue.show("outbox", ids[2])
        assert "nextattempt" not in retried

        moved = (await client.call("POST", f"/v1/queues/outbox/{ids[0]}/move", {"to": "local"})).json
        [target] = moved["queued"]
        assert target["queue"] == "local" and (await mta.queue.show("outbox", ids[0])) is None
        assert (await mta.queue.show("local", target["id"]))["recipient"] == "p@example.net"
        same = await client.call("POST", f"/v1/queues/local/{target['id']}/move", {"to": "local"})
        assert same.status == 400 and same.json["field"] == "to"

        bounced = (await client.call("POST", f"/v1/queues/outbox/{ids[1]}/bounce")).json["queued"]
        assert [b["queue"] for b in bounced] == ["results", "failure", "dsn"]
        failure = await mta.queue.show("failure", bounced[1]["id"])
        assert failure["results"][-1]["description"].startswith("bounced by the operator")
        assert b"Content-Type: multipart/report" in (await mta.queue.show("dsn", bounced[2]["id"]))["mime"].encode()

        assert (await client.call("DELETE", f"/v1/queues/outbox/{queued['id']}")).json == {"ok": True}
        for method, path in [("DELETE", f"/v1/queues/outbox/{queued['id']}"), ("GET", "/v1/queues/outbox/999"),
                             ("POST", "/v1/queues/outbox/abc/retry"), ("POST", f"/v1/queues/outbox/{ids[1]}/bounce")]:
            assert (await client.call(method, path)).status == 404, path
        depths = {q["name"]: q["count"] for q in (await client.call("GET", "/v1/queues")).json["queues"]}
        assert depths["outbox"] == 1 and depths["local"] == 1 and depths["dsn"] == 1
    finally:
        await mta.stop()


@pytest_twisted.ensureDeferred
async def test_views_and_event_stream(tmp_path):
    METRICS.reset()
    mta, client = await console_mta(str(tmp_path), smtp_auth="hardcoded://u:pw", queue="spool")
    try:
        overview = (await client.call("GET", "/v1/overview")).json
        assert overview["backend"] == "spool" and overview["queues"]["outbox"] == 0
        assert set(overview["totals"]) == {"received", "delivered", "deferred", "failed"}
        config = (await client.call("GET", "/v1/config")).json["options"]
        assert config["smtp-auth"] == "hardcoded://***" and config["hostname"] == "mx.test"
        assert (await client.call("GET", "/v1/plugins")).json["loaded"] == []
        # The stream: what delivery logs reaches a subscriber, filtered on the server.
        from twisted.internet import reactor
        from twisted.web.client import Agent
        from twisted.web.http_headers import Headers

        got: list[bytes] = []

        class Collect:
            def __init__(self) -> None:
                from twisted.internet.protocol import Protocol

                class P(Protocol):
                    def dataReceived(self, data: bytes) -> None:
                        got.append(data)

                self.protocol = P()

        response = await Agent(reactor).request(b"GET", f"{client.base}/console/events?domain=wanted".encode(),
                                                 Headers({}))
        assert response.headers.getRawHeaders("content-type") == ["text/event-stream"]
        collector = Collect()
        response.deliverBody(collector.protocol)
        METRICS.logged({"domain": "other.test", "recipient": "a@other.test", "result": "error"})
        METRICS.logged({"domain": "wanted.test", "recipient": "b@wanted.test", "result": "accepted"})
        await wait_until(lambda: b"b@wanted.test" in b"".join(got), 10, "the entry streamed")
        assert b"a@other.test" not in b"".join(got)
        collector.protocol.transport.stopProducing()
        await wait_until(lambda: not METRICS.listeners, 10, "the stream's listener removed")
        logged = (await client.call("GET", "/v1/log")).json["attempts"]
        assert [a["recipient"] for a in logged] == ["a@other.test", "b@wanted.test"]
    finally:
        await mta.stop()


def test_series_keeps_rates():
    totals = {"received": 0, "delivered": 0, "deferred": 0, "failed": 0}
    series = Series(lambda: dict(totals))
    for second in range(1, 25):
        totals["received"] += 10
        totals["delivered"] += 5 if second > 12 else 0
        series.sample(float(second))
    data = series.as_json()
    assert len(data["short"]) == 23 and data["short"][-1][1:3] == [10.0, 5.0]
    assert len(data["long"]) == 2 and data["long"][0][1] == 10.0 and data["long"][1][2] == 4.5  # 9 of 10 seconds delivered


def test_masking():
    assert mask("queue", "amqp://guest:guest@127.0.0.1:5672/") == "amqp://guest:***@127.0.0.1:5672/"
    assert mask("www-auth", "hardcoded://a:b") == "hardcoded://***"
    assert mask("www-auth", "file:///etc/mqmta/users") == "file:///etc/mqmta/users"
    assert mask("hostname", "mx.test") == "mx.test"
    assert mask("queue", "amqp://u:p@s@h1:5672,h2:5673/v") == "amqp://u:***@h1:5672,h2:5673/v"  # a cluster
    assert mask("state", "redis://:pw@[::1]:6379/0") == "redis://:***@[::1]:6379/0"
    assert mask("state", "redis://h/0?db=1&password=pw") == "redis://h/0?db=1&password=***"
    assert mask("queue", "spool") == "spool" and mask("smarthost", "[::1]:25") == "[::1]:25"


def test_options_keep_the_console_safe(tmp_path):
    with pytest.raises(ConfigError, match=r"^--www-ip 0\.0\.0\.0: .*--www-auth"):
        mta_options(str(tmp_path), www_ip="0.0.0.0", www_port="8485")
    mta_options(str(tmp_path), www_ip="0.0.0.0", www_port="8485", www_auth="hardcoded://a:b")
    mta_options(str(tmp_path), www_ip="0.0.0.0", www_port="")  # no web port: nothing to protect
    tokens = tmp_path / "tokens"
    tokens.write_text(f"# app tokens\nplain-token\nsha256:{hashlib.sha256(b'hashed').hexdigest()}\nsha256:12\n")
    with pytest.raises(ConfigError, match=rf"{tokens}:4: sha256"):
        mta_options(str(tmp_path), rest_tokens=f"file://{tokens}")
    with pytest.raises(ConfigError, match="--www-auth: expected user:password"):
        mta_options(str(tmp_path), www_auth="hardcoded://nopassword")


@pytest_twisted.ensureDeferred
async def test_tokens_from_a_file(tmp_path):
    tokens = tmp_path / "tokens"
    tokens.write_text(f"plain-token\nsha256:{hashlib.sha256(b'hashed').hexdigest()}\n")
    mta, client = await console_mta(str(tmp_path / "data"), rest_tokens=f"file://{tokens}")
    try:
        for token, status in [("plain-token", 200), ("hashed", 200), ("sha256:" + "0" * 64, 401), ("", 401)]:
            client.token = token
            assert (await client.call("GET", "/v1/queues")).status == status, token
    finally:
        await mta.stop()


def test_cli_inject_json(tmp_path):
    import json
    import subprocess
    import sys

    from tests.realmta import env, spool_documents

    lines = [json.dumps(doc("x@example.com", tags=["cli"])), "",
             json.dumps({"envelope": "b@example.org", "recipients": ["p@example.net", "q@example.net"], "mime": MIME})]
    cmd = [sys.executable, "-m", "mqtwisted.cli", "inject", "--json", "--data-dir", str(tmp_path)]
    done = subprocess.run(cmd, input="\n".join(lines) + "\n", capture_output=True, text=True, env=env(), timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["queued 1 for x@example.com", "queued 2 for p@example.net",
                                        "queued 3 for q@example.net"]
    docs = spool_documents(str(tmp_path))
    assert [d["recipient"] for d in docs] == ["x@example.com", "p@example.net", "q@example.net"]
    assert docs[0]["tags"] == ["cli"] and docs[2]["mime"] == MIME
    bad = subprocess.run(cmd, input=lines[0] + "\n" + json.dumps(doc("nobody")) + "\n", capture_output=True,
                         text=True, env=env(), timeout=60)
    assert bad.returncode != 0 and "stdin:2: /recipient" in bad.stderr
    nan = subprocess.run(cmd, input=lines[0][:-1] + ', "nextattempt": NaN}\n', capture_output=True, text=True,
                         env=env(), timeout=60)
    assert nan.returncode != 0 and "stdin:1: not JSON: NaN is not a JSON number" in nan.stderr
    assert len(spool_documents(str(tmp_path))) == 3  # nothing of the refused input was queued


def test_sessions_are_bounded_and_expire(monkeypatch):
    from mqtwisted.console import access

    monkeypatch.setattr(access, "MAX_SESSIONS", 3)
    now = [0.0]
    sessions = access.Sessions(clock=lambda: now[0])
    keys = []
    for _ in range(4):
        now[0] += 1
        keys.append(sessions.create("anonymous")[0])
    assert sessions.get(keys[0]) is None and all(sessions.get(k) for k in keys[1:])
    now[0] += access.IDLE_TIMEOUT + 1
    assert sessions.get(keys[3]) is None


@pytest_twisted.ensureDeferred
async def test_inject_refused_while_the_disk_is_below_queue_minfree(tmp_path):
    mta, client = await console_mta(str(tmp_path), queue_minfree=str(1 << 62))
    try:
        full = await client.call("POST", "/v1/inject", [doc("x@example.com")])
        assert full.status == 503 and full.header("Retry-After") == "30"
        assert "below queue-minfree" in full.json["error"] and "nothing was queued" in full.json["error"]
        assert await mta.documents() == []
        mta.service.options["queue-minfree"] = 4096  # as SIGHUP applies it; the real disk has that much
        ok = await client.call("POST", "/v1/inject", [doc("x@example.com")])
        assert ok.status == 200 and len(await mta.documents()) == 1
    finally:
        await mta.stop()


@pytest_twisted.ensureDeferred
async def test_failed_logins_lock_the_client_ip_out_until_the_window_passes(tmp_path):
    mta, client = await console_mta(str(tmp_path), www_auth_failures="2/2", **AUTH)
    try:
        for _ in range(2):
            assert (await client.login("admin", "guess")).header("Location") == "/login?failed=1"
        locked = await client.login("admin", "s3cret")  # the right password: refused all the same
        assert locked.status == 303 and locked.header("Location") in ("/login?locked=1", "/login?locked=2")
        assert client.cookie is None
        other = Client(client.base, bind="127.0.0.2")  # another client IP is not locked out
        assert (await other.login("admin", "s3cret")).header("Location") == "/"
        page = await client.call("GET", "/login?locked=2")
        assert page.status == 200 and b"Too many failed logins from your address" in page.body

        async def logged_in() -> bool:
            return (await client.login("admin", "s3cret")).header("Location") == "/"

        await wait_until(logged_in, 5, "a login once the 2 s window passed", step=0.25)
        assert client.csrf
    finally:
        await mta.stop()


@pytest_twisted.ensureDeferred
async def test_guesses_sent_at_once_are_limited_like_guesses_in_turn(tmp_path):
    from twisted.internet import defer

    mta, client = await console_mta(str(tmp_path), www_auth_failures="2/600", **AUTH)
    try:
        answers = await defer.gatherResults([defer.ensureDeferred(Client(client.base).login("admin", f"guess{i}"))
                                             for i in range(8)])
        places = sorted(a.header("Location").split("=")[0] for a in answers)
        assert places == ["/login?failed"] * 2 + ["/login?locked"] * 6
    finally:
        await mta.stop()
