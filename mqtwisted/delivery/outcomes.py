"""Outcome routing: what an attempt's outcome publishes, decided without I/O.

* accepted → ``results`` + ``success``; when the next hop did not offer DSN and NOTIFY names
  SUCCESS, a "relayed" report to ``dsn`` (the obligation ends here: nobody further on will report);
* permanent failure (5xx, NXDOMAIN, null MX, invalid input, expiry) → ``results`` + ``failure``
  and, unless the envelope is empty or NOTIFY says otherwise, an RFC 3464 report to ``dsn``;
* temporary failure (4xx, connection faults, TLS policy) → back to ``outbox`` with
  ``nextattempt`` from the retry schedule, and a copy to ``retry``; the first such failure
  ``delay-warning-time`` after the message arrived writes a "delayed" report to ``dsn`` when
  NOTIFY names DELAY, and marks the document (``delaywarning``) in the same settle, so no retry
  writes a second;
* a temporary failure with no time or attempts left is final: a ``process``/``timeout`` record
  follows it and it is routed as a permanent one.

A message's ``queues`` redirect its results; ``keepmime`` keeps the MIME in result copies.
"""

from __future__ import annotations

from mqtwisted import bounce
from mqtwisted.delivery.options import DeliveryOptions
from mqtwisted.document import OutgoingDocument, usable
from mqtwisted.queue import Publication
from mqtwisted.results import Attempt, retry_interval

EXPIRED = "message expired (maxdelivertime or maxattempts)"


def deadline(doc: OutgoingDocument, now: float, options: DeliveryOptions) -> float:
    """When delivery of ``doc`` gives up: its ``maxdelivertime`` (MailerQ gives a timestamp; a
    small number is read as seconds after the first attempt), else ``max-delivertime`` seconds
    after the first attempt (``now`` when there was none)."""
    first = doc.first_attempt_time()
    first = now if first is None else first
    explicit = doc.maxdelivertime
    if explicit is not None:
        return explicit if explicit > 1e9 else first + explicit
    return first + options.max_delivertime


def attempts_left(doc: OutgoingDocument, options: DeliveryOptions) -> bool:
    limit = doc.maxattempts if doc.maxattempts is not None else options.max_attempts
    return not limit or doc.attempt_count() < limit


def expired(doc: OutgoingDocument, now: float, options: DeliveryOptions) -> bool:
    """Whether ``doc`` has run out of time or attempts before this one."""
    return now >= deadline(doc, now, options) or not attempts_left(doc, options)


def expiry(now: float) -> Attempt:
    return Attempt("process", "timeout", description=EXPIRED, time=now, permanent=True, classification="timeout")


def after_attempt(doc: OutgoingDocument, attempt: Attempt, now: float, options: DeliveryOptions,
                  reporting_mta: str) -> list[Publication]:
    """The publications that settle ``doc`` (as leased) after ``attempt``."""
    updated = doc.with_attempt(attempt.as_record())
    if attempt.accepted or attempt.is_permanent:
        return final(updated, attempt, now, options, reporting_mta)
    schedule = doc.retries or options.retry_interval
    interval = retry_interval(updated.attempt_count(), schedule)
    if not attempts_left(updated, options) or now + interval >= deadline(doc, now, options):
        updated = updated.with_attempt(expiry(now).as_record())
        return final(updated, attempt, now, options, reporting_mta)
    updated.nextattempt = now + interval
    pubs = []
    if delay_warning_due(updated, now, options):
        updated.delaywarning = now
        pubs += _report(updated, bounce.delayed(attempt, deadline(doc, now, options)), now, options, reporting_mta)
    pubs.append(Publication(options.queue("outbox"), updated.json))
    retry = updated.result_queue("retry", options.queue("retry"))
    if retry:
        pubs.append(Publication(retry, updated.result_copy()))
    return pubs


def final(doc: OutgoingDocument, attempt: Attempt, now: float, options: DeliveryOptions,
          reporting_mta: str) -> list[Publication]:
    """The publications of a final outcome; ``doc`` has its last attempt recorded (a copy of the
    leased document, made by ``with_attempt``: it is changed here), ``attempt`` is the one that
    decided (reported in the DSN).  ``doc`` may be one that failed its check: its unusable
    properties are read as absent."""
    doc.nextattempt = None
    outcome = "success" if attempt.accepted else "failure"
    copy = doc.result_copy()
    pubs = []
    for role in ("results", outcome):
        queue = usable(lambda role=role: doc.result_queue(role, options.queue(role)), options.queue(role))
        if queue:
            pubs.append(Publication(queue, copy))
    if outcome == "failure" and doc.has_mime and bounce.wants_report(doc, "failed"):
        pubs += _report(doc, bounce.failed(attempt), now, options, reporting_mta)
    elif attempt.accepted and not attempt.dsn and bounce.wants_report(doc, "relayed"):
        pubs += _report(doc, bounce.relayed(attempt), now, options, reporting_mta)
    return pubs


def delay_warning_due(doc: OutgoingDocument, now: float, options: DeliveryOptions) -> bool:
    """Whether ``doc``, failed for now, gets its one "delayed" report: ``delay-warning-time`` has
    passed since it arrived (its ``received``, else its first attempt), it has had none, and its
    sender asked with NOTIFY=DELAY."""
    if not options.delay_warning_time or usable(lambda: doc.delaywarning, None) is not None:
        return False
    since = usable(lambda: doc.received, None)
    if since is None:
        first = doc.first_attempt_time()
        since = now if first is None else first
    return now - since >= options.delay_warning_time and bounce.wants_report(doc, "delayed")


def _report(doc: OutgoingDocument, notice: bounce.Notice, now: float, options: DeliveryOptions,
            reporting_mta: str) -> list[Publication]:
    """The report of ``notice`` on ``doc``'s ``dsn`` queue (none when its ``queues`` disable it)."""
    queue = usable(lambda: doc.result_queue("dsn", options.queue("dsn")), options.queue("dsn"))
    return [Publication(queue, bounce.build_report(doc, notice, reporting_mta=reporting_mta, now=now))] if queue else []
