"""Deployments of the discovery flow on a cron schedule: served from one process, or sent to a
work pool whose workers run them (a `process` pool on this machine, or on a GPU node).

`sciml deploy DATA --model M --out DIR --cron "0 3 * * *" --serve` serves from the calling
process (Ctrl-C stops it). Without `--serve` the deployment goes to a work pool (created as type
`process` when missing) and a worker runs it: `prefect worker start --pool sciml-process`.
See docs/orchestration.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .params import DiscoverParams

REPO = Path(__file__).resolve().parent.parent
ENTRYPOINT = "pipelines/flows.py:discover"
QUIET_ENV = {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"}
GPU_ENV = {"JAX_PLATFORMS": "cuda", "XLA_PYTHON_CLIENT_PREALLOCATE": "false"}


def ensure_work_pool(name: str, pool_type: str = "process") -> bool:
    """Create the work pool when missing; True when it was created."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(name)
            return False
        except ObjectNotFound:
            client.create_work_pool(WorkPoolCreate(name=name, type=pool_type))
            return True


def deploy_discovery(
    params: DiscoverParams,
    *,
    name: str,
    cron: str,
    timezone: str = "UTC",
    pool: str | None = None,
    gpu: bool = False,
) -> Any:
    """Create (or update) the deployment `discover/NAME` with a cron schedule.

    `pool=None` serves it from this process (blocks until interrupted); otherwise the
    deployment is registered with the work pool and the id returned.
    """
    from prefect.schedules import Cron

    from .flows import discover

    parameters = {"params": params.model_dump(mode="json")}
    schedules = [Cron(cron, timezone=timezone)]
    description = f"discovery on {params.data} (model {params.model}) into {params.out}"
    if pool is None:
        from prefect import serve

        deployment = discover.to_deployment(
            name=name, parameters=parameters, schedules=schedules, description=description
        )
        print(f"serving discover/{name} on schedule {cron!r} ({timezone}); Ctrl-C stops")
        serve(deployment, print_starting_message=False)
        return None
    if ensure_work_pool(pool):
        print(f"created work pool {pool!r} (type process)")
    env = {**QUIET_ENV, **(GPU_ENV if gpu else {})}
    flow = discover.from_source(source=str(REPO), entrypoint=ENTRYPOINT)
    deployment_id = flow.deploy(
        name=name,
        work_pool_name=pool,
        parameters=parameters,
        schedules=schedules,
        description=description,
        job_variables={"env": env, "working_dir": str(REPO)},
        build=False,
        push=False,
        print_next_steps=False,
    )
    print(
        f"deployment discover/{name} ({deployment_id}) on pool {pool!r}, schedule {cron!r}; "
        f"start a worker: prefect worker start --pool {pool}"
    )
    return deployment_id
