"""The grid: a suite plus command-line choices -> stage-1 artifact configs and
stage-2 trial configs, then an executor that runs what is missing.

Every config is fully resolved (defaults filled in) before it is hashed, so a
changed default changes the trial id and never silently reuses an old result.
"""

from __future__ import annotations

import dataclasses
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field

from bench.core import runtime
from bench.core.config import ConfigError, SuiteConfig
from bench.core.inputs import config_inputs
from bench.core.registry import ATTACKS, DATASETS, DEFENSES, MODELS, SETTINGS
from bench.protocol.spec import ArtifactSpec, TrialSpec, build_params
from bench.run.trial import check_cell, failed_record, run_attack, run_defense_counted
from bench.store import Store, StoreWriteError, canonical_json


@dataclass
class Selection:
    """What to run; None means 'the suite's default'."""

    attacks: str | None = None
    defenses: str | None = None
    models: str | None = None
    datasets: str | None = None
    settings: str | None = None
    seeds: str | None = None
    precision: str | None = None


@dataclass
class Plan:
    artifacts: list[ArtifactSpec] = field(default_factory=list)
    trials: list[TrialSpec] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (cell, reason)


def parse_seeds(spec: str) -> list[int]:
    try:
        seeds = [int(s) for s in spec.split(",") if s.strip()]
    except ValueError:
        seeds = [-1]
    if not seeds or min(seeds) < 0:
        from bench.core.config import ConfigError

        raise ConfigError(f"--seeds {spec!r} is not allowed; allowed: a comma list of integers >= 0, e.g. 0,1,2")
    return seeds


def model_setting_pairs(models: list[str], settings: list[str], plan: Plan) -> set[tuple[str, str]]:
    """The (model, setting) pairs whose kinds fit (a CLIP in the CLIP settings, a
    classifier in `supervised`). A suite lists models and settings for each other: a
    model is only reported as skipped when no selected setting takes it at all."""
    pairs = set()
    for model in models:
        fits = [s for s in settings if SETTINGS.get(s)().check_model(model) is None]
        pairs |= {(model, s) for s in fits}
        if not fits:
            reason = (
                SETTINGS.get(settings[0])().check_model(model)
                if len(settings) == 1
                else (
                    f"model {model!r} ({MODELS.entry(model).extra.get('kind')}) fits none of the settings {', '.join(settings)}"
                )
            )
            plan.skipped.append((model, reason))
    return pairs


def plan_grid(suite: SuiteConfig, sel: Selection) -> Plan:
    attacks = ATTACKS.resolve(sel.attacks or suite.attacks)
    # Every table has the `none` row (methods.md section 3): it costs one evaluation.
    defenses = ["none"] + [d for d in DEFENSES.resolve(sel.defenses or suite.defenses) if d != "none"]
    models = MODELS.resolve(sel.models or suite.models)
    datasets = DATASETS.resolve(sel.datasets or suite.datasets)
    settings = SETTINGS.resolve(sel.settings or suite.settings)
    seeds = parse_seeds(sel.seeds) if sel.seeds else list(suite.seeds)
    precision = sel.precision or suite.precision
    plan = Plan()
    pairs = model_setting_pairs(models, settings, plan)
    # Each method's knobs are validated once, here, and travel as Params objects in the specs.
    model_params = {m: build_params(MODELS, m, suite.model_params.get(m), "model_params") for m in models}
    setting_params = {s: build_params(SETTINGS, s, suite.setting_params.get(s), "setting_params") for s in settings}
    attack_params = {a: build_params(ATTACKS, a, suite.attack_params.get(a), "attack_params") for a in attacks}
    defense_params = {}
    for d in defenses:
        if getattr(DEFENSES.get(d), "Params", None) is None:
            raise ConfigError(f"defense {d!r} has no Params dataclass; give it one (an empty @dataclass for none)")
        defense_params[d] = build_params(DEFENSES, d, suite.defense_params.get(d), "defense_params")
    for model in models:
        for dataset in datasets:
            for setting in settings:
                if (model, setting) not in pairs:
                    continue
                for attack in attacks:
                    for seed in seeds:
                        spec = ArtifactSpec(
                            suite=suite.name,
                            model=model,
                            model_params=model_params[model],
                            dataset=dataset,
                            setting=setting,
                            setting_params=setting_params[setting],
                            attack=attack,
                            attack_params=attack_params[attack],
                            seed=seed,
                            defender_fraction=suite.defender_fraction,
                            control_datasets=tuple(d for d in suite.control_datasets if d != dataset),
                            # a generated dataset's generator: a new one is new data
                            dataset_version=DATASETS.entry(dataset).extra.get("version"),
                            precision=precision,
                        )
                        reason = check_cell(spec)
                        if reason:
                            plan.skipped.append((spec.label, reason))
                            continue
                        # Files the config names enter its identity by content (bench.core.inputs).
                        inputs = config_inputs(spec.to_json())
                        if inputs:
                            spec = dataclasses.replace(spec, inputs=inputs)
                        plan.artifacts.append(spec)
                        for defense in defenses:
                            entry = DEFENSES.entry(defense)
                            if setting not in entry.settings:
                                plan.skipped.append(
                                    (f"{spec.label}/{defense}", f"defense {defense!r} does not support setting {setting!r}")
                                )
                                continue
                            if entry.obj.uses_attack_knowledge and not ATTACKS.get(attack).has_trigger:
                                plan.skipped.append(
                                    (
                                        f"{spec.label}/{defense}",
                                        f"defense {defense!r} needs a trigger; attack {attack!r} has none",
                                    )
                                )
                                continue
                            plan.trials.append(TrialSpec(spec, defense, defense_params[defense]))
    return plan


@dataclass
class Work:
    """What a run must do once the store has been read: reused records, corrupt files
    to recompute, and the missing trials grouped under the artifact they need."""

    reused: list[dict] = field(default_factory=list)
    corrupt: list[tuple[str, str]] = field(default_factory=list)  # (record path, reason)
    artifacts: dict[str, ArtifactSpec] = field(default_factory=dict)  # artifact id -> its spec
    built: set[str] = field(default_factory=set)  # artifact ids already in the store
    trials: dict[str, list[TrialSpec]] = field(default_factory=dict)  # artifact id -> missing trials

    @property
    def n_trials(self) -> int:
        return sum(len(t) for t in self.trials.values())


def prepare_work(plan: Plan, store: Store) -> Work:
    work = Work()
    for trial in plan.trials:
        st = store.record_state(trial.id)
        if st.state == "ok":
            work.reused.append(st.record)
            continue
        if st.state == "corrupt":
            work.corrupt.append((str(store.record_path(trial.id)), st.reason))
        work.artifacts.setdefault(trial.artifact.id, trial.artifact)
        work.trials.setdefault(trial.artifact.id, []).append(trial)
    for aid in work.artifacts:
        # Locally the hash is checked too (through the digest cache, so once per file);
        # on object storage the size here, the hash when a unit downloads it.
        problem = store.artifact_problem(aid, verify_hash=not store.remote)
        if problem not in (None, "missing"):
            with store.claim(aid):  # nobody is rebuilding it right now
                problem = store.artifact_problem(aid, verify_hash=not store.remote)
                if problem not in (None, "missing"):
                    store.quarantine_artifact(aid, problem)
                    problem = "missing"
        if problem is None:
            work.built.add(aid)
    return work


def dry_run(plan: Plan, store: Store) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """What running `plan` would do, read from the store alone (nothing is written):
    (action, label) per attack artifact and per trial. Artifacts: `compute`, `reuse`, or
    `not needed` (every trial of it is stored); trials: `reuse`, `compute`, or `recompute`
    with the reason (a failed or unreadable record)."""
    needed: set[str] = set()
    trials = []
    for trial in plan.trials:
        st = store.record_state(trial.id)
        if st.state == "ok":
            action = "reuse"
        else:
            needed.add(trial.artifact.id)
            action = {"missing": "compute", "failed": "recompute (stored record failed)"}.get(
                st.state, f"recompute ({st.reason})"
            )
        trials.append((action, trial.label))
    artifacts = []
    for spec in plan.artifacts:
        action = "reuse" if store.artifact_done(spec.id) else "compute" if spec.id in needed else "not needed"
        artifacts.append((action, spec.label))
    return artifacts, trials


@dataclass
class Events:
    """How an executor reports: what it will compute, a unit starting, an artifact built,
    a record landing, a progress line."""

    on_start: Callable[[str], None] = lambda label: None
    on_record: Callable[[dict, bool], None] = lambda record, reused: None
    progress: Callable[[str], None] = lambda msg: None
    on_plan: Callable[[int, int, int], None] = lambda artifacts, trials, reused: None
    on_unit_end: Callable[[str], None] = lambda label: None

    def plan(self, work: Work) -> None:
        self.on_plan(len(set(work.artifacts) - work.built), work.n_trials, len(work.reused))


@dataclass
class RunSummary:
    computed: int = 0
    reused: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    corrupt: list[tuple[str, str]] = field(default_factory=list)
    wall_s: float = 0.0
    compute_s: float = 0.0  # summed wall time inside units (stage 1 and stage 2)
    workers: int = 1
    executor: str = "serial"
    records: list[dict] = field(default_factory=list)
    nodes: dict[str, int] = field(default_factory=dict)  # Ray node id -> units it ran
    aborted: str = ""  # why the grid stopped early (a write the storage refused), else ""

    def land(self, record: dict, computed: bool, events: Events) -> None:
        self.records.append(record)
        if computed:
            self.computed += 1
        else:
            self.reused += 1
        if record["status"] != "ok":
            self.failed.append((trial_label_of(record), record.get("error", "")))
        events.on_record(record, not computed)

    @property
    def overhead_share(self) -> float:
        """Share of the workers' wall time not spent inside units: start-up, scheduling,
        reading the store, idle workers at the end of the grid."""
        capacity = self.wall_s * self.workers
        return max(0.0, 1.0 - self.compute_s / capacity) if capacity > 0 else 0.0


def trial_label_of(record: dict) -> str:
    c = record["config"]
    return f"{c['model']}/{c['dataset']}/{c['setting']}/{c['attack']}/{c['defense']}/seed{c['seed']}"


def prepare_victims(work: Work, progress: Callable[[str], None]) -> None:
    """Before any unit: the CLIPs pre-trained here that the artifacts to build start from,
    loaded from the cache or the package, or pre-trained once now. Done in the driver so
    that its steps show whichever executor runs the units; they then load it from the cache."""
    from bench.protocol import settings

    seen = set()
    for aid, spec in work.artifacts.items():
        key = (spec.model, canonical_json(spec.model_params_json))
        if aid in work.built or key in seen or not hasattr(spec.model_params, "pretrain_config"):
            continue
        seen.add(key)
        try:
            settings.pretrained_clip(spec.model, spec.model_params_json, progress)
        except Exception as e:  # the artifact's own unit meets it again and records it against its trials
            progress(f"{spec.model}: could not prepare the victim ({type(e).__name__}: {e})")


def run_serial(
    plan: Plan,
    store: Store,
    on_trial_start: Callable[[str], None] = lambda label: None,
    on_trial_end: Callable[[dict, bool], None] = lambda rec, reused: None,
    progress: Callable[[str], None] = lambda msg: None,
    events: Events | None = None,
) -> RunSummary:
    """Everything in this process, one unit at a time: for debugging, and the reference
    the Ray executor is compared with. Each artifact is built just before its trials."""
    events = events or Events(on_trial_start, on_trial_end, progress)
    start = time.perf_counter()
    work = prepare_work(plan, store)
    summary = RunSummary(corrupt=work.corrupt)
    events.plan(work)
    for rec in work.reused:
        summary.land(rec, False, events)
    try:
        prepare_victims(work, events.progress)
        _serial_units(work, store, summary, events)
    except StoreWriteError as e:  # a full or failing disk: stop here, what landed stays
        summary.aborted = str(e)
    summary.wall_s = time.perf_counter() - start
    return summary


def _serial_units(work: Work, store: Store, summary: RunSummary, events: Events) -> None:
    for aid, trials in work.trials.items():
        if aid not in work.built:
            events.on_start(f"attack {work.artifacts[aid].label}")
            result = attack_unit(work.artifacts[aid], store, events.progress)
            summary.compute_s += result["compute_s"]
            events.on_unit_end(f"attack {work.artifacts[aid].label}")
            if not result["ok"]:
                for trial in trials:
                    summary.land(dependent_failure(trial, result, store), True, events)
                continue
        for trial in trials:
            events.on_start(trial.label)
            result = defense_unit(trial, store, events.progress)
            summary.compute_s += result["compute_s"]
            summary.land(result["record"], result["computed"], events)


# ---------------------------------------------------------------- units
# The two kinds of work, as functions of a spec: the serial executor calls them
# in-process, the Ray executor inside its trials. Neither raises for a method's error;
# both raise StoreWriteError when the storage refuses a write, which stops the grid.
# Both run as the reproducibility mode says whatever the executor (runtime.fixed_threads:
# one thread, deterministic algorithms), so an artifact's bytes do not depend on who built it.


def attack_unit(spec: ArtifactSpec, store: Store, progress: Callable[[str], None] = lambda m: None) -> dict:
    start = time.perf_counter()
    try:
        with runtime.fixed_threads():
            run_attack(spec, store, progress)
        return {"ok": True, "compute_s": time.perf_counter() - start}
    except StoreWriteError:
        raise
    except Exception as e:
        return {
            "ok": False,
            "error": f"{type(e).__name__}: {e}",
            "traceback": traceback.format_exc(limit=20),
            "compute_s": time.perf_counter() - start,
        }


def dependent_failure(trial: TrialSpec, attack_result: dict, store: Store) -> dict:
    """The record of a trial whose attack artifact could not be built."""
    record = failed_record(
        trial, f"stage 1 (attack artifact) failed: {attack_result['error']}", attack_result.get("traceback", "")
    )
    store.write_record(record)
    return record


def defense_unit(
    trial: TrialSpec, store: Store, progress: Callable[[str], None] = lambda m: None, worker: dict | None = None
) -> dict:
    start = time.perf_counter()
    with runtime.fixed_threads():
        record, computed = run_defense_counted(trial, store, progress, worker)
    return {"record": record, "computed": computed, "compute_s": time.perf_counter() - start}
