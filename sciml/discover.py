"""The discovery pipeline as plain functions: one per stage, and `run_discovery` over them all.

Prefect tasks in `pipelines/` call these stage functions one each; `run_discovery` runs them in
order without Prefect (for tests, notebooks and the library's own users).
"""

from __future__ import annotations

import dataclasses
import logging
import platform
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax

from ._data import TrajectorySet, load_trajectories
from ._io import write_json
from ._mechanistic import MechanisticFit, fit_mechanistic
from ._model import MechanisticModel, load_model
from ._rundir import run_directory
from ._ude import TrainedUDE, UDEConfig, train_ude, trajectory_rmse

log = logging.getLogger("sciml")

RESULT_FILES = ("discovered.json", "equations.csv", "report.html")


@dataclasses.dataclass(frozen=True)
class DiscoveryConfig:
    """Everything that determines a discovery run's result (hashed for caching)."""

    seed: int = 0
    engines: tuple[str, ...] = ("sindy", "operon", "pysr")
    n_starts: int = 8
    fit_initial_state: bool = True
    ude: UDEConfig = UDEConfig()

    @classmethod
    def make(
        cls,
        *,
        seed: int = 0,
        engines: Sequence[str] = ("sindy", "operon", "pysr"),
        quick: bool = False,
    ) -> DiscoveryConfig:
        ude = UDEConfig().quick() if quick else UDEConfig()
        return cls(seed=seed, engines=tuple(engines), ude=ude)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def versions() -> dict[str, str]:
    import diffrax
    import equinox
    import optax

    from . import __version__

    return {
        "sciml": __version__,
        "python": platform.python_version(),
        "jax": jax.__version__,
        "diffrax": diffrax.__version__,
        "equinox": equinox.__version__,
        "optax": optax.__version__,
        "device": str(jax.devices()[0]),
    }


# -- stages ------------------------------------------------------------------------------------
def load_inputs(
    data_path: str | Path, model_path: str | Path
) -> tuple[MechanisticModel, TrajectorySet]:
    """Stage 1: read and validate the model file and the trajectory data."""
    model = load_model(model_path)
    data = load_trajectories(
        data_path, model.states, time=model.time_column, trajectory=model.trajectory_column
    )
    return model, data


def mechanistic_stage(
    model: MechanisticModel, data: TrajectorySet, config: DiscoveryConfig
) -> MechanisticFit:
    """Stage 2: least-squares fit of the declared model."""
    return fit_mechanistic(
        model,
        data,
        key=jax.random.key(config.seed),
        n_starts=config.n_starts,
        fit_initial_state=config.fit_initial_state,
    )


def ude_stage(
    fit: MechanisticFit,
    data: TrajectorySet,
    config: DiscoveryConfig,
    progress: Callable[[str, int, int, float], None] | None = None,
) -> TrainedUDE:
    """Stage 3: train the universal differential equation."""
    return train_ude(
        fit, data, key=jax.random.key(config.seed + 1), config=config.ude, progress=progress
    )


def rich_progress() -> tuple[Any, Callable[[str, int, int, float], None]]:
    """A rich progress bar and the callback that advances it."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TextColumn("loss {task.fields[loss]:.3g}"),
        TimeElapsedColumn(),
        transient=False,
    )
    task = bar.add_task("UDE training", total=1, loss=float("nan"))

    def callback(stage: str, step: int, total: int, loss: float) -> None:
        bar.update(task, description=f"UDE: {stage}", completed=step, total=total, loss=loss)

    return bar, callback


def _attach_log(out: Path) -> logging.Handler:
    handler = logging.FileHandler(out / "run.log", mode="w")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    return handler


def run_discovery(
    data_path: str | Path,
    model_path: str | Path,
    out: str | Path,
    *,
    seed: int = 0,
    engines: Sequence[str] = ("sindy", "operon", "pysr"),
    quick: bool = False,
    show_progress: bool = True,
) -> dict[str, Any]:
    """Run every discovery stage and write DESIGN §4's outputs into `out`."""
    config = DiscoveryConfig.make(seed=seed, engines=engines, quick=quick)
    model, data = load_inputs(data_path, model_path)  # bad input fails before any folder work
    with run_directory(out, clear=RESULT_FILES) as out:
        handler = _attach_log(out)
        try:
            return _run(model, data, config, out, Path(data_path), Path(model_path), show_progress)
        finally:
            log.removeHandler(handler)
            handler.close()


def _run(
    model, data, config, out: Path, data_path: Path, model_path: Path, show_progress: bool
) -> dict[str, Any]:
    timings: dict[str, float] = {}
    log.info("data %s: %d trajectories, %d points", data_path, len(data), data.n_points)
    write_json(
        out / "config.json",
        {
            "data": str(data_path),
            "model_file": str(model_path),
            "model": model.describe(),
            "config": config.to_dict(),
            "versions": versions(),
        },
    )
    t = time.perf_counter()
    fit = mechanistic_stage(model, data, config)
    timings["mechanistic"] = time.perf_counter() - t
    log.info("mechanistic fit: %s (cost %.4g, %s)", fit.parameter_dict, fit.cost, fit.message)

    result: dict[str, Any] = {
        "parameters": fit.parameter_dict,
        "mechanistic": {"equations": model.inlined(fit.params), "rmse": fit.rmse.tolist()},
    }
    metrics: dict[str, Any] = {"mechanistic_rmse": dict(zip(model.states, fit.rmse.tolist()))}
    if model.residual_states:
        t = time.perf_counter()
        if show_progress:
            bar, callback = rich_progress()
            with bar:
                trained = ude_stage(fit, data, config, progress=callback)
        else:
            trained = ude_stage(fit, data, config)
        timings["ude"] = time.perf_counter() - t
        trained.save(out)
        ude_rmse = trajectory_rmse(trained.ude, trained.y0, data)
        metrics["ude_rmse"] = dict(zip(model.states, ude_rmse.tolist()))
        metrics["ude_final_loss"] = (
            trained.history["lbfgs"][-1]
            if trained.history["lbfgs"]
            else trained.history["adam"][-1]
        )
        log.info("UDE trained in %.1f s: RMSE %s", timings["ude"], metrics["ude_rmse"])
    result["equations"] = model.inlined(fit.params)
    result["metrics"] = metrics
    result["timings"] = timings
    write_json(out / "discovered.json", result)
    result["out"] = str(out)
    return result
