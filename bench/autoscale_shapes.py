"""Benchmark: the autoscaler on synthetic shapes it was not tuned on, in the planner.

    .venv/bin/python bench/autoscale_shapes.py                      # ~1-2 minutes
    .venv/bin/python bench/autoscale_shapes.py --seeds 0-9 --duration 3600
    .venv/bin/python bench/autoscale_shapes.py --baseline-src /tmp/base/src   # before/after

For each shape x seed, ``inferno governator plan`` simulates the example price list's
``local-cpu`` node under the pool below (min 1 replica) and reports the autoscaled fleet's
SLO attainment (minutes with queue-wait p95 within 2 s), its node-hours, the node-hours
of the smallest static fleet that meets the SLO, and their ratio.
Target: attainment >= 95 % and ratio <= 60 % on every row.

``--baseline-src`` runs the same table with another checkout's ``src`` (e.g. the commit
before a policy change, from ``git worktree add``) in a subprocess, for a before/after in
one run.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SHAPES = ("steps", "ramps", "diurnal", "heavy-tail", "two-models")


def pool_for(model: str, examples: Path = ROOT / "examples") -> object:
    from inferno.governator.spec import load_policy, load_prices

    # The example policy's targets and timings, local-cpu only, 1 to 8 replicas.
    prices_path = examples / "prices.yaml"
    example = load_policy(examples / "policy.yaml", load_prices(prices_path),
                          prices_path).pools[0]
    return example.model_copy(update={"model": model, "node_types": ["local-cpu"],
                                      "min_replicas": 1, "max_replicas": 8})


def _synthetic() -> Any:
    """This checkout's generator, also when ``inferno`` comes from a baseline's sources."""
    spec = importlib.util.spec_from_file_location(
        "synthetic", ROOT / "src" / "inferno" / "governator" / "synthetic.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def table(seeds: list[int], duration: float, examples: Path = ROOT / "examples"
          ) -> list[dict[str, object]]:
    from inferno.governator.planner import plan
    from inferno.governator.spec import load_prices

    synthetic = _synthetic()
    compare, synthetic_trace = synthetic.compare, synthetic.synthetic_trace
    prices = load_prices(examples / "prices.yaml")
    out: list[dict[str, object]] = []
    for shape in SHAPES:
        for seed in seeds:
            rows = synthetic_trace(shape, seed, duration)
            for model in dict.fromkeys(r.model for r in rows):
                auto, static = compare(plan(rows, prices, pool_for(model, examples)))  # type: ignore[arg-type]
                assert auto is not None
                out.append({"shape": shape, "seed": seed, "pool": model,
                            "attainment": auto.attainment, "auto_h": auto.node_hours,
                            "static": static.name if static else None,
                            "static_h": static.node_hours if static else None,
                            "ratio": auto.node_hours / static.node_hours if static else None})
    return out


def show(title: str, rows: list[dict[str, object]]) -> None:
    print(f"\n{title}")
    print(f"{'shape':<11} {'seed':>4} {'pool':<13} {'SLO min':>7} {'auto h':>7} "
          f"{'static (smallest meeting)':<26} {'static h':>8} {'ratio':>6}  ok")
    for r in rows:
        ratio = r["ratio"]
        ok = r["attainment"] >= 0.95 and ratio is not None and ratio <= 0.6  # type: ignore[operator]
        print(f"{r['shape']:<11} {r['seed']:>4} {r['pool']:<13} {r['attainment']:>7.0%} "
              f"{r['auto_h']:>7.3f} {r['static']!s:<26} "
              f"{r['static_h'] or 0:>8.3f} {ratio if ratio is not None else 0:>6.0%}  "
              f"{'yes' if ok else 'NO'}")
    met = sum(1 for r in rows if r["attainment"] >= 0.95  # type: ignore[operator]
              and r["ratio"] is not None and r["ratio"] <= 0.6)  # type: ignore[operator]
    print(f"target met on {met}/{len(rows)} rows")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0-4", help="e.g. 0-4 or 1,7,9")
    ap.add_argument("--duration", type=float, default=1800.0, help="trace length, s")
    ap.add_argument("--baseline-src", type=Path, help="another checkout's src/ to compare")
    ap.add_argument("--json", action="store_true", help="print the rows as JSON (internal)")
    ap.add_argument("--examples", type=Path, default=ROOT / "examples",
                    help="where prices.yaml and policy.yaml are (internal)")
    args = ap.parse_args()
    if "-" in args.seeds:
        lo, hi = args.seeds.split("-")
        seeds = list(range(int(lo), int(hi) + 1))
    else:
        seeds = [int(s) for s in args.seeds.split(",")]
    if args.json:
        print(json.dumps(table(seeds, args.duration, args.examples)))
        return 0
    rows = table(seeds, args.duration)
    if args.baseline_src is not None:
        # The baseline's policy, planner and example policy, with this checkout's traces.
        base = subprocess.run([sys.executable, __file__, "--json", "--seeds", args.seeds,
                               "--duration", str(args.duration), "--examples",
                               str(args.baseline_src.parent / "examples")],
                              capture_output=True, text=True, check=True,
                              env={**os.environ, "PYTHONPATH": str(args.baseline_src)})
        show(f"before ({args.baseline_src})", json.loads(base.stdout.splitlines()[-1]))
    show("after (this checkout)", rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
