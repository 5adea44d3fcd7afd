"""The engine's side of methods.md section 5: evaluate a defense's trade-off curve on
validation, refine it where it crosses each retention level, and report the
matched-retention operating points and the area summary on test.

This is the evaluator's protocol, applied identically to every defense. The blind
operating point (`matched_blind`, the headline) is the strongest knob value that keeps
validation CA >= R x the backdoored model's: it reads no ASR. The oracle point
(`matched`) is the lowest validation ASR under the same constraint, with ASR measured
with the attack's true trigger: an upper bound for a defense that does not know the
trigger, labelled as one. Nothing here reads test data to choose anything. The defense's
own deployable rule is its `chosen` knob value, reported separately.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from bench.core import tradeoff
from bench.core.tradeoff import IDENTITY, LEVELS, KnobSpec

DEFENDED = "defended"  # the knob label of a knob-less defense's output


@dataclass
class Evaluator:
    """Metrics of the model in its current state, on validation and on test."""

    val: Callable[[], dict]  # -> {"ca", "asr", "control": {name: acc}}
    test: Callable[[], dict]  # -> {"ca", "asr", "ra", "control": {name: acc}}


def snapshot(model: torch.nn.Module) -> Callable[[], None]:
    """A function that restores `model` to its current weights and buffers (CPU copy)."""
    saved = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}

    def restore() -> None:
        model.load_state_dict(saved)

    return restore


def mean_control(control: dict | None) -> float | None:
    vals = [v for v in (control or {}).values() if v is not None]
    return sum(vals) / len(vals) if vals else None


def _point(knob, p: dict) -> dict:
    control = p.get("control") or {}
    return {"knob": knob, "ca": p["ca"], "asr": p.get("asr"), "control": control, "control_mean": mean_control(control)}


def trade_off(
    spec: KnobSpec | None,
    ev: Evaluator,
    bd_val: dict,
    restore_backdoored: Callable[[], None],
    restore_defended: Callable[[], None],
    refine_steps: int = 4,
    seed_points: dict[float, dict] | None = None,
) -> dict:
    """The validation curve, the matched points and the AUC (test) of one defense.

    `bd_val`: the backdoored model's validation metrics (the retention base, and the
    first point of every curve). A knob-less defense's curve is that point and its
    output; `restore_backdoored` / `restore_defended` move its model between the two.
    `seed_points`: validation (CA, ASR) a defense already measured with the attack's
    own trigger on the same split (TBAR in known mode), reused instead of measured
    twice. The model is left as the defense returned it."""
    seed_points = seed_points or {}
    has_asr = bd_val.get("asr") is not None
    ca_ref = bd_val["ca"]

    def goto(knob) -> None:
        if spec is None:
            (restore_backdoored if knob == IDENTITY else restore_defended)()
        else:
            spec.at(spec.identity if knob == IDENTITY and spec.identity is not None else knob)

    def measure(knob) -> dict:
        goto(knob)
        p = ev.val()
        seeded = seed_points.get(knob)
        if seeded is not None:
            p = {**p, "ca": seeded["ca"], "asr": seeded["asr"]}
        return _point(knob, p)

    first = IDENTITY if spec is None or spec.identity is None else spec.identity
    points = [_point(first, bd_val)]
    if spec is None:
        points.append(measure(DEFENDED))
    else:
        points += [measure(v) for v in spec.values if v != spec.identity]
        if spec.continuous and has_asr:
            points = tradeoff.refine(points, ca_ref, LEVELS, lambda k: measure(k), refine_steps)
        if spec.continuous:
            points = tradeoff.refine(points, ca_ref, LEVELS, lambda k: measure(k), refine_steps, tradeoff.boundary_bracket)

    tests: dict = {}

    def test_at(i: int) -> dict:
        knob = points[i]["knob"]
        if knob not in tests:
            goto(knob)
            tests[knob] = ev.test()
        return tests[knob]

    def operating_point(i: int) -> dict:
        t = test_at(i)
        return {
            "knob": points[i]["knob"],
            "val_ca": points[i]["ca"],
            "val_asr": points[i]["asr"],
            "val_retention": points[i]["ca"] / ca_ref if ca_ref else None,
            "ca": t["ca"],
            "asr": t["asr"],
            "ra": t["ra"],
            "control": t["control"],
            "control_mean": mean_control(t["control"]),
        }

    blind, oracle = {}, {}
    for level in LEVELS:
        blind[f"{level:.2f}"] = operating_point(tradeoff.strongest_feasible(points, ca_ref, level))
        # Without a trigger (the clean reference) there is no ASR to minimise: the oracle is the blind point.
        oracle[f"{level:.2f}"] = operating_point(
            tradeoff.select(points, ca_ref, level) if has_asr else tradeoff.strongest_feasible(points, ca_ref, level)
        )
    auc = tradeoff.auc(points, ca_ref, lambda i: test_at(i)["asr"]) if has_asr else None
    goto(spec.chosen if spec is not None else DEFENDED)
    return {"curve": points, "matched": oracle, "matched_blind": blind, "auc_90": auc}
