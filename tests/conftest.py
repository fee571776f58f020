"""Shared test fixtures: where the real-world mail corpora live."""

from __future__ import annotations

from pathlib import Path

import pytest

CORPORA = Path(__file__).resolve().parents[2] / "shared" / "corpora"


@pytest.fixture(scope="session")
def corpora() -> Path:
    """`../shared/corpora`; tests that read it are skipped, with the reason, when it is missing."""
    if not CORPORA.is_dir():
        pytest.skip(f"real-world mail corpora not found at {CORPORA}")
    return CORPORA
