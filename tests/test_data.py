"""Ingest: CSV and Parquet, one or many trajectories, irregular times, and clear refusals."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import sciml
from pipelines.cli import main

MODEL = "data/lotka_volterra/model.toml"


def write_csv(path, text):
    path.write_text(text)
    return path


def test_single_trajectory_csv():
    data = sciml.load_trajectories("data/lotka_volterra/lotka_volterra.csv", ["x", "y"])
    assert len(data) == 1
    (tr,) = data.trajectories
    assert tr.t.shape == (21,) and tr.y.shape == (21, 2)
    np.testing.assert_allclose(tr.t, np.linspace(0, 5, 21))


def test_many_trajectories_irregular_times_parquet(tmp_path):
    rng = np.random.default_rng(0)
    frames = []
    for name, n in [("a", 7), ("b", 12), ("c", 4)]:
        t = np.sort(rng.uniform(0, 3, n))
        frames.append(
            pd.DataFrame(
                {"trajectory": name, "t": t, "x": rng.normal(size=n), "y": rng.normal(size=n)}
            )
        )
    df = pd.concat(frames).sample(frac=1.0, random_state=1)  # rows of trajectories interleaved
    df = df.sort_values(["trajectory", "t"], kind="stable")
    df.to_parquet(tmp_path / "d.parquet")
    data = sciml.load_trajectories(tmp_path / "d.parquet", ["x", "y"])
    assert data.names == ["a", "b", "c"]
    assert [len(tr.t) for tr in data.trajectories] == [7, 12, 4]
    ts, ys, mask = data.padded()
    assert ts.shape == (3, 12) and ys.shape == (3, 12, 2)
    assert mask.sum() == 23
    assert np.all(np.diff(ts, axis=1) >= 0)  # padding keeps times non-decreasing


def test_custom_column_names(tmp_path):
    path = write_csv(tmp_path / "d.csv", "time,run,x,y\n0,r1,1,2\n1,r1,2,3\n2,r1,3,4\n")
    data = sciml.load_trajectories(path, ["x", "y"], time="time", trajectory="run")
    assert data.names == ["r1"]


BAD = {
    # name: (file content or None for "missing", expected message fragments)
    "missing": (None, ["no such file"]),
    "garbage": (b"\x00\x01\x02\xff\xfe binary", ["not a text CSV"]),
    "unparsable": ('t,x,y\n0,1,2\n1,"2,3\n2,3,4,5,6\n', ["cannot be read as CSV"]),
    "non_numeric": ("t,x,y\n0,1,2\n1,abc,3\n2,3,4\n", ["column 'x'", "row 2", "'abc'"]),
    # empty cells and NaN are allowed in state columns (not measured there; test_partial.py),
    # never in the time column, and every row must measure something
    "nan_time": ("t,x,y\n0,1,2\nNaN,2,1\n2,3,4\n", ["column 't'", "row 2", "missing"]),
    "empty_time": ("t,x,y\n0,1,2\n,2,1\n2,3,4\n", ["column 't'", "row 2", "missing"]),
    "empty_row": ("t,x,y\n0,1,2\n1,,NaN\n2,3,4\n", ["row 2", "no measured value"]),
    "empty_column": ("t,x,y\n0,1,\n1,2,\n2,3,\n", ["column 'y'", "no values"]),
    "unsorted": ("t,x,y\n0,1,2\n2,2,3\n1,3,4\n", ["row 3", "unsorted"]),
    "duplicate": ("t,x,y\n0,1,2\n1,2,3\n1,3,4\n", ["row 3", "duplicate time"]),
    "missing_state": ("t,x\n0,1\n1,2\n2,3\n", ["missing column", "'y'"]),
    "too_few": ("t,x,y\n0,1,2\n1,2,3\n", ["2 point", "at least 3"]),
    "too_few_one_of_many": (
        "trajectory,t,x,y\na,0,1,2\na,1,2,3\na,2,3,4\nb,0,1,2\nb,1,1,1\n",
        ["trajectory 'b'", "2 point"],
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_data_exit_2_names_the_problem(case, tmp_path, capsys):
    content, fragments = BAD[case]
    path = tmp_path / f"{case}.csv"
    if content is not None:
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    out = tmp_path / "out"
    code = main(["discover", str(path), "--model", MODEL, "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert str(path) in err
    for fragment in fragments:
        assert fragment in err, (fragment, err)
    assert not (out / "discovered.json").exists()


def test_bad_data_library_error_type(tmp_path):
    path = write_csv(tmp_path / "d.csv", "t,x,y\n0,1,2\n1,oops,3\n2,3,4\n")
    with pytest.raises(sciml.DataError, match="row 2"):
        sciml.load_trajectories(path, ["x", "y"])
