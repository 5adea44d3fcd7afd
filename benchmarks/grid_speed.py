"""Serial vs Ray on the micro grid: wall time, speed-up and harness overhead.

    python benchmarks/grid_speed.py                      # the foundation issue's grid
    python benchmarks/grid_speed.py --attacks badnets,none --repeats 3

Each run is a fresh `bench run` process with a fresh results folder, so nothing is
reused between runs; the pre-trained tiny-clip and the generated data are cached
beforehand (by a warm-up run) because every executor would share them anyway.

Overhead is the share of worker time not spent inside units (stage-1 attacks and
stage-2 trials): 1 - sum(unit seconds) / (workers x wall). For the serial executor
that is exactly (wall - sum of trial compute) / wall.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run(kind: str, args: argparse.Namespace, tmp: Path, i: int) -> dict:
    results = tmp / f"{kind}-{i}"
    summary = tmp / f"{kind}-{i}.json"
    cmd = [sys.executable, "-m", "bench.cli", "run", "--attacks", args.attacks, "--defenses", args.defenses,
           "--results", str(results), "--leaderboards", str(tmp / "lb"), "--summary-json", str(summary)]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    if kind.startswith("serial"):
        cmd += ["--executor", "serial"]
        env["BENCH_THREADS"] = kind.removeprefix("serial-t")
    else:
        cmd += ["--executor", "ray", "--cpus-per-trial", "1", "--max-concurrent", str(args.workers)]
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"{kind} run failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    out = json.loads(summary.read_text())
    out["process_wall_s"] = wall  # includes interpreter start and imports
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--attacks", default="all")
    p.add_argument("--defenses", default="tbar,finetune")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--kinds", default="serial-t2,serial-t1,ray", help="serial-tN (N torch threads) and/or ray")
    args = p.parse_args()
    kinds = args.kinds.split(",")
    with tempfile.TemporaryDirectory(prefix="bench-speed-") as d:
        tmp = Path(d)
        print("warm-up (pre-training and data caches) ...", flush=True)
        run("serial-t2", argparse.Namespace(**{**vars(args), "attacks": "none", "defenses": "none"}), tmp, -1)
        runs: dict[str, list[dict]] = {k: [] for k in kinds}
        for i in range(args.repeats):
            for k in kinds:  # interleaved, so drift of the machine hits every kind alike
                r = run(k, args, tmp, i)
                runs[k].append(r)
                print(f"  {k:10} run {i}: wall {r['wall_s']:.1f} s, units {r['compute_s']:.1f} s, "
                      f"{r['computed']} trials", flush=True)  # fmt: skip
    med = {k: statistics.median(r["wall_s"] for r in v) for k, v in runs.items()}
    print(f"\nmicro grid: attacks={args.attacks} defenses={args.defenses}, {args.repeats} run(s) each, medians")
    print(f"{'executor':12} {'workers':>7} {'wall s':>8} {'process s':>9} {'units s':>8} {'overhead':>9}")
    for k, v in runs.items():
        print(
            f"{k:12} {v[0]['workers']:>7} {med[k]:>8.1f} {statistics.median(r['process_wall_s'] for r in v):>9.1f} "
            f"{statistics.median(r['compute_s'] for r in v):>8.1f} "
            f"{100 * statistics.median(r['overhead_share'] for r in v):>8.1f}%"
        )
    if "ray" in med:
        for k in med:
            if k != "ray":
                print(f"speed-up of ray over {k}: {med[k] / med['ray']:.2f}x")


if __name__ == "__main__":
    main()
