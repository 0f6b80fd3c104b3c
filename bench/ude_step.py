"""Median time per UDE training step: this project (JAX/diffrax/equinox/optax) vs torchdiffeq.

Same model (the bundled Lotka–Volterra UDE: known αx, −δy plus a 2-32-32-2 GELU MLP on
standardised states), same initial weights (copied from the equinox network into torch), same
solver (Dopri5, rtol 1e-6, atol 1e-8, discretise-then-optimise gradients), same data, float64,
one thread each. One step = loss + gradient + Adam update.

    python bench/ude_step.py [--steps 60] [--threads 1]     # needs pip install -e '.[bench]'
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    if args.threads == 1:  # XLA's CPU thread pool off (it has no thread-count flag)
        os.environ["XLA_FLAGS"] = "--xla_cpu_multi_thread_eigen=false"
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
    try:
        import torch
        import torchdiffeq
    except ImportError as err:  # the peer is the `bench` extra, not a dependency of sciml
        print(f"skipped: the peer needs torch and torchdiffeq ({err}): pip install -e '.[bench]'")
        return

    import diffrax
    import equinox as eqx
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax

    import sciml
    from sciml._ude import init_ude

    torch.set_num_threads(args.threads)
    torch.set_default_dtype(torch.float64)
    rtol, atol = 1e-6, 1e-8

    model = sciml.load_model("data/lotka_volterra/model.toml")
    data = sciml.load_trajectories("data/lotka_volterra/lotka_volterra.csv", model.states)
    ude = init_ude(model, model.guesses, data, key=jax.random.key(0))
    (tr,) = data.trajectories
    ts, ys = jnp.asarray(tr.t), jnp.asarray(tr.y)
    scale = jnp.asarray(data.state_scale())

    # -- JAX ------------------------------------------------------------------------------
    def loss_fn(params, static):
        m = eqx.combine(params, static)
        sol = diffrax.diffeqsolve(
            diffrax.ODETerm(lambda t, y, a: m(t, y)),
            diffrax.Dopri5(),
            ts[0],
            ts[-1],
            None,
            ys[0],
            saveat=diffrax.SaveAt(ts=ts),
            stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
            max_steps=4096,
        )
        return jnp.mean(((sol.ys - ys) / scale) ** 2)

    params, static = eqx.partition(ude, eqx.is_inexact_array)
    opt = optax.adam(1e-3)
    state = opt.init(params)

    @eqx.filter_jit
    def jax_step(params, state):
        loss, grads = jax.value_and_grad(loss_fn)(params, static)
        updates, state = opt.update(grads, state, params)
        return eqx.apply_updates(params, updates), state, loss

    params, state, loss = jax_step(params, state)  # compile
    jax.block_until_ready(loss)
    jax_times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        params, state, loss = jax_step(params, state)
        jax.block_until_ready(loss)
        jax_times.append(time.perf_counter() - t0)

    # -- torchdiffeq, same weights ------------------------------------------------------------
    net = ude.network
    layers = []
    for i, lin in enumerate(net.mlp.layers):
        layer = torch.nn.Linear(lin.in_features, lin.out_features)
        with torch.no_grad():
            layer.weight.copy_(torch.from_numpy(np.array(lin.weight)))
            layer.bias.copy_(torch.from_numpy(np.array(lin.bias)))
        layers.append(layer)
        if i < len(net.mlp.layers) - 1:
            layers.append(torch.nn.GELU())
    mlp = torch.nn.Sequential(*layers)
    mean, sd, out = (
        torch.from_numpy(np.array(a)) for a in (net.in_mean, net.in_scale, net.out_scale)
    )
    alpha, delta = (float(v) for v in model.guesses)

    class Field(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.mlp = mlp

        def forward(self, t, y):
            known = torch.stack([alpha * y[0], -delta * y[1]])
            return known + out * self.mlp((y - mean) / sd)

    field = Field()
    t_t, y_t, s_t = (torch.from_numpy(np.array(a)) for a in (ts, ys, scale))
    topt = torch.optim.Adam(field.parameters(), lr=1e-3)

    def torch_step():
        topt.zero_grad()
        pred = torchdiffeq.odeint(field, y_t[0], t_t, rtol=rtol, atol=atol, method="dopri5")
        loss = torch.mean(((pred - y_t) / s_t) ** 2)
        loss.backward()
        topt.step()
        return loss

    with torch.no_grad():
        pred = torchdiffeq.odeint(field, y_t[0], t_t, rtol=rtol, atol=atol, method="dopri5")
    jax_first = float(loss_fn(eqx.partition(ude, eqx.is_inexact_array)[0], static))
    torch_first = float(torch.mean(((pred - y_t) / s_t) ** 2))
    torch_step()  # warm-up
    torch_times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        torch_step()
        torch_times.append(time.perf_counter() - t0)

    j, t = statistics.median(jax_times), statistics.median(torch_times)
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"{args.threads} thread(s); jax {jax.__version__}, torch {torch.__version__}"
    )
    print(f"same initial loss: jax {jax_first:.6g}  torch {torch_first:.6g}")
    print(f"sciml (JAX/diffrax)  median step {j * 1e3:8.2f} ms")
    print(f"torchdiffeq          median step {t * 1e3:8.2f} ms")
    print(f"ratio torchdiffeq / sciml: {t / j:.1f}x")


if __name__ == "__main__":
    main()
