"""A short run of the crash harness (tests/crash_harness.py): two kill -9 rounds, one during
inbound load and one during delivery, then a drain; nothing answered 250 may be missing at the
sink.  ``python -m tests.crash_harness --rounds N`` runs longer, with a random seed."""

from __future__ import annotations

import io

import pytest

pytestmark = pytest.mark.slow


def test_kill_9_rounds_lose_no_acknowledged_message(tmp_path):
    pytest.importorskip("aiosmtpd")
    from tests import crash_harness

    out = io.StringIO()
    report = crash_harness.run(
        2, clients=4, workdir=str(tmp_path), min_run=0.5, max_run=1.0, kinds=["inbound", "delivery"], out=out
    )
    print("\n" + out.getvalue())
    assert report["acknowledged"] > 100, report
    assert report["lost"] == 0, f"lost after kill -9: {report['lost_ids']}"
    assert [k["kind"] for k in report["kills"]] == ["inbound", "delivery"]
