"""``/v1/pauses`` and ``/v1/suppressions`` over real loopback HTTP, on the very state ``mqmta
pause`` and ``mqmta suppress`` read and write (``state.sqlite3`` in the data directory)."""

from __future__ import annotations

import json
import time

import pytest_twisted

from mqtwisted import cli
from tests.conftest_redis import redis_url  # noqa: F401  (a fixture)
from tests.consolehelpers import console_mta


def command(capsys, *argv: str) -> tuple[int, list[dict]]:
    """``mqmta ARGV --json``: its exit code and the JSON lines it printed."""
    capsys.readouterr()
    code = cli.main(list(argv))
    return code, [json.loads(line) for line in capsys.readouterr().out.splitlines()]


@pytest_twisted.ensureDeferred
async def test_pauses_over_the_api_are_the_commands_pauses(tmp_path, capsys):
    data = str(tmp_path)
    mta, client = await console_mta(data)
    try:
        assert (await client.call("GET", "/v1/pauses")).json == {"pauses": []}
        added = await client.call("POST", "/v1/pauses", {"domain": "Example.COM.", "duration": "2h",
                                                         "reason": "complaints"})
        assert added.status == 200, added.body
        pause = added.json
        assert pause["domain"] == "example.com" and pause["source"] is None and pause["reason"] == "complaints"
        assert 7190 < pause["until"] - time.time() <= 7200
        tagged = (await client.call("POST", "/v1/pauses", {"tag": "promo", "source": "pool-a"})).json
        assert tagged["until"] is None

        code, listed = command(capsys, "pause", "list", "--json", "--data-dir", data)
        assert code == 0 and [p["id"] for p in listed] == [pause["id"], tagged["id"]]
        assert cli.main(["pause", "remove", tagged["id"], "--data-dir", data]) == 0
        capsys.readouterr()
        assert cli.main(["pause", "add", "--source", "127.0.0.9", "--data-dir", data]) == 0
        from_command = capsys.readouterr().out.strip()
        shown = (await client.call("GET", "/v1/pauses")).json["pauses"]
        assert [p["id"] for p in shown] == [pause["id"], from_command]

        assert (await client.call("DELETE", f"/v1/pauses/{pause['id']}")).json == {"ok": True}
        gone = await client.call("DELETE", f"/v1/pauses/{pause['id']}")
        assert gone.status == 404 and pause["id"] in gone.json["error"]
        assert [p["id"] for p in command(capsys, "pause", "list", "--json", "--data-dir", data)[1]] == [from_command]

        for body, field in [({"domain": "x", "duration": "soon"}, "/duration"), ({"duration": 0}, "/duration"),
                            ({"duration": "0s"}, "/duration"), ({"duration": 10**12}, "/duration"),
                            ({"domain": 7}, "/domain"), ({"domian": "x"}, "body"), ([], "body"),
                            # empty would pause everything; a blank matches nothing
                            ({"domain": ""}, "/domain"), ({"source": " "}, "/source"), ({"tag": ""}, "/tag"),
                            ({"domain": "a b.example"}, "/domain"), ({"tag": "a\nb"}, "/tag")]:
            refused = await client.call("POST", "/v1/pauses", body)
            assert refused.status == 400 and refused.json["field"] == field, (body, refused.json)
        nan = await client.call("POST", "/v1/pauses", raw=b'{"duration": NaN}', content_type="application/json")
        assert nan.status == 400 and nan.json["field"] == "body"
        deep = await client.call("POST", "/v1/pauses", raw=b"[" * 100_000, content_type="application/json")
        assert deep.status == 400 and "nested too deeply" in deep.json["error"]  # was a 500
        assert len((await client.call("GET", "/v1/pauses")).json["pauses"]) == 1  # nothing refused was stored
    finally:
        await mta.stop()


@pytest_twisted.ensureDeferred
async def test_suppressions_over_the_api_are_the_commands_list(tmp_path, capsys):
    data = str(tmp_path)
    mta, client = await console_mta(data)
    try:
        added = await client.call("POST", "/v1/suppressions", {"pattern": "Bounced@Example.COM"})
        assert added.status == 200, added.body
        assert added.json["pattern"] == "bounced@example.com" and added.json["code"] == 550
        assert added.json["enhanced"] == "5.7.1" and added.json["until"] is None
        domain = (await client.call("POST", "/v1/suppressions", {
            "pattern": "@spamtrap.example", "code": 554, "enhanced": "5.7.1", "text": "trap", "duration": 3600})).json
        assert domain["pattern"] == "spamtrap.example" and domain["text"] == "trap"

        code, listed = command(capsys, "suppress", "list", "--json", "--data-dir", data)
        assert code == 0 and [e["pattern"] for e in listed] == ["bounced@example.com", "spamtrap.example"]
        assert cli.main(["suppress", "add", "later@example.net", "--data-dir", data]) == 0
        shown = (await client.call("GET", "/v1/suppressions")).json["suppressions"]
        assert [e["pattern"] for e in shown] == ["bounced@example.com", "later@example.net", "spamtrap.example"]

        assert (await client.call("DELETE", "/v1/suppressions/BOUNCED@example.com")).json == {"ok": True}
        assert (await client.call("DELETE", "/v1/suppressions/bounced@example.com")).status == 404
        bad = await client.call("DELETE", "/v1/suppressions/not%20an%20address")
        assert bad.status == 400 and bad.json["field"] == "pattern"
        code, listed = command(capsys, "suppress", "list", "--json", "--data-dir", data)
        assert [e["pattern"] for e in listed] == ["later@example.net", "spamtrap.example"]

        for body, field in [({"pattern": "nobody"}, "/pattern"), ({"pattern": "a@b.example", "code": 450}, "/code"),
                            ({"pattern": "a@b.example", "enhanced": "4.7.1"}, "/enhanced"),
                            ({"pattern": "a@b.example", "duration": -5}, "/duration"), ({}, "/pattern"),
                            ({"pattern": "a@b.example", "enhanced": "5.7.1\n"}, "/enhanced")]:
            refused = await client.call("POST", "/v1/suppressions", body)
            assert refused.status == 400 and refused.json["field"] == field, (body, refused.json)
        assert len((await client.call("GET", "/v1/suppressions")).json["suppressions"]) == 2
        # 550.0 is an integer to JSON Schema; the entry keeps the reply code 550, not "550.0"
        whole = await client.call("POST", "/v1/suppressions", raw=b'{"pattern": "f@b.example", "code": 551.0}',
                                  content_type="application/json")
        assert whole.status == 200 and whole.body.count(b'"code": 551,') == 1
    finally:
        await mta.stop()


@pytest_twisted.ensureDeferred
async def test_the_api_writes_the_shared_state_in_redis(tmp_path, capsys, redis_url):  # noqa: F811
    mta, client = await console_mta(str(tmp_path), state=redis_url)
    try:
        pause = (await client.call("POST", "/v1/pauses", {"source": "10.0.0.7", "duration": 60})).json
        assert (await client.call("POST", "/v1/suppressions", {"pattern": "gone@example.org"})).status == 200
        code, listed = command(capsys, "pause", "list", "--json", "--state", redis_url)
        assert code == 0 and [(p["id"], p["source"]) for p in listed] == [(pause["id"], "10.0.0.7")]
        assert [e["pattern"] for e in command(capsys, "suppress", "list", "--json", "--state", redis_url)[1]] == [
            "gone@example.org"]
        assert (await client.call("DELETE", "/v1/suppressions/gone@example.org")).json == {"ok": True}
        assert command(capsys, "suppress", "list", "--json", "--state", redis_url)[1] == []
    finally:
        await mta.stop()


@pytest_twisted.ensureDeferred
async def test_a_state_backend_away_is_a_503(tmp_path):
    from tests.conftest import free_port

    mta, client = await console_mta(str(tmp_path), state=f"redis://127.0.0.1:{free_port()}/0")
    try:
        for method, path, body in [("GET", "/v1/pauses", None), ("POST", "/v1/suppressions", {"pattern": "a@b.example"})]:
            away = await client.call(method, path, body)
            assert away.status == 503 and away.header("Retry-After") == "5", away.body
            assert "state backend is unavailable" in away.json["error"]
    finally:
        await mta.stop()
