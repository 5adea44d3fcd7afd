"""How fast bad input is refused: the speed goal that used to be a timed test.

`bench run --suite paper` on an empty data root must list every missing file and exit 2
before any work (the test `test_paper_suite_without_files_fails_before_any_work_naming_each_one`
checks that by what happened: no victim, dataset, executor or Ray was touched, nothing
was written). How long that takes is mostly the cost of importing torch and open_clip,
which depends on the machine and its load, so it is measured here, not asserted:

    python benchmarks/fail_fast.py [--repeats 5]

Each case runs in a fresh process, `--repeats` times; the script prints the median wall
time of each and its ratio to the bare import of torch and open_clip (the floor no CLI
that uses them can go under). A ratio near 1 means the refusal itself costs nothing.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _timed(cmd: list[str], env: dict, cwd: str) -> tuple[float, int]:
    t0 = time.perf_counter()
    r = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True)
    return time.perf_counter() - t0, r.returncode


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5, help="fresh processes per case (default: 5)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "empty").mkdir()
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "BENCH_CACHE": str(Path(tmp) / "cache")}
        bench = [sys.executable, "-m", "bench.cli", "run"]
        paper = ["--suite", "paper", "--data-root", str(Path(tmp) / "empty"), "--results", str(Path(tmp) / "r")]
        cases = {
            "import torch + open_clip": [sys.executable, "-c", "import torch, open_clip"],
            "bench run --suite paper (missing files)": [*bench, *paper],
            "bench run --attacks badnet (misspelt)": [*bench, "--attacks", "badnet"],
        }
        medians = {}
        for name, cmd in cases.items():
            times, codes = zip(*(_timed(cmd, env, tmp) for _ in range(args.repeats)), strict=True)
            medians[name] = statistics.median(times)
            print(f"{name:45s} median {medians[name]:6.2f} s  (min {min(times):.2f}, max {max(times):.2f}; "
                  f"exit codes {sorted(set(codes))})")  # fmt: skip
        floor = medians["import torch + open_clip"]
        for name, m in medians.items():
            print(f"{name:45s} {m / floor:5.2f}x the import floor")
    return 0


if __name__ == "__main__":
    sys.exit(main())
