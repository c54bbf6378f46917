"""The shaping component on its own: the file, rates, limits, rollup, automation, warm-up and
sending-IP choice, on a task.Clock (no reactor, no sockets)."""

from __future__ import annotations

import math
import textwrap

import pytest
from twisted.internet.task import Clock

from mqtwisted.results import reply_lines
from mqtwisted.shaping import (
    Limits,
    Rate,
    Shaper,
    ShapingError,
    UnknownPool,
    load_shaping,
    parse_shaping,
)
from mqtwisted.shaping.rates import parse_duration
from mqtwisted.toml_lines import key_lines, split_key

BASE = Limits(connection_limit=10, max_deliveries_per_connection=100, idle_timeout=5.0)

EXAMPLE = """\
[default]
connection_limit = 10
max_connection_rate = "600/min"
max_message_rate = "3000/min"
max_deliveries_per_connection = 100
idle_timeout = "5s"

["example.net"]
connection_limit = 2
max_message_rate = "120/min"

["example.net".sources."127.0.0.3"]
max_message_rate = "30/min"

[["example.net".automation]]
regex = '^421 .*(rate|too many)'
action = "suspend"
duration = "60s"

[sources."127.0.0.2"]
ehlo_domain = "mta2.example.org"
[pools.bulk]
sources = ["127.0.0.2", "127.0.0.3:3"]

[warmup."127.0.0.3"]
schedule = ["50/day", "100/day", "500/day"]
"""


def shaper(text: str = "", clock: Clock | None = None, **kw) -> tuple[Shaper, Clock]:
    clock = clock or Clock()
    return Shaper(parse_shaping(textwrap.dedent(text), "shaping.toml"), BASE, clock=clock.seconds, **kw), clock


def error_of(text: str) -> str:
    with pytest.raises(ShapingError) as e:
        parse_shaping(textwrap.dedent(text), "shaping.toml")
    return str(e.value)


# -- the file --------------------------------------------------------------------------------------


def test_the_example_file_reads_as_written():
    config = parse_shaping(EXAMPLE, "shaping.toml")
    assert config.default.limits == Limits(10, Rate(600, 60), Rate(3000, 60), 100, 5.0)
    net = config.domains["example.net"]
    assert net.limits.connection_limit == 2 and net.limits.max_message_rate == Rate(120, 60)
    assert net.sources["127.0.0.3"].max_message_rate == Rate(30, 60)
    (rule,) = net.automation
    assert (rule.action, rule.duration, rule.where) == ("suspend", 60.0, "shaping.toml:15")
    assert config.ehlo == {"127.0.0.2": "mta2.example.org"}
    assert config.pools == {"bulk": (("127.0.0.2", 1), ("127.0.0.3", 3))}
    assert [str(r) for r in config.warmup["127.0.0.3"]] == ["50/day", "100/day", "500/day"]


def test_no_file_is_the_options_behaviour():
    s, _ = shaper()
    assert s.limits(None, "example.com") == BASE
    assert s.choose_source(None, None).address is None
    for _ in range(10):
        assert s.may_connect(None, "example.com") == 0
    assert s.may_connect(None, "example.com") == math.inf
    assert s.may_send(None, "example.com") == 0 and s.may_send(None, "example.com") == 0


@pytest.mark.parametrize(("text", "expected"), [
    ('[default]\nconnection_limit = 10\nconection_rate = "1/s"\n',
     "shaping.toml:3: key default.conection_rate: unknown key"),
    ('[default]\n\n["example.net"]\nmax_message_rate = "120/fortnight"\n',
     'shaping.toml:4: key "example.net".max_message_rate: expected a rate'),
    ('["example.net".sources."127.0.0.3"]\nmax_message_rate = "0/min"\n',
     'shaping.toml:2: key "example.net".sources."127.0.0.3".max_message_rate: a rate must allow'),
    ('["example.net".sources."mta3"]\nmax_message_rate = "1/min"\n',
     'shaping.toml:1: key "example.net".sources.mta3: expected an IP address'),
    ('[[default.automation]]\nregex = "x"\naction = "suspend"\nduration = "1s"\n'
     '[[default.automation]]\nregex = "y"\naction = "pause"\n',
     "shaping.toml:7: key default.automation[1].action: expected one of suspend, bounce, set_config"),
    ('[[default.automation]]\nregex = "(unclosed"\naction = "bounce"\n',
     "shaping.toml:2: key default.automation[0].regex: bad regular expression"),
    ('[[default.automation]]\nregex = "x"\naction = "suspend"\n',
     "shaping.toml:1: key default.automation[0]: missing duration"),
    ('[[default.automation]]\nregex = "x"\naction = "set_config"\nduration = "1h"\nname = "speed"\nvalue = 1\n',
     "shaping.toml:5: key default.automation[0].name: expected one of connection_limit"),
    ('[pools.bulk]\nsources = ["127.0.0.2:0"]\n', "shaping.toml:2: key pools.bulk.sources: expected \"ip\" or \"ip:weight\""),
    ('[warmup."127.0.0.3"]\nschedule = []\n', 'shaping.toml:2: key warmup."127.0.0.3".schedule: expected a list'),
    ('[sources."127.0.0.2"]\nehlo = "x"\n', 'shaping.toml:2: key sources."127.0.0.2".ehlo: unknown key'),
    ('[default]\nconnection_limit = 0\n', "shaping.toml:2: key default.connection_limit: expected a whole number"),
    ('[default]\nidle_timeout = "soon"\n', "shaping.toml:2: key default.idle_timeout: expected a duration"),
    ('[default]\nmx_rollup = "yes"\n', "shaping.toml:2: key default.mx_rollup: expected true or false"),
    ('[default]\nconnection_limit = = 3\n', "shaping.toml:2: "),
])
def test_errors_name_file_line_and_key(text, expected):
    assert error_of(text).startswith(expected)


def test_load_names_the_file(tmp_path):
    path = tmp_path / "shaping.toml"
    path.write_text('["example.net"]\n\nconnection_limit = "two"\n')
    with pytest.raises(ShapingError, match=rf"^{path}:3: key \"example.net\".connection_limit"):
        load_shaping(str(path))
    with pytest.raises(ShapingError, match="cannot read shaping file"):
        load_shaping(str(tmp_path / "missing.toml"))


def test_key_lines_follow_quoted_dotted_and_array_keys():
    lines = key_lines('[a]\nx = 1\n["b.c".d]\n"e.f" = 2\n[[g.h]]\ni = 3\n[[g.h]]\ni = 4\n')
    assert lines[("a", "x")] == 2
    assert lines[("b.c", "d", "e.f")] == 4
    assert lines[("g", "h", 0, "i")] == 6 and lines[("g", "h", 1, "i")] == 8
    assert split_key(' "x.y" . z ') == ("x.y", "z")


def test_durations_and_rates():
    assert [parse_duration(v) for v in ("60s", "5m", "1h", "2d", "500ms", 7, "1.5")] == [60, 300, 3600, 172800, 0.5, 7, 1.5]
    assert [Rate.parse(v).interval for v in ("10/s", "120/min", "3600/h", "86400/day")] == [0.1, 0.5, 1, 1]


# -- rates -----------------------------------------------------------------------------------------


def test_message_rate_is_smooth_with_exact_spacing():
    s, clock = shaper('[default]\nmax_message_rate = "120/min"\n')
    sent = []
    while clock.seconds() < 120:
        wait = s.may_send("", "site")
        if wait == 0:
            sent.append(clock.seconds())
        else:
            clock.advance(wait)
    # 0.5 s apart from the first message on: no burst when a new minute starts.
    assert len(sent) == 240
    gaps = {round(b - a, 9) for a, b in zip(sent, sent[1:], strict=False)}
    assert gaps == {0.5}
    in_any_minute = max(sum(1 for t in sent if start <= t < start + 60) for start in sent)
    assert in_any_minute == 120


def test_a_refused_message_is_not_counted_and_idle_time_builds_no_burst():
    s, clock = shaper('[default]\nmax_message_rate = "1/s"\n')
    assert s.may_send("", "site") == 0
    assert s.may_send("", "site") == pytest.approx(1.0)
    assert s.send_wait("", "site") == pytest.approx(1.0)
    clock.advance(0.25)
    assert s.may_send("", "site") == pytest.approx(0.75)
    clock.advance(3600)  # an hour of silence saves nothing up
    assert s.may_send("", "site") == 0
    assert s.may_send("", "site") == pytest.approx(1.0)


def test_connection_limit_and_rate():
    s, clock = shaper('[default]\nconnection_limit = 2\nmax_connection_rate = "2/s"\n')
    assert s.may_connect("", "site") == 0
    assert s.may_connect("", "site") == pytest.approx(0.5)
    clock.advance(0.5)
    assert s.may_connect("", "site") == 0
    clock.advance(0.5)
    assert s.may_connect("", "site") == math.inf  # two open: wait for a close
    s.connection_closed("", "site")
    assert s.connections("", "site") == 1
    assert s.may_connect("", "site") == 0


# -- destinations, sources, rollup -----------------------------------------------------------------


def test_limits_per_source_at_a_destination_override_the_destination_and_default():
    s, _ = shaper(EXAMPLE)
    site = s.site("example.net", ["mx1.example.net", "mx2.example.net"])
    assert s.limits("127.0.0.9", site).max_message_rate == Rate(120, 60)
    assert s.limits("127.0.0.3", site).max_message_rate == Rate(30, 60)
    assert s.limits("127.0.0.3", site).connection_limit == 2
    assert s.limits("127.0.0.3", "other.org").max_message_rate == Rate(3000, 60)


def test_domains_with_the_same_mx_hosts_share_limits_and_counters():
    s, _ = shaper('["example.net"]\nconnection_limit = 2\n')
    a = s.site("example.net", ["mx2.provider.test", "mx1.provider.test"])
    b = s.site("other.org", ["MX1.provider.test.", "mx2.provider.test"])
    assert a == b == "mx:mx1.provider.test,mx2.provider.test"
    assert s.limits("", b).connection_limit == 2
    assert s.may_connect("", a) == 0 and s.may_connect("", b) == 0
    assert s.may_connect("", b) == math.inf
    assert s.may_connect("10.0.0.1", b) == 0  # another sending IP has its own counters


def test_without_rollup_each_domain_is_its_own_site():
    s, _ = shaper('["example.net"]\nmx_rollup = false\nconnection_limit = 1\n')
    assert s.site("example.net", ["mx.provider.test"]) == "example.net"
    assert s.site("other.org", ["mx.provider.test"]) == "mx:mx.provider.test"
    assert s.limits("", "example.net").connection_limit == 1
    assert s.limits("", "mx:mx.provider.test").connection_limit == 10
    assert s.configured_domains() == []


# -- automation ------------------------------------------------------------------------------------


def test_suspend_matches_any_line_of_a_multiline_reply_and_lasts_its_duration():
    s, clock = shaper(EXAMPLE)
    site = s.site("example.net", ["mx.example.net"])
    lines = reply_lines(421, b"4.7.0 Service not available\n4.7.0 Too many messages, rate limited")
    assert lines == ("421 4.7.0 Service not available", "421 4.7.0 Too many messages, rate limited")
    (fired,) = s.observe_reply("127.0.0.2", site, lines)
    assert fired.action == "suspend" and fired.line.endswith("rate limited")
    assert s.may_send("127.0.0.2", site) == pytest.approx(60)
    assert s.may_connect("127.0.0.2", site) == pytest.approx(60)
    assert s.may_send("127.0.0.3", site) == 0  # only that sending IP is suspended
    clock.advance(59)
    assert s.send_wait("127.0.0.2", site) == pytest.approx(1)
    clock.advance(1)
    assert s.may_send("127.0.0.2", site) == 0


def test_rules_match_code_first_and_default_rules_apply_everywhere():
    s, _ = shaper("""\
        [[default.automation]]
        regex = '^550 5\\.7\\.1 .*blocked'
        action = "bounce"

        [[default.automation]]
        regex = '^451 .*greylist'
        action = "set_config"
        name = "max_message_rate"
        value = "1/min"
        duration = "10m"
    """)
    assert s.observe_reply("", "site", reply_lines(250, "2.0.0 blocked ok")) == []
    assert s.observe_reply("", "site", reply_lines(421, "4.7.0 rate limited")) == []
    (fired,) = s.observe_reply("", "site", reply_lines(550, "5.7.1 you are blocked"))
    assert fired.action == "bounce"
    assert s.may_send("", "site") == 0  # bounce fails that message only
    (fired,) = s.observe_reply("", "site", reply_lines(451, "4.7.1 greylisted, try later"))
    assert s.limits("", "site").max_message_rate == Rate(1, 60)
    assert s.may_send("", "site") == 0 and s.may_send("", "site") == pytest.approx(60)


def test_set_config_ends_after_its_duration():
    s, clock = shaper('[[default.automation]]\nregex = "^421"\naction = "set_config"\n'
                      'name = "connection_limit"\nvalue = 1\nduration = "10m"\n')
    s.observe_reply("", "site", ["421 4.7.0 too many connections"])
    assert s.limits("", "site").connection_limit == 1
    clock.advance(600)
    assert s.limits("", "site").connection_limit == 10


# -- warm-up ---------------------------------------------------------------------------------------


def test_warmup_daily_counts_follow_the_schedule_and_idle_days_do_not_count():
    s, clock = shaper('[warmup."127.0.0.3"]\nschedule = ["50/day", "100/day", "500/day"]\n')
    clock.advance(10 * 86400 + 3600)  # some day, 01:00 UTC

    def send_all_day() -> int:
        """Send as much as allowed until the day ends; the count sent."""
        day_end = (clock.seconds() // 86400 + 1) * 86400
        sent = 0
        while clock.seconds() < day_end:
            wait = s.may_send("127.0.0.3", "site")
            if wait:
                clock.advance(min(wait, day_end - clock.seconds()))
            else:
                sent += 1
        return sent

    assert send_all_day() == 50
    assert send_all_day() == 100
    clock.advance(3 * 86400)  # three days without sending: still day 3 next
    assert send_all_day() == 500
    assert send_all_day() == 500  # the last entry repeats
    assert s.may_send("127.0.0.9", "site") == 0  # an IP without a schedule is not held


def test_warmup_waits_until_the_next_day():
    s, clock = shaper('[warmup."127.0.0.3"]\nschedule = ["2/day"]\n')
    clock.advance(86400 + 80000)
    assert s.may_send("127.0.0.3", "a") == 0 and s.may_send("127.0.0.3", "b") == 0
    assert s.may_send("127.0.0.3", "a") == pytest.approx(6400)


# -- sending addresses -----------------------------------------------------------------------------


def test_pool_weights_spread_messages_per_message():
    s, _ = shaper(EXAMPLE)
    picks = [s.choose_source(None, "bulk") for _ in range(40)]
    addresses = [p.address for p in picks]
    assert addresses.count("127.0.0.3") == 30 and addresses.count("127.0.0.2") == 10
    assert "127.0.0.2" in addresses[:4]  # interleaved, not 30 in a row
    assert {p.ehlo for p in picks if p.address == "127.0.0.2"} == {"mta2.example.org"}
    assert {p.ehlo for p in picks if p.address == "127.0.0.3"} == {None}


def test_source_order_ips_then_pool_then_option_then_default_pool():
    text = '[pools.default]\nsources = ["127.0.0.7"]\n[pools.bulk]\nsources = ["127.0.0.2"]\n'
    s, _ = shaper(text)
    assert s.choose_source(["127.0.0.5", "127.0.0.6"], "bulk").address == "127.0.0.5"
    assert s.choose_source(["127.0.0.5", "127.0.0.6"], "bulk").address == "127.0.0.6"
    assert s.choose_source(None, "bulk").address == "127.0.0.2"
    assert s.choose_source(None, None).address == "127.0.0.7"
    s2, _ = shaper(text, default_ips=["127.0.0.8"])
    assert s2.choose_source(None, None).address == "127.0.0.8"
    with pytest.raises(UnknownPool, match="'nope'"):
        s.choose_source(None, "nope")


def test_reconfigure_keeps_counters_and_suspensions():
    s, clock = shaper(EXAMPLE)
    site = s.site("example.net", ["mx.example.net"])
    s.observe_reply("", site, ["421 4.7.0 rate limited"])
    assert s.may_connect("", site) == pytest.approx(60)
    s.reconfigure(parse_shaping('["example.net"]\nconnection_limit = 1\n'), BASE)
    assert s.may_connect("", site) == pytest.approx(60)
    clock.advance(60)
    s.site("example.net", ["mx.example.net"])
    assert s.may_connect("", site) == 0 and s.may_connect("", site) == math.inf


def test_a_bad_shaping_file_stops_the_options_naming_file_and_line(tmp_path):
    from mqtwisted.options import ConfigError, MQOptions

    path = tmp_path / "shaping.toml"
    path.write_text('[default]\nconnection_limit = 2\n\n["example.net"]\nmax_message_rate = "fast"\n')
    with pytest.raises(ConfigError, match=rf'--shaping: {path}:5: key "example.net".max_message_rate'):
        MQOptions().parseOptions([f"--shaping={path}", f"--data-dir={tmp_path}"])
    path.write_text('["example.net"]\nmax_message_rate = "60/min"\n')
    options = MQOptions()
    options.parseOptions([f"--shaping={path}", "--smtp-defaultips=127.0.0.2, 127.0.0.3", f"--data-dir={tmp_path}"])
    assert options["smtp-defaultips"] == ["127.0.0.2", "127.0.0.3"]


def test_limits_asked_before_a_site_is_known_as_a_configured_domain_change_when_it_is():
    s, _ = shaper(EXAMPLE)
    site = "mx:mx.example.net"
    assert s.limits("", site).connection_limit == 10  # merged and kept: [default] only
    assert s.site("example.net", ["mx.example.net"]) == site
    assert s.limits("", site).connection_limit == 2  # now example.net's
