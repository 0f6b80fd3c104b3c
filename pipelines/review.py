"""The reviewer's step in Prefect: a typed form for one run, the pause, and the refit task.

`await_review` publishes nothing itself (the flow has published the report); it pauses the flow
run until a person answers the form in the Prefect UI (or through the API,
`prefect.flow_runs.resume_flow_run(id, run_input={...})`), then refits the run under the
decision (`sciml._review.review_run`). The form has one field per term of the current model,
named by `field_name` (accept / reject / keep), one to add a term from the candidates' table,
the reviewer's name and a note.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.input import RunInput
from pydantic import Field, create_model

NO_TERM = "none"
AWAITING_STATE = "Awaiting review"


def field_name(spec: str) -> str:
    """The form's field for term `state:term`: `term_` + its text with every run of other
    characters than letters and digits as `_` (`x:x**2` -> `term_x_x_2`)."""
    return "term_" + re.sub(r"[^0-9A-Za-z]+", "_", spec).strip("_")


def review_form(choices: dict[str, Any]) -> tuple[type[RunInput], dict[str, str]]:
    """The `RunInput` form for a run's `sciml._review.review_choices`, and field -> term."""
    fields: dict[str, Any] = {}
    names: dict[str, str] = {}
    for t in choices["terms"]:
        name = field_name(t["spec"])
        while name in names:  # two specs with the same letters and digits
            name += "_"
        names[name] = t["spec"]
        state, term = t["spec"].split(":", 1)
        fields[name] = (
            Literal["accept", "reject", "keep"],
            Field(
                "accept",
                title=f"d{state}/dt: {term}",
                description=f"coefficient {t['coefficient']:.4g} ({t['origin']}); keep: never "
                "pruned",
            ),
        )
    addable = tuple(choices["addable"])
    fields["add"] = (
        Literal[(NO_TERM, *addable)],  # type: ignore[valid-type]
        Field(NO_TERM, title="add a term from the candidates' table (state:term)"),
    )
    fields["reviewer"] = (str, Field("", max_length=200, title="your name"))
    fields["note"] = (str, Field("", max_length=2000, title="note (why)"))
    form = create_model("ReviewDecision", __base__=RunInput, **fields)
    return form, names


def decision_from(answer: Any, names: dict[str, str]) -> dict[str, Any]:
    """The form's answer as `sciml._review.Decision` keyword arguments."""
    values = answer.model_dump() if hasattr(answer, "model_dump") else dict(answer)
    picked = {name: values.get(name, "accept") for name in names}
    add = values.get("add") or NO_TERM
    return {
        "reject": tuple(names[n] for n, v in picked.items() if v == "reject"),
        "keep": tuple(names[n] for n, v in picked.items() if v == "keep"),
        "add": () if add == NO_TERM else (add,),
        "reviewer": values.get("reviewer") or "unknown (Prefect)",
        "note": values.get("note") or "",
        "via": "prefect",
    }


def _description(out: str, choices: dict[str, Any]) -> str:
    lines = [
        f"## Review of `{Path(out).name}` (revision {choices['revision']})",
        "",
        f"Report: `{Path(out).resolve() / 'report.html'}`",
        "",
        "Per term: **accept** it, **reject** it (removed) or **keep** it (never pruned); "
        "optionally add one term from the candidates' table. The run's selection is then refit "
        "under your decision (no UDE retraining) into its next revision.",
        "",
        "| term | coefficient | origin |",
        "|---|---|---|",
    ]
    lines += [
        f"| `{t['spec']}` | {t['coefficient']:.4g} | {t['origin']} |" for t in choices["terms"]
    ]
    return "\n".join(lines)


@task(name="review-refit", cache_policy=NO_CACHE, persist_result=True, result_serializer="json")
def review_refit(out: str, decision: dict[str, Any]) -> dict[str, Any]:
    """Refit the run in `out` under the decision: its next revision (`sciml review`'s work)."""
    from sciml.review import Decision, review_run

    result = review_run(out, Decision(**decision))
    entry = result["review"]["history"][-1]
    print(f"revision {entry['revision']}: {result['equations']}; worse: {entry['worse'] or 'no'}")
    return {
        "status": result["review"]["status"],
        "revision": entry["revision"],
        "equations": result["equations"],
        "worse": entry["worse"],
    }


def await_review(out: str, timeout: int, poll_interval: int = 2) -> dict[str, Any]:
    """Pause the flow run for the reviewer's decision, then refit under it.

    Returns the refit's summary, or `{"status": "awaiting review"}` when nobody answered within
    `timeout` seconds: the run folder then says so (`sciml._review.mark_awaiting`) and keeps
    its results; `sciml review DIR` or the `review` flow decides later.
    """
    from prefect.exceptions import FlowPauseTimeout
    from prefect.flow_runs import pause_flow_run

    from sciml.review import AWAITING, mark_awaiting, review_choices

    choices = review_choices(out)
    form, names = review_form(choices)
    logger = get_run_logger()
    logger.info("waiting up to %d s for a review of %s", timeout, out)
    try:
        answer = pause_flow_run(
            wait_for_input=form.with_initial_data(description=_description(out, choices)),
            timeout=timeout,
            poll_interval=max(1, min(poll_interval, timeout)),
        )
    except FlowPauseTimeout:
        mark_awaiting(out, message=f"no decision within {timeout} s")
        _running_again()
        logger.warning("no review within %d s: %s awaits review", timeout, out)
        return {"status": AWAITING, "timeout": timeout}
    return review_refit(out, decision_from(answer, names))


def _running_again() -> None:
    """After a pause that timed out, the server would fail the flow run on any state but
    Running; the run ends well (its results are intact), so it is set Running first."""
    from prefect import get_client
    from prefect.context import FlowRunContext
    from prefect.states import Running

    context = FlowRunContext.get()
    if context is None or context.flow_run is None:
        return
    with get_client(sync_client=True) as client:
        client.set_flow_run_state(
            context.flow_run.id, Running(message="review timed out"), force=True
        )


def final_state(summary: dict[str, Any], value: Any) -> Any:
    """The flow's return: `value`, or a Completed state named "Awaiting review" holding it."""
    from prefect.states import Completed

    from sciml.review import AWAITING

    if summary.get("status") != AWAITING:
        return value
    return Completed(
        name=AWAITING_STATE,
        message=f"no review within {summary.get('timeout')} s; results intact",
        data=value,
    )
