"""The API against its own OpenAPI document: the document is valid OpenAPI 3.1, and schemathesis
(fuzzing, then following the document's links) finds no 5xx and no response that the document
does not describe, on a real ``twistd mqmta``.  Examples are bounded so the run stays short."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from mqtwisted.console.openapi import document
from tests.conftest import free_port, wait_port
from tests.realmta import MTAProcess

CHECKS = ",".join([
    "not_a_server_error", "status_code_conformance", "content_type_conformance",
    "response_schema_conformance", "response_headers_conformance",
])


def test_document_is_valid_openapi():
    from openapi_spec_validator import validate

    validate(document())


@pytest.mark.slow
def test_schemathesis_finds_nothing(tmp_path):
    st = os.path.join(os.path.dirname(sys.executable), "st")
    assert os.path.exists(st), "schemathesis (the test extra) provides the st command"
    www = free_port()
    mta = MTAProcess(str(tmp_path / "data"), f"--www-port={www}", "--rest-tokens=hardcoded://fuzz-token")
    mta.start()
    try:
        wait_port(www, 60, proc=mta.proc)
        run = subprocess.run(
            [st, "run", f"http://127.0.0.1:{www}/v1/openapi.json", "--checks", CHECKS,
             "--phases", "examples,fuzzing,stateful", "--max-examples", "4", "--seed", "17",
             "--request-timeout", "30", "--header", "Authorization: Bearer fuzz-token", "--no-color"],
            capture_output=True, text=True, timeout=240, cwd=str(tmp_path),
        )
        assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
        assert "Traceback" not in mta.output()
    finally:
        mta.stop()
