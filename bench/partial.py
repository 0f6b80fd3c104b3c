"""Discovery on partially observed systems: the generated SEIR (weekly reported cases only)
and food chain (middle species never counted), each with one term of its theory missing.

Runs `sciml.discover.run_discovery` on each bundled data set with its `model.toml` and
reports the discovered terms of the residual state, the coefficient of the missing term
against the generator's truth (the issue asks for 10%), the identifiability warnings and the
wall-clock time.

    python bench/partial.py [--quick] [--engines sindy,operon] [--json FILE] [--only seir]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# (data, model, residual state, missing term as `discovered.json` writes it, true coefficient)
CASES = {
    "food_chain": (
        "data/food_chain/food_chain.csv",
        "data/food_chain/model.toml",
        "z",
        "y*z",
        0.5,
    ),
    "seir_cases": (
        "data/seir_cases/seir_cases.csv",
        "data/seir_cases/model.toml",
        "I",
        "I",
        -0.2,
    ),
}


def run_case(name: str, *, quick: bool, engines: list[str], out: Path) -> dict:
    from sciml.discover import run_discovery

    data, model, state, term, true = CASES[name]
    t = time.perf_counter()
    result = run_discovery(
        ROOT / data, ROOT / model, out / name, quick=quick, engines=engines, show_progress=False
    )
    seconds = time.perf_counter() - t
    terms = [
        {k: x[k] for k in ("term", "coefficient", "stderr", "origin")}
        for x in result.get("terms", [])
        if x["state"] == state and x["kept"]
    ]
    found = [x for x in terms if x["term"].replace(" ", "") == term]
    coefficient = found[0]["coefficient"] if found else None
    error = None if coefficient is None else abs(coefficient / true - 1)
    identifiability = result.get("identifiability", {})
    return {
        "case": name,
        "equations": result["equations"],
        "state": state,
        "missing_term": term,
        "true_coefficient": true,
        "found_coefficient": coefficient,
        "relative_error": error,
        "within_10_percent": error is not None and error <= 0.1,
        "terms": terms,
        "warnings": identifiability.get("warnings", []),
        "seconds": round(seconds, 1),
    }


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--engines", default="sindy,operon")
    ap.add_argument("--only", choices=sorted(CASES), default=None)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in [args.only] if args.only else list(CASES):
            row = run_case(name, quick=args.quick, engines=args.engines.split(","), out=Path(tmp))
            rows.append(row)
            print(json.dumps(row, indent=2), flush=True)
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {"machine": f"{platform.machine()}, CPU only", "quick": args.quick, "rows": rows},
                indent=2,
            )
            + "\n"
        )
    return rows


if __name__ == "__main__":
    main()
