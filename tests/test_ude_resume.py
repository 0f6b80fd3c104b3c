"""UDE training survives SIGKILL: started again, it resumes from its last checkpoint and ends
with the same weights as an uninterrupted run (tolerance 1e-9: the chunks are deterministic)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import pytest

import sciml
from sciml._ude import UDEConfig, train_ude

pytestmark = pytest.mark.slow

CONFIG = dict(windows=(0.5, 1.0), adam_steps=60, lbfgs_steps=40, chunk=20)

SETUP = """
import jax, sciml
from sciml._ude import UDEConfig, train_ude
model = sciml.load_model("data/lotka_volterra/model.toml")
data = sciml.load_trajectories("data/lotka_volterra/lotka_volterra.csv", model.states)
fit = sciml.fit_mechanistic(model, data, key=jax.random.key(0))
config = UDEConfig(**{config})
"""


def weights(trained):
    import equinox as eqx

    return np.concatenate(
        [np.ravel(x) for x in jax.tree.leaves(eqx.filter(trained.ude, eqx.is_inexact_array))]
    )


def test_resume_after_sigkill(tmp_path):
    prefix = tmp_path / "ckpt"
    marker = tmp_path / "killed-here"
    child = SETUP.format(config=CONFIG) + textwrap.dedent(f"""
        def progress(stage, step, total, loss):
            if step >= 80:  # 4 of the 7 chunks done and checkpointed
                open({str(marker)!r}, "w").close()
                import time
                time.sleep(600)
        train_ude(fit, data, key=jax.random.key(1), config=config, progress=progress,
                  checkpoint={str(prefix)!r})
    """)
    proc = subprocess.Popen([sys.executable, "-c", child], cwd=os.getcwd())
    try:
        deadline = time.monotonic() + 300
        while not marker.exists():
            assert proc.poll() is None, "training process ended before the kill"
            assert time.monotonic() < deadline, "no checkpoint within 300 s"
            time.sleep(0.2)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert prefix.with_suffix(".eqx").exists() and prefix.with_suffix(".json").exists()

    model = sciml.load_model("data/lotka_volterra/model.toml")
    data = sciml.load_trajectories("data/lotka_volterra/lotka_volterra.csv", model.states)
    fit = sciml.fit_mechanistic(model, data, key=jax.random.key(0))
    config = UDEConfig(**CONFIG)
    seen = []
    resumed = train_ude(
        fit,
        data,
        key=jax.random.key(1),
        config=config,
        checkpoint=prefix,
        progress=lambda stage, step, total, loss: seen.append(step),
    )
    assert seen[0] > 20  # it did not start from the beginning
    assert not prefix.with_suffix(".eqx").exists()  # removed once training is complete
    straight = train_ude(fit, data, key=jax.random.key(1), config=config)
    np.testing.assert_allclose(weights(resumed), weights(straight), rtol=0, atol=1e-9)


def test_checkpoint_of_other_settings_is_ignored(tmp_path):
    model = sciml.load_model("data/lotka_volterra/model.toml")
    data = sciml.load_trajectories("data/lotka_volterra/lotka_volterra.csv", model.states)
    fit = sciml.fit_mechanistic(model, data, key=jax.random.key(0))
    prefix = tmp_path / "ckpt"
    small = dict(CONFIG, lbfgs_steps=0)

    def stop(stage, step, total, loss):
        if step >= 40:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_ude(
            fit,
            data,
            key=jax.random.key(1),
            config=UDEConfig(**small),
            progress=stop,
            checkpoint=prefix,
        )
    seen = []
    other = UDEConfig(**dict(small, learning_rate=1e-3))
    train_ude(
        fit,
        data,
        key=jax.random.key(1),
        config=other,
        checkpoint=prefix,
        progress=lambda stage, step, total, loss: seen.append(step),
    )
    assert seen[0] == 20  # started from the beginning


def test_non_finite_loss_never_reaches_the_parameters():
    """A step whose loss is NaN (here: corrupt targets) leaves the parameters untouched."""
    import equinox as eqx
    import jax.numpy as jnp
    import optax

    from sciml._ude import _adam_chunk, init_ude

    model = sciml.load_model("data/lotka_volterra/model.toml")
    data = sciml.load_trajectories("data/lotka_volterra/lotka_volterra.csv", model.states)
    ude = init_ude(model, model.guesses, data, key=jax.random.key(0))
    from sciml._mechanistic import ParameterTransform

    ts, ys, mask = (jnp.asarray(a) for a in data.padded())
    values, measured = (jnp.asarray(a) for a in data.padded_channels())
    values = values.at[0, 5, 0].set(jnp.nan)
    y0s = ys[:, 0, :]
    # what train_ude passes for fully measured data: no initial value pinned or transformed
    none = ParameterTransform.make(np.zeros(0))
    empty = np.zeros(0, dtype=int)
    coded = tuple(
        jnp.asarray(a) for a in (empty, empty, none.kind, none.scale, *none._finite_bounds())
    )
    obs = (values, measured, ys, jnp.zeros(y0s.shape, dtype=bool), y0s, coded)
    trainable, static = eqx.partition((ude, y0s), eqx.is_inexact_array)
    opt = optax.adam(1e-2)
    after, _, values = _adam_chunk(
        trainable,
        static,
        opt.init(trainable),
        ts,
        obs,
        mask,
        jnp.ones(2),
        optimizer=opt,
        config=UDEConfig(),
        n=3,
    )
    assert not np.any(np.isfinite(np.asarray(values)))
    for a, b in zip(jax.tree.leaves(after), jax.tree.leaves(trainable)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
