"""Batch fan-out: many discovery runs sent to a work pool, collected into one index report.

The parent flow `discovery-batch` creates one flow run of a discovery deployment (default
`discover/cpu`, see `prefect.yaml`) per (data file, model, seed) with `run_deployment`, without
waiting for each; the deployment's work pool hands them to its workers, as many at a time as
the pool's concurrency limit allows (`sciml deploy --limit N`, or `prefect work-pool
set-concurrency-limit`; one worker per GPU on a GPU node, `scripts/gpu-worker.sh`). The parent
then waits for every run, and writes `OUT/batch.json` (each run's state, folder and equations)
and `OUT/index.html` (every finished run side by side, with links to their reports). It fails
when any run failed, after writing both.

Run it from anywhere that reaches the server: `sciml batch A.csv B.csv --model M.toml --seeds
0,1 --out /shared/runs --deployment discover/gpu`, or deploy it (`discover-batch/on-demand` in
`prefect.yaml`). Paths must be valid on the workers (a shared file system).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger

from ._signals import note_flow_run
from .params import BatchParams

POLL_SECONDS = 2.0


def submit(params: BatchParams) -> list[tuple[str, Any]]:
    """One flow run of the deployment per run, returned at once: (out folder, flow run)."""
    from prefect.deployments import run_deployment

    submitted = []
    for run in params.runs():
        flow_run = run_deployment(
            params.deployment,
            parameters={"params": run.model_dump(mode="json")},
            flow_run_name=run.out.name,
            timeout=0,  # do not wait: the pool runs them side by side
            tags=["sciml-batch"],
        )
        submitted.append((str(run.out), flow_run))
    return submitted


def wait(flow_run_ids: list[Any], timeout: float | None) -> dict[Any, Any]:
    """Flow run id -> its final state (or its last state when `timeout` ran out)."""
    from prefect import get_client

    deadline = None if timeout is None else time.monotonic() + timeout
    states: dict[Any, Any] = {}
    with get_client(sync_client=True) as client:
        pending = list(flow_run_ids)
        while pending:
            for run_id in list(pending):
                state = client.read_flow_run(run_id).state
                states[run_id] = state
                if state is not None and state.is_final():
                    pending.remove(run_id)
            if pending and deadline is not None and time.monotonic() > deadline:
                break
            if pending:
                time.sleep(POLL_SECONDS)
    return states


def summary(out: str, state: Any) -> dict[str, Any]:
    """One run's line in `batch.json`."""
    import json

    row: dict[str, Any] = {
        "out": out,
        "state": state.name if state is not None else "Unknown",
        "message": getattr(state, "message", None),
    }
    discovered = Path(out) / "discovered.json"
    if state is not None and state.is_completed() and discovered.is_file():
        result = json.loads(discovered.read_text())
        row["equations"] = result.get("equations")
        row["parameters"] = result.get("parameters")
    return row


@flow(name="discovery-batch", log_prints=True, result_serializer="json")
def batch(params: BatchParams) -> dict[str, Any]:
    """Send every run to the deployment's work pool, wait, write `batch.json` and `index.html`."""
    note_flow_run()  # marked Cancelled if SIGTERM stops it (pipelines._signals)
    from sciml.io import write_json
    from sciml.report import render_index

    logger = get_run_logger()
    params.out.mkdir(parents=True, exist_ok=True)
    submitted = submit(params)
    logger.info("batch: %d runs sent to %s", len(submitted), params.deployment)
    states = wait([fr.id for _, fr in submitted], params.timeout)
    rows = [summary(out, states.get(fr.id)) for out, fr in submitted]
    index = render_index(params.out) if any(r["state"] == "Completed" for r in rows) else None
    write_json(
        params.out / "batch.json",
        {"deployment": params.deployment, "index": index and str(index), "runs": rows},
    )
    failed = [r for r in rows if r["state"] != "Completed"]
    for r in failed:
        logger.error("batch: run %s ended %s: %s", r["out"], r["state"], r["message"])
    if failed:
        raise RuntimeError(
            f"{len(failed)} of {len(rows)} batch runs did not complete "
            f"(see {params.out / 'batch.json'})"
        )
    return {"index": str(index), "runs": rows}
