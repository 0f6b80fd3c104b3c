"""Flow parameters as pydantic models: a deployment's parameters are validated before a run.

Prefect validates a flow's parameters against these models (from the UI, `prefect deployment
run --param`, a schedule or a parent flow), so a bad value fails the run before any work,
with pydantic's message naming the field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Engine = Literal["sindy", "operon", "pysr"]


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class UDESettings(_Params):
    """Overrides of the UDE training settings (`sciml.UDEConfig`); unset means default.

    The fields only describe the settings for Prefect's forms: `UDEConfig` validates them, and
    its message (naming the field) is the validation error.
    """

    width: int | None = Field(None, description="hidden units per layer of the network")
    depth: int | None = Field(None, description="hidden layers of the network")
    windows: tuple[float, ...] | None = Field(
        None, description="growing fractions of each trajectory's span, one Adam phase each"
    )
    adam_steps: int | None = Field(None, description="Adam steps per window, at most")
    lbfgs_steps: int | None = Field(None, description="L-BFGS polish steps, at most")
    learning_rate: float | None = None
    penalty: float | None = Field(None, description="weight of the network's output size")
    chunk: int | None = Field(None, description="optimiser steps compiled into one call")
    collocation_steps: int | None = Field(None, description="derivative-matching warm start")
    patience: int | None = Field(None, description="chunks without improvement before a stop")
    linesearch_steps: int | None = Field(None, description="L-BFGS: halvings of a step")
    train_mechanistic: bool | None = Field(None, description="train the theory's parameters too")
    rtol: float | None = Field(None, description="ODE solver's relative tolerance")
    atol: float | None = Field(None, description="ODE solver's absolute tolerance")
    max_steps: int | None = Field(None, description="ODE solver's steps per solve, at most")
    min_improvement: float | None = Field(None, description="relative gain that resets patience")
    validation_every: int | None = Field(None, description="every n-th sample held back")
    shooting_periods: float | None = Field(None, description="multiple-shooting piece length")

    @model_validator(mode="after")
    def _valid(self) -> UDESettings:
        from sciml import InputError, UDEConfig

        try:
            UDEConfig().replace(**self.overrides())
        except InputError as err:
            raise ValueError(str(err)) from None
        return self

    def overrides(self) -> dict:
        return self.model_dump(exclude_none=True)


class DiscoverParams(_Params):
    """One discovery run (`sciml discover`)."""

    data: Path = Field(description="trajectory data, CSV or Parquet (long form)")
    model: Path | None = Field(
        None, description="model file (TOML); none: no theory, every column but t a state"
    )
    out: Path = Field(description="output folder")
    seed: int = Field(0, ge=0)
    engines: tuple[Engine, ...] = Field(("sindy", "operon", "pysr"), min_length=1)
    quick: bool = Field(False, description="fewer training steps (smoke runs)")
    holdout: float = Field(0.0, ge=0.0, lt=0.9, description="held-out fraction of each span")
    ensemble: int = Field(
        0,
        ge=0,
        le=1024,
        description="K > 0: also K UDEs in one compiled program, each distilled (term "
        "frequencies and coefficient intervals)",
    )
    ude: UDESettings = Field(default_factory=UDESettings)
    results: Path | None = Field(
        None,
        description="folder of cached task results (default: OUT/results); share it between "
        "runs to reuse their trained UDEs",
    )
    review: bool = Field(
        False, description="after selection, pause for a reviewer's decision, then refit"
    )
    review_timeout: int = Field(
        3600, ge=1, le=30 * 86400, description="seconds to wait for the reviewer's decision"
    )
    max_minutes: float | None = Field(
        None,
        gt=0,
        description="wall-clock budget: checked between stages; once spent, the remaining "
        "stages are skipped and the results are marked partial",
    )

    @field_validator("engines")
    @classmethod
    def _unique(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(dict.fromkeys(v))

    @property
    def results_dir(self) -> Path:
        return self.results if self.results is not None else self.out / "results"


class ReviewParams(_Params):
    """A reviewer's decision on a finished discovery run (`review` flow): terms as state:term.

    With no decision given the flow pauses for one in the Prefect UI (up to `timeout` seconds).
    """

    out: Path = Field(description="the finished run's folder")
    reject: tuple[str, ...] = Field((), description="terms to remove, state:term")
    keep: tuple[str, ...] = Field((), description="terms never to prune, state:term")
    add: tuple[str, ...] = Field((), description="candidate terms to try, state:term")
    reviewer: str = Field("", max_length=200)
    note: str = Field("", max_length=2000)
    timeout: int = Field(3600, ge=1, le=30 * 86400, description="seconds to wait for a decision")


class CNFParams(_Params):
    """One continuous-normalising-flow run (`sciml cnf`)."""

    data: str = Field(description="CSV/Parquet/NPZ file, or sklearn:NAME")
    out: Path
    test: str | None = None
    seed: int = Field(0, ge=0)
    steps: int | None = Field(None, ge=1)


class ClassifyParams(_Params):
    """One neural-ODE classifier run (`sciml classify`)."""

    dataset: Literal["digits", "shapes", "textures", "bars"] | None = None
    data: Path | None = None
    test: Path | None = None
    out: Path
    seed: int = Field(0, ge=0)
    epochs: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _one_source(self) -> ClassifyParams:
        if (self.dataset is None) == (self.data is None):
            raise ValueError("give exactly one of dataset or data")
        return self


class SweepParams(_Params):
    """Discovery over every combination of data files, model files and seeds, on Dask.

    Each run writes into `out/<data stem>-<model stem>-seed<seed>/`.
    """

    data: tuple[Path, ...] = Field(min_length=1)
    models: tuple[Path, ...] = Field(min_length=1)
    seeds: tuple[int, ...] = Field((0,), min_length=1)
    out: Path
    engines: tuple[Engine, ...] = Field(("sindy", "operon"), min_length=1)
    quick: bool = False
    holdout: float = Field(0.0, ge=0.0, lt=0.9)
    ude: UDESettings = Field(default_factory=UDESettings)
    dask_address: str | None = Field(
        None, description="scheduler of an existing Dask cluster (default: a local cluster)"
    )
    n_workers: int = Field(2, ge=1, description="workers of the local cluster")
    cluster_class: str | None = Field(
        None,
        pattern=r"^[A-Za-z_][\w.]*\.[A-Za-z_]\w*$",
        description="Dask cluster class started for the sweep, as module.Class (e.g. "
        "dask_jobqueue.SLURMCluster; default: distributed.LocalCluster)",
    )
    cluster_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="keyword arguments of the cluster class"
    )

    @model_validator(mode="after")
    def _one_cluster(self) -> SweepParams:
        if self.dask_address and self.cluster_class:
            raise ValueError("give dask_address (an existing cluster) or cluster_class, not both")
        return self

    @field_validator("engines")
    @classmethod
    def _no_pysr(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        # PySR runs Julia, which must be driven from a process's main thread; Dask runs tasks
        # in worker threads (docs/cli.md, `sciml sweep`).
        if "pysr" in v:
            raise ValueError("pysr cannot run in Dask worker threads; sweep with sindy/operon")
        return tuple(dict.fromkeys(v))

    def runs(self) -> list[DiscoverParams]:
        runs = []
        for data in self.data:
            for model in self.models:
                for seed in self.seeds:
                    name = f"{data.stem}-{model.stem}-seed{seed}"
                    runs.append(
                        DiscoverParams(
                            data=data,
                            model=model,
                            out=self.out / name,
                            seed=seed,
                            engines=self.engines,
                            quick=self.quick,
                            holdout=self.holdout,
                            ude=self.ude,
                        )
                    )
        names = [r.out for r in runs]
        if len(set(names)) != len(names):
            raise ValueError("two sweep runs would share an output folder (same file stems)")
        return runs


class PipelineParams(_Params):
    """The parent flow: any of the three stages, each optional."""

    discover: DiscoverParams | None = None
    cnf: CNFParams | None = None
    classify: ClassifyParams | None = None


class BatchParams(_Params):
    """Discovery over data files x model files x seeds, one flow run of a deployment per run,
    on that deployment's work pool (`pipelines.batch`).

    Each run writes into `out/<data stem>-<model stem>-seed<seed>/`; the runs share the cache
    folder `results` (default `out/results`), so runs that differ only after a stage reuse it.
    """

    data: tuple[Path, ...] = Field(min_length=1, description="trajectory data files")
    models: tuple[Path | None, ...] = Field(
        (None,), min_length=1, description="model files (None: no theory)"
    )
    seeds: tuple[int, ...] = Field((0,), min_length=1)
    out: Path = Field(description="folder of the runs' folders, and of the index report")
    engines: tuple[Engine, ...] = Field(("sindy", "operon", "pysr"), min_length=1)
    quick: bool = False
    holdout: float = Field(0.0, ge=0.0, lt=0.9)
    ude: UDESettings = Field(default_factory=UDESettings)
    results: Path | None = Field(None, description="shared cache folder (default OUT/results)")
    deployment: str = Field(
        "discover/cpu",
        pattern=r"^[^/]+/[^/]+$",
        description="the discovery deployment (FLOW/NAME) whose work pool runs the runs",
    )
    timeout: float | None = Field(
        None, gt=0, description="seconds to wait for all runs (default: no limit)"
    )

    @field_validator("engines")
    @classmethod
    def _unique(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(dict.fromkeys(v))

    def runs(self) -> list[DiscoverParams]:
        results = self.results if self.results is not None else self.out / "results"
        runs = [
            DiscoverParams(
                data=data,
                model=model,
                out=self.out / f"{data.stem}-{model.stem if model else 'no-theory'}-seed{seed}",
                seed=seed,
                engines=self.engines,
                quick=self.quick,
                holdout=self.holdout,
                ude=self.ude,
                results=results,
            )
            for data in self.data
            for model in self.models
            for seed in self.seeds
        ]
        names = [r.out for r in runs]
        if len(set(names)) != len(names):
            raise ValueError("two batch runs would share an output folder (same file stems)")
        return runs
