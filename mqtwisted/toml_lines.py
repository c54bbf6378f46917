"""Where a key of a TOML file is written: tomllib gives values without positions, and an error
about a value must name its file and line.

:func:`key_lines` scans the text once and maps every table header and every ``key = value`` line
to its line number, by key path: ``("example.net", "sources", "127.0.0.3", "max_message_rate")``,
with the index of each ``[[array]]`` table in the path (``("default", "automation", 0, "regex")``).
It reads only what locating needs (headers, quoted and dotted keys); tomllib has already
checked the syntax.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

Path = tuple[str | int, ...]

_BARE = re.compile(r"[A-Za-z0-9_-]+")


def split_key(text: str) -> tuple[str, ...]:
    """``'"example.net".sources."127.0.0.3"'`` -> ("example.net", "sources", "127.0.0.3")."""
    parts: list[str] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c in " \t.":
            i += 1
        elif c in "\"'":
            end = i + 1
            while end < n and text[end] != c:
                end += 2 if c == '"' and text[end] == "\\" else 1
            raw = text[i + 1:end]
            parts.append(raw.encode().decode("unicode_escape") if c == '"' and "\\" in raw else raw)
            i = end + 1
        else:
            m = _BARE.match(text, i)
            if m is None:
                break
            parts.append(m.group(0))
            i = m.end()
    return tuple(parts)


def _key_part(line: str) -> str | None:
    """The key of a ``key = value`` line (quotes respected), or None."""
    quote = None
    for i, c in enumerate(line):
        if quote:
            if c == quote:
                quote = None
        elif c in "\"'":
            quote = c
        elif c == "=":
            return line[:i]
        elif c == "#":
            return None
    return None


def key_lines(text: str) -> dict[Path, int]:
    """Every header and key of ``text`` -> its (1-based) line; the first occurrence wins."""
    lines: dict[Path, int] = {}
    table: Path = ()
    arrays: dict[tuple[str, ...], int] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if line.startswith("[["):
            path = split_key(line[2:line.find("]]")])
            index = arrays.get(path, -1) + 1
            arrays[path] = index
            table = (*path, index)
            lines.setdefault(path, number)
            lines.setdefault(table, number)
        elif line.startswith("["):
            table = split_key(line[1:line.find("]")])
            lines.setdefault(table, number)
        else:
            key = _key_part(line)
            if key is not None and key.strip():
                lines.setdefault((*table, *split_key(key)), number)
    return lines


def locate(lines: dict[Path, int], path: Sequence[str | int]) -> int | None:
    """The line of ``path``, else of its nearest enclosing table written in the file."""
    path = tuple(path)
    while path:
        if path in lines:
            return lines[path]
        path = path[:-1]
    return None


def dotted(path: Sequence[str | int]) -> str:
    """A key path as it would be written in TOML: ``"example.net".sources.x``, ``automation[0]``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            text = part if _BARE.fullmatch(part) else '"' + part.replace('"', '\\"') + '"'
            out += ("." if out else "") + text
    return out
