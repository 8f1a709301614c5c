"""Benchmark: the governator against a bursty trace, with SmolLM2 nodes on this machine.

    .venv/bin/python bench/governator_burst.py            # ~8 minutes
    .venv/bin/python bench/governator_burst.py --quick    # ~2 minutes

From 1 node (1 thread, 2 sequences), a base load, a 4x burst, then the base again.
Goals: scale-up within 10 s of the burst; TTFT p95 (queue wait + prefill) under
target within 30 s of the new nodes being ready; back to the minimum after the burst;
>= 95 % of minutes within target at <= 60 % of the node-seconds of a static fleet sized
for the peak. The oracle knows the trace: the minimum outside the burst, the peak inside.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path

from rich.console import Console
from rich.table import Table

from inferno.governator.experiment import burst_experiment


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a short trace (~2 minutes)")
    ap.add_argument("--base-rps", type=float, default=0.5)
    ap.add_argument("--completion-tokens", type=int, default=64,
                    help="tokens per request: at 4x the base rate one 1-thread node "
                         "cannot keep up, whatever else the machine is doing")
    ap.add_argument("--target", type=float, default=3.0, help="TTFT/queue-wait p95 target, s")
    ap.add_argument("--max-replicas", type=int, default=4)
    args = ap.parse_args()
    # A burst of one minute in eight: the shape autoscaling is for.
    before, burst, after = (10, 30, 30) if args.quick else (180, 60, 240)
    with tempfile.TemporaryDirectory(prefix="inferno-bench-") as tmp:
        r = asyncio.run(burst_experiment(
            Path(tmp), base_rps=args.base_rps, factor=4.0, before_s=before, burst_s=burst,
            after_s=after, settle_s=120, max_replicas=args.max_replicas,
            target_wait_s=args.target, window_s=10.0 if args.quick else 60.0,
            completion_tokens=args.completion_tokens))
    console = Console()
    for line in r.decisions:
        console.print(line, highlight=False)
    t = Table(title=f"Governator burst benchmark (4x burst of {burst}s, target "
              f"p95 <= {args.target:g}s, windows of {r.window_s:g}s)")
    for col in ("measure", "value", "goal", "met"):
        t.add_column(col)

    def row(name: str, value: float | None, goal: str, ok: bool | None, unit: str = "s") -> None:
        shown = "-" if value is None else f"{value:.1f}{unit}"
        t.add_row(name, shown, goal, "-" if ok is None else ("yes" if ok else "no"))

    row("scale-up after burst start", r.scale_up_after_s, "<= 10 s",
        r.scale_up_after_s is not None and r.scale_up_after_s <= 10)
    row("new node ready after burst start", r.new_ready_after_s, "", None)
    row("TTFT p95 under target after ready", r.recovered_after_s, "<= 30 s",
        r.recovered_after_s is not None and r.recovered_after_s <= 30)
    row("back to minimum after burst end", r.back_to_min_after_s, "reached",
        r.back_to_min_after_s is not None)
    row("SLO attainment (windows)", 100 * r.attainment, ">= 95 %", r.attainment >= 0.95, "%")
    row("node-seconds, governator", r.node_seconds, "", None, "")
    row("node-seconds, static fleet of peak", r.static_node_seconds,
        f"{r.peak_nodes} nodes", None, "")
    row("node-seconds, oracle", r.oracle_node_seconds, "", None, "")
    row("governator / static", 100 * r.node_seconds_ratio, "<= 60 %",
        r.node_seconds_ratio <= 0.6, "%")
    row("TTFT p95, all requests", r.ttft_p95_s, "", None)
    t.add_row("requests (failed)", f"{r.requests} ({r.failed})", "", "")
    console.print(t)
    return 0


if __name__ == "__main__":
    sys.exit(main())
