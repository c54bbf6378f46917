"""Bounce classification: the shipped rules on replies as real receivers write them, an
operator's rules first, errors with file:line, and the class in every result delivery records."""

from __future__ import annotations

import pytest

from mqtwisted.classify import CLASSES, Classifier, RulesError, parse_rules, read_rules
from mqtwisted.metrics import METRICS
from mqtwisted.queue import Publication
from tests.deliveryhelpers import doc, make
from tests.smtppeers import ScriptedFactory

SHIPPED = Classifier.load()


@pytest.mark.parametrize(("state", "result", "code", "enhanced", "text", "expected"), [
    ("rcptto", "error", 550, "5.1.1", "The email account that you tried to reach does not exist.", "invalid-recipient"),
    ("rcptto", "error", 550, None, "Requested action not taken: mailbox unavailable", "invalid-recipient"),
    ("rcptto", "error", 550, "5.1.10", "RESOLVER.ADR.RecipientNotFound; Recipient not found", "bad-domain"),
    ("dns", "error", 550, "5.1.2", "example.invalid: domain does not exist (NXDOMAIN)", "bad-domain"),
    ("dns", "error", 451, "4.4.3", "example.com: MX lookup failed: SERVFAIL", "dns-failure"),
    ("message", "error", 552, "5.2.2", "The email account that you tried to reach is over quota.", "mailbox-full"),
    ("rcptto", "error", 452, "4.2.2", "The email account that you tried to reach is over quota.", "mailbox-full"),
    ("message", "error", 552, "5.3.4", "Message size exceeds fixed maximum message size", "message-too-large"),
    ("message", "error", 554, "5.7.1", "Service unavailable; Client host blocked using zen.spamhaus.org", "spam-block"),
    ("message", "error", 550, "5.7.1", "Our system has detected that this message is likely unsolicited mail (spam)", "spam-block"),
    ("mailfrom", "error", 550, "5.7.26", "Unauthenticated email from example.org is not accepted due to domain's DMARC policy", "policy"),
    ("rcptto", "error", 554, "5.7.1", "Relay access denied", "policy"),
    ("mailfrom", "error", 421, "4.7.0", "Our system has detected an unusual rate of unsolicited mail", "rate-limited"),
    ("mailfrom", "error", 421, "4.7.0", "rate limited, try again later", "rate-limited"),
    ("rcptto", "error", 450, "4.2.1", "The user you are trying to contact is receiving mail too quickly", "rate-limited"),
    ("rcptto", "error", 451, "4.7.1", "Greylisted, please try again in 300 seconds", "greylisted"),
    ("starttls", "error", None, None, "server does not offer STARTTLS and security is required", "tls-failure"),
    ("connect", "error", None, None, "Connection was refused by other side: 111: Connection refused.", "connection-failure"),
    ("connect", "timeout", None, None, "User timeout caused connection failure.", "timeout"),
    ("data", "timeout", None, None, "no reply from server in time", "timeout"),
    ("message", "lost", None, None, "connection lost", "connection-failure"),
    ("message", "error", 554, None, "Transaction failed", "other"),
])
def test_shipped_rules(state, result, code, enhanced, text, expected):
    assert SHIPPED.classify(state, result, code, enhanced, text) == expected


def test_the_shipped_rules_use_the_documented_classes_and_end_with_a_catch_all():
    assert {rule.classification for rule in SHIPPED.rules} == set(CLASSES)
    last = SHIPPED.rules[-1]
    assert last.classification == "other" and last.matches("x", "y", None, None, "")


def test_operator_rules_come_first(tmp_path):
    path = tmp_path / "rules.toml"
    path.write_text('[[rule]]\nclass = "spam-block"\ncode = "^421$"\ntext = "unusual rate"\n')
    classifier = Classifier.load(str(path))
    assert classifier.classify("mailfrom", "error", 421, "4.7.0", "an unusual rate of mail") == "spam-block"
    assert classifier.classify("mailfrom", "error", 421, "4.7.0", "rate limited") == "rate-limited"


@pytest.mark.parametrize(("text", "expected"), [
    ('[[rule]]\nclass = "x"\n\n[[rule]]\nclass = "y"\ncode = "(5"\n', "rules.toml:6: key rule[1].code: bad regular expression"),
    ('[[rule]]\nclass = "x"\nstatus = "5.1.1"\n', "rules.toml:3: key rule[0].status: unknown key"),
    ('[[rule]]\ncode = "^5"\n', "rules.toml:1: key rule[0].class: every rule names its class"),
    ('[[rule]]\nclass = "x"\nstate = "dns"\n', "rules.toml:3: key rule[0].state: expected a list of strings"),
    ('[rules]\nclass = "x"\n', "rules.toml:1: key rules: unknown key"),
    ('[[rule]\n', "rules.toml:1: "),
])
def test_rule_errors_name_file_line_and_key(text, expected):
    with pytest.raises(RulesError) as e:
        parse_rules(text, "rules.toml")
    assert str(e.value).startswith(expected)


def test_an_unreadable_rules_file_is_named(tmp_path):
    with pytest.raises(RulesError, match="missing.toml: cannot read"):
        read_rules(str(tmp_path / "missing.toml"))


def test_delivery_records_the_class_of_every_attempt_not_accepted():
    before = METRICS.class_counts()
    servers = {"10.0.0.1": ScriptedFactory(replies={"RCPT": ["452 4.2.2 mailbox over quota", "550 5.1.1 no such user"]})}
    svc, queue, net, reactor = make(servers, max_connections_per_domain=1, retry_interval=(60,))
    svc.startService()
    queue.publish([Publication("outbox", doc(f"u{i}@example.com")) for i in range(3)])
    net.run()
    (retried,) = queue.docs("retry")
    assert retried["results"][0]["classification"] == "mailbox-full"
    (failed,) = queue.docs("failure")
    assert failed["results"][0]["classification"] == "invalid-recipient"
    (delivered,) = queue.docs("success")
    assert "classification" not in delivered["results"][0]
    publish_time = reactor.seconds()
    queue.publish([Publication("outbox", doc("x@nowhere.example"))])
    net.run()
    nxdomain = [d for d in queue.docs("failure") if d["recipient"] == "x@nowhere.example"]
    assert nxdomain[0]["results"][0]["classification"] == "bad-domain" and reactor.seconds() == publish_time
    # /metrics counts attempts by destination, sending address and class.
    after = METRICS.class_counts()
    counted = {k: n - before.get(k, 0) for k, n in after.items() if n != before.get(k, 0)}
    assert counted == {
        ("example.com", "", "mailbox-full"): 1, ("example.com", "", "invalid-recipient"): 1,
        ("example.com", "", "accepted"): 1, ("nowhere.example", "", "bad-domain"): 1,
    }


def test_class_counts_add_up_across_worker_processes():
    from mqtwisted.metrics import Metrics

    worker, parent = Metrics(), Metrics()
    worker.classified("example.com", "127.0.0.2", "rate-limited")
    worker.classified("example.com", "127.0.0.2", "rate-limited")
    parent.classified("example.com", "127.0.0.2", "rate-limited")
    parent.worker_reported("w1", worker.snapshot({}))
    assert parent.class_counts() == {("example.com", "127.0.0.2", "rate-limited"): 3}
    parent.worker_ended("w1")  # an ended worker's counts stay
    assert parent.class_counts() == {("example.com", "127.0.0.2", "rate-limited"): 3}


def test_an_expired_message_is_classified_as_a_timeout():
    svc, queue, net, reactor = make({"10.0.0.1": ScriptedFactory(replies={"MAIL": ["451 4.3.0 later"] * 5})},
                                    max_delivertime=100, retry_interval=(60,))
    svc.startService()
    queue.publish([Publication("outbox", doc())])
    net.run()
    reactor.advance(60)
    net.run()
    (failed,) = queue.docs("failure")
    assert [r["classification"] for r in failed["results"]] == ["other", "other", "timeout"]


def test_a_bad_rules_file_stops_the_options_naming_file_and_line(tmp_path):
    from mqtwisted.options import ConfigError, MQOptions

    path = tmp_path / "rules.toml"
    path.write_text('[[rule]]\nclass = "x"\ntext = "(unclosed"\n')
    with pytest.raises(ConfigError, match=rf"--bounce-rules: {path}:3: key rule\[0\].text"):
        MQOptions().parseOptions([f"--bounce-rules={path}", f"--data-dir={tmp_path}"])
