"""Where the tensors of a trial run: device, mixed precision, memory layout.

Data stays on the CPU (triggers are pure functions of CPU tensors, and splits can be
larger than a GPU); the training loop and `predict` move each batch to the model's
device just before the forward pass, so attacks and defenses never handle devices.

The device is a property of the process (a Ray trial sees the GPUs Ray gave it through
CUDA_VISIBLE_DEVICES); precision is part of a trial's config, because bf16 changes the
numbers. A run on another device reuses fp32 records: they differ by float rounding only.
"""

from __future__ import annotations

import contextlib
import os
import resource
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from bench.core import process

PRECISIONS = ("fp32", "bf16")


@dataclass
class Runtime:
    device: str = "cpu"
    precision: str = "fp32"  # the autocast dtype inside train() and predict()
    # NHWC for convolutional towers: on CUDA, and on CPU too, where oneDNN's NHWC kernels
    # train tiny-resnet 1.7x and tiny-clip 1.35x faster (benchmarks/repro_cost.py's machine)
    channels_last: bool = True
    compile: bool = False  # torch.compile the model's forward (nn.Module.compile keeps state_dict keys)
    eval_batch_size: int = 500


_CURRENT = Runtime()


def resolve_device(spec: str) -> str:
    """'auto' -> 'cuda' when a GPU is visible, else 'cpu'; 'cuda[:N]' and 'cpu' as given."""
    from bench.core.config import ConfigError

    if spec == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if spec == "cpu":
        return spec
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {spec!r}: no CUDA GPU is visible to this process (use cpu or auto)")
        return spec
    raise ConfigError(f"--device {spec!r} is not allowed; allowed: auto, cpu, cuda, cuda:N")


def configure(device: str = "auto", channels_last: bool | None = None, compile: bool = False) -> Runtime:
    """Set this process's device (channels_last: on unless BENCH_CHANNELS_LAST=0)."""
    dev = resolve_device(device)
    _CURRENT.device = dev
    default = process.current().channels_last
    _CURRENT.channels_last = default if channels_last is None else channels_last
    _CURRENT.compile = compile
    return _CURRENT


def current() -> Runtime:
    return _CURRENT


@contextlib.contextmanager
def precision(name: str) -> Iterator[None]:
    """Within the block, train() and predict() autocast to `name` (fp32: no autocast)."""
    if name not in PRECISIONS:
        raise ValueError(f"precision {name!r} is not allowed; allowed: {', '.join(PRECISIONS)}")
    saved = _CURRENT.precision
    _CURRENT.precision = name
    try:
        yield
    finally:
        _CURRENT.precision = saved


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    if _CURRENT.precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    return torch.device("cpu")


def to_device(batch, device: torch.device):
    """A batch (tensor, or tuple/list of tensors) on `device`; pinned and non-blocking
    for CUDA so the copy overlaps the previous step."""
    if isinstance(batch, (tuple, list)):
        return type(batch)(to_device(t, device) for t in batch)
    if not isinstance(batch, torch.Tensor):
        return batch
    if batch.device == device:
        if device.type == "cpu" and _CURRENT.channels_last and batch.dim() == 4 and batch.is_floating_point():
            return batch.contiguous(memory_format=torch.channels_last)
        return batch
    if device.type == "cuda":
        x = batch.pin_memory().to(device, non_blocking=True)
        if _CURRENT.channels_last and x.dim() == 4 and x.is_floating_point():
            x = x.contiguous(memory_format=torch.channels_last)
        return x
    return batch.to(device)


def place(model: nn.Module) -> nn.Module:
    """Move a freshly built victim to this process's device (and layout)."""
    model = model.to(_CURRENT.device)
    if _CURRENT.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if _CURRENT.compile:
        model.compile()
    return model


@contextlib.contextmanager
def fixed_threads() -> Iterator[int]:
    """Within the block (one unit of grid work), torch runs as the reproducibility mode
    says (bench.core.repro: one thread, deterministic algorithms), whatever the executor set
    for its process, so an artifact's bytes do not depend on whether Ray or the serial
    executor built it (a reduction split over another number of threads rounds
    differently). With the mode off (BENCH_REPRO=0) the executor's choice stands."""
    from bench.core import repro

    saved = torch.get_num_threads()
    if repro.enabled():
        repro.configure_torch()
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(saved)


def reset_peak_memory() -> None:
    if torch.cuda.is_available() and _CURRENT.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()


def peak_memory() -> dict[str, float]:
    """Peak GPU memory since the last reset, and this process's peak resident memory
    (a process-wide high-water mark: with reused workers it covers earlier trials too)."""
    out = {"peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    if torch.cuda.is_available() and _CURRENT.device.startswith("cuda"):
        out["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return out


def cpu_model() -> str:
    """The CPU's model name (Linux), for the provenance of records."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def describe() -> dict:
    d = {"device": _CURRENT.device, "channels_last": _CURRENT.channels_last, "compile": _CURRENT.compile}
    d["cpu"] = f"{cpu_model()} ({os.cpu_count()} cores)"
    if _CURRENT.device.startswith("cuda"):
        d["gpu"] = torch.cuda.get_device_name(torch.device(_CURRENT.device))
    from bench.core import repro

    d.update(repro.describe())
    d["cuda_visible_devices"] = os.environ.get("CUDA_VISIBLE_DEVICES")
    return d
