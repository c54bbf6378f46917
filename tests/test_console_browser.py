"""The console in a real browser: Debian's chromium driven by Playwright against a real
``twistd mqmta`` that delivers to an aiosmtpd smarthost.

An operator's session: a refused login, a login, the Overview's graph moving while mail arrives
over SMTP, destinations and the delivery log filling, a message found by its recipient and retried
(then delivered), another deleted, a POST without the CSRF token refused, a pause and a suppression
added and removed through their page (and seen by delivery).  With
``MQMTA_SCREENSHOTS=1`` the test saves a screenshot of each page to ``docs/`` (the README shows
them); otherwise it writes nothing there.
"""

from __future__ import annotations

import json
import os
import shutil
import smtplib
import threading
import time
import urllib.request
from typing import Any

import pytest

from tests.conftest import block_until, free_port, wait_port
from tests.realmta import ROOT, MTAProcess

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SHOTS = os.path.join(ROOT, "docs") if os.environ.get("MQMTA_SCREENSHOTS") else None
MSG = "From: shop@example.org\r\nTo: {to}\r\nSubject: order {n}\r\nMessage-ID: <{n}.{to}>\r\n\r\nThanks.\r\n"


class Smarthost:
    """aiosmtpd in a thread: greylists ``grey*``, refuses ``full*`` (mailbox full), takes the rest."""

    def __init__(self) -> None:
        from aiosmtpd.controller import Controller

        self.received: list[str] = []
        outer = self

        class Handler:
            async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, options: Any) -> str:
                if address.startswith("grey"):
                    return "451 4.7.1 Greylisted, please try again later"
                if address.startswith("full"):
                    return "552 5.2.2 Mailbox full"
                envelope.rcpt_tos.append(address)
                return "250 OK"

            async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
                outer.received += envelope.rcpt_tos
                return "250 2.0.0 Accepted"

        self.port = free_port()
        self.controller = Controller(Handler(), hostname="127.0.0.1", port=self.port)
        self.controller.start()

    def stop(self) -> None:
        self.controller.stop()


def api(base: str, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(base + path, data=data, method=method,
                                     headers={"Authorization": "Bearer app-token", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=20) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def send(port: int, recipients: list[str], start: int = 0) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as s:
        for n, to in enumerate(recipients, start):
            s.sendmail("shop@example.org", [to], MSG.format(to=to, n=n))


def until(page: Any, script: str, what: str, timeout: float = 30.0) -> None:
    """Wait for ``script`` (an expression) to be true in the page.  Not wait_for_function: the
    console's Content-Security-Policy forbids the eval that it polls with."""
    block_until(lambda: page.evaluate(f"() => Boolean({script})"), timeout, what)


def shot(page: Any, name: str) -> None:
    if SHOTS:
        page.wait_for_timeout(300)  # let the last redraw land
        page.screenshot(path=os.path.join(SHOTS, f"console-{name}.png"))


@pytest.mark.slow
def test_operator_session(tmp_path):
    if not os.path.exists(CHROMIUM):
        pytest.fail("chromium is not installed (.ci/run installs it with apt-get)")
    from playwright.sync_api import expect, sync_playwright

    host = Smarthost()
    www = free_port()
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    shutil.copy(os.path.join(ROOT, "plugins", "tagger.py"), plugins)
    mta = MTAProcess(str(tmp_path / "data"), f"--smarthost=127.0.0.1:{host.port}", f"--www-port={www}",
                     f"--plugin-directory={plugins}",
                     "--www-auth=hardcoded://admin:s3cret", "--rest-tokens=hardcoded://app-token",
                     "--retry-interval=3600", "--max-idle-time=1", "--smtp-client-security=none")
    mta.start()
    base = f"http://127.0.0.1:{www}"
    try:
        wait_port(www, 60, proc=mta.proc)
        later = time.time() + 86400
        status, held = api(base, "POST", "/v1/inject", [
            {"envelope": "shop@example.org", "recipient": f"hold-{i}@example.com", "nextattempt": later,
             "mime": MSG.format(to=f"hold-{i}@example.com", n=i)} for i in range(1, 8)])
        assert status == 200
        ids = {q["recipient"]: q["id"] for q in held["queued"]}

        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1440, "height": 900})
            page.set_default_timeout(30000)
            expect.set_options(timeout=30000)  # a loaded machine answers in seconds, not milliseconds

            page.goto(base + "/")
            expect(page).to_have_url(base + "/login")
            shot(page, "login")
            page.fill("#user", "admin")
            page.fill("#password", "wrong")
            page.click("button[type=submit]")
            expect(page).to_have_url(base + "/login?failed=1")
            expect(page.locator("#login-error")).to_be_visible()

            page.fill("#user", "admin")
            page.fill("#password", "s3cret")
            page.click("button[type=submit]")
            expect(page.locator("#page-title")).to_have_text("Overview")
            expect(page.locator("#who")).to_have_text("admin")
            until(page, "document.querySelectorAll('#ov-queues tr').length > 0", "queue sizes shown")
            before = page.evaluate("document.getElementById('chart-short').toDataURL()")

            # The graph moves while mail arrives over SMTP.
            recipients = [f"user{i}@example.com" for i in range(40)] + ["grey1@example.net", "full1@example.net"]
            sender = threading.Thread(target=send, args=(mta.port, recipients))
            sender.start()
            count = "Number(document.getElementById('{}').textContent.replace(/\\D/g, ''))"
            until(page, count.format("n-received") + " >= 49", "the messages counted as received")
            until(page, count.format("n-delivered") + " >= 40", "the messages counted as delivered")
            sender.join(30)
            until(page, f"document.getElementById('chart-short').toDataURL() !== {json.dumps(before)}",
                  "the graph redrawn with the new rates")
            expect(page.locator("#t-received")).not_to_have_text("0.00")
            shot(page, "overview")

            page.click("a[data-page=destinations]")
            row = page.locator("#dest-table tbody tr", has_text="127.0.0.1")
            expect(row).to_be_visible()
            expect(row).to_contain_text("mailbox-full")
            page.fill("#dest-filter", "nothing-like-this")
            expect(page.locator("#dest-table tbody tr")).to_have_count(0)
            page.fill("#dest-filter", "127.0")
            page.click("#dest-table th[data-key=delivered]")
            shot(page, "destinations")

            page.click("a[data-page=log]")
            expect(page.locator("#log-state")).to_have_text("live")
            send(mta.port, ["late1@example.com", "grey2@example.net"], 100)
            expect(page.locator("#log-table tbody tr", has_text="late1@example.com")).to_be_visible()
            expect(page.locator("#log-table tbody tr", has_text="grey2@example.net")).to_contain_text("greylisted")
            page.select_option("#log-class", "greylisted")
            send(mta.port, ["late2@example.com", "grey3@example.net"], 200)
            expect(page.locator("#log-table tbody tr", has_text="grey3@example.net")).to_be_visible()
            expect(page.locator("#log-table tbody tr", has_text="late2@example.com")).to_have_count(0)
            page.select_option("#log-class", "")
            send(mta.port, [f"tail{i}@example.com" for i in range(6)], 300)
            expect(page.locator("#log-table tbody tr", has_text="tail5@example.com")).to_be_visible()
            shot(page, "log")

            # Find a held message by its recipient and retry it: it is delivered.
            page.click("a[data-page=queues]")
            expect(page.locator("#queue-tabs button.active")).to_contain_text("outbox")
            page.fill("#queue-search", "hold-3@")
            page.click("#queue-search-form button")
            expect(page.locator("#queue-table tbody tr")).to_have_count(1)
            page.click("#queue-table tbody tr")
            expect(page.locator("#doc-drawer")).to_be_visible()
            expect(page.locator("#doc-headers")).to_contain_text("Subject: order 3")
            shot(page, "queues")
            page.click("#doc-drawer [data-action=retry]")
            expect(page.locator("#confirm")).to_be_visible()
            page.click("#confirm-yes")
            expect(page.locator("#toast")).to_have_text("Queued for a retry now")
            block_until(lambda: "hold-3@example.com" in host.received, 30, "hold-3 delivered after the retry")

            # Delete another one (cancelling first changes nothing).
            page.fill("#queue-search", "hold-4@")
            page.click("#queue-search-form button")
            page.click("#queue-table tbody tr")
            page.click("#doc-drawer [data-action=delete]")
            page.click("#confirm-no")
            assert api(base, "GET", f"/v1/queues/outbox/{ids['hold-4@example.com']}")[0] == 200
            page.click("#doc-drawer [data-action=delete]")
            page.click("#confirm-yes")
            expect(page.locator("#toast")).to_have_text("Deleted")
            assert api(base, "GET", f"/v1/queues/outbox/{ids['hold-4@example.com']}")[0] == 404
            page.fill("#queue-search", "")
            page.click("#queue-search-form button")
            expect(page.locator("#queue-table tbody tr")).to_have_count(8)  # 5 held, 3 greylisted

            # The page's own script sends the token; a request without it is refused.
            status = page.evaluate(
                f"fetch('/v1/queues/outbox/{ids['hold-5@example.com']}/retry', {{method: 'POST'}}).then(r => r.status)")
            assert status == 403
            assert api(base, "GET", f"/v1/queues/outbox/{ids['hold-5@example.com']}")[1].get("nextattempt")

            # Pauses and suppressions: added through the page's forms, seen by the API and the state
            # file, and by delivery (a paused message waits, a suppressed recipient fails).
            page.click("a[data-page=holds]")
            expect(page.locator("#pause-empty")).to_be_visible()
            api(base, "POST", "/v1/pauses", {"source": "warmup-pool", "tag": "newsletter", "reason": "warm-up week 1"})
            page.fill("#pause-form [name=domain]", "Paused.Example")
            page.fill("#pause-form [name=duration]", "2h")
            page.fill("#pause-form [name=reason]", "complaints from their postmaster")
            page.click("#pause-form button")
            expect(page.locator("#toast")).to_have_text("Paused to paused.example")
            expect(page.locator("#pause-table tbody tr")).to_have_count(2)
            page.fill("#suppress-form [name=pattern]", "Blocked@Example.com")
            page.click("#suppress-form button")
            expect(page.locator("#toast")).to_have_text("Suppressed blocked@example.com")
            page.fill("#suppress-form [name=pattern]", "not an address")
            page.click("#suppress-form button")
            expect(page.locator("#toast")).to_contain_text("/pattern: expected user@example.com")
            page.fill("#suppress-form [name=pattern]", "spamtrap.example")
            page.fill("#suppress-form [name=code]", "554")
            page.fill("#suppress-form [name=text]", "Spam trap: never send")
            page.fill("#suppress-form [name=duration]", "30d")
            page.click("#suppress-form button")
            expect(page.locator("#suppress-table tbody tr")).to_have_count(2)
            status = page.evaluate("fetch('/v1/pauses', {method: 'POST', headers: {'Content-Type': 'application/json'}, "
                                   "body: '{}'}).then(r => r.status)")
            assert status == 403  # a pause of everything, without the session's token: refused
            pauses = api(base, "GET", "/v1/pauses")[1]["pauses"]
            assert len(pauses) == 2
            [paused] = [p for p in pauses if p["domain"] == "paused.example"]
            assert paused["reason"] == "complaints from their postmaster" and paused["until"] > time.time() + 7000
            from mqtwisted.state.opening import open_backend
            from mqtwisted.state.suppression import SuppressionList

            state = SuppressionList(open_backend("", str(tmp_path / "data")))
            assert [(s.pattern, s.code) for s in state.list()] == [("blocked@example.com", 550), ("spamtrap.example", 554)]
            shot(page, "holds")

            time.sleep(1.5)  # more than a round of the delivery worker's state poll
            send(mta.port, ["wait1@paused.example", "blocked@example.com"], 400)
            block_until(lambda: api(base, "GET", "/v1/queues/failure?search=blocked@")[1]["total"] == 1, 30,
                        "the suppressed recipient failed")
            assert "blocked@example.com" not in host.received and "wait1@paused.example" not in host.received
            page.click(f"#pause-table tr[data-id='{paused['id']}'] button")
            expect(page.locator("#confirm-text")).to_contain_text("to paused.example")
            page.click("#confirm-yes")
            expect(page.locator("#toast")).to_have_text("Pause removed")
            block_until(lambda: "wait1@paused.example" in host.received, 30, "the paused message delivered once removed")
            page.click("#suppress-table tr[data-pattern='blocked@example.com'] button")
            page.click("#confirm-yes")
            expect(page.locator("#suppress-table tbody tr")).to_have_count(1)
            assert [s.pattern for s in state.list()] == ["spamtrap.example"]

            page.click("a[data-page=plugins]")
            expect(page.locator("#plugin-list")).to_contain_text("tagger")
            expect(page.locator("#hook-table tbody tr", has_text="mq_smtp_in_message")).to_be_visible()
            shot(page, "plugins")
            page.click("a[data-page=config]")
            expect(page.locator("#config-table")).to_contain_text("hardcoded://***")
            expect(page.locator("#config-table")).not_to_contain_text("s3cret")
            page.fill("#config-filter", "auth")
            expect(page.locator("#config-table tbody tr", has_text="www-auth-failures")).to_contain_text("5/600")
            shot(page, "config")
            browser.close()
        assert "Traceback" not in mta.output()
    finally:
        mta.stop()
        host.stop()
