"""MailerQ's ``headers`` property: header edits made to the MIME on the wire only (the queued
document keeps its message as it was)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from mqtwisted.document import HeaderEdits


def edit_headers(mime: bytes, edits: HeaderEdits | Mapping[str, Any]) -> bytes:
    """Apply ``edits`` (see :class:`~mqtwisted.document.HeaderEdits`) to the header section of
    ``mime``; the body is left untouched and the message's line ends are kept."""
    if not isinstance(edits, HeaderEdits):
        edits = HeaderEdits.parse("headers", edits)
    m = re.search(rb"\r?\n\r?\n", mime)
    head, rest = (mime[: m.start()], mime[m.start():]) if m else (mime, b"")
    fields: list[list[bytes]] = []
    for line in re.split(rb"\r?\n", head) if head else []:
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1].append(line)
        else:
            fields.append([line])

    def name_of(field: list[bytes]) -> str:
        return field[0].split(b":", 1)[0].strip().decode("latin-1").lower()

    def make(name: str, values: tuple[str, ...]) -> list[list[bytes]]:
        return [[f"{name}: {v}".encode()] for v in values]

    if edits.remove:
        fields = [f for f in fields if name_of(f) not in edits.remove]
    for mode, entries in (("replace", edits.replace), ("update", edits.update)):
        for name, values in entries:
            idx = [i for i, f in enumerate(fields) if name_of(f) == name.lower()]
            new = make(name, values)
            if idx:
                first = idx[0]
                fields = [f for i, f in enumerate(fields) if i not in idx[1:]]
                fields[first:first + 1] = new
            elif mode == "replace":
                fields.extend(new)
    prepend: list[list[bytes]] = []
    for name, values in edits.prepend:
        prepend.extend(make(name, values))
    fields = prepend + fields
    for name, values in edits.append:
        fields.extend(make(name, values))
    eol = b"\r\n" if b"\r\n" in mime or not mime else b"\n"
    new_head = eol.join(eol.join(f) for f in fields)
    return new_head + rest if rest else new_head + eol
