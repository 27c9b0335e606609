"""Shared pytest settings: single-threaded numerics so tests behave the same on any machine."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")

#: The real development data, when present beside the repository (tests skip without it).
FINGERJOINTS_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "fingerjoints"


@pytest.fixture(scope="session")
def fingerjoints_dir() -> Path:
    """Path of ../shared/data/fingerjoints; skips the test when the folder is absent."""
    if not (FINGERJOINTS_DIR / "manifest.csv").is_file():
        pytest.skip("real finger-joint data (../shared/data/fingerjoints) not available")
    return FINGERJOINTS_DIR
