"""How long the ray executor takes to start its own local Ray: Ray's stock start-up vs the lean one.

Run: ``python benchmarks/bench_ray_start.py [--pairs N] [--num-cpus N]``.

Each measurement is a fresh Python process (a process starts Ray once) that times, from before
`import ray`: `import ray` plus `ray.init` as `RayExecutor` calls it (`init`), then one trivial task per
CPU (`ready`: Ray can run work). Stock (`lean_start=False`) and lean (`research/ray_start.py`) runs
alternate, `--pairs` times, the order swapped every pair (these machines are noisy: medians and each
pair's difference are printed). Nothing else should run meanwhile.

Both starts are given `log_to_driver=False`, as `bench_sweep.py` gives them, so the lean one also
skips the log monitor (the fourth part).

Measured on the 2-core development VM (2026-11-29, 8 pairs, `backtest_kit` imported in both): with the
first three parts, stock median 5.3 s to ready (4.9-6.1), lean 3.5 s (3.3-4.8); the lean start saved
0.5-2.8 s per pair, median 1.5 s. With the log monitor also skipped, on the next (slower) VM: stock
7.05 s (5.96-7.61), lean 4.19 s (3.77-4.74), saving 2.2-3.2 s per pair, median 2.8 s. A CPU trace of
a lean start shows both cores busy from the raylet's start to ready (its agents and the workers
import Ray): what is left is CPU, not waiting. Per process at ready (lean, log monitor skipped):
the driver ~1.7 CPU-s (`import ray`, `backtest_kit`), each of the two prestarted workers ~1.3, the
dashboard agent ~1.2 and the runtime-env agent ~1.0 (both needed: without either, the raylet never
registers), GCS and raylet ~0.2 together.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

_ONE_START = """
import time
started = time.perf_counter()
import ray
from backtest_kit.research.ray_executor import RayExecutor

executor = RayExecutor(num_cpus={num_cpus}, lean_start={lean}, init_options={{"log_to_driver": False}})
executor._ensure_ray()
init = time.perf_counter() - started
ray.get([ray.remote(num_cpus=1)(lambda: None).remote() for _ in range({num_cpus})])
ready = time.perf_counter() - started
print("measured", init, ready, ",".join(executor.lean_parts) or "-")
ray.shutdown()
"""


def one_start(lean: bool, num_cpus: int) -> tuple[float, float, str]:
    """(init seconds, ready seconds, lean parts applied) of one fresh process."""
    done = subprocess.run(
        [sys.executable, "-c", _ONE_START.format(lean=lean, num_cpus=num_cpus)], capture_output=True, text=True,
        timeout=300, env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])},
    )
    line = next((row for row in done.stdout.splitlines() if row.startswith("measured ")), None)
    if done.returncode != 0 or line is None:
        raise SystemExit(f"a {'lean' if lean else 'stock'} start failed:\n{done.stderr[-3000:]}")
    _, init, ready, parts = line.split()
    return float(init), float(ready), parts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=8)
    parser.add_argument("--num-cpus", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    print(f"{args.pairs} pairs, num_cpus={args.num_cpus}, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}")
    runs: dict[str, list[tuple[float, float]]] = {"stock": [], "lean": []}
    parts = ""
    for pair in range(args.pairs):
        order = ("stock", "lean") if pair % 2 == 0 else ("lean", "stock")
        for name in order:
            init, ready, applied = one_start(name == "lean", args.num_cpus)
            runs[name].append((init, ready))
            if name == "lean":
                parts = applied
        stock, lean = runs["stock"][-1], runs["lean"][-1]
        print(f"  pair {pair + 1}: stock init {stock[0]:5.2f} s ready {stock[1]:5.2f} s   "
              f"lean init {lean[0]:5.2f} s ready {lean[1]:5.2f} s   lean saves {stock[1] - lean[1]:+5.2f} s",
              flush=True)
    medians = {name: (statistics.median(r[0] for r in rows), statistics.median(r[1] for r in rows))
               for name, rows in runs.items()}
    savings = [s[1] - lean[1] for s, lean in zip(runs["stock"], runs["lean"], strict=True)]
    for name, (init, ready) in medians.items():
        print(f"{name:>6}: median init {init:5.2f} s, ready {ready:5.2f} s")
    print(f"lean parts applied: {parts}; median saving per pair {statistics.median(savings):+.2f} s "
          f"(range {min(savings):+.2f} .. {max(savings):+.2f}); ready ratio stock/lean "
          f"{medians['stock'][1] / medians['lean'][1]:.2f}x")


if __name__ == "__main__":
    main()
