"""The grid: a suite plus command-line choices -> stage-1 artifact configs and
stage-2 trial configs, then an executor that runs what is missing.

Every config is fully resolved (defaults filled in) before it is hashed, so a
changed default changes the trial id and never silently reuses an old result.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from bench.config import SuiteConfig, from_dict, to_dict
from bench.registry import ATTACKS, DATASETS, DEFENSES, MODELS, SETTINGS
from bench.store import Store
from bench.trial import artifact_id, check_cell, run_attack, run_defense, trial_id


@dataclass
class Selection:
    """What to run; None means 'the suite's default'."""

    attacks: str | None = None
    defenses: str | None = None
    models: str | None = None
    datasets: str | None = None
    settings: str | None = None
    seeds: str | None = None


@dataclass
class Plan:
    artifacts: list[dict] = field(default_factory=list)
    trials: list[dict] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (cell, reason)


def _params(registry, name: str, overrides: dict, where: str) -> dict:
    cls = registry.get(name)
    params_cls = getattr(cls, "Params", None)
    return to_dict(from_dict(params_cls, overrides.get(name), f"{where}.{name}")) if params_cls else {}


def parse_seeds(spec: str) -> list[int]:
    try:
        return [int(s) for s in spec.split(",") if s.strip()]
    except ValueError:
        raise ValueError(f"--seeds must be a comma list of integers, got {spec!r}") from None


def plan_grid(suite: SuiteConfig, sel: Selection) -> Plan:
    attacks = ATTACKS.resolve(sel.attacks or suite.attacks)
    # Every table has the `none` row (methods.md section 3): it costs one evaluation.
    defenses = ["none"] + [d for d in DEFENSES.resolve(sel.defenses or suite.defenses) if d != "none"]
    models = MODELS.resolve(sel.models or suite.models)
    datasets = DATASETS.resolve(sel.datasets or suite.datasets)
    settings = SETTINGS.resolve(sel.settings or suite.settings)
    seeds = parse_seeds(sel.seeds) if sel.seeds else list(suite.seeds)
    plan = Plan()
    for model in models:
        for dataset in datasets:
            for setting in settings:
                for attack in attacks:
                    for seed in seeds:
                        acfg = {
                            "suite": suite.name,
                            "model": model,
                            "model_params": _params(MODELS, model, suite.model_params, "model_params"),
                            "dataset": dataset,
                            "setting": setting,
                            "setting_params": _params(SETTINGS, setting, suite.setting_params, "setting_params"),
                            "attack": attack,
                            "attack_params": _params(ATTACKS, attack, suite.attack_params, "attack_params"),
                            "seed": seed,
                            "defender_fraction": suite.defender_fraction,
                            "control_datasets": [d for d in suite.control_datasets if d != dataset],
                        }
                        cell = f"{model}/{dataset}/{setting}/{attack}/seed{seed}"
                        reason = check_cell(acfg)
                        if reason:
                            plan.skipped.append((cell, reason))
                            continue
                        plan.artifacts.append(acfg)
                        for defense in defenses:
                            entry = DEFENSES.entry(defense)
                            if setting not in entry.settings:
                                plan.skipped.append(
                                    (f"{cell}/{defense}", f"defense {defense!r} does not support setting {setting!r}")
                                )
                                continue
                            if entry.obj.uses_attack_knowledge and not ATTACKS.get(attack).has_trigger:
                                plan.skipped.append(
                                    (
                                        f"{cell}/{defense}",
                                        f"defense {defense!r} needs a trigger; attack {attack!r} has none",
                                    )
                                )
                                continue
                            plan.trials.append(
                                {
                                    "artifact": acfg,
                                    "defense": defense,
                                    "defense_params": _params(
                                        DEFENSES, defense, suite.defense_params, "defense_params"
                                    ),
                                }
                            )
    return plan


@dataclass
class RunSummary:
    computed: int = 0
    reused: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    wall_s: float = 0.0
    records: list[dict] = field(default_factory=list)


def trial_label(tcfg: dict) -> str:
    a = tcfg["artifact"]
    return f"{a['model']}/{a['dataset']}/{a['setting']}/{a['attack']}/{tcfg['defense']}/seed{a['seed']}"


def run_serial(
    plan: Plan,
    store: Store,
    on_trial_start: Callable[[str], None] = lambda label: None,
    on_trial_end: Callable[[dict, bool], None] = lambda rec, reused: None,
    progress: Callable[[str], None] = lambda msg: None,
) -> RunSummary:
    """Run stage 1 for each missing artifact, then stage 2 for each missing record,
    in this process. An artifact is built just before the first trial that needs it."""
    start = time.perf_counter()
    summary = RunSummary()
    for tcfg in plan.trials:
        label = trial_label(tcfg)
        existing = store.read_record(trial_id(tcfg))
        if existing is not None and existing["status"] == "ok":
            summary.reused += 1
            summary.records.append(existing)
            on_trial_end(existing, True)
            continue
        on_trial_start(label)
        if not store.artifact_done(artifact_id(tcfg["artifact"])):
            try:
                run_attack(tcfg["artifact"], store, progress)
            except Exception:
                pass  # run_defense retries stage 1 and records the failure with its traceback
        record = run_defense(tcfg, store, progress)
        summary.computed += 1
        summary.records.append(record)
        if record["status"] != "ok":
            summary.failed.append((label, record.get("error", "")))
        on_trial_end(record, False)
    summary.wall_s = time.perf_counter() - start
    return summary
