"""A short run of the crash harness (tests/crash_harness.py): two kill -9 rounds, one during
inbound load and one during delivery, then a drain; nothing answered 250 may be missing at the
sink.  ``python -m tests.crash_harness --rounds N`` runs longer, with a random seed."""

from __future__ import annotations

import io

import pytest

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("workers", ["0", "1"])
def test_kill_9_rounds_lose_no_acknowledged_message(tmp_path, workers):
    # With a delivery worker, kill -9 hits twistd only: the orphaned worker must stop by itself
    # and the next one wait for its spool lock; nothing acknowledged may be lost either way.
    pytest.importorskip("aiosmtpd")
    from tests import crash_harness

    out = io.StringIO()
    report = crash_harness.run(
        2, clients=4, workdir=str(tmp_path), min_run=0.5, max_run=1.0, kinds=["inbound", "delivery"], out=out,
        mta_args=(f"--delivery-processes={workers}",),
    )
    print("\n" + out.getvalue())
    assert report["acknowledged"] > 100, report
    assert report["lost"] == 0, f"lost after kill -9: {report['lost_ids']}"
    assert [k["kind"] for k in report["kills"]] == ["inbound", "delivery"]
