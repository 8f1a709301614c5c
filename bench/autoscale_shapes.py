"""Benchmark: the autoscaler on synthetic shapes it was not tuned on, in the planner.

    .venv/bin/python bench/autoscale_shapes.py                      # ~1-2 minutes
    .venv/bin/python bench/autoscale_shapes.py --seeds 0-9 --duration 3600
    .venv/bin/python bench/autoscale_shapes.py --baseline-src /tmp/base/src   # before/after

For each shape x seed, ``inferno governator plan`` simulates the example price list's
``local-cpu`` node under the pool below (min 1 replica) and reports the autoscaled fleet's
SLO attainment (minutes with queue-wait p95 within 2 s), its node-hours, the node-hours
of the smallest static fleet that meets the SLO, and their ratio.
Target: attainment >= 95 % and ratio <= 60 % on every row.

``--bound`` adds what two oracle autoscalers reach on the same rows, both sizing by
square-root staffing (slots = load + beta x sqrt(load), load = the slot-seconds of a
W-second window's arrivals / W) from the trace itself, each with its settings searched
per row for the fewest node-hours that meet the SLO, both paying the same 5 s start-up:

- *past*: knows the last W seconds' arrivals and their service times exactly and at
  once (holding nodes up to ``hold`` seconds): the best case of any reactive policy,
  whatever its estimators;
- *future*: knows the next ``startup_s + W`` seconds' arrivals, a perfect forecast.

A row the past oracle misses is out of reach of reacting to traffic; only forecasting
(or warm capacity the node-hours goal does not leave room for) can meet it.

``--baseline-src`` runs the same table with another checkout's ``src`` (e.g. the commit
before a policy change, from ``git worktree add``) in a subprocess, for a before/after in
one run.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import multiprocessing
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


def table(seeds: list[int], duration: float, examples: Path = ROOT / "examples",
          with_bound: bool = False) -> list[dict[str, object]]:
    jobs = [(shape, seed, duration, examples, with_bound) for shape in SHAPES
            for seed in seeds]
    if not with_bound:
        return [row for job in jobs for row in _rows(job)]
    # The oracles simulate ~60 fleets a row: one process per core.
    with multiprocessing.get_context("fork").Pool(os.cpu_count() or 1) as workers:
        return [row for rows in workers.map(_rows, jobs) for row in rows]


def _rows(job: tuple[str, int, float, Path, bool]) -> list[dict[str, object]]:
    from inferno.governator.planner import plan
    from inferno.governator.spec import load_prices

    shape, seed, duration, examples, with_bound = job
    synthetic = _synthetic()
    prices = load_prices(examples / "prices.yaml")
    rows = synthetic.synthetic_trace(shape, seed, duration)
    out: list[dict[str, object]] = []
    for model in dict.fromkeys(r.model for r in rows):
        spec = pool_for(model, examples)
        auto, static = synthetic.compare(plan(rows, prices, spec))
        assert auto is not None
        pool_rows = [r for r in rows if r.model == model]
        extra = (bounds(pool_rows, prices.node_types["local-cpu"], spec,
                        static.node_hours if static else None) if with_bound else {})
        out.append({**extra, "shape": shape, "seed": seed, "pool": model,
                    "attainment": auto.attainment, "auto_h": auto.node_hours,
                    "static": static.name if static else None,
                    "static_h": static.node_hours if static else None,
                    "ratio": auto.node_hours / static.node_hours if static else None})
    return out


# (window W seconds, beta, hold seconds) searched per row; the future-knowing decider
# never needs a hold (it sees the next burst coming), the past-knowing one may.
FUTURE = [(w, b, 0.0) for w in (6.0, 10.0, 20.0, 40.0)
          for b in (0.0, 0.5, 1.0, 1.5, 2.0, 3.0)]
PAST = [(w, b, h) for w in (3.0, 6.0, 12.0, 24.0) for b in (0.5, 1.0, 1.5, 2.0, 3.0)
        for h in (0.0, 10.0)]


def oracle(rows: list[Any], nt: Any, spec: Any, window: float, beta: float, hold: float,
           *, future: bool) -> Any:
    """A decider that sizes the pool from the trace itself (see the module doc): from
    the arrivals of the next ``startup_s + W`` seconds (``future``), or of the last W
    seconds, measured perfectly and at once (a reactive policy's best case)."""
    from inferno.governator.policy import Decision

    per_seq = nt.tokens_per_second / nt.capacity
    end = int(rows[-1].ts) + 2
    work = [0.0] * end  # slot-seconds of the requests arriving in each second
    for r in rows:
        work[int(r.ts)] += (r.prompt_tokens / nt.prefill_tokens_per_second
                            + r.completion_tokens / per_seq)
    w = int(window)
    need = []
    for t in range(end):
        load = (sum(work[t:t + w]) if future else sum(work[max(0, t - w):t])) / window
        slots = load + beta * math.sqrt(load)
        need.append(math.ceil(slots / spec.targets.in_flight_per_node - 1e-9))
    span = (0, math.ceil(nt.startup_s) + 1) if future else (-int(hold), 1)
    desired = [min(spec.max_replicas, max(spec.min_replicas,
                                          *need[max(0, t + span[0]):t + span[1]]))
               for t in range(end)]

    def decide(spec: Any, name: str, nt: Any, sig: Any, state: Any) -> tuple[Any, Any]:
        d = desired[min(int(sig.at), end - 1)]
        return Decision(pool=spec.name, at=sig.at, current=sig.running, desired=d,
                        action="hold", reason="oracle", node_type=name), state
    return decide


def bound(rows: list[Any], nt: Any, spec: Any, static_h: float | None, *, future: bool
          ) -> tuple[float, float | None, list[str]]:
    """The oracle's best settings for this row: fewest node-hours meeting the SLO, else
    the highest attainment. Returns (attainment, node-hours ratio, the settings that
    meet the goal on this row)."""
    from inferno.governator.planner import minute_attainment, simulate

    target = spec.targets.queue_wait_p95_s
    best: tuple[bool, float, float, float] | None = None
    meeting: list[str] = []
    for window, beta, hold in FUTURE if future else PAST:
        arrivals, waits, node_s, _ = simulate(
            rows, nt, target, spec=spec, type_name="local-cpu",
            decider=oracle(rows, nt, spec, window, beta, hold, future=future))
        att = minute_attainment(arrivals, waits, target)
        key = (att >= 0.95, -node_s if att >= 0.95 else att, att, node_s / 3600)
        if best is None or key[:2] > best[:2]:
            best = key
        if static_h and att >= 0.95 and node_s / 3600 <= 0.6 * static_h:
            meeting.append(f"W={window:g}s beta={beta:g} hold={hold:g}s")
    assert best is not None
    return best[2], best[3] / static_h if static_h else None, meeting


def bounds(rows: list[Any], nt: Any, spec: Any, static_h: float | None
           ) -> dict[str, object]:
    (fa, fr, fm), (pa, pr, pm) = (bound(rows, nt, spec, static_h, future=f)
                                  for f in (True, False))
    return {"future_attainment": fa, "future_ratio": fr, "future_meeting": fm,
            "past_attainment": pa, "past_ratio": pr, "past_meeting": pm}


def show(title: str, rows: list[dict[str, object]]) -> None:
    print(f"\n{title}")
    has_bound = bool(rows) and "future_ratio" in rows[0]
    print(f"{'shape':<11} {'seed':>4} {'pool':<13} {'SLO min':>7} {'auto h':>7} "
          f"{'static (smallest meeting)':<26} {'static h':>8} {'ratio':>6}  ok"
          + ("   oracles: past SLO ratio ok | future SLO ratio ok" if has_bound else ""))
    for r in rows:
        ratio = r["ratio"]
        line = (f"{r['shape']:<11} {r['seed']:>4} {r['pool']:<13} {r['attainment']:>7.0%} "
                f"{r['auto_h']:>7.3f} {r['static']!s:<26} "
                f"{r['static_h'] or 0:>8.3f} {ratio if ratio is not None else 0:>6.0%}  "
                f"{'yes' if _ok(r) else 'NO '}")
        if has_bound:
            line += "   " + " | ".join(
                f"{k} {r[f'{k}_attainment']:>4.0%} {r[f'{k}_ratio'] or 0:>4.0%} "
                f"{'yes' if _ok(r, f'{k}_') else 'NO '}" for k in ("past", "future"))
        print(line)
    met = sum(1 for r in rows if _ok(r))
    print(f"target met on {met}/{len(rows)} rows"
          + (f"; by the past-knowing oracle on {sum(1 for r in rows if _ok(r, 'past_'))},"
             f" the future-knowing on {sum(1 for r in rows if _ok(r, 'future_'))}"
             " (settings chosen per row)" if has_bound else ""))
    if has_bound:
        # What one setting for every row reaches: a policy does not get to pick per trace.
        for k in ("past", "future"):
            counts: dict[str, int] = {}
            for r in rows:
                for setting in r[f"{k}_meeting"]:  # type: ignore[attr-defined]
                    counts[setting] = counts.get(setting, 0) + 1
            top = sorted(counts.items(), key=lambda kv: -kv[1])[:3]
            print(f"{k}-knowing oracle, one setting for all rows: best "
                  + ", ".join(f"{n}/{len(rows)} ({setting})" for setting, n in top))


def _ok(r: dict[str, Any], prefix: str = "") -> bool:
    ratio = r[f"{prefix}ratio"]
    return bool(r[f"{prefix}attainment"] >= 0.95 and ratio is not None and ratio <= 0.6)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0-4", help="e.g. 0-4 or 1,7,9")
    ap.add_argument("--duration", type=float, default=1800.0, help="trace length, s")
    ap.add_argument("--baseline-src", type=Path, help="another checkout's src/ to compare")
    ap.add_argument("--bound", action="store_true",
                    help="add the clairvoyant autoscaler's figures (~10x slower)")
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
    rows = table(seeds, args.duration, with_bound=args.bound)
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
