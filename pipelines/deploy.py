"""`sciml deploy`: a shortcut over `prefect deploy` and the repository's `prefect.yaml`.

It creates the work pools the chosen deployments name (type `process`, with a concurrency limit
when given), then runs `prefect --no-prompt deploy` from the repository root, so the
deployments are exactly those in `prefect.yaml` (edit that file to add your own). Everything
here can be done by hand: `prefect work-pool create sciml-cpu --type process
[--concurrency-limit N]`, then `prefect deploy --all`. See docs/orchestration.md.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
PREFECT_YAML = REPO / "prefect.yaml"


def deployments(path: Path = PREFECT_YAML) -> list[dict[str, Any]]:
    """The deployments of `prefect.yaml`, each with its `flow/name` as `full_name`."""
    import yaml

    from sciml import InputError

    try:
        config = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise InputError(f"{path}: cannot read it: {err}") from None
    found = []
    for d in config.get("deployments") or []:
        flow = _flow_name(d["entrypoint"])
        found.append({**d, "full_name": f"{flow}/{d['name']}"})
    return found


def _flow_name(entrypoint: str) -> str:
    """The flow's name (`@flow(name=...)`) of an entrypoint `path.py:function`."""
    import importlib

    module_path, function = entrypoint.split(":")
    module = importlib.import_module(module_path.removesuffix(".py").replace("/", "."))
    return getattr(module, function).name


def select(names: Sequence[str], available: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The deployments named (`flow/name`, or `name` when only one flow has it); all if none."""
    from sciml import InputError

    if not names:
        return available
    chosen = []
    for name in names:
        hits = [d for d in available if name in (d["full_name"], d["name"])]
        if len(hits) != 1:
            known = ", ".join(d["full_name"] for d in available)
            why = "is not in" if not hits else "is ambiguous in"
            raise InputError(f"deployment {name!r} {why} {PREFECT_YAML.name} (known: {known})")
        chosen.append(hits[0])
    return chosen


def ensure_work_pool(name: str, limit: int | None = None, pool_type: str = "process") -> str:
    """Create the work pool when missing; set its concurrency limit when given. Says what."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate, WorkPoolUpdate
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            pool = client.read_work_pool(name)
        except ObjectNotFound:
            client.create_work_pool(
                WorkPoolCreate(name=name, type=pool_type, concurrency_limit=limit)
            )
            return f"created work pool {name!r} (type {pool_type}, limit {limit or 'none'})"
        if limit is not None and pool.concurrency_limit != limit:
            client.update_work_pool(name, WorkPoolUpdate(concurrency_limit=limit))
            return f"work pool {name!r}: concurrency limit {limit}"
    return f"work pool {name!r} exists"


def require_server(why: str) -> None:
    """Raise `InputError` unless a Prefect server is configured (`PREFECT_API_URL`)."""
    from prefect.settings import get_current_settings

    from sciml import InputError

    if not get_current_settings().api.url:
        raise InputError(
            f"no server: set PREFECT_API_URL (and PREFECT_API_AUTH_STRING) to the Prefect server "
            f"the workers use ({why})"
        )


def deploy(names: Sequence[str] = (), limits: Mapping[str, int] | None = None) -> list[str]:
    """Create the pools, then `prefect deploy` the chosen deployments; their `flow/name`s."""
    from sciml import InputError

    require_server("deployments on a temporary API would vanish")
    chosen = select(names, deployments())
    limits = dict(limits or {})
    pools = list(dict.fromkeys(d["work_pool"]["name"] for d in chosen))
    unknown = set(limits) - set(pools)
    if unknown:
        raise InputError(f"--limit: no chosen deployment uses pool(s) {sorted(unknown)}")
    for pool in pools:
        print(ensure_work_pool(pool, limits.get(pool)))
    command = [sys.executable, "-m", "prefect", "--no-prompt", "deploy"]
    if names:
        for d in chosen:
            command += ["--name", d["full_name"]]
    else:
        command.append("--all")
    env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"}
    result = subprocess.run(command, cwd=REPO, env=env)
    if result.returncode != 0:
        raise RuntimeError(f"prefect {' '.join(command[3:])} exited {result.returncode}")
    return [d["full_name"] for d in chosen]
