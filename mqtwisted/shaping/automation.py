"""Automation rules against a receiver's reply: each line is matched as ``code text`` (the code
first, then the line's enhanced status code and text as the server wrote them), so that
``^421 4\\.7\\.0 .*rate`` matches any line of a multi-line reply."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from mqtwisted.shaping.config import Rule


def reply_lines(code: int | None, text: str | bytes) -> list[str]:
    """``"code text"`` for each line of a reply whose lines (code stripped) are ``text``."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    prefix = "" if code is None else f"{code} "
    return [prefix + line for line in (text.splitlines() or [""])]


def matching(rules: Iterable[Rule], lines: Sequence[str]) -> list[Rule]:
    """The rules that match some line of the reply, in order."""
    return [rule for rule in rules if any(rule.regex.search(line) for line in lines)]
