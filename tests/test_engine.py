"""The engine end to end in-process, on tiny budgets: grid planning, stage 1 and 2,
records, reuse, failures. The supervised setting (timm, from scratch) keeps it fast."""

import math

import pytest

from bench.core.config import SuiteConfig
from bench.run.grid import Selection, plan_grid, run_serial
from bench.store import Store

TINY = dict(
    models=["tiny-resnet"],
    datasets=["shapes-smoke"],
    settings=["supervised"],
    seeds=[0],
    control_datasets=[],
    setting_params={"supervised": {"steps": 40, "lr": 3e-3, "batch_size": 64}},
    defense_params={"tbar": {"steps": 5, "alpha_points": 5, "alpha_max": 2.0}, "finetune": {"budget_x": 2}},
)


def _suite(**over) -> SuiteConfig:
    return SuiteConfig(name="tiny", **{**TINY, **over})


def test_plan_pairs_models_with_their_settings_and_skips_with_reasons():
    plan = plan_grid(_suite(), Selection(attacks="none,badnets", defenses="tbar", settings="finetune,supervised"))
    reasons = dict(plan.skipped)
    # a suite lists models and settings for each other: tiny-resnet fits `supervised`, so
    # its `finetune` cells are not cells at all (no skip message for a model the suite lists)
    assert not any(k.startswith("tiny-resnet") and "finetune" in k for k in reasons), reasons
    assert "needs a trigger" in reasons["tiny-resnet/shapes-smoke/supervised/none/seed0/tbar"]
    # a model that fits none of the selected settings is reported once, with the reason
    only_ft = plan_grid(_suite(), Selection(attacks="badnets", defenses="tbar", settings="finetune"))
    assert "needs a clip model" in dict(only_ft.skipped)["tiny-resnet"]
    # the `none` defense is always planned: every table has that row
    assert sorted((t.artifact.attack, t.defense) for t in plan.trials) == [
        ("badnets", "none"),
        ("badnets", "tbar"),
        ("none", "none"),
    ]


def test_trial_ids_change_with_any_knob():
    a = plan_grid(_suite(), Selection(attacks="badnets", defenses="tbar")).trials
    b = plan_grid(_suite(defense_params={"tbar": {"steps": 6}}), Selection(attacks="badnets", defenses="tbar")).trials
    assert a[0].id == b[0].id  # `none` defense: unaffected
    assert a[1].id != b[1].id


@pytest.mark.slow
def test_grid_writes_complete_records_and_reruns_nothing(tmp_path):
    store = Store(tmp_path)
    plan = plan_grid(_suite(), Selection(attacks="badnets,none", defenses="tbar,finetune"))
    first = run_serial(plan, store)
    assert first.failed == [] and first.computed == len(plan.trials) == 5
    recs = {(r["config"]["attack"], r["config"]["defense"]): r for r in first.records}
    for r in recs.values():
        assert {"schema", "trial_id", "status", "config", "metrics", "cost", "versions", "created"} <= set(r)
        assert {"suite", "model", "dataset", "setting", "attack", "defense", "seed"} <= set(r["config"])
        assert {"ca", "asr", "ra", "ca_retention", "asr_removal", "der", "control", "backdoored"} <= set(r["metrics"])
        assert {"wall_s", "device", "clean_samples", "triggered_samples", "steps"} <= set(r["cost"])
        assert 0 <= r["metrics"]["ca"] <= 1
    tbar = recs[("badnets", "tbar")]
    m = tbar["metrics"]
    knobs = [p["knob"] for p in tbar["curve"]]
    # the 5 grid values, the identity point, and up to CURVE_REFINE_STEPS bisections
    assert 5 <= len(knobs) <= 10 and tbar["defense"]["alpha"] in knobs
    assert tbar["cost"]["steps"] == 5 and tbar["cost"]["clean_samples"] == 0
    # D = 2% of 8000 = 160 defender images; those not of the target class get the trigger
    assert 130 <= tbar["cost"]["triggered_samples"] <= 160
    expect = (max(0, m["backdoored"]["asr"] - m["asr"]) - max(0, m["backdoored"]["ca"] - m["ca"]) + 1) / 2
    assert math.isclose(m["der"], expect)
    assert recs[("none", "none")]["metrics"]["asr"] is None
    ft = recs[("badnets", "finetune")]["cost"]
    assert ft["samples_seen"] >= 2 * 160 and ft["triggered_samples"] == 0

    before = {p.name: p.read_bytes() for p in (tmp_path / "records").iterdir()}
    second = run_serial(plan, store)
    assert second.computed == 0 and second.reused == 5
    assert before == {p.name: p.read_bytes() for p in (tmp_path / "records").iterdir()}


@pytest.mark.slow
def test_a_failing_trial_is_recorded_and_the_grid_goes_on(tmp_path):
    suite = _suite(defense_params={"tbar": {"data_fraction": 0.9}})
    plan = plan_grid(suite, Selection(attacks="badnets", defenses="tbar"))
    summary = run_serial(plan, Store(tmp_path))
    statuses = {r["config"]["defense"]: r["status"] for r in summary.records}
    assert statuses == {"none": "ok", "tbar": "failed"}
    failed = next(r for r in summary.records if r["status"] == "failed")
    assert "defender's pool holds" in failed["error"]


def test_tbar_inverted_is_given_no_knowledge_of_the_attack(tmp_path, monkeypatch):
    """The engine hands tbar-inverted no trigger and no target; the attack config is
    not in its context at all (its only inputs are model, clean pool, val split)."""
    import dataclasses

    from defenses.base import DataMeter, DefenseContext, DefenseOutput
    from defenses.detectors import TbarInverted

    seen = {}

    def spy(self, ctx):
        seen["known"] = ctx.known
        seen["fields"] = {f.name for f in dataclasses.fields(DefenseContext)}
        return DefenseOutput(ctx.model, DataMeter())

    monkeypatch.setattr(TbarInverted, "run", spy)
    suite = _suite(setting_params={"supervised": {"steps": 2, "batch_size": 16}})
    plan = plan_grid(suite, Selection(attacks="badnets", defenses="tbar-inverted"))
    run_serial(plan, Store(tmp_path))
    assert seen["known"] is None
    assert not any("attack" in name for name in seen["fields"])
    assert TbarInverted.uses_attack_knowledge is False


TINY_DEFENSES = {
    "tbar": {"steps": 3, "alpha_points": 3},
    "tbar-mix": {"steps": 3, "alpha_points": 3},
    "tbar-inverted": {"steps": 3, "alpha_points": 3, "inversion_steps": 4},
    "finetune": {"budget_x": 1, "epochs": 1},
    "cleanclip": {"budget_x": 1, "epochs": 1},
    "fine-pruning": {"step_fraction": 0.25, "epochs": 1},
    "anp": {"iterations": 3, "batch_size": 16},
    "par": {"budget_x": 1, "epochs": 1, "batch_size": 32},
    "neural-cleanse": {"steps": 3},
    "decree": {"steps": 3},
}


@pytest.fixture
def one_bisection(monkeypatch):
    """One bisection per retention level instead of the protocol's four: these tests ask
    whether every defense runs and records, and each bisection is one more validation pass.
    The refinement itself is checked by test_grid_writes_complete_records_and_reruns_nothing."""
    import bench.run.trial

    monkeypatch.setattr(bench.run.trial, "CURVE_REFINE_STEPS", 1)


@pytest.mark.slow
def test_every_defense_runs_in_the_supervised_setting(tmp_path, one_bisection):
    suite = _suite(defense_params=TINY_DEFENSES, setting_params={"supervised": {"steps": 10, "batch_size": 32}})
    plan = plan_grid(suite, Selection(attacks="badnets", defenses="all"))
    ran = {t.defense for t in plan.trials}
    assert ran == {"none", "tbar", "tbar-mix", "tbar-inverted", "finetune", "fine-pruning", "anp", "clp", "neural-cleanse"}
    summary = run_serial(plan, Store(tmp_path))
    assert summary.failed == [], summary.failed
    recs = {r["config"]["defense"]: r for r in summary.records}
    assert recs["neural-cleanse"]["defense"]["target_correct"] in (True, False)
    assert (tmp_path / "trials" / recs["neural-cleanse"]["trial_id"] / "inverted_mask.png").exists()
    assert 0 <= recs["fine-pruning"]["defense"]["pruned_fraction"] <= 1
    assert recs["clp"]["cost"]["clean_samples"] == 0 and recs["clp"]["cost"]["steps"] == 0  # data-free
    assert recs["anp"]["defense"]["neurons"] > 0 and recs["anp"]["curve"][0]["knob"] == "identity"
    # every record says where its methods depart from their references
    assert all(set(r["deviations"]) == {"defense", "attack"} for r in summary.records)
    assert any("iterations = 3" in d for d in recs["anp"]["deviations"]["defense"])
    assert recs["tbar-inverted"]["cost"]["clean_samples"] > 0  # the inversion's clean data is counted


@pytest.mark.slow
@pytest.mark.parametrize(
    "setting, must_run",
    [("finetune", {"cleanclip", "decree", "par"}), ("contrastive", {"cleanclip", "tbar", "par", "clp"})],
)
def test_every_defense_runs_in_the_clip_settings(tmp_path, one_bisection, setting, must_run):
    suite = SuiteConfig(
        name="tinyclip",
        models=["tiny-clip"],  # the shipped default victim: no pre-training here
        datasets=["shapes-smoke"],
        settings=[setting],
        control_datasets=["colors-smoke"],
        setting_params={"finetune": {"steps": 5}, "contrastive": {"steps": 5, "batch_size": 32, "corpus_size": 400}},
        defense_params=TINY_DEFENSES,
    )
    plan = plan_grid(suite, Selection(attacks="badnets", defenses="all"))
    assert must_run <= {t.defense for t in plan.trials}
    summary = run_serial(plan, Store(tmp_path))
    assert summary.failed == [], summary.failed
    for r in summary.records:
        assert r["templates"]["shapes-smoke"], r["config"]
