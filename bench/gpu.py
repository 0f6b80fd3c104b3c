"""A GPU check in one short run: the device, bundled discovery on GPU and CPU, ensemble
throughput, CNF and classifier steps per second; JSON + markdown.

    python bench/gpu.py --out bench/results/gpu          # < 8 min on one GPU
    python bench/gpu.py --smoke --out /tmp/gpu-check     # a minute or two on a CPU

What it measures, in this order (each item is skipped, and says so, once `--budget` seconds
have passed; a failing item is recorded with its error and the others go on):

1. the device JAX uses by default (platform, kind, memory) and the versions;
2. ensemble throughput: K = 1, 16, 64, 256 bundled Lotka-Volterra UDEs trained together
   (`sciml._ensemble`: one joint solve of all members per Adam step through the ODE), after
   compilation: optimiser steps per second and member-steps per second, plus compile time;
3. CNF training steps per second (`sciml.cnf.fit_cnf`, ring of 8 Gaussians, batch 256), warm;
4. neural-ODE classifier training steps per second (digits, batch 64, default settings), warm;
5. the bundled discovery (`run_discovery` on `data/lotka_volterra`, no Prefect) in a fresh
   process on the default device and, at the same time, in one with `JAX_PLATFORMS=cpu`, wall
   time including imports and compilation (`--no-discovery` skips them).

`--smoke`: K = 1, 2, a few steps of each, small CNF, no discovery runs (a check that the script
works, for the tests; its figures mean nothing).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import json
import os
import platform
import subprocess
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LV_DATA = ROOT / "data/lotka_volterra/lotka_volterra.csv"
LV_MODEL = ROOT / "data/lotka_volterra/model.toml"
DISCOVERY = """
import sys, time
t = time.perf_counter()
from sciml.discover import run_discovery
r = run_discovery(sys.argv[1], sys.argv[2], sys.argv[3], engines=sys.argv[4].split(","),
                  quick=sys.argv[5] == "1", show_progress=False)
import jax
print("RESULT", time.perf_counter() - t, jax.devices()[0].platform, r["equations"])
"""


def device_info() -> dict:
    import jax

    dev = jax.devices()[0]
    info = {
        "platform": dev.platform,
        "kind": getattr(dev, "device_kind", str(dev)),
        "count": jax.device_count(),
        "jax": jax.__version__,
        "host": f"{os.cpu_count()} CPU cores {platform.machine()}",
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
    }
    try:
        stats = dev.memory_stats() or {}
        if "bytes_limit" in stats:
            info["memory_gib"] = round(stats["bytes_limit"] / 2**30, 1)
    except Exception:  # noqa: BLE001 - not every backend reports memory
        pass
    return info


def ensemble_throughput(ks: list[int], steps: int, repeats: int) -> dict:
    """Warm optimiser steps per second of K members' Adam phase through the ODE."""
    import equinox as eqx
    import jax
    import jax.numpy as jnp
    import numpy as np

    import sciml
    from sciml._data import BLOW_UP
    from sciml._ensemble import _adam, _ensemble_ode_chunk, _stack
    from sciml._ude import UDEConfig, init_ude

    model = sciml.load_model(LV_MODEL)
    data = sciml.load_trajectories(LV_DATA, model.states)
    config = UDEConfig()
    ts, ys, mask = (jnp.asarray(a) for a in data.padded())
    scale = jnp.asarray(data.state_scale())
    bound = jnp.asarray(data.blow_up_bound(BLOW_UP))
    y0s = jnp.asarray(np.stack([tr.y[0] for tr in data.trajectories]))
    optimizer = _adam(config.learning_rate)
    out = {}
    for k in ks:
        parts = [
            eqx.partition(
                (init_ude(model, model.guesses, data, key=key), y0s), eqx.is_inexact_array
            )
            for key in jax.random.split(jax.random.key(k), k)
        ]
        trainables, static = _stack([p[0] for p in parts]), parts[0][1]
        opt_states = eqx.filter_vmap(optimizer.init)(trainables)
        weights = jnp.broadcast_to(mask, (k, *mask.shape))
        active = jnp.ones(k, dtype=bool)

        def chunk(tr, st, static=static, active=active, weights=weights):
            return _ensemble_ode_chunk(
                tr,
                static,
                st,
                active,
                ts,
                ys,
                weights,
                scale,
                bound,
                optimizer=optimizer,
                config=config,
                n=steps,
            )

        t = time.perf_counter()
        trainables, opt_states, values = jax.block_until_ready(chunk(trainables, opt_states))
        first = time.perf_counter() - t
        t = time.perf_counter()
        for _ in range(repeats):
            trainables, opt_states, values = jax.block_until_ready(chunk(trainables, opt_states))
        warm = (time.perf_counter() - t) / repeats
        out[str(k)] = {
            "k": k,
            "steps_per_s": steps / warm,
            "member_steps_per_s": k * steps / warm,
            "compile_s": max(first - warm, 0.0),
            "finite": bool(np.isfinite(np.asarray(values)).all()),
        }
        print(
            f"ensemble K={k}: {steps / warm:.1f} steps/s, {k * steps / warm:.0f} member steps/s"
            f" (compile {out[str(k)]['compile_s']:.1f} s)",
            flush=True,
        )
    return out


def cnf_throughput(steps: int, width: int, batch: int) -> dict:
    import jax
    import numpy as np
    import pandas as pd

    from sciml.cnf import CNFConfig, fit_cnf

    x = pd.read_csv(ROOT / "data/cnf/ring.csv").select_dtypes("number").to_numpy(np.float64)
    config = CNFConfig(
        width=width,
        steps=steps,
        batch_size=batch,
        validation_fraction=0.0,
        checkpoint_every=steps,
    )
    t = time.perf_counter()
    fit_cnf(x, config, key=jax.random.key(0), progress=False)
    first = time.perf_counter() - t
    t = time.perf_counter()
    fit_cnf(x, config, key=jax.random.key(1), progress=False)
    warm = time.perf_counter() - t
    return {"steps_per_s": steps / warm, "compile_s": max(first - warm, 0.0), "batch": batch}


def classifier_throughput(steps: int, batch: int) -> dict:
    import equinox as eqx
    import jax
    import jax.numpy as jnp
    import numpy as np

    from sciml.classify._data import load_digits
    from sciml.classify._models import make_classifier
    from sciml.classify._run import default_config
    from sciml.classify._train import make_optimizer, train_step

    digits = load_digits()
    images = np.asarray(digits.images, np.float32)
    images = (images - images.mean()) / images.std()
    labels = np.asarray(digits.labels)
    config = default_config(images.shape[1:])
    model = make_classifier(config, images.shape[1:], 10, key=jax.random.key(0))
    optim = make_optimizer(config.learning_rate, config.weight_decay, 10)
    opt_state = optim.init(eqx.filter(model, eqx.is_inexact_array))
    x, y = jnp.asarray(images[:batch]), jnp.asarray(labels[:batch])
    t = time.perf_counter()
    model, opt_state, *_ = jax.block_until_ready(train_step(model, opt_state, x, y, optim))
    first = time.perf_counter() - t
    t = time.perf_counter()
    for _ in range(steps):
        model, opt_state, loss, *_ = train_step(model, opt_state, x, y, optim)
    jax.block_until_ready(loss)
    warm = (time.perf_counter() - t) / steps
    return {"steps_per_s": 1 / warm, "compile_s": max(first - warm, 0.0), "batch": batch}


def discovery_time(platform_name: str | None, quick: bool, engines: str, timeout: float) -> dict:
    import tempfile

    env = dict(os.environ)
    if platform_name is not None:
        env["JAX_PLATFORMS"] = platform_name
    with tempfile.TemporaryDirectory() as tmp:
        args = [str(LV_DATA), str(LV_MODEL), str(Path(tmp) / "run"), engines, "1" if quick else "0"]
        t = time.perf_counter()
        r = subprocess.run(
            [sys.executable, "-c", DISCOVERY, *args],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        wall = time.perf_counter() - t
    line = [ln for ln in r.stdout.splitlines() if ln.startswith("RESULT ")]
    if r.returncode != 0 or not line:
        raise RuntimeError(f"exit {r.returncode}: {r.stderr[-1500:]}")
    _, seconds, device, equations = line[0].split(" ", 3)
    return {
        "seconds": wall,
        "in_process_s": float(seconds),
        "device": device,
        "equations": equations,
        "engines": engines,
        "quick": quick,
    }


@dataclasses.dataclass
class Runner:
    budget: float
    start: float = dataclasses.field(default_factory=time.perf_counter)

    def left(self) -> float:
        return self.budget - (time.perf_counter() - self.start)

    def item(self, name: str, fn, *args) -> dict:
        if self.left() <= 0:
            print(f"{name}: skipped (budget spent)", flush=True)
            return {"skipped": "the time budget was spent"}
        t = time.perf_counter()
        try:
            value = fn(*args)
        except Exception as err:  # noqa: BLE001 - record it, go on with the rest
            traceback.print_exc()
            return {"error": f"{type(err).__name__}: {err}"[:2000]}
        print(f"{name}: {time.perf_counter() - t:.1f} s", flush=True)
        return value


def markdown(result: dict) -> str:
    dev = result["device"]
    lines = [
        "# GPU check",
        "",
        f"Device: **{dev.get('kind')}** ({dev.get('platform')}, {dev.get('count')} device(s)"
        + (f", {dev['memory_gib']} GiB" if "memory_gib" in dev else "")
        + f"); host {dev.get('host')}; JAX {dev.get('jax')}; {result['finished']}; "
        f"{result['seconds']:.0f} s in all"
        + ("; SMOKE RUN, figures meaningless." if result["smoke"] else "."),
        "",
        "## Ensemble throughput (bundled Lotka-Volterra UDE, Adam through the ODE)",
        "",
        "| K | steps / s | member steps / s | compile s |",
        "|---|---|---|---|",
    ]
    for k, row in result["ensemble"].items():
        if "k" in row:
            lines.append(
                f"| {k} | {row['steps_per_s']:.1f} | {row['member_steps_per_s']:.0f} | "
                f"{row['compile_s']:.1f} |"
            )
        else:
            lines.append(f"| {k} | {row.get('skipped') or row.get('error')} | | |")

    def cell(d: dict, key: str, fmt: str) -> str:
        return format(d[key], fmt) if key in d else str(d.get("skipped") or d.get("error"))

    lines += [
        "",
        "## Other figures",
        "",
        "| what | figure |",
        "|---|---|",
        f"| CNF training steps / s (batch {result['cnf'].get('batch', '?')}) | "
        f"{cell(result['cnf'], 'steps_per_s', '.1f')} |",
        f"| classifier training steps / s (digits, batch {result['classifier'].get('batch', '?')})"
        f" | {cell(result['classifier'], 'steps_per_s', '.1f')} |",
    ]
    for name, label in (("discovery_default", "default device"), ("discovery_cpu", "CPU")):
        d = result[name]
        lines.append(
            f"| bundled discovery, {label} ({d.get('device', '-')}), wall s | "
            f"{cell(d, 'seconds', '.1f')} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="folder for gpu-check.json and gpu-check.md")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, no discovery runs")
    ap.add_argument("--budget", type=float, default=470.0, help="seconds; later items skip")
    ap.add_argument(
        "--no-discovery", action="store_true", help="skip the two bundled discovery runs"
    )
    args = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # The discovery runs are child processes on the same GPU: JAX's default of taking 75% of
    # the device's memory at start would leave them none.
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    runner = Runner(args.budget)
    smoke = args.smoke
    ks = [1, 2] if smoke else [1, 16, 64, 256]

    import sciml  # noqa: F401 - float64 on, as in every run

    result: dict = {"smoke": smoke, "device": device_info(), "ensemble": {}}
    print(f"device: {result['device']}", flush=True)
    for k in ks:
        row = runner.item(
            f"ensemble K={k}", ensemble_throughput, [k], 5 if smoke else 50, 1 if smoke else 3
        )
        result["ensemble"][str(k)] = row.get(str(k), row)
    result["cnf"] = runner.item(
        "CNF", cnf_throughput, 20 if smoke else 200, 16 if smoke else 64, 64 if smoke else 256
    )
    result["classifier"] = runner.item("classifier", classifier_throughput, 5 if smoke else 50, 64)
    if smoke or args.no_discovery:
        why = "--smoke" if smoke else "--no-discovery"
        result["discovery_default"] = result["discovery_cpu"] = {"skipped": why}
    else:
        # Both at once: the GPU run is bound by kernel launches on one host thread, the CPU
        # run uses the host's other cores; one after the other they do not fit in 8 minutes.
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            futures = {
                name: pool.submit(
                    runner.item,
                    name,
                    discovery_time,
                    plat,
                    False,
                    "sindy,operon",
                    max(runner.left(), 1.0),
                )
                for name, plat in (("discovery_default", None), ("discovery_cpu", "cpu"))
            }
            for name, future in futures.items():
                result[name] = future.result()
    result["seconds"] = time.perf_counter() - runner.start
    result["finished"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    (out / "gpu-check.json").write_text(json.dumps(result, indent=2))
    (out / "gpu-check.md").write_text(markdown(result))
    print(markdown(result))
    return result


if __name__ == "__main__":
    main()
