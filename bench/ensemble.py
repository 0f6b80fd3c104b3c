"""K UDEs in one compiled program against K trainings one after another, same machine, same run.

The bundled Lotka-Volterra UDE; the ensemble's schedule (collocation, then Adam through the ODE
on growing windows, early stopping on held-back points) with the library's default step counts.
"one program": `train_ensemble(k=K)`. "one after another": K calls of the library's single-UDE
training (`train_ude`, the same phases, steps and stopping rule, no L-BFGS), each compiling
its own program as separate runs do. Both times include compilation. Also shown: K calls of
`train_ensemble(k=1)`, whose program is compiled by the first and reused by the others (the
part of the gain that is not compilation).

    python bench/ensemble.py [--k 16] [--threads 2] [--steps N] [--json FILE]

`--steps N` caps every phase at N steps (a quick check); `--fixed` turns early stopping off, so
that both sides run exactly the same number of steps per member.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import sys
import time


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--k", type=int, default=16)
    ap.add_argument("--threads", type=int, choices=(1, 2), default=2, help="1: one thread")
    ap.add_argument("--steps", type=int, default=None, help="cap on every phase's steps")
    ap.add_argument("--fixed", action="store_true", help="no early stopping")
    ap.add_argument("--json", default=None, help="also write the figures here")
    args = ap.parse_args(argv)
    if args.threads == 1 and "jax" not in sys.modules:
        os.environ["XLA_FLAGS"] = "--xla_cpu_multi_thread_eigen=false"
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
    sys.path.insert(0, root)

    import jax

    jax.config.update("jax_enable_x64", True)
    import sciml
    from sciml._ensemble import train_ensemble
    from sciml._mechanistic import fit_mechanistic
    from sciml._ude import UDEConfig, train_ude

    model = sciml.load_model(os.path.join(root, "data/lotka_volterra/model.toml"))
    data = sciml.load_trajectories(
        os.path.join(root, "data/lotka_volterra/lotka_volterra.csv"), model.states
    )
    fit = fit_mechanistic(model, data, key=jax.random.key(0))
    config = UDEConfig()
    if args.steps is not None:
        config = dataclasses.replace(
            config,
            collocation_steps=min(config.collocation_steps, args.steps),
            adam_steps=min(config.adam_steps, args.steps),
            chunk=min(config.chunk, args.steps),
        )
    if args.fixed:
        config = dataclasses.replace(config, patience=10**9)
    keys = jax.random.split(jax.random.key(1), args.k)
    single = dataclasses.replace(config, lbfgs_steps=0)  # train_ude's phases without L-BFGS

    t = time.perf_counter()
    ens = train_ensemble(fit, data, args.k, key=keys[0], config=config)
    together = time.perf_counter() - t

    runs = []
    for key in keys:  # the library's single-UDE training, as K separate runs do it
        t = time.perf_counter()
        train_ude(fit, data, key=key, config=single)
        runs.append(time.perf_counter() - t)
    warm = []
    for key in keys:  # K one-member programs: compiled by the first, reused by the others
        t = time.perf_counter()
        train_ensemble(fit, data, 1, key=key, config=config, bootstrap=False)
        warm.append(time.perf_counter() - t)
    result = {
        "k": args.k,
        "machine": f"{os.cpu_count()} CPU cores {platform.machine()}, {jax.devices()[0]}",
        "threads": args.threads,
        "config": {
            "collocation_steps": config.collocation_steps,
            "adam_steps": config.adam_steps,
            "windows": list(config.windows),
            "early_stopping": not args.fixed,
        },
        "one_program_s": together,
        "one_program_steps": ens.steps,
        "one_after_another_s": sum(runs),
        "one_after_another_median_s": statistics.median(runs),
        "ratio": sum(runs) / together,
        "one_member_programs_s": sum(warm),
        "one_member_programs_first_s": warm[0],
        "ratio_compiled_once": sum(warm) / together,
    }
    print(
        f"K = {args.k} UDEs, bundled Lotka-Volterra, {result['machine']}, {args.threads} threads\n"
        f"  one program (K = {args.k}, vmap):        {together:8.1f} s  ({ens.steps} steps)\n"
        f"  {args.k} runs one after another (train_ude): {sum(runs):8.1f} s  (median "
        f"{result['one_after_another_median_s']:.1f} s each, compilation included)\n"
        f"  ratio:                                {result['ratio']:8.2f}x\n"
        f"  {args.k} one-member programs, compiled once: {sum(warm):8.1f} s  (first "
        f"{warm[0]:.1f} s); ratio {result['ratio_compiled_once']:.2f}x"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
