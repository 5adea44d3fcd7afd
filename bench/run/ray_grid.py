"""The Ray executor: the grid as Ray tasks on one machine or a Ray cluster.

Stage 1 is one task per missing attack artifact, stage 2 one task per missing (artifact,
defense) record. A stage-2 task takes its artifact's stage-1 ObjectRef as an argument, so
the dependency is Ray's own. The driver dispatches units from one queue in dependency
order, at most `concurrent` at a time, and puts a finished artifact's trials at the front,
so a defense starts as soon as its own artifact exists and results appear early.

Tasks exchange nothing with the driver but small dicts: artifacts and records go to the
storage root, which every node must reach (a local folder on one machine, a shared mount
or a bucket on a cluster), and the driver reads the records from there. What a worker needs
to know (the store, its threads, the run's `ProcessConfig`) travels as task arguments.
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from dataclasses import dataclass

from bench.core import process
from bench.core.config import ConfigError
from bench.core.process import ProcessConfig
from bench.protocol.spec import ArtifactSpec, TrialSpec
from bench.run.grid import (
    Events,
    Plan,
    RunSummary,
    attack_unit,
    defense_unit,
    dependent_failure,
    prepare_victims,
    prepare_work,
)
from bench.run.trial import failed_record
from bench.store import Store, StoreWriteError
from bench.store.remote import open_store

log = logging.getLogger(__name__)

# Libraries' own environment switches that workers on other nodes must see as the driver
# does (not ours: ours travel in ProcessConfig). Credentials are never carried; nodes
# bring their own.
LIBRARY_ENV = ("HF_HUB_OFFLINE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_DEFAULT_REGION")


@dataclass
class RayOptions:
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    max_concurrent: int | None = None  # None: as many as the cluster's CPUs allow
    address: str | None = None  # None: RAY_ADDRESS if set, else a local Ray started here
    num_cpus: int | None = None  # CPUs for a local Ray (None: all of this machine's)

    def check(self) -> None:
        if self.cpus_per_trial <= 0:
            raise ConfigError(f"--cpus-per-trial must be > 0, got {self.cpus_per_trial}")
        if self.gpus_per_trial < 0:
            raise ConfigError(f"--gpus-per-trial must be >= 0, got {self.gpus_per_trial}")
        if self.max_concurrent is not None and self.max_concurrent < 1:
            raise ConfigError(f"--max-concurrent must be >= 1, got {self.max_concurrent}")

    @property
    def threads(self) -> int:
        # Torch threads follow the trial's CPUs when the reproducibility mode is off; in
        # the mode (the default) every unit runs with one thread (bench.core.repro).
        return max(1, int(self.cpus_per_trial))


def run_unit(cfg: dict, root: str, threads: int, unit: dict, artifact: dict | None = None) -> dict:
    """One unit of grid work, as a Ray task. `artifact` is the stage-1 result a stage-2
    unit depends on: Ray resolves its ObjectRef before the task starts, which is all it is
    for (the driver dispatches a trial only after its artifact landed ok)."""
    import ray
    import torch

    from bench.core import repro, runtime
    from bench.core.registry import load_plugins

    if repro.enabled():
        repro.configure_torch()  # one thread, deterministic: the serial executor does the same
    else:
        torch.set_num_threads(threads)
    worker = {
        "executor": "ray",
        "node_id": ray.get_runtime_context().get_node_id(),
        "pid": os.getpid(),
        "threads": threads,
        "gpu_ids": [str(g) for g in ray.get_gpu_ids()],
    }
    with process.installed(ProcessConfig.from_json(cfg)) as pc:
        runtime.configure(pc.device, compile=pc.compile)
        load_plugins()
        try:
            return _run_unit(unit, open_store(root), worker)
        except StoreWriteError as e:  # the storage refused a write: the driver stops the grid
            return {"stage": unit["stage"], "storage_error": str(e), "node_id": worker["node_id"], "compute_s": 0.0}


def _run_unit(unit: dict, store: Store, worker: dict) -> dict:
    if unit["stage"] == 1:
        result = attack_unit(ArtifactSpec.from_json(unit["artifact"]), store)
        return {
            "stage": 1,
            "ok": result["ok"],
            "error": result.get("error", ""),
            "traceback": result.get("traceback", ""),
            "compute_s": result["compute_s"],
            "node_id": worker["node_id"],
        }
    result = defense_unit(TrialSpec.from_json(unit["trial"]), store, worker=worker)
    return {
        "stage": 2,
        "trial_id": result["record"]["trial_id"],
        "computed": result["computed"],
        "compute_s": result["compute_s"],
        "node_id": worker["node_id"],
    }


def _init_ray(opts: RayOptions) -> bool:
    """Connect to (or start) Ray; True when this call started it."""
    import ray

    if ray.is_initialized():
        return False
    address = opts.address or os.environ.get("RAY_ADDRESS")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    from bench.core import repro

    # The pinned instruction sets must reach every worker before it imports torch, and the
    # libraries' switches must read as they do here.
    carried = {k: os.environ[k] for k in (repro.SWITCH, *repro.PINNED_ENV, *LIBRARY_ENV) if k in os.environ}
    kwargs = {
        "include_dashboard": False,
        "log_to_driver": False,
        "configure_logging": False,
        "runtime_env": {"env_vars": carried},
    }
    if address:
        ray.init(address=address, **kwargs)
    else:
        # "local": always a new Ray of our own. Without it, ray.init() joins whatever cluster
        # /tmp/ray/ray_current_cluster names (a `ray start` of the user's, or a stale file
        # left by a killed one) and then refuses num_cpus; --address auto joins on purpose.
        ray.init(address="local", num_cpus=opts.num_cpus or os.cpu_count(), **kwargs)
    return True


def run_ray(plan: Plan, store: Store, opts: RayOptions, events: Events = Events()) -> RunSummary:
    import ray

    opts.check()
    start = time.perf_counter()
    work = prepare_work(plan, store)
    summary = RunSummary(corrupt=work.corrupt, executor="ray")
    events.plan(work)
    for rec in work.reused:
        summary.land(rec, False, events)
    if not work.trials:
        summary.wall_s = time.perf_counter() - start
        return summary

    prepare_victims(work, events.progress)  # before Ray starts: its steps show here, workers load it
    started = _init_ray(opts)
    try:
        cluster_cpus = ray.cluster_resources().get("CPU", 1.0)
        slots = max(1, int(cluster_cpus // opts.cpus_per_trial))
        summary.workers = min(opts.max_concurrent or slots, slots)
        task = ray.remote(run_unit).options(num_cpus=opts.cpus_per_trial, num_gpus=opts.gpus_per_trial,
                                            max_retries=0)  # fmt: skip
        args = (process.current().to_json(), store.uri, opts.threads)
        try:
            _Dispatch(work, store, summary, events, task, args).run()
        except StoreWriteError as e:  # the driver's own write (a failure record) was refused
            summary.aborted = summary.aborted or str(e)
    finally:
        if started:
            ray.shutdown()
    summary.wall_s = time.perf_counter() - start
    return summary


class _Dispatch:
    """The driver's loop: hand out units in dependency order, land what returns."""

    def __init__(self, work, store: Store, summary: RunSummary, events: Events, task, args: tuple):
        self.work, self.store, self.summary, self.events = work, store, summary, events
        self.task, self.args = task, args
        self.specs = {t.id: t for trials in work.trials.values() for t in trials}
        self.queue: deque[tuple[dict, object]] = deque()  # (unit, the stage-1 ref it needs)
        self.waiting: dict[str, list[dict]] = {}  # artifact id -> stage-2 units that need it
        for aid, trials in work.trials.items():
            units = [{"stage": 2, "aid": aid, "tid": t.id, "trial": t.to_json(), "label": t.label} for t in trials]
            if aid in work.built:
                self.queue.extend((u, None) for u in units)
            else:
                spec = work.artifacts[aid]
                unit = {"stage": 1, "aid": aid, "artifact": spec.to_json(), "label": f"attack {spec.label}"}
                self.queue.append((unit, None))
                self.waiting[aid] = units
        self.live: dict = {}  # ObjectRef -> unit

    def run(self) -> None:
        import ray

        while self.queue or self.live:
            while self.queue and len(self.live) < self.summary.workers and not self.summary.aborted:
                unit, dep = self.queue.popleft()
                self.live[self.task.remote(*self.args, unit, dep)] = unit
                self.events.on_start(unit["label"])
            if not self.live:
                break  # stopped: nothing running, nothing more to start
            (ref,), _ = ray.wait(list(self.live), num_returns=1)
            unit = self.live.pop(ref)
            try:
                result, crash = ray.get(ref), None
            except ray.exceptions.TaskCancelledError:
                continue  # stopped with the grid before it returned: it did not run to the end
            except ray.exceptions.RayError as e:  # the worker died, or the task raised past its own handlers
                result, crash = {}, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            self._land(unit, result, crash, ref)
            if self.summary.aborted:
                for pending in self.live:  # interrupt the rest (their writes are atomic)
                    ray.cancel(pending)

    def _land(self, unit: dict, result: dict, crash: str | None, ref) -> None:
        summary = self.summary
        summary.compute_s += float(result.get("compute_s", 0.0))
        if result.get("node_id"):
            summary.nodes[result["node_id"]] = summary.nodes.get(result["node_id"], 0) + 1
        if result.get("storage_error"):  # the unit's write failed: nothing of it landed
            summary.aborted = summary.aborted or result["storage_error"]
            return
        if unit["stage"] == 1:
            self.events.on_unit_end(unit["label"])
            deps = self.waiting.pop(unit["aid"], [])
            if crash or not result.get("ok"):
                error = {"error": result.get("error") or f"worker crashed: {crash}",
                         "traceback": result.get("traceback", "")}  # fmt: skip
                for trial in self.work.trials[unit["aid"]]:
                    summary.land(dependent_failure(trial, error, self.store), True, self.events)
            else:
                self.queue.extendleft((u, ref) for u in reversed(deps))
            return
        trial = self.specs[unit["tid"]]
        record = self.store.read_record(trial.id)
        if crash or record is None:
            # The worker died before it could write: the driver records the failure.
            record = failed_record(trial, f"worker crashed: {crash or 'no record written'}")
            self.store.write_record(record)
            summary.land(record, True, self.events)
            return
        summary.land(record, bool(result.get("computed", True)), self.events)
