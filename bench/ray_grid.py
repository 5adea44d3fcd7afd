"""The Ray Tune executor: the grid as Tune trials on one machine or a Ray cluster.

Stage 1 (one Tune trial per missing attack artifact) and stage 2 (one Tune trial per
missing (artifact, defense) record) run in one Tuner. The dependency between them is
kept by a Searcher that hands out stage-2 configs only once their artifact's stage-1
trial has completed, so a defense starts as soon as its own artifact exists instead of
waiting for the whole of stage 1.

Trials exchange nothing with the driver but small dicts: artifacts and records go to
the storage root, which every node must reach (a local folder on one machine, a shared
mount on a cluster), and the driver reads the records from there.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import time
import uuid
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from bench.config import ConfigError
from bench.grid import (
    Events,
    Plan,
    RunSummary,
    attack_unit,
    defense_unit,
    dependent_failure,
    prepare_victims,
    prepare_work,
)
from bench.remote import open_store
from bench.spec import ArtifactSpec, TrialSpec
from bench.store import Store, StoreWriteError
from bench.trial import failed_record

log = logging.getLogger(__name__)


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
        # the mode (the default) every unit runs with one thread (bench.repro).
        return max(1, int(self.cpus_per_trial))


def _unit_trainable(config: dict) -> dict:
    """One Tune trial = one unit of grid work. Runs on a Ray worker."""
    import ray
    import torch

    # Workers on other nodes do not inherit the driver's environment: carry it.
    os.environ.update(config["env"])
    from bench import repro

    if repro.enabled():
        repro.configure_torch()  # one thread, deterministic: the serial executor does the same
    else:
        torch.set_num_threads(config["threads"])
    from bench import runtime
    from bench.registry import load_plugins

    runtime.configure(config["env"].get("BENCH_DEVICE", "auto"), compile=config["env"].get("BENCH_COMPILE") == "1")

    load_plugins()
    store = open_store(config["root"])
    unit = config["unit"]
    ctx = ray.get_runtime_context()
    worker = {
        "executor": "ray",
        "node_id": ctx.get_node_id(),
        "pid": os.getpid(),
        "threads": config["threads"],
        "gpu_ids": [str(g) for g in ray.get_gpu_ids()],
    }
    try:
        return _run_unit(unit, store, worker)
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


def _searcher_class():
    from ray.tune.search import Searcher

    class GridSearcher(Searcher):
        """Hands out units in dependency order; stage-2 units jump the queue so
        finished results appear early."""

        def __init__(self, ready: list[dict], waiting: dict[str, list[dict]], base: dict, key: int):
            super().__init__()
            self.queue: deque[dict] = deque(ready)
            self.waiting = waiting  # artifact id -> stage-2 units that need it
            self.base = base
            self.key = key
            self.live: dict[str, dict] = {}

        def suggest(self, trial_id: str) -> dict | None:
            if _sink(self.key).aborted:
                return Searcher.FINISHED  # the storage failed: start nothing more
            if self.queue:
                unit = self.queue.popleft()
                self.live[trial_id] = unit
                return {**self.base, "unit": unit}
            if not self.live and not self.waiting:
                return Searcher.FINISHED
            return None  # nothing ready yet: a stage-1 trial is still running

        # Tune checkpoints its searcher; ours is rebuilt from the store on every run
        # (that is what makes reruns resume), so its state need not survive.
        def save(self, checkpoint_path: str) -> None:
            pass

        def restore(self, checkpoint_path: str) -> None:
            pass

        def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
            unit = self.live.pop(trial_id, None)
            if unit is None:
                return
            if unit["stage"] == 1:
                deps = self.waiting.pop(unit["aid"], [])
                if not error and result and result.get("ok"):
                    self.queue.extendleft(reversed(deps))

    return GridSearcher


@dataclass
class _Sink:
    on_start: object
    on_land: object
    aborted: str = ""  # set when the storage refused a write: the grid stops
    error: BaseException | None = None  # a bug in the driver's own code, raised after Tune returns

    def guard(self, fn, *args) -> None:
        """Run a driver callback without letting anything escape into Tune's loop."""
        try:
            fn(*args)
        except StoreWriteError as e:
            self.aborted = self.aborted or str(e)
        except Exception as e:
            self.error = self.error or e
            self.aborted = self.aborted or f"internal error in the driver: {type(e).__name__}: {e}"


# Tune pickles its callbacks with the experiment state; they reach the driver's live
# objects (progress display, summary) through this table instead of holding them.
_SINKS: dict[int, _Sink] = {}


def _register(sink: _Sink) -> int:
    _SINKS[id(sink)] = sink
    return id(sink)


def _sink(key: int) -> _Sink:
    # A module-level function: a pickled callback refers to it by name, so the table
    # (and the live objects in it) never travels with the pickle.
    return _SINKS[key]


def _report_callback(key: int):
    from ray.tune import Callback

    class Report(Callback):
        def __init__(self, key: int):
            self.key = key

        def on_trial_start(self, iteration, trials, trial, **info):
            sink = _sink(self.key)
            sink.guard(sink.on_start, trial.config["unit"]["label"])

        def on_trial_complete(self, iteration, trials, trial, **info):
            sink = _sink(self.key)
            result = trial.last_result or {}
            if sink.aborted and "stage" not in result:
                return  # stopped with the grid before it returned: it did not run to the end
            sink.guard(sink.on_land, trial.config["unit"], result, None)

        def on_trial_error(self, iteration, trials, trial, **info):
            sink = _sink(self.key)
            if not sink.aborted:  # trials stopped because the grid is stopping are not failures
                sink.guard(sink.on_land, trial.config["unit"], {}, str(trial.error_file or "the Ray trial died"))

    return Report(key)


def _stopper(key: int):
    from ray.tune.stopper import Stopper

    class StopOnStorageError(Stopper):
        """Ends the whole experiment once the storage has refused a write."""

        def __init__(self, key: int):
            self.key = key

        def __call__(self, trial_id, result) -> bool:
            return False

        def stop_all(self) -> bool:
            return bool(_sink(self.key).aborted)

    return StopOnStorageError(key)


# ---------------------------------------------------------------- Tune's own folders
# Tune keeps experiment state in a folder of its own. It goes under the storage root's
# `_tune/<host>-<pid>-<token>` (for an object store: this node's mirror of it), so a
# cluster's nodes can reach it, is removed when the run ends, and the folder of a run
# killed outright (SIGKILL: no `finally` runs) is swept by the next run on that host.


def _tune_dir(store: Store) -> Path:
    return (store.root / "_tune" / f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}").resolve()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_tune_dirs(store: Store) -> list[Path]:
    """Remove `_tune/` folders left by runs on this host whose process is gone."""
    base = store.root / "_tune"
    removed = []
    if not base.is_dir():
        return removed
    host = socket.gethostname()
    for d in base.iterdir():
        name = d.name.rpartition("-")[0]  # <host>-<pid>-<token>
        h, _, pid = name.rpartition("-")
        if h == host and pid.isdigit() and not _pid_alive(int(pid)):
            shutil.rmtree(d, ignore_errors=True)
            removed.append(d)
    return removed


def _init_ray(opts: RayOptions) -> bool:
    """Connect to (or start) Ray; True when this call started it."""
    import ray

    if ray.is_initialized():
        return False
    address = opts.address or os.environ.get("RAY_ADDRESS")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    # Tune's own console reporter would print over our progress display; the legacy
    # engine at verbose=0 prints nothing.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    from bench import repro

    # The pinned instruction sets must reach every worker before it imports torch.
    pinned = {k: os.environ[k] for k in (repro.SWITCH, *repro.PINNED_ENV) if k in os.environ}
    kwargs = {
        "include_dashboard": False,
        "log_to_driver": False,
        "configure_logging": False,
        "runtime_env": {"env_vars": pinned},
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
    from ray import tune

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
    sweep_tune_dirs(store)
    started = _init_ray(opts)
    storage = _tune_dir(store)
    sink = _Sink(events.on_start, None)
    key = _register(sink)
    try:
        cluster_cpus = ray.cluster_resources().get("CPU", 1.0)
        slots = max(1, int(cluster_cpus // opts.cpus_per_trial))
        concurrent = min(opts.max_concurrent or slots, slots)
        summary.workers = concurrent

        ready: list[dict] = []
        waiting: dict[str, list[dict]] = {}
        # Units carry their spec as JSON (Tune writes trial configs to disk) and a worker
        # rebuilds it; the driver finds its own by id.
        specs = {t.id: t for trials in work.trials.values() for t in trials}
        for aid, trials in work.trials.items():
            units = [{"stage": 2, "aid": aid, "tid": t.id, "trial": t.to_json(), "label": t.label} for t in trials]
            if aid in work.built:
                ready.extend(units)
            else:
                ready.append(
                    {
                        "stage": 1,
                        "aid": aid,
                        "artifact": work.artifacts[aid].to_json(),
                        "label": f"attack {work.artifacts[aid].label}",
                    }
                )
                waiting[aid] = units
        from bench import repro

        # (Credentials are not carried: Tune writes trial configs to disk. Nodes bring their own.)
        env_keys = ("BENCH_DATA_ROOT", "BENCH_ALLOW_DOWNLOAD", "BENCH_DEVICE", "BENCH_COMPILE", "BENCH_CACHE",
                    "HF_HUB_OFFLINE", repro.SWITCH, *repro.PINNED_ENV, "BENCH_CLAIM_LEASE_S",
                    "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_DEFAULT_REGION")  # fmt: skip
        env = {k: os.environ[k] for k in env_keys if k in os.environ}
        base = {"root": store.uri, "threads": opts.threads, "env": env}
        searcher = _searcher_class()(ready, waiting, base, key)

        def _land(unit: dict, result: dict, crash: str | None) -> None:
            summary.compute_s += float(result.get("compute_s", 0.0))
            if result.get("node_id"):
                summary.nodes[result["node_id"]] = summary.nodes.get(result["node_id"], 0) + 1
            if result.get("storage_error"):  # the unit's write failed: nothing of it landed
                sink.aborted = sink.aborted or result["storage_error"]
                return
            if unit["stage"] == 1:
                events.on_unit_end(unit["label"])
                if crash or not result.get("ok"):
                    error = {
                        "error": result.get("error") or f"worker crashed: {crash}",
                        "traceback": result.get("traceback", ""),
                    }
                    for trial in work.trials[unit["aid"]]:
                        summary.land(dependent_failure(trial, error, store), True, events)
                return
            trial = specs[unit["tid"]]
            record = store.read_record(trial.id)
            if crash or record is None:
                # The worker died before it could write: the driver records the failure.
                record = failed_record(trial, f"worker crashed: {crash or 'no record written'}")
                store.write_record(record)
                summary.land(record, True, events)
                return
            summary.land(record, bool(result.get("computed", True)), events)

        sink.on_land = _land
        resources = {"cpu": opts.cpus_per_trial, "gpu": opts.gpus_per_trial}
        storage.mkdir(parents=True, exist_ok=True)
        tuner = tune.Tuner(
            tune.with_resources(_unit_trainable, resources),
            tune_config=tune.TuneConfig(
                search_alg=searcher,
                num_samples=-1,
                max_concurrent_trials=concurrent,
                reuse_actors=True,
                trial_name_creator=lambda t: f"unit_{t.trial_id}",
                trial_dirname_creator=lambda t: f"unit_{t.trial_id}",
            ),
            run_config=tune.RunConfig(
                name="grid",
                storage_path=str(storage),
                verbose=0,
                stop=_stopper(key),
                callbacks=[_report_callback(key)],
                log_to_file=False,
            ),
        )
        # Results travel through the store, never through Tune's result grid; a trial
        # stopped with the grid has none, and Tune would warn about that.
        analysis_log = logging.getLogger("ray.tune.analysis.experiment_analysis")
        level = analysis_log.level
        analysis_log.setLevel(logging.ERROR)
        try:
            tuner.fit()
        finally:
            analysis_log.setLevel(level)
    finally:
        _SINKS.pop(key, None)
        if started:
            ray.shutdown()
        shutil.rmtree(storage, ignore_errors=True)
        _remove_if_empty(storage.parent)
    summary.aborted = sink.aborted
    if sink.error is not None and not isinstance(sink.error, StoreWriteError):
        raise sink.error  # a bug in the driver's callbacks: surfaced here, outside Tune's loop
    summary.wall_s = time.perf_counter() - start
    return summary


def _remove_if_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:
        pass
