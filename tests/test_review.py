"""The reviewer decides (issue 18): terms rejected, kept or added on a finished run, the selection
refit without retraining, the next revision written beside the earlier ones, the history in
`discovered.json`, the decision and its effect in the report and the index; in Prefect, a paused
flow run resumed through the API with the decision, or ended "awaiting review".

The fast tests use the synthetic Lotka–Volterra run folder of `test_report` (no training); the
slow one reviews a real discovery run of the bundled data.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
from test_report import write_run

from pipelines.cli import main
from sciml import InputError
from sciml._review import Decision, mark_awaiting, review_choices
from sciml.report import render_index


def _discovered(run: Path) -> dict:
    return json.loads((run / "discovered.json").read_text())


def _kept(d: dict, state: str) -> set[str]:
    return {t["term"] for t in d["terms"] if t["state"] == state and t["kept"]}


@pytest.fixture(scope="module")
def reviewed(tmp_path_factory) -> tuple[Path, str]:
    """A run whose true term x*y in dx/dt was rejected by `sciml review` (revision 1)."""
    run = write_run(tmp_path_factory.mktemp("reviewed") / "run")
    original = (run / "discovered.json").read_text()
    code = main(
        ["review", str(run), "--reject", "x:x*y", "--reviewer", "alice", "--note", "no x*y"]
    )
    assert code == 0
    return run, original


# -- bad decisions ------------------------------------------------------------------------------
def test_bad_term_names_exit_2_naming_the_term_and_write_nothing(tmp_path, capsys):
    run = write_run(tmp_path / "run")
    before = (run / "discovered.json").read_text()
    cases = [
        (["--reject", "x:x**2"], "x**2"),  # not a term of dx/dt
        (["--reject", "y:1"], "1"),  # pruned: not in the model
        (["--keep", "q:x"], "'q'"),  # no such state
        (["--add", "x:x*y"], "already"),  # in the model
        (["--add", "x:x**7"], "x**7"),  # no candidate has it
        (["--reject", "x*y"], "state:term"),  # no state
        (["--reject", "x:x*y", "--keep", "x:x*y"], "both"),
        (["--reject", "x:x*(y"], "syntax"),
    ]
    for args, named in cases:
        assert main(["review", str(run), *args]) == 2, args
        err = capsys.readouterr().err
        assert named in err, (args, err)
    assert (run / "discovered.json").read_text() == before
    assert not (run / "revisions").exists()
    with pytest.raises(InputError, match="state:term"):
        Decision(reject=("xy",))


def test_revisions_of_an_earlier_run_in_the_folder_are_not_mixed_in(tmp_path, capsys):
    run = write_run(tmp_path / "run")
    old = run / "revisions" / "0"
    old.mkdir(parents=True)
    (old / "discovered.json").write_text(json.dumps({"equations": {"x": "x"}}))
    assert main(["review", str(run), "--reject", "x:x*y"]) == 2
    assert "earlier run" in capsys.readouterr().err
    assert sorted(p.name for p in (run / "revisions").iterdir()) == ["0"]


def test_data_changed_since_the_run_is_refused(tmp_path, capsys):
    run = write_run(tmp_path / "run")
    config = json.loads((run / "config.json").read_text())
    config["inputs"]["data_sha256"] = "0" * 64  # what a flow run records
    (run / "config.json").write_text(json.dumps(config))
    assert main(["review", str(run), "--reject", "x:x*y"]) == 2
    assert "data.csv: changed since the run" in capsys.readouterr().err
    assert not (run / "revisions").exists()


def test_choices_list_the_terms_and_the_candidates(tmp_path, capsys):
    run = write_run(tmp_path / "run")
    choices = review_choices(run)
    assert [t["spec"] for t in choices["terms"]] == ["x:x", "x:x*y", "y:y", "y:x*y"]
    assert set(choices["addable"]) == {"y:1", "x:1"}  # pruned y:1; x:1 from the candidates
    assert choices["status"] == "not reviewed" and choices["revision"] == 0
    assert main(["review", str(run)]) == 0  # no decision: the choices are printed
    assert "x:x*y" in capsys.readouterr().out
    assert not (run / "revisions").exists()


# -- the CLI path -------------------------------------------------------------------------------
def test_rejecting_a_true_term_worsens_the_fit_and_the_report_says_so(reviewed):
    run, original = reviewed
    d = _discovered(run)
    assert "x*y" not in _kept(d, "x") and "x*y" in _kept(d, "y")
    review = d["review"]
    assert review["status"] == "reviewed" and review["revision"] == 1
    (entry,) = review["history"]
    assert entry["reviewer"] == "alice" and entry["note"] == "no x*y" and entry["via"] == "cli"
    assert entry["rejected"] == ["x:x*y"] and entry["based_on"] == 0
    before, after = entry["fit_before"]["rmse"], entry["fit_after"]["rmse"]
    assert after["x"] > 5 * before["x"]  # visibly worse
    assert "x" in entry["worse"]
    assert d["metrics"]["final_rmse"] == after
    assert entry["fit_after"]["equations"] == d["equations"] != entry["fit_before"]["equations"]
    # the revisions: 0 is the run as discovery left it, 1 the reviewed one
    assert (run / "revisions" / "0" / "discovered.json").read_text() == original
    assert json.loads((run / "revisions" / "1" / "discovered.json").read_text()) == d
    assert (run / "revisions" / "1" / "report.html").exists()
    text = (run / "report.html").read_text()
    assert "The review worsened the fit of x" in text
    section = text[text.index('id="review"') :]
    assert "alice" in section and "rejected" in section and "no x*y" in section
    assert entry["at"][:10] in section and "worse" in section


def test_index_shows_each_runs_review_status(reviewed, tmp_path):
    run, _ = reviewed
    runs = tmp_path / "runs"
    write_run(runs / "a-plain")
    waiting = write_run(runs / "b-waiting")
    mark_awaiting(waiting, message="no decision within 5 s")
    assert _discovered(waiting)["review"]["status"] == "awaiting review"
    assert "Awaiting review" in (waiting / "report.html").read_text()
    (runs / "c-reviewed").symlink_to(run, target_is_directory=True)
    text = render_index(runs).read_text()
    assert "<th>review</th>" in text
    for status in ("not reviewed", "awaiting review", "reviewed (revision 1 by alice)"):
        assert status in text, status


def test_a_later_decision_is_the_next_revision(reviewed, tmp_path):
    """Keeping the rejected term again brings it back; a needless added term is pruned; the
    earlier revisions stay as they were."""
    run, _ = reviewed
    first = (run / "revisions" / "1" / "discovered.json").read_bytes()
    code = main(["review", str(run), "--keep", "x:x*y", "--add", "y:1", "--reviewer", "bob"])
    assert code == 0
    d = _discovered(run)
    assert d["review"]["revision"] == 2 and len(d["review"]["history"]) == 2
    entry = d["review"]["history"][-1]
    assert entry["based_on"] == 1 and entry["kept"] == ["x:x*y"] and entry["added"] == ["y:1"]
    assert "x*y" in _kept(d, "x")
    assert "1" not in _kept(d, "y") and any(p["term"] == "1" for p in entry["pruned"])
    assert not entry["worse"]  # the true model again
    assert d["metrics"]["final_rmse"]["x"] < 0.2 * entry["fit_before"]["rmse"]["x"]
    assert (run / "revisions" / "1" / "discovered.json").read_bytes() == first
    assert sorted(p.name for p in (run / "revisions").iterdir()) == ["0", "1", "2"]


# -- Prefect: a paused flow run resumed through the API -----------------------------------------
def _paused_run(flow_name: str, timeout: float = 120):
    from prefect import get_client
    from prefect.client.schemas.filters import (
        FlowFilter,
        FlowFilterName,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with get_client(sync_client=True) as client:
            runs = client.read_flow_runs(
                flow_filter=FlowFilter(name=FlowFilterName(any_=[flow_name])),
                flow_run_filter=FlowRunFilter(
                    state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.PAUSED]))
                ),
            )
        if runs:
            return runs[0]
        time.sleep(0.5)
    raise AssertionError(f"no paused {flow_name} flow run within {timeout} s")


def test_paused_review_flow_resumed_with_a_rejection(prefect_harness, tmp_path):
    from prefect import get_client
    from prefect.flow_runs import resume_flow_run

    from pipelines.flows import review
    from pipelines.params import ReviewParams
    from pipelines.review import field_name

    run = write_run(tmp_path / "run")
    outcome: dict = {}

    def flow_thread():
        outcome["state"] = review(ReviewParams(out=run, timeout=300), return_state=True)

    thread = threading.Thread(target=flow_thread)
    thread.start()
    try:
        paused = _paused_run("review")
        resume_flow_run(
            paused.id,
            run_input={field_name("x:x*y"): "reject", "reviewer": "carol", "note": "from the UI"},
        )
    finally:
        thread.join(timeout=300)
    state = outcome["state"]
    assert state.is_completed() and state.name == "Completed", state
    assert state.result()["revision"] == 1
    d = _discovered(run)
    (entry,) = d["review"]["history"]
    assert entry["reviewer"] == "carol" and entry["via"] == "prefect"
    assert entry["rejected"] == ["x:x*y"] and entry["note"] == "from the UI"
    assert "x*y" not in _kept(d, "x") and "x" in entry["worse"]
    with get_client(sync_client=True) as client:
        assert client.read_flow_run(paused.id).state.is_completed()
    assert "The review worsened the fit of x" in (run / "report.html").read_text()


def test_no_answer_in_time_ends_awaiting_review_with_results_intact(prefect_harness, tmp_path):
    from pipelines.flows import review
    from pipelines.params import ReviewParams

    run = write_run(tmp_path / "run")
    equations = _discovered(run)["equations"]
    state = review(ReviewParams(out=run, timeout=2), return_state=True)
    assert state.is_completed() and state.name == "Awaiting review", state
    d = _discovered(run)
    assert d["review"]["status"] == "awaiting review" and d["equations"] == equations
    assert not (run / "revisions").exists()
    assert "Awaiting review" in (run / "report.html").read_text()


# -- a real discovery run of the bundled data ---------------------------------------------------
@pytest.mark.slow
def test_discovery_with_review_on_the_bundled_run(prefect_harness, shared_results, tmp_path):
    """`sciml discover --review`: unanswered, the run ends awaiting review; `sciml review`
    then rejects the true term x*y of dx/dt, and the report says the fit got worse."""
    from pipelines.flows import discover
    from pipelines.params import DiscoverParams

    root = Path(__file__).resolve().parent.parent / "data" / "lotka_volterra"
    out = tmp_path / "run"
    params = DiscoverParams(
        data=root / "lotka_volterra.csv",
        model=root / "model.toml",
        out=out,
        engines=("sindy",),
        quick=True,
        results=shared_results,
        review=True,
        review_timeout=2,
    )
    state = discover(params, return_state=True)
    assert state.is_completed() and state.name == "Awaiting review", state
    assert state.result()["review"]["status"] == "awaiting review"
    assert _discovered(out)["review"]["status"] == "awaiting review"
    assert "x:x*y" in [t["spec"] for t in review_choices(out)["terms"]]
    assert main(["review", str(out), "--reject", "x:x*y", "--reviewer", "dave"]) == 0
    d = _discovered(out)
    entry = d["review"]["history"][-1]
    assert d["review"]["status"] == "reviewed" and "x" in entry["worse"]
    assert entry["fit_after"]["rmse"]["x"] > 2 * entry["fit_before"]["rmse"]["x"]
    assert "The review worsened the fit of x" in (out / "report.html").read_text()
