"""Writing throw-away plugins for the runner tests."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
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


# -- C plugins -------------------------------------------------------------------------------------

CONTRACT = Path(__file__).resolve().parent / "contract"


def _c_missing() -> str | None:
    cc = os.environ.get("CC", "cc").split()[0]
    if shutil.which(cc) is None:
        return f"C plugin tests need a C compiler ({cc!r} not found; .ci/run installs gcc)"
    if not Path("/usr/include/libfastjson/json.h").exists():
        return "C plugin tests need libfastjson's headers (.ci/run installs libfastjson-dev)"
    return None


#: Why C plugin tests cannot run here, or None.
C_MISSING = _c_missing()
_built: dict[tuple[Path, float], Path] = {}


def build_c_plugin(source: Path, target: Path) -> Path:
    """Compile ``source`` with ``cc`` into the shared object ``target`` (once per process)."""
    from mqtwisted.cplugins.native import compiler, header_dir

    key = (source, source.stat().st_mtime)
    built = _built.get(key)
    if built is None:
        built = Path(tempfile.mkdtemp(prefix="mqmta-cplugin-")) / (source.stem + ".so")
        cmd = [
            *compiler(), "-shared", "-fPIC", "-O1", "-Wall", "-Werror", "-fvisibility=hidden",
            "-I", header_dir(), "-I", str(source.parent), "-o", str(built), str(source),
            "-lfastjson", "-lpthread",
        ]  # fmt: skip
        done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "LC_ALL": "C"})
        assert done.returncode == 0, f"{' '.join(cmd)}\n{done.stderr}"
        _built[key] = built
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(built, target)
    return target


def contract_plugins(directory: Path, lang: str, **plugins: str) -> Path:
    """``{file stem: contract plugin}`` into ``directory``: tests/contract/<plugin>.py copied
    (``lang`` "python") or <plugin>.c compiled to <stem>.so ("c")."""
    import shutil

    directory.mkdir(parents=True, exist_ok=True)
    for stem, plugin in plugins.items():
        if lang == "c":
            build_c_plugin(CONTRACT / f"{plugin}.c", directory / f"{stem}.so")
        else:
            shutil.copyfile(CONTRACT / f"{plugin}.py", directory / f"{stem}.py")
    return directory


C_HEADER = """\
#include <libfastjson/json.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "mqtwisted.h"
"""


def c_plugin(directory: Path, name: str, body: str, version: str = "MQ_API_VERSION", prelude: str = "") -> Path:
    """``directory/name.so`` compiled from ``body`` (after :data:`C_HEADER`, ``prelude`` and an
    ``mq_version`` returning ``version``); the source is left beside it as ``name.c``, which
    loading ignores."""
    directory.mkdir(parents=True, exist_ok=True)
    source = directory / f"{name}.c"
    source.write_text(
        C_HEADER + prelude + f"MQ_EXPORT int mq_version(void) {{ return {version}; }}\n" + textwrap.dedent(body)
    )
    return build_c_plugin(source, directory / f"{name}.so")
