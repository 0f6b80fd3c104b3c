"""Shared fixtures: the repository root on sys.path (so `import data.lotka_volterra.generate`
works), offline Prefect settings, XLA flags for short programs, and one session-scoped Prefect
test harness."""

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

#: XLA for the tests and the commands they start (they inherit the environment; XLA reads it
#: when JAX first uses the CPU). Most of a test's time is building programs that then run a
#: few hundred steps on tiny arrays, so:
#: - code generation without LLVM's optimisation passes: the slower code costs less than the
#:   passes (measured: the ensemble flow test 91 -> 82 s of CPU, the CNF tests, which train
#:   longest, unchanged; every test's results stay within its tolerances);
#: - one thread per process (as bench/suite.py's workers): two pytest-xdist workers and the
#:   commands they start share two cores, and idle pool threads waiting for work only cost CPU
#:   (the same test 82 -> 77 s).
#: A caller's own setting of either flag wins.
XLA_TEST_FLAGS = ("--xla_backend_optimization_level=0", "--xla_cpu_multi_thread_eigen=false")
_flags = os.environ.get("XLA_FLAGS", "")
_flags += "".join(f" {f}" for f in XLA_TEST_FLAGS if f.split("=")[0] not in _flags)
os.environ["XLA_FLAGS"] = _flags.strip()


def pytest_configure(config):
    """Prefect's first logging set-up (`logging.config.dictConfig`, non-incremental) closes
    every handler installed so far; when it first happens inside a test, those include pytest's
    log-capture handlers, and the test then fails on "I/O operation on closed file". Doing it
    once here, before any test, leaves later set-ups incremental."""
    from prefect.logging.configuration import setup_logging

    setup_logging()


#: Test files from the longest to the shortest (seconds of a CI run, 2026-11-29); the rest
#: follow in their own order. `make test` hands files to its two workers in this order
#: (`--no-loadscope-reorder`; by default pytest-xdist orders files by their number of tests,
#: which put single-test files of a minute or more last), so the run does not end with one
#: worker idle while the other finishes a long file.
LONGEST_FIRST = (
    "test_ensemble.py",
    "test_partial_theory.py",
    "test_pipelines.py",
    "test_signals.py",
    "test_api.py",
    "test_mechanistic.py",
    "test_partial.py",
    "test_review.py",
    "test_scale_free.py",
    "test_server.py",
    "test_discovery.py",
    "test_suite.py",
    "test_distil.py",
    "test_hardening.py",
    "test_classify.py",
    "test_cnf.py",
    "test_runs.py",
    "test_ude_resume.py",
)


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: same file order


#: Mappings of this process above which JAX's compiled programs are dropped after a test.
MAX_MAPPINGS = 20_000


@pytest.fixture(autouse=True)
def _release_compiled_programs():
    """Drop JAX's compiled programs once this process holds many memory mappings. Every program
    XLA compiles for the CPU keeps a few mappings while it is cached; a test process compiling
    tens of thousands reached Linux's `vm.max_map_count` (65,530 by default), where XLA's
    compiler aborts the process (SIGABRT inside `backend_compile_and_load`, no message)."""
    yield
    if "jax" in sys.modules and _mappings() > MAX_MAPPINGS:
        import gc

        import jax

        jax.clear_caches()
        gc.collect()


def _mappings() -> int:
    try:
        with open("/proc/self/maps", "rb") as f:
            return sum(1 for _ in f)
    except OSError:  # not Linux
        return 0


@pytest.fixture(scope="session")
def prefect_harness():
    """A temporary Prefect API for the whole session (starting one costs ~10 s)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def shared_results(tmp_path_factory, worker_id) -> Path:
    """A results (cache) folder shared by the session's discovery runs, in every pytest-xdist
    worker: the quick discovery of the bundled data that several files run through the Prefect
    flow is then trained once per test run, not once per worker. The stages' own file locks
    (`pipelines._cache`, a lock per cache key) make the second worker wait for the first and
    read its record. Outside xdist (`worker_id` "master") the base temporary folder's parent
    is shared with earlier runs, so the folder is the session's own."""
    if worker_id == "master":
        return tmp_path_factory.mktemp("results")
    folder = tmp_path_factory.getbasetemp().parent / "shared-results"
    folder.mkdir(exist_ok=True)
    return folder
