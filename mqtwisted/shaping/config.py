"""The shaping file: TOML with KumoMTA's ``shaping.toml`` key names, read into plain values.

Top-level tables: ``[default]`` (every destination), ``["domain"]`` (one destination, with
``["domain".sources."ip"]`` for one sending IP there and ``[["domain".automation]]`` rules),
``[sources."ip"]`` (sending IPs: ``ehlo_domain``), ``[pools.NAME]`` (``sources`` with weights) and
``[warmup."ip"]`` (``schedule``).  Unknown keys are errors, and every error names the file, the
line and the key.  Every value has a default, so an empty file (or none) changes nothing.
"""

from __future__ import annotations

import ipaddress
import re
import tomllib
from collections.abc import Callable, Mapping
from typing import Any

import attrs

from mqtwisted.shaping.rates import Rate, parse_duration
from mqtwisted.toml_lines import Path, dotted, key_lines, locate


class ShapingError(ValueError):
    """The shaping file is unusable; the message reads ``FILE:LINE: key K: problem``."""


def _count(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"expected a whole number of at least 1, got {value!r}")
    return value


def _rate(value: Any) -> Rate:
    return Rate.parse(value)


def _boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {value!r}")
    return value


def _text(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"expected a non-empty string, got {value!r}")
    return value


def ip_address(value: Any) -> str:
    """A sending IP as written in the file, normalised (``::1``, ``127.0.0.2``)."""
    try:
        return str(ipaddress.ip_address(str(value)))
    except ValueError:
        raise ValueError(f"expected an IP address, got {value!r}") from None


#: the limits a destination (or one sending IP at it) may set, and how each value is read
LIMIT_KEYS: dict[str, Callable[[Any], Any]] = {
    "connection_limit": _count,
    "max_connection_rate": _rate,
    "max_message_rate": _rate,
    "max_deliveries_per_connection": _count,
    "idle_timeout": parse_duration,
}

ACTIONS = ("suspend", "bounce", "set_config")


@attrs.frozen
class Limits:
    """Limits set at one level of the file; None: not set here (a level below decides)."""

    connection_limit: int | None = None
    max_connection_rate: Rate | None = None
    max_message_rate: Rate | None = None
    max_deliveries_per_connection: int | None = None
    idle_timeout: float | None = None

    def over(self, base: Limits) -> Limits:
        """These limits where set, ``base``'s elsewhere."""
        mine = attrs.asdict(self, recurse=False)
        return Limits(**{k: v if v is not None else getattr(base, k) for k, v in mine.items()})


@attrs.frozen
class Rule:
    """An automation rule: when a reply line matches ``regex``, do ``action``."""

    regex: re.Pattern[str]
    action: str
    #: seconds a suspension or a set_config lasts
    duration: float = 0.0
    #: set_config: the limit to change and its value while the rule holds
    name: str | None = None
    value: Any = None
    #: file:line of the rule, for the log line saying it fired
    where: str = ""


@attrs.frozen
class DestinationShaping:
    """``[default]`` or one ``["domain"]`` table."""

    limits: Limits = Limits()
    #: None: as ``[default]`` says (true when it says nothing)
    mx_rollup: bool | None = None
    #: per sending IP at this destination
    sources: Mapping[str, Limits] = attrs.field(factory=dict)
    automation: tuple[Rule, ...] = ()


@attrs.frozen
class ShapingConfig:
    """The whole file; ``ShapingConfig()`` is no file at all."""

    default: DestinationShaping = DestinationShaping()
    domains: Mapping[str, DestinationShaping] = attrs.field(factory=dict)
    #: sending IP -> its EHLO name (None: the MTA's hostname)
    ehlo: Mapping[str, str | None] = attrs.field(factory=dict)
    #: pool name -> (sending IP, weight) in file order
    pools: Mapping[str, tuple[tuple[str, int], ...]] = attrs.field(factory=dict)
    #: sending IP -> its daily allowance on day 1, 2, ... (the last repeats)
    warmup: Mapping[str, tuple[Rate, ...]] = attrs.field(factory=dict)
    path: str | None = None


def load_shaping(path: str) -> ShapingConfig:
    """Read and check the shaping file at ``path``; ShapingError says what is wrong and where."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ShapingError(f"{path}: cannot read shaping file: {e.strerror}") from e
    return parse_shaping(data.decode("utf-8", "replace"), path)


def parse_shaping(text: str, path: str = "<shaping>") -> ShapingConfig:
    """Read shaping TOML ``text`` (``path`` names it in errors)."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        m = re.search(r"\(at line (\d+), column \d+\)", str(e))
        message = re.sub(r"\s*\(at line \d+, column \d+\)", "", str(e))
        raise ShapingError(f"{path}:{m.group(1) if m else '?'}: {message}") from None
    return _Reader(path, key_lines(text)).read(data)


class _Reader:
    def __init__(self, path: str, lines: dict[Path, int]) -> None:
        self.path = path
        self.lines = lines

    def where(self, key: Path) -> str:
        line = locate(self.lines, key)
        return f"{self.path}:{line if line is not None else '?'}"

    def error(self, key: Path, problem: str) -> ShapingError:
        return ShapingError(f"{self.where(key)}: key {dotted(key)}: {problem}")

    def table(self, key: Path, value: Any) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.error(key, f"expected a table, got {value!r}")
        return value

    def value(self, key: Path, read: Callable[[Any], Any], value: Any) -> Any:
        try:
            return read(value)
        except ValueError as e:
            raise self.error(key, str(e)) from None

    def read(self, data: dict[str, Any]) -> ShapingConfig:
        default = self.destination(("default",), data.get("default", {}))
        ehlo = {}
        for ip, table in self.table(("sources",), data.get("sources", {})).items():
            key: Path = ("sources", ip)
            table = self.table(key, table)
            self.known(key, table, ("ehlo_domain",))
            name = table.get("ehlo_domain")
            ehlo[self.value(key, ip_address, ip)] = None if name is None else self.value((*key, "ehlo_domain"), _text, name)
        pools = {
            name: self.pool(("pools", name), table)
            for name, table in self.table(("pools",), data.get("pools", {})).items()
        }
        warmup = {}
        for ip, table in self.table(("warmup",), data.get("warmup", {})).items():
            key = ("warmup", ip)
            table = self.table(key, table)
            self.known(key, table, ("schedule",))
            schedule = table.get("schedule")
            if not isinstance(schedule, list) or not schedule:
                raise self.error((*key, "schedule"), "expected a list of daily rates like [\"50/day\", \"100/day\"]")
            warmup[self.value(key, ip_address, ip)] = tuple(
                self.value((*key, "schedule"), _rate, entry) for entry in schedule
            )
        domains = {
            name.lower().rstrip("."): self.destination((name,), table)
            for name, table in data.items()
            if name not in ("default", "sources", "pools", "warmup")
        }
        return ShapingConfig(default, domains, ehlo, pools, warmup, self.path)

    def known(self, key: Path, table: Mapping[str, Any], allowed: tuple[str, ...]) -> None:
        for name in table:
            if name not in allowed:
                raise self.error((*key, name), f"unknown key (expected one of: {', '.join(allowed)})")

    def limits(self, key: Path, table: Mapping[str, Any]) -> Limits:
        return Limits(**{
            name: self.value((*key, name), read, table[name])
            for name, read in LIMIT_KEYS.items() if name in table
        })

    def destination(self, key: Path, table: Any) -> DestinationShaping:
        table = self.table(key, table)
        self.known(key, table, (*LIMIT_KEYS, "mx_rollup", "sources", "automation"))
        sources = {}
        for ip, limits in self.table((*key, "sources"), table.get("sources", {})).items():
            at: Path = (*key, "sources", ip)
            limits = self.table(at, limits)
            self.known(at, limits, tuple(LIMIT_KEYS))
            sources[self.value(at, ip_address, ip)] = self.limits(at, limits)
        rules = table.get("automation", [])
        if not isinstance(rules, list):
            raise self.error((*key, "automation"), "expected [[...automation]] tables")
        rollup = table.get("mx_rollup")
        return DestinationShaping(
            self.limits(key, table),
            None if rollup is None else self.value((*key, "mx_rollup"), _boolean, rollup),
            sources,
            tuple(self.rule((*key, "automation", i), rule) for i, rule in enumerate(rules)),
        )

    def rule(self, key: Path, table: Any) -> Rule:
        table = self.table(key, table)
        self.known(key, table, ("regex", "action", "duration", "name", "value"))
        for required in ("regex", "action"):
            if required not in table:
                raise self.error(key, f"missing {required}")
        try:
            regex = re.compile(self.value((*key, "regex"), _text, table["regex"]))
        except re.error as e:
            raise self.error((*key, "regex"), f"bad regular expression: {e}") from None
        action = table["action"]
        if action not in ACTIONS:
            raise self.error((*key, "action"), f"expected one of {', '.join(ACTIONS)}, got {action!r}")
        duration = 0.0
        if action == "bounce":
            if "duration" in table:
                raise self.error((*key, "duration"), "bounce fails the message that got the reply; it takes no duration")
        elif "duration" not in table:
            raise self.error(key, f"missing duration (how long {action} lasts)")
        else:
            duration = self.value((*key, "duration"), parse_duration, table["duration"])
        name = value = None
        if action == "set_config":
            for required in ("name", "value"):
                if required not in table:
                    raise self.error(key, f"set_config needs {required}")
            name = table["name"]
            if name not in LIMIT_KEYS:
                raise self.error((*key, "name"), f"expected one of {', '.join(LIMIT_KEYS)}, got {name!r}")
            value = self.value((*key, "value"), LIMIT_KEYS[name], table["value"])
        else:
            for extra in ("name", "value"):
                if extra in table:
                    raise self.error((*key, extra), f"only set_config takes {extra}")
        return Rule(regex, action, duration, name, value, self.where(key))

    def pool(self, key: Path, table: Any) -> tuple[tuple[str, int], ...]:
        table = self.table(key, table)
        self.known(key, table, ("sources",))
        members = table.get("sources")
        if not isinstance(members, list) or not members:
            raise self.error((*key, "sources"), "expected a list of sending IPs, \"ip\" or \"ip:weight\"")
        return tuple(self.value((*key, "sources"), _member, m) for m in members)


def _member(value: Any) -> tuple[str, int]:
    """``"127.0.0.2"`` -> (ip, 1); ``"127.0.0.2:3"`` -> (ip, 3); IPv6 as ``"[::1]:3"`` or ``"::1"``."""
    if not isinstance(value, str):
        raise ValueError(f"expected \"ip\" or \"ip:weight\", got {value!r}")
    text = value.strip()
    try:
        return ip_address(text.strip("[]")), 1
    except ValueError:
        pass
    ip, colon, weight = text.rpartition(":")
    if not colon or not weight.isdigit() or int(weight) < 1:
        raise ValueError(f"expected \"ip\" or \"ip:weight\" (weight at least 1), got {value!r}")
    return ip_address(ip.strip("[]")), int(weight)
