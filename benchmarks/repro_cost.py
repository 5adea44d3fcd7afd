"""What the reproducibility mode costs, and what it buys.

Runs one fixed unit of work (a tiny-clip-sized ResNet fine-tuned for `--steps` steps on
random data, then evaluated) in fresh processes under each configuration, `--repeats`
times, and prints the median wall time and the SHA-256 of the resulting weights:

    python benchmarks/repro_cost.py [--steps 60] [--repeats 3]

Configurations:
- repro: the mode as the harness runs it (1 thread, AVX2-pinned kernels, deterministic);
- repro-threads2: the same mode asked for 2 threads (it must keep 1: same hash);
- native-1t / native-2t: the mode off, PyTorch's own kernels (AVX-512 where the CPU has
  it), 1 and 2 threads: the hashes show how the instruction set and the thread count
  change the bytes of the same computation.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

WORK = r"""
import hashlib, json, time, sys
from bench.core import repro
repro.apply_environment()
import torch
from torch import nn
import torch.nn.functional as F
from timm.models.resnet import BasicBlock, ResNet
steps = int(sys.argv[1]); threads = int(sys.argv[2])
if repro.enabled():
    repro.configure_torch()
else:
    torch.set_num_threads(threads)
torch.manual_seed(0)
net = ResNet(BasicBlock, [1, 1, 1, 1], num_classes=10, channels=(16, 32, 64, 128))
net.conv1 = nn.Conv2d(3, 64, 3, 2, 1, bias=False); net.maxpool = nn.Identity()
g = torch.Generator().manual_seed(1)
x = torch.rand(512, 3, 32, 32, generator=g); y = torch.randint(0, 10, (512,), generator=g)
opt = torch.optim.AdamW(net.parameters(), 3e-3)
t = time.perf_counter()
for i in range(steps):
    idx = torch.randint(0, 512, (128,), generator=g)
    loss = F.cross_entropy(net(x[idx]), y[idx]); opt.zero_grad(); loss.backward(); opt.step()
net.eval()
with torch.no_grad():
    acc = (net(x).argmax(1) == y).float().mean().item()
wall = time.perf_counter() - t
h = hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in net.state_dict().values())).hexdigest()[:16]
print(json.dumps({"wall_s": wall, "sha": h, "threads": torch.get_num_threads(),
                  "isa": torch.backends.cpu.get_cpu_capability()}))
"""

CONFIGS = {
    "repro": ({"BENCH_REPRO": "1"}, 1),
    "repro-threads2": ({"BENCH_REPRO": "1"}, 2),
    "native-1t": ({"BENCH_REPRO": "0"}, 1),
    "native-2t": ({"BENCH_REPRO": "0"}, 2),
}


def run(env_extra: dict, threads: int, steps: int) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_CBWR")}
    env.update(env_extra)
    out = subprocess.run(
        [sys.executable, "-c", WORK, str(steps), str(threads)], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=60, help="training steps per run")
    p.add_argument("--repeats", type=int, default=3, help="runs per configuration (median reported)")
    args = p.parse_args()
    rows = {}
    for name, (env, threads) in CONFIGS.items():
        runs = [run(env, threads, args.steps) for _ in range(args.repeats)]
        rows[name] = {
            "median_s": statistics.median(r["wall_s"] for r in runs),
            "hashes": sorted({r["sha"] for r in runs}),
            "threads": runs[0]["threads"],
            "isa": runs[0]["isa"],
        }
    base = rows["native-1t"]["median_s"]
    for name, r in rows.items():
        print(
            f"{name:15s} threads {r['threads']} isa {r['isa']:7s} median {r['median_s']:6.2f} s "
            f"({r['median_s'] / base:4.2f}x native-1t)  weights {', '.join(r['hashes'])}"
        )
    same = rows["repro"]["hashes"] == rows["repro-threads2"]["hashes"] and len(rows["repro"]["hashes"]) == 1
    print(f"repro mode: one hash whatever the thread request: {same}")


if __name__ == "__main__":
    main()
