"""One unit of grid work: stage 1 builds an attack artifact, stage 2 runs one
defense on it and writes the result record. Both are plain functions of a spec
(bench/protocol/spec.py) and a store, so the serial executor and Ray run exactly the same code."""

from __future__ import annotations

import functools
import platform
import socket
import subprocess
import time
import traceback
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import torch
from safetensors.torch import load_file

from attacks.base import Attack
from bench.core import curves, inputs, metrics, runtime, tradeoff
from bench.core.registry import ATTACKS, DEFENSES, SETTINGS
from bench.core.splits import defender_split, subseed
from bench.core.train import TrainSpec, train
from bench.data.base import LabeledDataset, Split, load_dataset
from bench.protocol.record import Record
from bench.protocol.spec import ArtifactSpec, TrialSpec
from bench.protocol.victim import Victim
from bench.store import (
    STORAGE_ERRNOS,
    Store,
    StoreWriteError,
    load_weights,
    read_json,
    save_weights,
    storage_write_error,
)
from defenses.base import DefenseContext, KnownAttack

Progress = Callable[[str], None]


def make_attack(name: str, params, seed: int, image_shape: tuple[int, int, int]) -> Attack:
    """Attack `name` with its (validated) Params, its trigger drawn from the cell's seed."""
    return ATTACKS.get(name)(params, image_shape, subseed(seed, "trigger"))


def build_attack(spec: ArtifactSpec, image_shape: tuple[int, int, int]) -> Attack:
    inputs.verify(spec.to_json())  # the files it names still hold what its id was computed from
    return make_attack(spec.attack, spec.attack_params, spec.seed, image_shape)


def evaluate(classifier, attack: Attack, ds: LabeledDataset, split: Split | None = None) -> dict[str, float | None]:
    """CA on clean images, and ASR and RA on triggered ones (test split by default)."""
    data = split if split is not None else ds.test
    x = data.x
    out: dict[str, float | None] = {
        "ca": metrics.accuracy(metrics.predict(classifier, x), data.labels),
        "asr": None,
        "ra": None,
    }
    if attack.has_trigger:
        pred = metrics.predict(classifier, attack.apply(x))
        t = attack.targets(data.labels, ds.num_classes)
        out["asr"] = metrics.attack_success_rate(pred, data.labels, t)
        out["ra"] = metrics.robust_accuracy(pred, data.labels, t)
    return out


def trigger_quality(attack: Attack, ds: LabeledDataset) -> dict[str, float] | None:
    """Visibility of the test-time trigger on the test images it is applied to."""
    if not attack.has_trigger:
        return None
    x = ds.test.x[ds.test.labels != attack.params.target]
    return metrics.perturbation_stats(x, attack.apply(x))


def save_example(attack: Attack, ds: LabeledDataset, folder: Path) -> list[str]:
    """A clean test image of a non-target class and its triggered copy, as PNGs: how the
    trigger looks on the data (a white patch alone on a white page says little)."""
    if not attack.has_trigger:
        return []
    from attacks.images import save_png

    idx = int(torch.nonzero(ds.test.labels != attack.params.target)[0])
    x = ds.test.x[idx : idx + 1]
    scale = max(1, 96 // x.shape[-1])
    save_png(x[0], folder / "example_clean.png", scale=scale)
    save_png(attack.apply(x)[0], folder / "example_triggered.png", scale=scale)
    return ["example_clean.png", "example_triggered.png"]


def check_cell(spec: ArtifactSpec) -> str | None:
    """None when the (model, dataset, setting, attack) cell can run, else the reason to skip it."""
    if spec.setting not in ATTACKS.entry(spec.attack).settings:
        return f"attack {spec.attack!r} does not support setting {spec.setting!r}"
    return SETTINGS.get(spec.setting)().check_cell(spec.model, spec.dataset)


# ---------------------------------------------------------------- stage 1


def run_attack(spec: ArtifactSpec, store: Store, progress: Progress = lambda m: None) -> dict:
    """Implant the backdoor (or, for attack `none`, train cleanly) and save the artifact."""
    aid = spec.id
    with store.claim(aid):  # another process building the same artifact: wait, then reuse it
        problem = store.artifact_problem(aid, verify_hash=True)
        if problem is None:
            return read_json(store.artifact_dir(aid) / "model.json")
        if problem != "missing":  # altered or truncated weights: set aside, then rebuilt
            store.quarantine_artifact(aid, problem)
        # Built in a folder of its own and moved into place whole: a failure leaves nothing.
        build = store.build_dir(aid)
        try:
            with runtime.precision(spec.precision):
                meta = _attack(spec, build, progress)
            store.commit_artifact(aid, build)
            return meta
        except OSError as e:
            if e.errno in STORAGE_ERRNOS:
                raise storage_write_error(e, build) from None
            raise
        finally:
            store.discard_build(build)


def _attack(spec: ArtifactSpec, folder: Path, progress: Progress) -> dict:
    start = time.perf_counter()
    victim = Victim.of(spec)
    ds, setting = victim.dataset, victim.setting
    attack = build_attack(spec, tuple(ds.train.images.shape[1:]))

    progress("preparing victim")
    net = victim.build(subseed(spec.seed, "init"), progress)
    prep_s = time.perf_counter() - start
    fit_info = None
    if attack.needs_fitting:
        progress(f"optimising the {spec.attack} trigger")
        _, attacker_idx = defender_split(len(ds.train), spec.defender_fraction, spec.seed)
        fit_info = victim.fit_attack(attack, net, ds.train.subset(attacker_idx))
    data = setting.attack_training_set(ds, attack, spec)
    training = spec.setting_params
    schedule: TrainSpec = training.spec(len(data), freeze_norm_stats=not setting.attack_updates_norm_stats)
    gen = torch.Generator().manual_seed(subseed(spec.seed, "batches"))
    torch.manual_seed(subseed(spec.seed, "train"))

    def on_step(step: int, loss: float) -> None:
        if step % 10 == 0:
            progress(f"attack training {step}/{schedule.steps} loss {loss:.3f}")

    batches = data.batches(schedule.batch_size, gen, training.augment, training.crop_padding)
    own_loss = setting.loss
    loss = attack.training_loss(own_loss, net, setting.encoder_parameters(net), ds.num_classes)
    stats = train(net, loss, batches, schedule, on_step=on_step)
    progress("evaluating backdoored model")
    test = evaluate(victim.classifier(net), attack, ds)
    control = victim.control_accuracy(net)
    files = attack.save_trigger(folder) + save_example(attack, ds, folder)
    meta = {
        "artifact_id": spec.id,
        "config": spec.to_json(),
        "metrics": {**test, "control": control},
        "poison": data.info,
        "trigger_quality": trigger_quality(attack, ds),
        "trigger_fit": fit_info,
        "training": {
            "steps": stats.steps,
            "samples": stats.samples,
            "wall_s": round(stats.wall_s, 2),
            "final_loss": stats.final_loss,
            **({"attacker": loss.info()} if loss is not own_loss else {}),  # the attacker trained it
        },
        "trigger_files": files,
        "wall_s": round(time.perf_counter() - start - prep_s, 2),  # excludes one-time pre-training
        "victim_prep_s": round(prep_s, 2),
        "arch": type(net).__name__,
        "threads": torch.get_num_threads(),
    }
    save_weights(net, folder / "model", meta)  # the sidecar goes last: it marks completion
    return meta


# ---------------------------------------------------------------- stage 2


@functools.lru_cache(maxsize=1)
def _versions() -> dict[str, str]:
    # Computed once per process: it runs git and reads package metadata.
    import importlib.metadata as md

    out = {"python": platform.python_version(), "torch": torch.__version__}
    for pkg in ("open_clip_torch", "timm", "ray", "bench-harness"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = "not installed"
    try:
        root = Path(__file__).resolve().parents[2]
        out["git_commit"] = (
            subprocess.run(
                ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5
            ).stdout.strip()
            or "unknown"
        )
    except (OSError, subprocess.SubprocessError):
        out["git_commit"] = "unknown"
    return out


def new_record(trial: TrialSpec, worker: dict | None = None) -> Record:
    """Who runs what, before the outcome is known."""
    return Record(
        trial_id=trial.id,
        artifact_id=trial.artifact.id,
        config=trial.record_config(),
        versions=dict(_versions()),
        host=socket.gethostname(),
        worker={**(worker or {"executor": "serial"}), **runtime.describe(), "threads": torch.get_num_threads()},
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )


def failed_record(trial: TrialSpec, error: str, tb: str = "", worker: dict | None = None) -> dict:
    return new_record(trial, worker).failed(error, tb).to_json()


def run_defense(trial: TrialSpec, store: Store, progress: Progress = lambda m: None, worker: dict | None = None) -> dict:
    """Run one defense on a stored artifact, evaluate on test, write the record.

    The trial is claimed first, so two processes sharing a storage root never compute
    (or write) the same record at once; the second one finds the record and returns it.
    """
    return run_defense_counted(trial, store, progress, worker)[0]


def run_defense_counted(
    trial: TrialSpec, store: Store, progress: Progress = lambda m: None, worker: dict | None = None
) -> tuple[dict, bool]:
    """`run_defense`, also saying whether this call computed the record (False: reused)."""
    tid = trial.id
    with store.claim(tid):
        existing = store.read_record(tid)
        if existing is not None and existing["status"] == "ok":
            return existing, False
        record = new_record(trial, worker)
        try:
            runtime.reset_peak_memory()
            with runtime.precision(trial.artifact.precision):
                record = record.succeeded(_defend(trial, store, progress))
        except StoreWriteError:
            raise
        except Exception as e:  # a failed trial is a record, not a crashed grid
            if isinstance(e, OSError) and e.errno in STORAGE_ERRNOS:  # the disk, not the method
                raise storage_write_error(e, store.trial_dir(tid)) from None
            record = record.failed(f"{type(e).__name__}: {e}", traceback.format_exc(limit=20))
        store.publish_trial_dir(tid)
        written = record.to_json()
        store.write_record(written)
        return written, True


def load_artifact(spec: ArtifactSpec, store: Store) -> tuple[torch.nn.Module, Victim, Attack]:
    """(backdoored network, its victim, the attack) of a built artifact, exactly as stage 2
    sees them."""
    victim = Victim.of(spec)
    attack = build_attack(spec, tuple(victim.dataset.train.images.shape[1:]))
    folder = store.fetch_artifact(spec.id)  # checked against its sidecar's SHA-256
    if attack.needs_fitting:  # an optimised trigger is reloaded exactly, never re-fitted
        attack.restore(load_file(folder / "trigger.safetensors"))
    net = victim.build(subseed(spec.seed, "init"))
    load_weights(net, folder / "model")
    return net.eval(), victim, attack


def _defend(trial: TrialSpec, store: Store, progress: Progress) -> dict:
    spec = trial.artifact
    meta = run_attack(spec, store, progress)  # normally already there: stage 1 ran first
    model, victim, attack = load_artifact(spec, store)
    setting, ds = victim.setting, victim.dataset

    defense_cls = DEFENSES.get(trial.defense)
    if spec.setting not in DEFENSES.entry(trial.defense).settings:
        raise ValueError(f"defense {trial.defense!r} does not support setting {spec.setting!r}")
    defense = defense_cls(trial.defense_params)  # validated when the grid was planned
    pool_idx, _ = defender_split(len(ds.train), spec.defender_fraction, spec.seed)
    known = None
    if defense_cls.uses_attack_knowledge:
        if not attack.has_trigger:
            raise ValueError(f"defense {trial.defense!r} needs a trigger; attack {spec.attack!r} has none")
        known = KnownAttack(apply=attack.apply, targets=lambda y: attack.targets(y, ds.num_classes))
    ctx = DefenseContext(
        model=model,
        setting=setting,
        dataset=ds,
        clean_pool=ds.train.subset(pool_idx),
        val=ds.val,
        seed=subseed(spec.seed, f"defense:{trial.defense}"),
        train_size=len(ds.train),
        known=known,
        progress=progress,
        classify=victim.classifier,
        out_dir=store.trial_dir(trial.id),
        victim=victim,
    )
    ev = _evaluator(model, victim, attack)
    progress("evaluating the backdoored model on validation")
    bd_val = ev.val()
    restore_backdoored = curves.snapshot(model)
    start = time.perf_counter()
    out = defense.run(ctx)
    wall = time.perf_counter() - start
    if out.model is not model:  # every defense edits the victim in place; the curve relies on it
        raise RuntimeError(f"defense {trial.defense!r} returned a different model object; edit ctx.model in place")

    progress("evaluating defended model")
    t = ev.test()
    test, control = t, t["control"]
    restore_defended = curves.snapshot(model)
    progress("trade-off curve on validation")
    seeded = {p["knob"]: p for p in out.curve or []} if out.curve_uses_attack_trigger else None
    to = curves.trade_off(out.knob, ev, bd_val, restore_backdoored, restore_defended, CURVE_REFINE_STEPS, seeded)
    bd = meta["metrics"]
    m: dict = {"ca": test["ca"], "asr": test["asr"], "ra": test["ra"], "control": control}
    m["backdoored"] = {"ca": bd["ca"], "asr": bd["asr"], "ra": bd["ra"], "control": bd["control"]}
    m["ca_retention"] = metrics.ca_retention(test["ca"], bd["ca"])
    if test["asr"] is not None and bd["asr"] is not None:
        m["asr_removal"] = metrics.asr_removal(bd["asr"], test["asr"])
        m["der"] = metrics.der(bd["ca"], test["ca"], bd["asr"], test["asr"])
    else:
        m["asr_removal"] = m["der"] = None
    m["control_retention"] = {
        k: metrics.ca_retention(v, bd["control"][k]) for k, v in control.items() if bd["control"].get(k)
    }
    m["auc_90"] = to["auc_90"]
    result = {
        "metrics": m,
        "cost": {
            "wall_s": round(wall, 3),
            "device": str(runtime.model_device(out.model)),
            **runtime.peak_memory(),
            **out.meter.as_cost(),
            "attack_wall_s": meta["wall_s"],
        },
        "attack": {k: meta.get(k) for k in ("poison", "training", "trigger_files", "trigger_quality", "trigger_fit")},
        "defense": out.extra,
    }
    if "target_est" in out.extra and attack.has_trigger:
        # Scored here, by the engine: the defense itself never sees the attack's target.
        result["defense"]["target_correct"] = out.extra["target_est"] == attack.params.target
    if setting.model_kind == "clip":  # methods.md section 1: record the zero-shot templates used
        result["templates"] = {
            name: load_dataset(name).templates for name in [spec.dataset, *spec.control_datasets]
        }
    # Departures from each method's reference (docs/methods.md, last section), for footnotes.
    result["deviations"] = {
        "defense": defense.deviations_in(spec.setting),
        "attack": attack.deviations_in(spec.setting),
    }
    result["curve"] = to["curve"]
    result["matched"] = to["matched"]  # the oracle point: lowest validation ASR (attacker's trigger)
    result["matched_blind"] = to["matched_blind"]  # the headline: strongest knob keeping retention
    result["knob"] = (
        {"name": out.knob.name, "chosen": out.knob.chosen, "continuous": out.knob.continuous}
        if out.knob is not None
        else None
    )
    result["protocol"] = {
        "levels": list(tradeoff.LEVELS),
        "auc_range": list(tradeoff.AUC_RANGE),
        "refine_steps": CURVE_REFINE_STEPS,
        "control_val_images": CONTROL_VAL,
        "val_asr_trigger": "attack",
        "operating_points": {"matched_blind": "strongest knob with val CA >= R x backdoored val CA",
                             "matched": "oracle: lowest val ASR (attacker's trigger) with val CA >= R x backdoored"},
    }  # fmt: skip
    if out.curve is not None and not out.curve_uses_attack_trigger:
        result["defense"]["own_curve"] = out.curve  # measured with the defense's own (inverted) trigger
    return result


# The evaluator's protocol (methods.md section 5), the same for every defense.
CURVE_REFINE_STEPS = 4  # bisections per retention level on continuous knobs
CONTROL_VAL = 300  # control accuracy along a curve: the first 300 validation images per control set


def _evaluator(model, victim: Victim, attack: Attack) -> curves.Evaluator:
    """Validation and test metrics of `model` in whatever state it is in when called."""
    ds = victim.dataset
    x_val = ds.val.x
    x_val_trig = attack.apply(x_val) if attack.has_trigger else None
    t_val = attack.targets(ds.val.labels, ds.num_classes) if attack.has_trigger else None

    def val() -> dict:
        clf = victim.classifier(model)
        out = {"ca": metrics.accuracy(metrics.predict(clf, x_val), ds.val.labels), "asr": None}
        if x_val_trig is not None:
            out["asr"] = metrics.attack_success_rate(metrics.predict(clf, x_val_trig), ds.val.labels, t_val)
        out["control"] = victim.control_accuracy(model, split="val", limit=CONTROL_VAL)
        return out

    def test() -> dict:
        out = evaluate(victim.classifier(model), attack, ds)
        out["control"] = victim.control_accuracy(model)
        return out

    return curves.Evaluator(val, test)
