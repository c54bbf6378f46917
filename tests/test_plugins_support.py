"""Writing throw-away plugins for the runner tests."""

from __future__ import annotations

import textwrap
from pathlib import Path

HEADER = """\
import threading, time
from mqtwisted import api as mq

def mq_version():
    return mq.MQ_API_VERSION

CALLS = []
"""


def write_plugins(directory: Path, sources: dict[str, str]) -> Path:
    """Write ``{file name: body}``; every body gets :data:`HEADER` (mq, mq_version, CALLS)."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, body in sources.items():
        path = directory / name
        if name.endswith("/"):
            path.mkdir()
            path = path / "__init__.py"
        path.write_text(HEADER + textwrap.dedent(body))
    return directory


def make_runner_factory(tmp_path: Path):  # noqa: ANN201 - returns (make, cleanup)
    """A ``make(sources, threads=2, timeout=5.0, start=True)`` building started runners, and a
    ``cleanup()`` that stops them all (blocking, for fixture teardown)."""
    import pytest_twisted

    from mqtwisted.plugins import PluginRunner

    runners: list[PluginRunner] = []

    def make(
        sources: dict[str, str], threads: int = 2, timeout: float = 5.0, start: bool = True
    ) -> PluginRunner:
        d = write_plugins(tmp_path / f"plugins{len(runners)}", sources)
        runner = PluginRunner.from_directory(str(d), threads=threads, timeout=timeout)
        runners.append(runner)
        if start:
            runner.start()
        return runner

    def cleanup() -> None:
        for r in runners:
            pytest_twisted.blockon(r.stop())

    return make, cleanup


def module(runner, name: str):  # noqa: ANN001, ANN201
    """The loaded module of plugin ``name``."""
    return next(p.module for p in runner.plugins if p.name == name)
