"""pytest runs each test of a ``twisted.trial.unittest.TestCase`` as trial runs it, in trial.

pytest-twisted keeps one reactor running for the whole pytest session (in a greenlet), while a
trial TestCase runs the reactor itself for each test and stops it again: in one process, the
second test of either kind finds the reactor in a state it did not expect.  So pytest collects
every test method of a trial TestCase as an item that runs ``python -m twisted.trial
module.Class.method`` in a process of its own, and shows trial's report when it fails.

tests/conftest.py imports the hook below, which is how pytest finds it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from typing import Any

import pytest
from twisted.trial import unittest as trial_unittest
from twisted.trial.runner import TestLoader

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class TrialFailed(Exception):
    """A trial run reported a failure or an error; the message is trial's report."""


@pytest.hookimpl(tryfirst=True)
def pytest_pycollect_makeitem(collector: pytest.Collector, name: str, obj: object) -> Any:
    """Trial TestCases become :class:`TrialTestCase` collectors (before pytest's unittest support)."""
    if isinstance(obj, type) and issubclass(obj, trial_unittest.TestCase):
        return TrialTestCase.from_parent(collector, name=name, testcase=obj)
    return None


class TrialTestCase(pytest.Collector):
    def __init__(self, *, testcase: type[trial_unittest.TestCase], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.testcase = testcase

    def collect(self) -> Iterator[pytest.Item]:
        # trial's own loader, so that pytest runs exactly the methods trial would
        for test in TestLoader().loadClass(self.testcase):
            trial_id = test.id()
            yield TrialItem.from_parent(self, name=trial_id.rsplit(".", 1)[1], trial_id=trial_id)


class TrialItem(pytest.Item):
    def __init__(self, *, trial_id: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.trial_id = trial_id

    def runtest(self) -> None:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))}
        with tempfile.TemporaryDirectory() as temp:
            done = subprocess.run(
                [sys.executable, "-m", "twisted.trial", f"--temp-directory={temp}/_trial_temp", self.trial_id],
                cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
            )
        report = done.stdout + done.stderr
        if done.returncode != 0:
            raise TrialFailed(report)
        summary = report.strip().splitlines()[-1] if report.strip() else ""
        if "successes=" not in summary:
            pytest.skip(f"trial: {summary}")

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> Any:
        if isinstance(excinfo.value, TrialFailed):
            return f"python -m twisted.trial {self.trial_id}\n{excinfo.value}"
        return super().repr_failure(excinfo, style)

    def reportinfo(self) -> tuple[Any, int | None, str]:
        return self.path, None, f"{self.trial_id} (trial)"
