"""The choices a run makes for every process that works for it.

Device, compilation, where real datasets live, whether downloads are allowed, the cache
folder and the claim lease are set once, by the command line in the driver, and reach each
Ray worker as an argument of its task (`bench.run.ray_grid`), never through environment
variables. A process that was given none (a library user, a test) reads the documented
environment variables each time it asks, so `BENCH_CACHE=... python -c ...` keeps working.

Third-party libraries' own switches (HF_HUB_OFFLINE, AWS_ENDPOINT_URL) and the
reproducibility mode's pinned kernels stay environment variables: they are read by code
that is not ours, some before any of ours runs.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass

DEFAULT_LEASE_S = 60.0


@dataclass(frozen=True)
class ProcessConfig:
    device: str = "auto"  # auto, cpu, cuda, cuda:N
    compile: bool = False  # torch.compile the training step
    channels_last: bool = True  # NHWC convolutions on CPU (faster here, same numbers)
    data_root: str | None = None  # real datasets (--data-root)
    allow_download: bool = False  # may torchvision / open_clip fetch what is missing
    cache: str | None = None  # built datasets and pre-trained models; None: ~/.cache/bench
    claim_lease_s: float = DEFAULT_LEASE_S  # how long a claim on a unit of work lives unrenewed

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> ProcessConfig:
        return cls(
            device=env.get("BENCH_DEVICE", "auto"),
            compile=env.get("BENCH_COMPILE") == "1",
            channels_last=env.get("BENCH_CHANNELS_LAST", "1") != "0",
            data_root=env.get("BENCH_DATA_ROOT") or None,
            allow_download=env.get("BENCH_ALLOW_DOWNLOAD") == "1",
            cache=env.get("BENCH_CACHE") or None,
            claim_lease_s=max(1.0, float(env.get("BENCH_CLAIM_LEASE_S", DEFAULT_LEASE_S))),
        )

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: Mapping) -> ProcessConfig:
        return cls(**d)


_INSTALLED: list[ProcessConfig] = []


def current() -> ProcessConfig:
    """The configuration installed in this process, else the environment's, read now."""
    return _INSTALLED[-1] if _INSTALLED else ProcessConfig.from_env()


@contextlib.contextmanager
def installed(cfg: ProcessConfig) -> Iterator[ProcessConfig]:
    """`cfg` is this process's configuration within the block (a command, a Ray task)."""
    _INSTALLED.append(cfg)
    try:
        yield cfg
    finally:
        _INSTALLED.pop()
