"""Result timestamps: MailerQ's ``YYYY-MM-DD HH:MM:SS`` in UTC, and back."""

from __future__ import annotations

import datetime

import pytest

from mqtwisted.jsonvalues import format_time, parse_time


@pytest.mark.parametrize("seconds", [0, 1.5, -0.5, 1795590000.0, 1795590000.999, 1795590001.0, 1795590000.2, 86399.9])
def test_format_time_is_utc_to_the_second(seconds):
    expected = datetime.datetime.fromtimestamp(seconds, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S")
    assert format_time(seconds) == expected


def test_format_time_alternating_seconds():
    # The last formatted second is remembered: going back and forth must not return a stale one.
    assert [format_time(t) for t in (10.0, 11.0, 10.5, 11.9)] == [
        "1970-01-01 00:00:10", "1970-01-01 00:00:11", "1970-01-01 00:00:10", "1970-01-01 00:00:11"]


def test_parse_time_reads_what_format_time_writes():
    assert parse_time(format_time(1795590000.7) + "Z") == 1795590000.0
    assert parse_time("2026-11-25T08:00:00+00:00") == parse_time("2026-11-25 08:00:00")
    assert parse_time(12) == 12.0 and parse_time("12.5") == 12.5
    assert parse_time("soon") is None and parse_time(True) is None
