"""The typed MailerQ document: accessors, errors that name the property, unknown keys untouched."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mqtwisted.document import (
    AttemptRecord,
    ConnectionInfo,
    Document,
    DocumentError,
    DsnRequest,
    HeaderEdits,
    IncomingDocument,
    OutgoingDocument,
    Property,
    Smarthost,
    due_time,
)
from mqtwisted.jsonvalues import SECURITY_LEVELS
from mqtwisted.results import Attempt

#: every key some accessor interprets
#: every key the model interprets, read off the model itself so that a new accessor is never
#: generated as an "unknown" key by the tests below
KNOWN = {
    attribute.key
    for view in (IncomingDocument, OutgoingDocument)
    for cls in view.__mro__
    for attribute in vars(cls).values()
    if isinstance(attribute, Property)
}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)
unknown_keys = st.text(min_size=1, max_size=12).filter(lambda k: k not in KNOWN)


@given(st.dictionaries(unknown_keys, json_values, max_size=6))
def test_unknown_keys_pass_through_both_ways(extra: dict) -> None:
    raw = {"envelope": "a@example.org", "recipient": "b@example.com", "mime": "Subject: x\r\n\r\nhi\r\n", **extra}
    before = json.dumps(raw, sort_keys=True)
    doc = OutgoingDocument.of(raw)
    doc.check()
    # Reading every accessor and writing known properties leaves the other keys as they were.
    doc.nextattempt = 1800000000.0
    doc.results = (AttemptRecord(1800000000.0, "connect", "error", description="refused"),)
    doc.dsn = DsnRequest(("FAILURE",), "HDRS")
    assert {k: v for k, v in doc.json.items() if k not in KNOWN} == extra
    back = OutgoingDocument.of(json.loads(json.dumps(doc.json)))
    assert back.nextattempt == 1800000000.0 and back.results[0].description == "refused"
    assert back.dsn == DsnRequest(("FAILURE",), "HDRS")
    # Setting None removes a property, and nothing else.
    doc.nextattempt = doc.results = doc.dsn = None
    assert json.dumps(doc.json, sort_keys=True) == before
    # A result copy keeps them too (without mime).
    assert {k: v for k, v in doc.result_copy().items() if k not in KNOWN} == extra


@given(
    st.lists(
        st.fixed_dictionaries(
            {"time": st.just("2026-11-29 12:00:00"), "state": st.sampled_from(["connect", "rcptto", "message"]),
             "result": st.sampled_from(["accepted", "error"])},
            optional={"code": st.integers(200, 599), "description": st.text(min_size=1),
                      "to": st.just("10.0.0.1"), "x-own": json_values},
        ),
        max_size=4,
    )
)
def test_results_round_trip(records: list) -> None:
    doc = OutgoingDocument({"results": records})
    parsed = doc.results
    assert [r.to_json() for r in parsed] == records
    doc.results = parsed
    assert doc.json["results"] == records


def test_attempt_record_matches_the_attempt() -> None:
    a = Attempt("message", "accepted", 250, "2.0.0", "ok", time=0, mta="mx", remote_ip="10.0.0.1", messages=2, dsn=True)
    assert a.record() == {"time": "1970-01-01 00:00:00", "state": "message", "result": "accepted", "code": 250,
                          "status": "2.0.0", "description": "ok", "mta": "mx", "to": "10.0.0.1", "messages": 2,
                          "dsn": True}
    assert AttemptRecord.parse("r", a.record()).remote_ip == "10.0.0.1"


@pytest.mark.parametrize(
    ("raw", "prop"),
    [
        ({"recipient": "nobody"}, "recipient"),
        ({"recipient": 5}, "recipient"),
        ({"recipient": "a@b", "envelope": ["x"]}, "envelope"),
        ({"recipient": "a@b", "maxattempts": "many"}, "maxattempts"),
        ({"recipient": "a@b", "maxattempts": 1.5}, "maxattempts"),
        ({"recipient": "a@b", "maxdelivertime": "tomorrow"}, "maxdelivertime"),
        ({"recipient": "a@b", "nextattempt": {}}, "nextattempt"),
        ({"recipient": "a@b", "retries": "soon"}, "retries"),
        ({"recipient": "a@b", "security": "paranoid"}, "security"),
        ({"recipient": "a@b", "smarthost": {"port": 25}}, "smarthost.hostname"),
        ({"recipient": "a@b", "smarthost": "relay:x"}, "smarthost"),
        ({"recipient": "a@b", "queues": ["results"]}, "queues"),
        ({"recipient": "a@b", "headers": {"prepend": "X-A: 1"}}, "headers.prepend"),
        ({"recipient": "a@b", "dsn": "FAILURE"}, "dsn"),
        # a report repeats these as fields: a CR LF would add fields of its own
        ({"recipient": "a@b", "dsn": {"envid": "x\r\nAction: delivered"}}, "dsn.envid"),
        ({"recipient": "a@b", "dsn": {"orcpt": "rfc822;a@b\nStatus: 2.0.0"}}, "dsn.orcpt"),
        ({"recipient": "a@b", "dsn": {"envid": "caf\u00e9"}}, "dsn.envid"),  # a next hop refuses its MAIL
        # MAIL FROM and RCPT TO write these as they are: a CR LF would start a command of its own
        ({"recipient": "x\r\nRSET@example.com"}, "recipient"),
        ({"recipient": "a@b", "envelope": "a@b.example>\r\nRSET"}, "envelope"),
        ({"recipient": "a@b", "dsn": {"notify": "SUCCESS\r\nQUIT"}}, "dsn.notify"),
        ({"recipient": "a@b", "dsn": {"notify": ["SUCCESS", "SOMETIMES"]}}, "dsn.notify"),
        ({"recipient": "a@b", "keepmime": "yes"}, "keepmime"),
        ({"recipient": "a@b", "results": [1]}, "results[0]"),
        ({"recipient": "a@b", "mime": 42}, "mime"),
    ],
)
def test_errors_name_the_property(raw: dict, prop: str) -> None:
    with pytest.raises(DocumentError) as info:
        OutgoingDocument(raw).check()
    assert info.value.key == prop and f"property {prop!r}" in str(info.value)


def test_accessors() -> None:
    doc = OutgoingDocument({
        "envelope": "", "recipient": "U@Example.COM.", "mime": "Subject: \udce9\r\n\r\n",
        "nextattempt": "2026-11-29 12:00:00", "maxdelivertime": 3600, "maxattempts": "3",
        "retries": "60, 120", "queues": {"results": None, "success": "mine", "failure": ""},
        "smarthost": {"hostname": "relay.example", "port": 2525, "username": "u", "password": "p"},
        "security": "verified", "keepmime": 1, "dsn": {"notify": "success, failure", "ret": "hdrs"},
        "headers": {"remove": "X-Old", "add": {"X-New": [1, None]}},
    })
    doc.check()
    assert doc.sender == "" and doc.recipient_domain == "example.com"
    assert doc.mime == b"Subject: \xe9\r\n\r\n"
    assert doc.nextattempt == 1795953600.0 and doc.maxdelivertime == 3600 and doc.maxattempts == 3
    assert doc.retries == (60, 120)
    assert doc.result_queue("results", "results") is None and doc.result_queue("success", "success") == "mine"
    assert doc.result_queue("failure", "failure") is None and doc.result_queue("retry", "retry") == "retry"
    assert doc.smarthost == Smarthost("relay.example", 2525, "u", "p") and doc.security in SECURITY_LEVELS
    assert doc.keepmime is True and "mime" in doc.result_copy()
    assert doc.dsn == DsnRequest(("SUCCESS", "FAILURE"), "HDRS") and doc.dsn.wants_failure_report
    assert doc.headers == HeaderEdits(frozenset({"x-old"}), append=(("X-New", ("1",)),))
    assert OutgoingDocument({"smarthost": "[::1]:26"}).smarthost == Smarthost("::1", 26)


def test_setters_write_json() -> None:
    doc = IncomingDocument()
    doc.envelope, doc.recipient, doc.mime = "a@x", "b@y", b"8bit \xff"
    doc.received = 1795435200.5
    doc.tags = ("t1",)
    assert doc.json == {"envelope": "a@x", "recipient": "b@y", "mime": "8bit \udcff", "received": 1795435200.5,
                        "tags": ["t1"]}
    assert Document.of(doc).json is doc.json and doc.copy().json is not doc.json


def test_due_time_is_lenient() -> None:
    assert due_time({}) == 0 and due_time({"nextattempt": "garbage"}) == 0
    assert due_time({"nextattempt": 5}) == 5 and due_time({"nextattempt": "1970-01-01 00:00:10"}) == 10


def test_security_levels_are_the_clients() -> None:
    from mqtwisted.smtp.client import SECURITY_LEVELS as CLIENT_LEVELS

    assert SECURITY_LEVELS == CLIENT_LEVELS


names = st.text(st.characters(min_codepoint=33, max_codepoint=126, exclude_characters=",:[];"), min_size=1, max_size=10)


@given(
    st.builds(DsnRequest, st.none() | st.lists(st.sampled_from(["SUCCESS", "FAILURE", "DELAY", "NEVER"]), min_size=1,
                                               max_size=3, unique=True).map(tuple),
              st.none() | st.sampled_from(["FULL", "HDRS"]), st.none() | names, st.none() | names),
    st.builds(Smarthost, names, st.integers(1, 65535), st.none() | names, st.none() | names),
    st.builds(ConnectionInfo, st.none() | names, st.none() | st.integers(0, 65535), st.none() | names,
              st.none() | st.integers(0, 65535), st.none() | names, st.booleans(), st.none() | names),
)
def test_typed_values_round_trip(dsn: DsnRequest, smarthost: Smarthost, connection: ConnectionInfo) -> None:
    doc = IncomingDocument()
    doc.dsn, doc.connection = dsn, connection
    out = OutgoingDocument.of(json.loads(json.dumps(doc.json)))
    out.smarthost = smarthost
    again = IncomingDocument.of(json.loads(json.dumps(out.json)))
    assert again.dsn == dsn and again.connection == connection
    assert OutgoingDocument.of(again).smarthost == smarthost
