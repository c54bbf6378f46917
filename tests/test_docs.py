"""The reStructuredText the project ships renders: a malformed table or a broken role shows as
raw text on the repository's front page, so it fails here instead."""

from __future__ import annotations

import io
from pathlib import Path

import docutils.core
import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = sorted([ROOT / "README.rst", ROOT / "bench" / "README.rst", *(ROOT / "docs").glob("*.rst")])


@pytest.mark.parametrize("path", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_renders_without_warnings(path: Path) -> None:
    problems = io.StringIO()
    docutils.core.publish_string(
        path.read_text(encoding="utf-8"), source_path=str(path), writer="null",
        settings_overrides={"report_level": 2, "halt_level": 5, "warning_stream": problems},
    )
    assert problems.getvalue() == ""
