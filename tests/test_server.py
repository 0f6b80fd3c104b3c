"""A real Prefect server on PostgreSQL: discovery against it, read back through the client, and
a cron-scheduled deployment run by a `process` work pool's worker.

Every process started here is stopped (a `prefect worker` exits only on a second signal).
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PG = ROOT / "scripts" / "pg-server.sh"
LV = ROOT / "data" / "lotka_volterra"
BIN = Path(sys.executable).parent

pytestmark = [
    pytest.mark.server,
    pytest.mark.skipif(
        not glob.glob("/usr/lib/postgresql/*/bin/initdb") and not os.environ.get("PG_BIN"),
        reason="PostgreSQL binaries absent (/usr/lib/postgresql/*/bin): apt-get install postgresql",
    ),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop(proc: subprocess.Popen, signals: int = 1, timeout: float = 30) -> None:
    """SIGTERM the process group (`signals` times), then SIGKILL what is left."""
    for _ in range(signals):
        if proc.poll() is not None:
            break
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=timeout / signals)
        except subprocess.TimeoutExpired:
            pass
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


@pytest.fixture(scope="module")
def server():
    """PostgreSQL (project script, temporary cluster) and a Prefect server on it."""
    folder = Path(tempfile.mkdtemp(prefix="sciml-pg-"))
    folder.chmod(0o755)  # the `postgres` user runs the cluster when we are root
    env = {
        **os.environ,
        "SCIML_PG_DIR": str(folder / "pg"),
        "SCIML_PG_PORT": str(free_port()),
    }
    subprocess.run([PG, "start"], env=env, check=True, timeout=120)
    proc = None
    try:
        db = subprocess.run([PG, "url"], env=env, check=True, capture_output=True, text=True)
        port = free_port()
        log = open(folder / "server.log", "w")  # noqa: SIM115 - closed below
        proc = subprocess.Popen(
            [BIN / "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            env={**env, "PREFECT_API_DATABASE_CONNECTION_URL": db.stdout.strip()},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        url = f"http://127.0.0.1:{port}/api"
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail("Prefect server did not start:\n" + (folder / "server.log").read_text())
            time.sleep(0.5)
        yield url
    finally:
        if proc is not None:
            stop(proc)
            log.close()
        subprocess.run([PG, "stop"], env=env, timeout=120)
        shutil.rmtree(folder, ignore_errors=True)


def client(url: str):
    from prefect import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    class _Client:
        def __enter__(self):
            self.settings = temporary_settings({PREFECT_API_URL: url})
            self.settings.__enter__()
            self.client = get_client(sync_client=True)
            return self.client.__enter__()

        def __exit__(self, *exc):
            self.client.__exit__(*exc)
            self.settings.__exit__(*exc)

    return _Client()


DISCOVER = """
import sys
from pathlib import Path
from pipelines.flows import discover
from pipelines.params import DiscoverParams
state = discover(DiscoverParams(data=sys.argv[1], model=sys.argv[2], out=sys.argv[3],
                 engines=("sindy",), quick=True, results=sys.argv[4]), return_state=True)
print("FLOW_RUN", state.state_details.flow_run_id)
"""


def test_discover_against_the_server(server, shared_results, tmp_path):
    """`discover` with PREFECT_API_URL set: flow run, task runs and artifacts on the server.

    Same settings and results folder as test_pipelines' end-to-end run: after it, the stages
    are cache hits (the cache lives in files, not in either API's database).
    """
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        FlowRunFilter,
        FlowRunFilterId,
    )

    out = tmp_path / "lv"
    r = subprocess.run(
        [sys.executable, "-c", DISCOVER, str(LV / "lotka_volterra.csv"), str(LV / "model.toml")]
        + [str(out), str(shared_results)],
        cwd=ROOT,
        env={**os.environ, "PREFECT_API_URL": server},
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "temporary server" not in r.stderr  # the real server served
    run_id = r.stdout.split("FLOW_RUN")[-1].split()[0]
    discovered = json.loads((out / "discovered.json").read_text())
    with client(server) as c:
        run = c.read_flow_run(run_id)
        assert run.state.is_completed()
        assert c.read_flow(run.flow_id).name == "discover"
        assert run.parameters["params"]["engines"] == ["sindy"]
        tasks = c.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id])))
        names = {t.name.rsplit("-", 1)[0] for t in tasks}
        assert {"ingest", "mechanistic-fit", "ude-training", "dense-sampling", "symbolic"} <= names
        assert all(t.state.is_completed() for t in tasks)
        artifacts = c.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run.id]))
        )
    by_type = {a.type: a for a in artifacts}
    assert "markdown" in by_type and "table" in by_type
    # Prefect stores link artifacts as markdown too: look through every text artifact
    texts = [str(a.data) for a in artifacts if a.type in ("markdown", "link")]
    for eq in discovered["equations"].values():
        assert any(eq in text for text in texts), texts
    rows = by_type["table"].data
    rows = json.loads(rows) if isinstance(rows, str) else rows
    assert len(rows) == len((out / "equations.csv").read_text().splitlines()) - 1
    assert {"state", "engine", "complexity", "loss", "equation", "selected"} <= set(rows[0])
    if (out / "report.html").exists():
        assert any("report.html" in text for text in texts)


def test_scheduled_deployment_runs_on_a_worker(server, tmp_path):
    """`sciml deploy` with a cron schedule; `prefect deployment run`; a process worker runs it."""
    env = {**os.environ, "PREFECT_API_URL": server}
    out, pool = tmp_path / "deployed", "test-process-pool"
    r = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "deploy", str(LV / "lotka_volterra.csv")]
        + ["--model", str(LV / "model_full.toml"), "--out", str(out), "--engines", "sindy"]
        + ["--name", "lv-nightly", "--cron", "0 3 * * *", "--pool", pool],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    with client(server) as c:
        deployment = c.read_deployment_by_name("discover/lv-nightly")
        assert deployment.work_pool_name == pool
        assert [s.schedule.cron for s in deployment.schedules] == ["0 3 * * *"]
    run = subprocess.run(
        [BIN / "prefect", "deployment", "run", "discover/lv-nightly"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    run_id = run.stdout.split("UUID:")[-1].split()[0]
    worker = subprocess.Popen(
        [BIN / "prefect", "worker", "start", "--pool", pool, "--prefetch-seconds", "5"],
        env=env,
        cwd=tmp_path,
        stdout=open(tmp_path / "worker.log", "w"),  # noqa: SIM115
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 600
        with client(server) as c:
            while True:
                state = c.read_flow_run(run_id).state
                if state.is_final() or time.monotonic() > deadline:
                    break
                time.sleep(2)
    finally:
        stop(worker, signals=2)  # a worker exits only on the second signal
    log = (tmp_path / "worker.log").read_text()[-3000:]
    assert state.is_completed(), f"{state}\n{log}"
    discovered = json.loads((out / "discovered.json").read_text())
    assert discovered["parameters"]["beta"] == pytest.approx(0.9, rel=0.2)
