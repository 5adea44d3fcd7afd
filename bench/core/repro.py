"""The reproducibility mode: the same config gives the same bytes on any x86-64 machine
with AVX2, whichever executor runs it and however many cores the machine has.

What makes CPU results differ between machines and runs, and what pins each:

- the intra-op thread count (reductions split differently): every unit of work runs
  with one torch thread (parallelism comes from running units side by side);
- the SIMD instruction set each library dispatches to at run time (AVX-512 kernels
  sum in another order than AVX2 ones): PyTorch's own kernels (ATEN_CPU_CAPABILITY),
  oneDNN's convolutions (ONEDNN_MAX_CPU_ISA), MKL's BLAS (MKL_CBWR, Intel's
  conditional numerical reproducibility) and NumPy's (NPY_DISABLE_CPU_FEATURES) are
  all capped at AVX2, which every x86-64 server of the last decade has;
- non-deterministic algorithms: torch.use_deterministic_algorithms.

The variables must be set before torch or numpy are imported, so `apply_environment`
runs first thing in the CLI, and Ray workers get them through the runtime environment.
`benchmarks/repro_cost.py` measures what the mode costs in speed.
"""

from __future__ import annotations

import os

# name -> value; each one is read by its library when it is first loaded
PINNED_ENV = {
    "ATEN_CPU_CAPABILITY": "avx2",
    "ONEDNN_MAX_CPU_ISA": "AVX2",
    "MKL_CBWR": "AVX2",
    "NPY_DISABLE_CPU_FEATURES": "X86_V4 AVX512_ICL AVX512_SPR",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
}
SWITCH = "BENCH_REPRO"  # "0" turns the mode off (for speed measurements); anything else keeps it on
THREADS = 1


def enabled() -> bool:
    return os.environ.get(SWITCH, "1") != "0"


def apply_environment() -> dict[str, str]:
    """Set the pinning variables in this process's environment (children and Ray
    workers inherit them) unless the user set them or turned the mode off; returns
    what is in force. Call before importing torch or numpy."""
    if not enabled():
        return {}
    for k, v in PINNED_ENV.items():
        os.environ.setdefault(k, v)
    return {k: os.environ[k] for k in PINNED_ENV}


def configure_torch() -> None:
    """Inside a unit of work: one thread and deterministic algorithms (mode on)."""
    import torch

    if enabled():
        torch.set_num_threads(THREADS)
        torch.use_deterministic_algorithms(True, warn_only=True)


def describe() -> dict:
    """What the mode is doing in this process, for records."""
    import torch

    return {
        "repro": enabled(),
        "torch_threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        **{k: os.environ.get(k) for k in PINNED_ENV},
    }
