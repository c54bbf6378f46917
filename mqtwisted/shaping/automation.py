"""Automation rules against a receiver's reply: each line is matched as ``code text`` (the code
first, then the line's enhanced status code and text as the server wrote them), so that
``^421 4\\.7\\.0 .*rate`` matches any line of a multi-line reply."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from mqtwisted.shaping.config import Rule


def matching(rules: Iterable[Rule], lines: Sequence[str]) -> list[tuple[Rule, str]]:
    """The rules that match some line of the reply, in order, each with its first matching line
    (lines as :func:`mqtwisted.results.reply_lines` writes them)."""
    found = []
    for rule in rules:
        line = next((line for line in lines if rule.regex.search(line)), None)
        if line is not None:
            found.append((rule, line))
    return found
