"""A real Prefect server on PostgreSQL, started by `scripts/prefect-server.sh` (what `make
server` runs): basic authentication on the API, scram-sha-256 on PostgreSQL, owner-only secret
files; discovery against it, read back through the client, and a cron-scheduled deployment run
by a `process` work pool's worker that has the credentials.

Every process started here is stopped (a `prefect worker` exits only on a second signal). All
traffic goes to 127.0.0.1.
"""

from __future__ import annotations

import base64
import glob
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PG = ROOT / "scripts" / "pg-server.sh"
SERVER = ROOT / "scripts" / "prefect-server.sh"
GPU_WORKER = ROOT / "scripts" / "gpu-worker.sh"
LV = ROOT / "data" / "lotka_volterra"
BIN = Path(sys.executable).parent
# settings of the calling shell that would change what the scripts do
AUTH_VARS = ("PREFECT_SERVER_API_AUTH_STRING", "PREFECT_API_AUTH_STRING", "PREFECT_API_KEY")

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


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in AUTH_VARS and k != "PREFECT_API_URL"}
    return {**env, **extra}


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


@dataclass
class Server:
    url: str  # http://127.0.0.1:PORT/api
    auth: str  # the generated auth string, user:password
    folder: Path  # the cluster (pg/), the secrets (secrets/) and server.log
    env: dict[str, str]  # what the scripts ran with

    @property
    def pg_password(self) -> str:
        return (self.folder / "pg" / "password").read_text().strip()

    def client_env(self) -> dict[str, str]:
        return clean_env(PREFECT_API_URL=self.url, PREFECT_API_AUTH_STRING=self.auth)

    def secrets(self) -> list[str]:
        return [self.auth, self.auth.split(":", 1)[1], self.pg_password]


@pytest.fixture(scope="module")
def server():
    """`scripts/prefect-server.sh` on 127.0.0.1 with a temporary cluster and secrets folder."""
    folder = Path(tempfile.mkdtemp(prefix="sciml-pg-"))
    folder.chmod(0o755)  # the `postgres` user runs the cluster when we are root
    port = free_port()
    env = clean_env(
        SCIML_PG_DIR=str(folder / "pg"),
        SCIML_PG_PORT=str(free_port()),
        SCIML_PREFECT_AUTH_FILE=str(folder / "secrets" / "prefect-auth"),
        PREFECT_SERVER_API_HOST="127.0.0.1",
        PREFECT_SERVER_API_PORT=str(port),
        PREFECT=str(BIN / "prefect"),
    )
    log = open(folder / "server.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [SERVER], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        url = f"http://127.0.0.1:{port}/api"
        deadline = time.monotonic() + 120
        while True:
            try:  # /health is open without credentials (Prefect exempts it, for probes)
                with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail("Prefect server did not start:\n" + (folder / "server.log").read_text())
            time.sleep(0.5)
        auth = (folder / "secrets" / "prefect-auth").read_text().strip()
        yield Server(url, auth, folder, env)
    finally:
        stop(proc)  # the script stops PostgreSQL once the server has exited ...
        log.close()
        subprocess.run([PG, "stop"], env=env, timeout=120)  # ... or this does
        shutil.rmtree(folder, ignore_errors=True)


def client(server: Server, auth: str | None = "server's"):
    """A sync Prefect client on the server, with its auth string (or `auth`, None for none)."""
    from prefect import get_client
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    auth = server.auth if auth == "server's" else auth

    class _Client:
        def __enter__(self):
            self.settings = temporary_settings(
                {PREFECT_API_URL: server.url, PREFECT_API_AUTH_STRING: auth}
            )
            self.settings.__enter__()
            self.client = get_client(sync_client=True)
            return self.client.__enter__()

        def __exit__(self, *exc):
            self.client.__exit__(*exc)
            self.settings.__exit__(*exc)

    return _Client()


def request(url: str, auth: str | None, body: bytes | None = b"{}") -> int:
    """The HTTP status of a POST (GET when body is None) to url, with basic auth when given."""
    headers = {"Content-Type": "application/json"}
    if auth is not None:
        headers["Authorization"] = "Basic " + base64.b64encode(auth.encode()).decode()
    req = urllib.request.Request(url, data=body, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def assert_no_secret(server: Server, paths) -> None:
    """None of the secrets (auth string, its password, the database password) in these files."""
    secrets = server.secrets()
    checked = 0
    for path in paths:
        path = Path(path)
        for f in [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]:
            text = f.read_bytes().decode("utf-8", "replace")
            checked += 1
            for secret in secrets:
                assert secret not in text, f"a secret is in {f}"
    assert checked


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --- authentication on the API -----------------------------------------------------------------


def test_api_refuses_requests_without_credentials(server):
    """401 without or with wrong credentials; 200 with the generated auth string."""
    flows = f"{server.url}/flows/filter"
    assert request(flows, None) == 401
    assert request(flows, "sciml:wrong") == 401
    assert request(flows, server.auth.split(":", 1)[1]) == 401  # the password alone
    assert request(flows, server.auth) == 200
    assert request(f"{server.url}/health", None, body=None) == 200  # probes stay open

    # the Python client sends PREFECT_API_AUTH_STRING as basic auth ...
    with client(server) as c:
        c.read_flows(limit=1)
    # ... and without it the server refuses it
    from prefect.exceptions import PrefectHTTPStatusError

    with pytest.raises(PrefectHTTPStatusError) as e, client(server, auth=None) as c:
        c.read_flows(limit=1)
    assert e.value.response.status_code == 401

    # the CLI too
    cli = [BIN / "prefect", "work-pool", "ls"]
    ok = subprocess.run(cli, env=server.client_env(), capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr[-2000:]
    env = {**server.client_env(), "PREFECT_API_AUTH_STRING": "sciml:wrong"}
    refused = subprocess.run(cli, env=env, capture_output=True, text=True, timeout=120)
    assert refused.returncode != 0
    assert "401" in refused.stdout + refused.stderr


def test_secrets_are_owner_only(server):
    """The auth string and the database password live in 0600 files, in 0700 folders."""
    secrets, pg = server.folder / "secrets", server.folder / "pg"
    assert mode(secrets) == 0o700
    assert mode(secrets / "prefect-auth") == 0o600
    assert mode(pg) == 0o700
    assert mode(pg / "password") == 0o600
    assert mode(pg / "url") == 0o600
    assert (
        (pg / "url").read_text().startswith(f"postgresql+asyncpg://prefect:{server.pg_password}@")
    )
    user, password = server.auth.split(":", 1)
    assert user and len(password) >= 32
    assert not (pg / ".initdb-pw").exists()  # initdb's copy of the password is gone


def pg_bin() -> Path:
    return Path(os.environ.get("PG_BIN") or sorted(glob.glob("/usr/lib/postgresql/*/bin"))[-1])


def assert_password_required(pg_dir: Path, port: str) -> None:
    """pg_hba.conf: scram-sha-256 on every line, no `trust`; psql is refused without the
    password or with a wrong one, and let in with the one in pg_dir/password."""
    hba = pg_dir / "data" / "pg_hba.conf"
    lines = [
        line.split()
        for line in hba.read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    assert lines and all(line[-1] == "scram-sha-256" for line in lines), lines
    assert not any("trust" in line for line in lines)

    psql = [pg_bin() / "psql", "-X", "-w", "-h", "127.0.0.1", "-p", port]
    psql += ["-U", "prefect", "-d", "prefect", "-tAc", "SELECT 1"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["PGCONNECT_TIMEOUT"] = "10"
    refused = subprocess.run(psql, env=env, capture_output=True, text=True, timeout=60)
    assert refused.returncode != 0
    assert "password" in refused.stderr
    env["PGPASSWORD"] = "wrong"
    assert subprocess.run(psql, env=env, capture_output=True, timeout=60).returncode != 0
    assert mode(pg_dir / "password") == 0o600
    env["PGPASSWORD"] = (pg_dir / "password").read_text().strip()
    ok = subprocess.run(psql, env=env, capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0 and ok.stdout.strip() == "1", ok.stderr


def test_postgres_asks_for_the_password(server):
    """The server's cluster: scram-sha-256 only, and the password is needed."""
    assert_password_required(server.folder / "pg", server.env["SCIML_PG_PORT"])


def test_a_trust_cluster_is_switched_to_scram():
    """A cluster made before (initdb --auth=trust) gets a generated password on its next
    start, and its `trust` lines become scram-sha-256."""
    folder = Path(tempfile.mkdtemp(prefix="sciml-pg-legacy-"))
    folder.chmod(0o755)  # the `postgres` user runs the cluster when we are root
    pg = folder / "pg"
    pg.mkdir()
    initdb = [pg_bin() / "initdb", "-D", pg / "data", "-U", "prefect", "--auth=trust"]
    if os.geteuid() == 0:
        shutil.chown(pg, "postgres", "postgres")
        initdb = ["runuser", "-u", "postgres", "--", *initdb]
    env = clean_env(SCIML_PG_DIR=str(pg), SCIML_PG_PORT=str(free_port()))
    try:
        subprocess.run(initdb, check=True, capture_output=True, timeout=120)
        assert "trust" in (pg / "data" / "pg_hba.conf").read_text()
        r = subprocess.run([PG, "start"], env=env, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        assert "from trust to scram-sha-256" in r.stderr
        assert_password_required(pg, env["SCIML_PG_PORT"])
        password = (pg / "password").read_text().strip()
        assert password not in r.stderr + (pg / "postgres.log").read_text()
    finally:
        subprocess.run([PG, "stop"], env=env, timeout=120)
        shutil.rmtree(folder, ignore_errors=True)


def test_gpu_worker_needs_the_auth_string(server, tmp_path):
    """scripts/gpu-worker.sh: no auth file, a file others can read, a wrong string: refused
    before anything is installed or started."""
    if not (ROOT / ".venv" / "bin" / "python").exists():
        pytest.skip("gpu-worker.sh runs the repository's .venv")
    env = clean_env(PREFECT_API_URL=server.url, SCIML_GPU_POOL="test-gpu-refused", SCIML_GPUS="0")
    env.pop("CUDA_VISIBLE_DEVICES", None)

    def run(**extra):
        return subprocess.run(
            [GPU_WORKER, "--no-install"],
            env={**env, **extra},
            capture_output=True,
            text=True,
            timeout=120,
        )

    missing = run(SCIML_PREFECT_AUTH_FILE=str(tmp_path / "absent"))
    assert missing.returncode == 78 and "no auth string" in missing.stderr

    loose = tmp_path / "prefect-auth"
    loose.write_text(server.auth + "\n")
    loose.chmod(0o644)
    r = run(SCIML_PREFECT_AUTH_FILE=str(loose))
    assert r.returncode == 78 and "chmod 600" in r.stderr
    assert server.auth not in r.stdout + r.stderr

    loose.write_text("sciml:wrong\n")
    loose.chmod(0o600)
    r = run(SCIML_PREFECT_AUTH_FILE=str(loose))
    assert r.returncode != 0 and "refused the auth string (401" in r.stderr, r.stderr[-2000:]


# --- the server script's choices, without starting a server ------------------------------------


def run_server_script(tmp_path: Path, *args: str, **extra: str) -> subprocess.CompletedProcess:
    env = clean_env(
        SCIML_PG_DIR=str(tmp_path / "pg"),
        SCIML_PREFECT_AUTH_FILE=str(tmp_path / "secrets" / "prefect-auth"),
        PREFECT_SERVER_API_PORT=str(free_port()),
        **extra,
    )
    return subprocess.run([SERVER, *args], env=env, capture_output=True, text=True, timeout=60)


def test_refuses_a_public_address_without_authentication(tmp_path):
    """An explicitly empty auth string on a non-loopback address: exit 78 before anything
    starts (no PostgreSQL, nothing bound)."""
    for host in ("0.0.0.0", "192.0.2.10", "::"):
        r = run_server_script(
            tmp_path, PREFECT_SERVER_API_HOST=host, PREFECT_SERVER_API_AUTH_STRING=""
        )
        assert r.returncode == 78, r.stderr
        assert f"refusing to serve the API on {host} without authentication" in r.stderr
    assert not (tmp_path / "pg").exists()
    assert not (tmp_path / "secrets").exists()


def test_generates_the_auth_string_on_first_start(tmp_path):
    """No auth string set: one is generated into an owner-only file, and only its path is
    printed; a file others can read is refused; an empty string is allowed on loopback only."""
    r = run_server_script(tmp_path, "--check", PREFECT_SERVER_API_HOST="0.0.0.0")
    assert r.returncode == 0, r.stderr
    auth_file = tmp_path / "secrets" / "prefect-auth"
    auth = auth_file.read_text().strip()
    assert mode(auth_file) == 0o600 and mode(auth_file.parent) == 0o700
    assert auth.startswith("sciml:") and len(auth) > 30
    assert auth not in r.stdout + r.stderr and auth.split(":")[1] not in r.stderr
    assert f'PREFECT_API_AUTH_STRING="$(cat {auth_file})"' in r.stderr
    assert "put TLS in front" in r.stderr
    assert not (tmp_path / "pg").exists()  # --check starts nothing

    again = run_server_script(tmp_path, "--check", PREFECT_SERVER_API_HOST="0.0.0.0")
    assert again.returncode == 0 and auth_file.read_text().strip() == auth  # kept
    assert "generated" not in again.stderr

    auth_file.chmod(0o640)
    loose = run_server_script(tmp_path, "--check")
    assert loose.returncode != 0 and "chmod 600" in loose.stderr
    assert auth not in loose.stderr

    off = run_server_script(tmp_path, "--check", PREFECT_SERVER_API_AUTH_STRING="")
    assert off.returncode == 0 and "authentication OFF" in off.stderr


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
        env=server.client_env(),
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
    # nothing secret in the run folder (run.json, the report, ...), the artifacts or the output
    assert_no_secret(server, [out])
    for secret in server.secrets():
        assert not any(secret in text for text in texts)
        assert secret not in r.stdout + r.stderr


def test_prefect_yaml_deploys_and_a_batch_runs_on_a_worker(server, tmp_path):
    """`sciml deploy` (pools, then `prefect deploy --all` over prefect.yaml) from the checkout,
    with no Prefect profile; a process worker on `sciml-cpu` (limit 1) runs a batch's two
    discovery runs one after the other; the batch collects them into one index."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

    home = tmp_path / "home"  # a fresh user: no ~/.prefect profile, no settings
    env = {**server.client_env(), "HOME": str(home), "PREFECT_HOME": str(home / ".prefect")}
    r = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "deploy", "--limit", "sciml-cpu=1"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    with client(server) as c:
        cpu = c.read_deployment_by_name("discover/cpu")
        gpu = c.read_deployment_by_name("discover/gpu")
        nightly = c.read_deployment_by_name("discover/nightly")
        batch = c.read_deployment_by_name("discovery-batch/on-demand")
        pools = {p.name: p for p in c.read_work_pools()}
    assert cpu.work_pool_name == "sciml-cpu" and gpu.work_pool_name == "sciml-gpu"
    assert batch.work_pool_name == "sciml-batch"
    assert pools["sciml-cpu"].concurrency_limit == 1 and pools["sciml-cpu"].type == "process"
    assert not cpu.schedules and not gpu.schedules and not batch.schedules  # on demand
    assert [(s.schedule.cron, s.active) for s in nightly.schedules] == [("0 3 * * *", False)]
    cpu_env, gpu_env = cpu.job_variables["env"], gpu.job_variables["env"]
    assert cpu_env["JAX_PLATFORMS"] == "cpu" and gpu_env["JAX_PLATFORMS"] == "cuda"
    assert gpu_env["XLA_PYTHON_CLIENT_PREALLOCATE"] == "false"
    assert "CUDA_VISIBLE_DEVICES" not in gpu_env  # each GPU worker's own
    for e in (cpu_env, gpu_env):
        assert e["JAX_COMPILATION_CACHE_DIR"] and e["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]
    workdir = cpu.pull_steps[0]["prefect.deployments.steps.set_working_directory"]["directory"]
    assert Path(workdir) == ROOT
    job_variables = json.dumps([d.job_variables for d in (cpu, gpu, nightly, batch)])
    assert not any(secret in job_variables for secret in server.secrets())

    worker = subprocess.Popen(
        [BIN / "prefect", "worker", "start", "--pool", "sciml-cpu", "--prefetch-seconds", "5"],
        env=env,
        cwd=tmp_path,
        stdout=open(tmp_path / "worker.log", "w"),  # noqa: SIM115
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    out = tmp_path / "batch"
    try:
        r = subprocess.run(
            [sys.executable, "-m", "pipelines.cli", "batch", str(LV / "lotka_volterra.csv")]
            + ["--model", str(LV / "model_full.toml"), "--seeds", "0,1", "--out", str(out)]
            + ["--engines", "sindy", "--deployment", "discover/cpu", "--timeout", "900"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=1200,
        )
    finally:
        stop(worker, signals=2)  # a worker exits only on the second signal
    log = (tmp_path / "worker.log").read_text()[-3000:]
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:] + log
    summary = json.loads((out / "batch.json").read_text())
    assert [run["state"] for run in summary["runs"]] == ["Completed", "Completed"]
    names = sorted(Path(run["out"]).name for run in summary["runs"])
    assert names == ["lotka_volterra-model_full-seed0", "lotka_volterra-model_full-seed1"]
    index = (out / "index.html").read_text()
    for name in names:
        assert (out / name / "discovered.json").exists()
        assert f"{name}/report.html" in index
        beta = json.loads((out / name / "discovered.json").read_text())["parameters"]["beta"]
        assert beta == pytest.approx(0.9, rel=0.2)
    run_id = r.stdout.split("FLOW_RUN")[-1].split()[0] if "FLOW_RUN" in r.stdout else None
    with client(server) as c:
        children = (
            c.read_flow_runs(
                flow_run_filter=FlowRunFilter(
                    parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[run_id])
                )
            )
            if run_id
            else [fr for fr in c.read_flow_runs() if fr.deployment_id == cpu.id]
        )
    assert len(children) == 2 and all(fr.state.is_completed() for fr in children)
    assert all(fr.work_pool_name == "sciml-cpu" for fr in children)
    # the pool's limit of 1: the worker ran them one after the other
    first, second = sorted(children, key=lambda fr: fr.start_time)
    assert first.end_time <= second.start_time, (first.end_time, second.start_time)
    assert_no_secret(server, [out, tmp_path / "worker.log"])


def test_no_secret_in_the_logs(server):
    """The script's and the server's output, PostgreSQL's log and initdb's: no secret."""
    pg = server.folder / "pg"
    assert_no_secret(server, [server.folder / "server.log", pg / "postgres.log", pg / "initdb.log"])
    log = (server.folder / "server.log").read_text()
    assert "basic authentication on" in log
    assert "PREFECT_API_AUTH_STRING=" in log  # how clients get it: the file, not the string
