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


def pytest_configure(config):
    """Prefect's first logging set-up (`logging.config.dictConfig`, non-incremental) closes
    every handler installed so far; when it first happens inside a test, those include pytest's
    log-capture handlers, and the test then fails on "I/O operation on closed file". Doing it
    once here, before any test, leaves later set-ups incremental."""
    from prefect.logging.configuration import setup_logging

    setup_logging()


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
