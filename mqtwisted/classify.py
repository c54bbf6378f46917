"""Bounce classification: every attempt that was not accepted gets a class (``mailbox-full``,
``rate-limited``, ...), decided by rules over its state, result, reply code, enhanced status
code and text.  The rules are data: those that ship with mqmta are ``bounce_classes.toml``
beside this module, and an operator's file in the same form is tried first."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import attrs

from mqtwisted.toml_lines import dotted, key_lines, locate

#: the classes the shipped rules use; an operator's rules may name others
CLASSES = (
    "invalid-recipient", "bad-domain", "mailbox-full", "message-too-large", "spam-block", "policy",
    "rate-limited", "greylisted", "tls-failure", "dns-failure", "timeout", "connection-failure", "other",
)

SHIPPED = Path(__file__).with_name("bounce_classes.toml")


class RulesError(ValueError):
    """A rules file is unusable; the message reads ``FILE:LINE: key K: problem``."""


@attrs.frozen
class ClassRule:
    """Everything a rule gives must match; what it leaves out matches anything."""

    classification: str
    states: frozenset[str] = frozenset()
    results: frozenset[str] = frozenset()
    code: re.Pattern[str] | None = None
    enhanced: re.Pattern[str] | None = None
    text: re.Pattern[str] | None = None

    def matches(self, state: str, result: str, code: int | None, enhanced: str | None, text: str) -> bool:
        return (
            (not self.states or state in self.states)
            and (not self.results or result in self.results)
            and (self.code is None or (code is not None and self.code.search(str(code)) is not None))
            and (self.enhanced is None or (enhanced is not None and self.enhanced.search(enhanced) is not None))
            and (self.text is None or self.text.search(text) is not None)
        )


@attrs.frozen
class Classifier:
    rules: tuple[ClassRule, ...]

    @classmethod
    def load(cls, extra: str | None = None) -> Classifier:
        """The operator's rules from ``extra`` (if given), then the shipped ones."""
        rules = read_rules(extra) if extra else ()
        return cls((*rules, *read_rules(str(SHIPPED))))

    def classify(self, state: str, result: str, code: int | None = None, enhanced: str | None = None,
                 text: str = "") -> str:
        for rule in self.rules:
            if rule.matches(state, result, code, enhanced, text):
                return rule.classification
        return "other"


def read_rules(path: str) -> tuple[ClassRule, ...]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise RulesError(f"{path}: cannot read bounce rules: {e.strerror}") from e
    return parse_rules(text, path)


def parse_rules(text: str, path: str = "<rules>") -> tuple[ClassRule, ...]:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        m = re.search(r"\(at line (\d+), column \d+\)", str(e))
        raise RulesError(f"{path}:{m.group(1) if m else '?'}: {e}") from None
    lines = key_lines(text)

    def error(key: tuple[Any, ...], problem: str) -> RulesError:
        return RulesError(f"{path}:{locate(lines, key) or '?'}: key {dotted(key)}: {problem}")

    for name in data:
        if name != "rule":
            raise error((name,), "unknown key (expected [[rule]] tables)")
    rules = data.get("rule", [])
    if not isinstance(rules, list):
        raise error(("rule",), "expected [[rule]] tables")
    out = []
    for i, rule in enumerate(rules):
        key: tuple[Any, ...] = ("rule", i)
        for name in rule:
            if name not in ("class", "state", "result", "code", "enhanced", "text"):
                raise error((*key, name), "unknown key (expected class, state, result, code, enhanced, text)")
        if not isinstance(rule.get("class"), str) or not rule["class"]:
            raise error((*key, "class"), "every rule names its class")

        def words(name: str, rule: dict[str, Any] = rule, key: tuple[Any, ...] = key) -> frozenset[str]:
            value = rule.get(name, [])
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise error((*key, name), "expected a list of strings")
            return frozenset(value)

        def pattern(name: str, flags: int = 0, rule: dict[str, Any] = rule,
                    key: tuple[Any, ...] = key) -> re.Pattern[str] | None:
            if name not in rule:
                return None
            try:
                return re.compile(str(rule[name]), flags)
            except re.error as e:
                raise error((*key, name), f"bad regular expression: {e}") from None

        out.append(ClassRule(rule["class"], words("state"), words("result"), pattern("code"),
                             pattern("enhanced"), pattern("text", re.IGNORECASE)))
    return tuple(out)
