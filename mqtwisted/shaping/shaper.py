"""The shaper: what delivery asks before it opens a connection or sends a message, and tells
about each reply.  No I/O and no reactor: times come from the ``clock`` it is given, counters
live in a :class:`~mqtwisted.shaping.store.Store`.

Counters are kept per (sending IP, site).  A site is a destination as the receivers see it: with
``mx_rollup`` (the default) the sorted set of a domain's MX hosts, so every domain served by the
same MX hosts shares one set of limits and counters; without it, the domain itself.

Answers are seconds to wait: 0 means go (and the connection or message is counted), a positive
number means ask again that much later, ``math.inf`` means wait until a connection closes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import attrs
from twisted.logger import Logger

from mqtwisted.shaping.automation import matching
from mqtwisted.shaping.config import DestinationShaping, Limits, Rule, ShapingConfig
from mqtwisted.shaping.sources import Source, SourceChooser
from mqtwisted.shaping.store import MemoryStore, Store
from mqtwisted.shaping.warmup import day_of, warmup_wait

log = Logger()

#: what the MTA's own options say when the shaping file says nothing
BASE_LIMITS = Limits(connection_limit=10, max_deliveries_per_connection=100, idle_timeout=5.0)


@attrs.frozen
class Fired:
    """An automation rule that matched a reply: delivery fails the message for good on
    ``bounce``; the shaper has already applied ``suspend`` and ``set_config``."""

    rule: Rule
    line: str

    @property
    def action(self) -> str:
        return self.rule.action


class Shaper:
    """Traffic shaping for one delivery service (see the module docstring)."""

    def __init__(self, config: ShapingConfig | None = None, base: Limits = BASE_LIMITS, *,
                 clock: Callable[[], float], store: Store | None = None,
                 default_ips: Sequence[str] = ()) -> None:
        self.clock = clock
        self.store: Store = store if store is not None else MemoryStore()
        #: site -> the configured domain whose limits it uses (learned from MX resolutions)
        self.site_domains: dict[str, str] = {}
        #: (source, site) -> limit name -> (value, until): set_config actions in force
        self.overrides: dict[tuple[str, str], dict[str, tuple[Any, float]]] = {}
        self.reconfigure(config or ShapingConfig(), base, default_ips)

    def reconfigure(self, config: ShapingConfig, base: Limits = BASE_LIMITS, default_ips: Sequence[str] = ()) -> None:
        """A new file or new options: counters, suspensions and warm-up days carry on."""
        self.config = config
        self.base = base
        self.chooser = SourceChooser(config.pools, config.ehlo, default_ips)
        self.site_domains = {}
        #: (source, site) -> the limits the file and options give it (set_config overrides apart)
        self.configured: dict[tuple[str, str], Limits] = {}

    # -- destinations ----------------------------------------------------------------------------

    def rollup(self, domain: str) -> bool:
        own = self.config.domains.get(domain)
        if own is not None and own.mx_rollup is not None:
            return own.mx_rollup
        return self.config.default.mx_rollup is not False

    def site(self, domain: str, mx_hosts: Sequence[str]) -> str:
        """The site of ``domain`` whose MX hosts are ``mx_hosts`` (a smarthost: its host name)."""
        domain = domain.lower().rstrip(".")
        if not mx_hosts or not self.rollup(domain):
            return domain
        site = "mx:" + ",".join(sorted({h.lower().rstrip(".") for h in mx_hosts}))
        if domain in self.config.domains and self.site_domains.get(site) != domain:
            self.site_domains[site] = domain
            self.configured.clear()  # the site's limits are now that domain's
        return site

    def configured_domains(self) -> list[str]:
        """Domains with their own table that roll up: resolving them early lets every domain
        that shares their MX hosts use their limits from its first message."""
        return [d for d in self.config.domains if self.rollup(d)]

    def destination(self, site: str) -> DestinationShaping | None:
        return self.config.domains.get(self.site_domains.get(site, site))

    def limits(self, source: str | None, site: str) -> Limits:
        """Every limit that applies to ``source`` at ``site`` (each one set)."""
        src = source or ""
        limits = self.configured.get((src, site))
        if limits is None:
            # Asked twice per message: the file's levels are merged once per (source, site) and
            # kept until the file, the options or the site's domain change.
            default, own = self.config.default, self.destination(site)
            levels = [default.limits, default.sources.get(src, Limits())]
            if own is not None:
                levels += [own.limits, own.sources.get(src, Limits())]
            limits = self.base
            for level in levels:
                limits = level.over(limits)
            self.configured[(src, site)] = limits
        overrides = self.overrides.get((src, site))
        if not overrides:
            return limits
        now = self.clock()
        for name, (value, until) in list(overrides.items()):
            if until <= now:
                del overrides[name]
            else:
                limits = attrs.evolve(limits, **{name: value})
        return limits

    # -- connections -----------------------------------------------------------------------------

    def may_connect(self, source: str | None, site: str) -> float:
        """May a new connection from ``source`` to ``site`` start now?  0: yes, and it is counted
        until :meth:`connection_closed`."""
        key = (source or "", site)
        now = self.clock()
        wait = self.held(key, now)
        if wait:
            return wait
        limits = self.limits(source, site)
        rate = limits.max_connection_rate
        if rate is not None:
            wait = self.store.pace(("connect", *key), now, rate.interval, take=False)
            if wait:
                return wait
        if not self.store.acquire(("connections", *key), limits.connection_limit or 1):
            return math.inf
        if rate is not None:
            wait = self.store.pace(("connect", *key), now, rate.interval, take=True)
            if wait:  # another node took the slot meanwhile (shared store)
                self.store.release(("connections", *key))
                return wait
        return 0.0

    def connection_closed(self, source: str | None, site: str) -> None:
        self.store.release(("connections", source or "", site))

    def connections(self, source: str | None, site: str) -> int:
        return self.store.held(("connections", source or "", site))

    # -- messages --------------------------------------------------------------------------------

    def send_wait(self, source: str | None, site: str) -> float:
        """Seconds until a message from ``source`` to ``site`` may be sent (nothing counted)."""
        return self._send(source, site, take=False)

    def may_send(self, source: str | None, site: str) -> float:
        """May a message go now?  0: yes, and it counts against the rates and the warm-up."""
        return self._send(source, site, take=True)

    def _send(self, source: str | None, site: str, take: bool) -> float:
        key = (source or "", site)
        now = self.clock()
        wait = self.held(key, now)
        if wait:
            return wait
        schedule = self.config.warmup.get(source or "")
        if schedule is not None:
            wait = warmup_wait(schedule, self.store.days(("warmup", source)), now)
            if wait:
                return wait
        rate = self.limits(source, site).max_message_rate
        if rate is not None:
            wait = self.store.pace(("message", *key), now, rate.interval, take=take)
            if wait:
                return wait
        if take and schedule is not None:
            self.store.count_day(("warmup", source), day_of(now))
        return 0.0

    def held(self, key: tuple[str, str], now: float) -> float:
        hold = self.store.held_until(("suspend", *key), now)
        return 0.0 if hold is None else hold[0] - now

    def suspended(self, source: str | None, site: str) -> tuple[float, str] | None:
        """(until, why) while automation holds ``source`` at ``site``."""
        return self.store.held_until(("suspend", source or "", site), self.clock())

    # -- replies ---------------------------------------------------------------------------------

    def observe_reply(self, source: str | None, site: str, lines: Sequence[str]) -> list[Fired]:
        """Run the automation rules of ``site`` (its own first, then ``[default]``'s) over a reply
        (``lines`` as ``"code text"``); suspensions and config changes take effect here."""
        own = self.destination(site)
        rules = (*(own.automation if own is not None else ()), *self.config.default.automation)
        if not rules:
            return []
        key = (source or "", site)
        now = self.clock()
        fired = []
        for rule, line in matching(rules, lines):
            fired.append(Fired(rule, line))
            log.info("automation {where}: {action} for {source} at {site} ({line})",
                     where=rule.where, action=rule.action, source=key[0] or "any", site=site, line=line)
            if rule.action == "suspend":
                self.store.hold(("suspend", *key), now + rule.duration, line)
            elif rule.action == "set_config":
                assert rule.name is not None
                self.overrides.setdefault(key, {})[rule.name] = (rule.value, now + rule.duration)
        return fired

    # -- sending addresses -----------------------------------------------------------------------

    def choose_source(self, ips: Sequence[str] | None, pool: str | None) -> Source:
        """A message's sending address and EHLO name (UnknownPool for a pool not in the file)."""
        return self.chooser.choose(ips, pool)
