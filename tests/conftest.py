"""Shared fixtures: the repository root on sys.path (so `import data.lotka_volterra.generate`
works), offline Prefect settings, and one session-scoped Prefect test harness."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")


@pytest.fixture(scope="session")
def prefect_harness():
    """A temporary Prefect API for the whole session (starting one costs ~10 s)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def shared_results(tmp_path_factory) -> Path:
    """A results (cache) folder shared by the session's discovery runs."""
    return tmp_path_factory.mktemp("results")
