"""TBAR analyses: alpha curves from stored trigger vectors, weight disentanglement,
cosine similarities between task vectors, and the efficiency table.

Pure functions compute (`disentanglement_error`, `cosine_matrix`, `efficiency_rows`);
the `run_*` functions rebuild models from the store and write their results as JSON
under `<results>/analysis/`, which is what the report reads: every number in it comes
from a stored record or one of these files.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from bench.core import metrics, taskvec
from bench.core.splits import defender_split, subseed
from bench.core.train import TrainSpec, index_batches, train
from bench.data.base import load_dataset
from bench.models.zoo import rung_params
from bench.protocol.spec import ArtifactSpec, TrialSpec, build_params
from bench.protocol.victim import Victim
from bench.report import tables
from bench.store import Store

Vector = Mapping[str, torch.Tensor]

# ---------------------------------------------------------------- pure parts


def target_bias(pred_clean: torch.Tensor, labels: torch.Tensor, target: int) -> float:
    """Share of clean images whose label is not the target that are predicted as the
    target: what a vector that learned "predict t" does without any trigger."""
    keep = labels != target
    return metrics.share(pred_clean[keep] == target)


def disagreement(pred_a: torch.Tensor, pred_b: torch.Tensor) -> float:
    return metrics.share(pred_a != pred_b)


def disentanglement_error(predict_at: Callable[[float, float, str], torch.Tensor], a_c: float, a_t: float) -> float:
    """Weight disentanglement error (Ortiz-Jimenez et al. 2023) for two task vectors:

        xi(a_c, a_t) = sum over d in {clean, triggered} of
                       P_{x~d}[ f(theta_pre + a_c tau_c + a_t tau_t)(x) != f(theta_pre + a_d tau_d)(x) ]

    `predict_at(a_c, a_t, d)` gives the predictions of theta_pre + a_c tau_c + a_t tau_t
    on the inputs of distribution d ('clean' or 'triggered')."""
    both_clean = predict_at(a_c, a_t, "clean")
    both_trig = predict_at(a_c, a_t, "triggered")
    return disagreement(both_clean, predict_at(a_c, 0.0, "clean")) + disagreement(
        both_trig, predict_at(0.0, a_t, "triggered")
    )


def cosine_matrix(vectors: Mapping[str, Vector]) -> tuple[list[str], list[list[float]]]:
    names = list(vectors)
    return names, [[taskvec.cosine(vectors[a], vectors[b]) for b in names] for a in names]


def efficiency_rows(records: Sequence[dict], min_backdoor_asr: float = tables.TOOK) -> list[dict]:
    """Per defense, over cells whose attack worked: samples, seconds, CA retention, ASR."""
    rows: dict[str, list[dict]] = {}
    for r in records:
        c, m = r["config"], r.get("metrics") or {}
        if r.get("status") != "ok" or c["attack"] == "none" or (m.get("backdoored") or {}).get("asr") is None:
            continue
        if m["backdoored"]["asr"] < min_backdoor_asr:
            continue
        rows.setdefault(c["defense"], []).append(r)
    out = []
    for defense, recs in sorted(rows.items()):
        cost = [x["cost"] for x in recs]

        def mean(vals: list[float]) -> float:
            vals = [v for v in vals if v is not None]
            return sum(vals) / len(vals) if vals else float("nan")

        out.append(
            {
                "defense": defense,
                "cells": len(recs),
                "clean_samples": mean([c.get("clean_samples") for c in cost]),
                "triggered_samples": mean([c.get("triggered_samples") for c in cost]),
                "samples": mean([(c.get("clean_samples") or 0) + (c.get("triggered_samples") or 0) for c in cost]),
                "wall_s": mean([c.get("wall_s") for c in cost]),
                "ca_retention": mean([x["metrics"]["ca_retention"] for x in recs]),
                "asr": mean([x["metrics"]["asr"] for x in recs]),
                "asr_removal": mean([x["metrics"].get("asr_removal") for x in recs]),
            }
        )
    return out


# ---------------------------------------------------------------- alpha curves


def _evaluate(net, victim: Victim, attack, split) -> dict:
    from bench.run.trial import evaluate

    return evaluate(victim.classifier(net), attack, victim.dataset, split)


def run_alpha(store: Store, record: dict, alphas: Sequence[float]) -> dict:
    """CA and ASR (validation and test) and control accuracy against alpha, for one tbar
    record, from its stored trigger vector and artifact (no retraining); with the target
    bias (clean non-target test images predicted as the target) of theta_bd - alpha tau,
    and, for the pre-trained model the attack started from, the target bias and ASR of
    theta_pre + alpha tau: whether tau carries the trigger or only "predict t"."""
    from bench.core.splits import subseed
    from bench.run.trial import load_artifact

    vec_path = store.local_root() / "trials" / record["trial_id"] / "trigger_vector.safetensors"
    if not vec_path.exists():
        raise FileNotFoundError(
            f"{vec_path}: this tbar record has no stored trigger vector (recorded before vectors were kept); "
            "rerun its grid to recompute it"
        )
    tau = load_file(vec_path)
    spec = TrialSpec.from_record_config(record["config"]).artifact
    model, victim, attack = load_artifact(spec, store)
    ds = victim.dataset
    device = next(model.parameters()).device
    tau = {k: v.to(device) for k, v in tau.items()}
    params = dict(model.named_parameters())
    theta_bd = {k: params[k].detach().clone() for k in tau}
    # the model before the attack (same architecture and parameter names as the victim)
    pre = victim.build(subseed(spec.seed, "init"))
    pre_params = dict(pre.named_parameters())
    theta_pre = {k: pre_params[k].detach().clone() for k in tau}
    t = attack.params.target
    x_test = ds.test.x

    def bias_of(m) -> float:
        clf = victim.classifier(m)
        return target_bias(metrics.predict(clf, x_test), ds.test.labels, t)

    rows = []
    for a in alphas:
        taskvec.load_params(model, taskvec.apply(theta_bd, tau, -a))
        val = _evaluate(model, victim, attack, ds.val)
        test = _evaluate(model, victim, attack, ds.test)
        control = victim.control_accuracy(model)
        taskvec.load_params(pre, taskvec.apply(theta_pre, tau, a))
        pre_test = _evaluate(pre, victim, attack, ds.test)
        rows.append(
            {
                "alpha": round(float(a), 6),
                "val_ca": val["ca"],
                "val_asr": val["asr"],
                "test_ca": test["ca"],
                "test_asr": test["asr"],
                "test_target_bias": bias_of(model),
                "pre_plus_tau_asr": pre_test["asr"],
                "pre_plus_tau_target_bias": bias_of(pre),
                "control": sum(control.values()) / len(control) if control else None,
                **{f"control_{k}": v for k, v in control.items()},
            }
        )
    return {
        "kind": "alpha",
        "trial_id": record["trial_id"],
        "config": record["config"],
        "chosen_alpha": (record.get("defense") or {}).get("alpha"),
        "rows": rows,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


# ---------------------------------------------------------------- disentanglement


def _finetune(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, lr: float, seed: int) -> Vector:
    """theta(fine-tuned on (x, y)) - theta, over the image encoder (the head stays frozen)."""
    base = taskvec.trainable_params(model)
    tuned = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)

    def batches():
        for idx in index_batches(len(x), 64, gen):
            yield x[idx], y[idx]

    from bench.core.train import cross_entropy_loss

    train(tuned, cross_entropy_loss, batches(), TrainSpec(steps=steps, lr=lr, batch_size=64, schedule="constant"))
    return taskvec.difference(taskvec.trainable_params(tuned), base)


def run_disentanglement(
    model_name: str,
    model_params: dict,
    dataset: str,
    attacks: dict[str, tuple[object, int]],
    grid: Sequence[float],
    steps: int,
    lr: float,
    seed: int = 0,
    n_eval: int = 500,
    defender_fraction: float = 0.25,
    progress: Callable[[str], None] = lambda m: None,
    variants: Sequence[str] = ("triggered", "mix"),
) -> dict:
    """tau_c (theta_pre fine-tuned on clean defender data) and, per attack and variant,
    tau_t (theta_pre fine-tuned on triggered defender images labelled with the target;
    `mix` adds as many clean images with their true labels, as TBAR's mix variant does);
    for each (tau_c, tau_t) pair on `grid` x `grid`: the xi heatmap, and the two effects
    xi adds up, separated: the target bias (clean non-target images predicted as t) and
    the trigger effect (triggered images predicted as t); and the cosine matrix."""
    from bench.protocol.settings import FinetuneSetting
    from bench.run.trial import make_attack

    ds = load_dataset(dataset)
    pre = Victim(FinetuneSetting(), model_name, model_params, ds).build(subseed(seed, "init"))
    pool_idx, _ = defender_split(len(ds.train), defender_fraction, seed)
    pool = ds.train.subset(pool_idx)
    progress("fine-tuning theta_pre on clean data (tau_c)")
    tau_c = _finetune(pre, pool.x, pool.labels, steps, lr, subseed(seed, "tau_c"))

    val_x, val_y = ds.val.x[:n_eval], ds.val.labels[:n_eval]
    theta_pre = taskvec.trainable_params(pre)
    vectors: dict[str, Vector] = {"clean": tau_c}
    heatmaps, bias, effect = {}, {}, {}
    for name, (params, attack_seed) in attacks.items():
        attack = make_attack(name, params, attack_seed, tuple(ds.train.images.shape[1:]))
        if attack.needs_fitting or not attack.has_trigger:
            continue
        t = attack.params.target
        keep = pool.labels != t
        x_trig, y_trig = attack.apply(pool.x[keep]), torch.full_like(pool.labels[keep], t)
        inputs = {"clean": val_x, "triggered": attack.apply(val_x[val_y != t])}
        for variant in variants:
            progress(f"fine-tuning theta_pre on {name} ({variant}) data (tau_t)")
            if variant == "mix":  # TBAR's mix: as many clean samples with their true labels
                n = len(y_trig)
                x_fit, y_fit = torch.cat([x_trig, pool.x[:n]]), torch.cat([y_trig, pool.labels[:n]])
            else:  # every sample triggered and labelled t: no negative example in the task
                x_fit, y_fit = x_trig, y_trig
            tau_t = _finetune(pre, x_fit, y_fit, steps, lr, subseed(seed, f"{name}:{variant}"))
            key = name if variant == "triggered" else f"{name}/{variant}"
            vectors[key] = tau_t
            cache: dict[tuple[float, float, str], torch.Tensor] = {}

            def predict_at(a_c: float, a_t: float, d: str, tau_t=tau_t, inputs=inputs, cache=cache) -> torch.Tensor:
                k = (a_c, a_t, d)
                if k not in cache:
                    params = taskvec.add(taskvec.scale(tau_c, a_c), taskvec.scale(tau_t, a_t))
                    taskvec.load_params(pre, taskvec.apply(theta_pre, params, 1.0))
                    cache[k] = metrics.predict(pre, inputs[d])
                return cache[k]

            heatmaps[key] = [[disentanglement_error(predict_at, a_c, a_t) for a_t in grid] for a_c in grid]
            # the two effects xi mixes: clean non-target images sent to t (target bias), and
            # triggered images sent to t (the trigger effect, an ASR)
            bias[key] = [[target_bias(predict_at(a_c, a_t, "clean"), val_y, t) for a_t in grid] for a_c in grid]
            effect[key] = [
                [metrics.share(predict_at(a_c, a_t, "triggered") == t) for a_t in grid] for a_c in grid
            ]
            taskvec.load_params(pre, theta_pre)
    names, cos = cosine_matrix(vectors)
    return {
        "kind": "disentanglement",
        "model": model_name,
        "model_params": model_params,
        "dataset": dataset,
        "seed": seed,
        "steps": steps,
        "lr": lr,
        "n_eval": n_eval,
        "grid": list(grid),
        "xi": heatmaps,
        "target_bias": bias,
        "trigger_effect": effect,
        "variants": list(variants),
        "cosine": {"names": names, "matrix": cos},
        "norms": {k: taskvec.norm(v) for k, v in vectors.items()},
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def save(result: dict, store: Store, name: str) -> Path:
    return store.put_json(f"analysis/{name}.json", result)


def finite(v) -> bool:
    return v is not None and not (isinstance(v, float) and math.isnan(v))


# ---------------------------------------------------------------- attack budgets


def budget_configs(base: ArtifactSpec, multipliers: Sequence[float]) -> list[tuple[float, ArtifactSpec]]:
    """Stage-1 specs of one cell with the attacker's training length (steps, else epochs)
    scaled by each multiplier; the 1x spec is the suite's own artifact (same id, reused)."""
    out = []
    for k in multipliers:
        sp = base.setting_params
        if k != 1:
            if sp.steps:
                sp = dataclasses.replace(sp, steps=max(1, round(sp.steps * k)))
            else:
                sp = dataclasses.replace(sp, epochs=sp.epochs * k)
        out.append((k, dataclasses.replace(base, setting_params=sp)))
    return out


def run_budget(store: Store, cells: Sequence[ArtifactSpec], multipliers: Sequence[float], progress=lambda m: None) -> dict:
    """ASR and CA of each attack cell against its training budget (stage-1 artifacts,
    built or reused through the store). Shows a shortfall instead of asserting it."""
    from bench.run.trial import run_attack

    rows = []
    for base in cells:
        for k, spec in budget_configs(base, multipliers):
            progress(f"{base.attack}/{base.setting}/seed{base.seed}: {k}x budget")
            meta = run_attack(spec, store, progress)
            m = meta["metrics"]
            rows.append(
                {
                    "model": spec.model,
                    "dataset": spec.dataset,
                    "setting": spec.setting,
                    "attack": spec.attack,
                    "seed": spec.seed,
                    "budget_x": k,
                    "epochs": spec.setting_params.epochs,
                    "steps": meta["training"]["steps"],
                    "ca": m["ca"],
                    "asr": m["asr"],
                    "artifact_id": spec.id,
                }
            )
    return {"kind": "budget", "rows": rows, "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}


# ---------------------------------------------------------------- the capacity ladder

# A rung whose backdoored model classifies the attacked task below this clean accuracy has
# not learned the task (chance is 10% on scenes); what a defense does to it says nothing
# about disentanglement, so it is shown and left out of the ladder's trend, as a cell
# whose attack did not take is left out of every average. One threshold for the pages and
# the ladder: tables' own.
MIN_VICTIM_CA = tables.MIN_VICTIM_CA


def scale_rows(records: Sequence[dict], defenses: Sequence[str] = ("tbar", "tbar-mix", "finetune", "cleanclip")) -> list[dict]:
    """Per (rung, defense): image-tower size and, over the (attack, seed) rows whose attack
    took, ASR at 95% and 90% retention, CA retention and control retention with 95% CIs."""
    from bench.core import stats

    df = tables.records_frame(list(records))
    if df.empty:
        return []
    out = []
    sizes = {}
    for r in records:
        c = r["config"]
        if c["model"] not in sizes:
            sizes[c["model"]] = rung_params(c["model"], c.get("model_params") or {})
    took = df[(df["attack"] != "none") & df["took"]]
    for (model, defense), grp in took.groupby(["model", "defense"]):
        if defense not in defenses:
            continue
        row = {"model": model, "defense": defense, "rows": len(grp),
               "visual_params": (sizes.get(model) or {}).get("visual"), "total_params": (sizes.get(model) or {}).get("total")}  # fmt: skip
        for m in ("asr_r95", "asr_r90", "auc_90", "ca_retention", "control_retention", "bd_asr", "bd_ca"):
            est = stats.mean_ci(grp[m].tolist())
            row[m], row[f"{m}_ci"] = est.mean, est.half
        out.append(row)
    return sorted(out, key=lambda r: (r["visual_params"] or 0, r["defense"]))


def scale_trend(records: Sequence[dict], rows: Sequence[dict],
                defenses: Sequence[str] = ("tbar", "tbar-mix", "finetune", "cleanclip")) -> list[dict]:  # fmt: skip
    """Per defense: least-squares slopes on log10(image-tower parameters) of ASR at 95%
    retention, of removal at 95% (1 - ASR@95 / backdoored ASR) and of the backdoored ASR
    itself, over the rungs whose victim learned the task (MIN_VICTIM_CA).

    The rung is the unit of replication: a rung's seeds share its architecture and its
    pre-training recipe, so its (rung, seed) rows are not independent draws of the trend.
    Each rung enters as the mean of its rows whose attack took, and a fit over k rungs has
    k - 2 degrees of freedom. The attack's own strength changes with size (sig takes less
    on larger rungs, blended more), so verdicts rest on removal, which is relative to it.
    Removal's p is Holm-adjusted over the defenses fitted (`removal_r95_p_holm`).

    Whether a trend is TBAR's own is a test, not a comparison of two verdicts: each
    baseline's row carries the slope of the per-rung difference, tbar's removal minus its
    own, over the rungs both ran (`vs_tbar_*`, Holm over the baselines)."""
    from bench.core import stats

    df = tables.records_frame(list(records))
    if df.empty:
        return []
    sizes = {r["model"]: r["visual_params"] for r in rows if r.get("visual_params") and tables.learned(r.get("bd_ca"))}
    took = df[(df["attack"] != "none") & df["took"] & df["model"].isin(list(sizes))].copy()
    took["removal_r95"] = 1 - took["asr_r95"] / took["bd_asr"]
    keys = ("asr_r95", "removal_r95", "bd_asr")
    means = {d: g.groupby("model")[list(keys)].mean() for d, g in took.groupby("defense") if d in defenses}
    out = []
    for defense in defenses:
        if defense not in means:
            continue
        m = means[defense]
        x = [math.log10(sizes[model]) for model in m.index]
        row = {"defense": defense, "rungs": len(m), "n": int((took["defense"] == defense).sum())}
        for key in keys:
            fit = stats.slope(x, m[key].tolist())
            row |= {f"{key}_slope": fit.slope, f"{key}_slope_ci": fit.half, f"{key}_p": fit.p}
        out.append(row)
    for row, adj in zip(out, stats.holm([r["removal_r95_p"] for r in out]), strict=True):
        row["removal_r95_p_holm"] = adj
    if "tbar" in means:
        base = [r for r in out if r["defense"] != "tbar"]
        for row in base:
            both = means["tbar"].index.intersection(means[row["defense"]].index)
            diff = means["tbar"].loc[both, "removal_r95"] - means[row["defense"]].loc[both, "removal_r95"]
            fit = stats.slope([math.log10(sizes[model]) for model in both], diff.tolist())
            row |= {"vs_tbar_rungs": len(both), "vs_tbar_slope": fit.slope, "vs_tbar_slope_ci": fit.half,
                    "vs_tbar_p": fit.p}  # fmt: skip
        for row, adj in zip(base, stats.holm([r["vs_tbar_p"] for r in base]), strict=True):
            row["vs_tbar_p_holm"] = adj
    return out


def vector_diagnostics(store: Store, record: dict) -> dict:
    """For one tbar/tbar-mix record: target bias and trigger effect (test) of theta_pre + tau
    and of theta_bd - tau (alpha = 1), from its stored vector."""
    res = run_alpha(store, record, [1.0])["rows"][0]
    return {
        "pre_plus_tau_target_bias": res["pre_plus_tau_target_bias"],
        "pre_plus_tau_asr": res["pre_plus_tau_asr"],
        "bd_minus_tau_target_bias": res["test_target_bias"],
        "bd_minus_tau_asr": res["test_asr"],
    }


def run_scale(store: Store, records: Sequence[dict], xi_steps: int = 150, xi_lr: float = 3e-4, progress=lambda m: None) -> dict:
    """The ladder analysis: per rung, the matched-retention numbers (scale_rows), the
    target bias / trigger effect of every tbar variant's vector, and xi(1, 1) of the
    triggered-only and mix vectors fine-tuned from theta_pre, per seed (CIs over seeds)."""
    from bench.core import stats
    from bench.core.registry import ATTACKS

    rows = scale_rows(records)
    diag: dict[tuple, list[dict]] = {}
    for r in records:
        c, m = r["config"], r.get("metrics") or {}
        if r.get("status") != "ok" or c["defense"] not in ("tbar", "tbar-mix"):
            continue
        if (m.get("backdoored") or {}).get("asr") is None or m["backdoored"]["asr"] < tables.TOOK:
            continue
        progress(f"vector diagnostics: {c['model']}/{c['attack']}/{c['defense']}/seed{c['seed']}")
        diag.setdefault((c["model"], c["defense"]), []).append(vector_diagnostics(store, r))
    for row in rows:
        for k in ("pre_plus_tau_target_bias", "pre_plus_tau_asr", "bd_minus_tau_target_bias", "bd_minus_tau_asr"):
            est = stats.mean_ci([d[k] for d in diag.get((row["model"], row["defense"]), [])])
            row[k], row[f"{k}_ci"] = est.mean, est.half
    # xi(1, 1) per rung, attack and vector variant, over the seeds of the records
    cells = sorted({(r["config"]["model"], json_key(r["config"].get("model_params")), r["config"]["dataset"],
                     r["config"]["attack"], r["config"]["seed"]) for r in records
                    if r.get("status") == "ok" and r["config"]["defense"] == "tbar"})  # fmt: skip
    xi: dict[tuple, list[float]] = {}
    for model, mp, dataset, attack, seed in cells:
        progress(f"xi(1, 1): {model}/{attack}/seed{seed}")
        params = build_params(ATTACKS, attack, {}, "attack_params")
        d = run_disentanglement(model, json_load(mp), dataset, {attack: (params, seed)}, [0.0, 1.0], xi_steps, xi_lr, seed)
        for key, heat in d["xi"].items():
            variant = "mix" if key.endswith("/mix") else "triggered"
            xi.setdefault((model, variant), []).append(heat[1][1])
    # xi needs no attack that took (its vectors start from theta_pre), so it is shown on
    # rungs that have no matched-retention row; each row carries its own size for that
    sizes = {m: rung_params(m, json_load(mp)) for m, mp, *_ in cells}
    xi_rows = []
    for (model, variant), vals in sorted(xi.items()):
        est = stats.mean_ci(vals)
        xi_rows.append({"model": model, "variant": variant, "xi_11": est.mean, "xi_11_ci": est.half, "n": est.n,
                        "visual_params": (sizes.get(model) or {}).get("visual")})  # fmt: skip
    return {"kind": "scale", "rows": rows, "trend": scale_trend(records, rows), "xi": xi_rows, "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def json_key(obj) -> str:
    import json

    return json.dumps(obj or {}, sort_keys=True)


def json_load(s: str) -> dict:
    import json

    return json.loads(s)
