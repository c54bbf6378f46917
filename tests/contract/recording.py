"""record(): one line per call in $MQ_TEST_RECORD, "hook context connection thread extra", the
format tests/contract/record.h writes for the C plugins; and reading those lines back."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

_lock = threading.Lock()


def record(hook: str, ctx: Any, conn: Any, *extra: Any) -> None:
    path = os.environ.get("MQ_TEST_RECORD")
    if path is None:
        return
    fields = [hook, str(id(ctx)), str(id(conn) if conn is not None else 0), str(threading.get_native_id())]
    with _lock, open(path, "a") as f:
        f.write(" ".join(fields + [str(e) for e in extra]) + "\n")


def records(path: Path) -> list[tuple[str, ...]]:
    """The lines written so far, split: (hook, context, connection, thread id, extra...)."""
    if not path.exists():
        return []
    return [tuple(line.split(" ")) for line in path.read_text().splitlines()]
