"""The typed specs (bench/protocol/spec.py): built once at plan time with every knob validated,
carried as JSON to Ray workers and rebuilt there, and hashed to the ids the store has
always used."""

import dataclasses
import json

import pytest

from bench.core.config import ConfigError, load_suite
from bench.protocol.spec import ArtifactSpec, TrialSpec
from bench.run.grid import Selection, plan_grid


@pytest.fixture(scope="module")
def plan():
    return plan_grid(load_suite("ci"), Selection(attacks="all", defenses="all", settings="finetune,contrastive,supervised"))


def test_ids_are_the_ones_the_store_already_holds():
    """Pinned from the dict configs the harness hashed before specs existed: a spec that
    hashed anything else would orphan every stored artifact and record."""
    plan = plan_grid(load_suite("ci"), Selection(attacks="badnets", defenses="tbar"))
    trial = next(t for t in plan.trials if t.defense == "tbar")
    assert (trial.artifact.id, trial.id) == ("1ee9842d175a3861", "bbb51731e292fd4c")


def test_a_spec_survives_its_json_and_its_record(plan):
    assert len(plan.trials) > 20
    for t in plan.trials:
        wire = json.loads(json.dumps(t.to_json()))  # what a Ray task carries and a worker reads
        again = TrialSpec.from_json(wire)
        assert again == t and again.id == t.id
        from_record = TrialSpec.from_record_config(json.loads(json.dumps(t.record_config())))
        assert from_record.id == t.id


def test_specs_are_frozen_and_hold_validated_params(plan):
    t = plan.trials[-1]
    with pytest.raises(dataclasses.FrozenInstanceError):
        t.defense = "other"  # type: ignore[misc]
    from defenses.tbar import TbarParams

    tbar = next(x for x in plan.trials if x.defense == "tbar")
    assert isinstance(tbar.defense_params, TbarParams)
    # the Params object, not its dict: the trial never validates again
    assert tbar.to_json()["defense_params"] == dataclasses.asdict(tbar.defense_params)


def test_a_bad_knob_in_a_stored_config_is_refused_when_rebuilt(plan):
    wire = plan.trials[0].to_json()
    wire["artifact"]["attack_params"]["poison_rate"] = 2.0
    with pytest.raises(ConfigError, match="poison_rate"):
        TrialSpec.from_json(wire)


def test_changing_one_knob_changes_the_id(plan):
    a = plan.artifacts[0]
    b = dataclasses.replace(a, seed=a.seed + 1)
    c = dataclasses.replace(a, setting_params=dataclasses.replace(a.setting_params, lr=a.setting_params.lr * 2))
    assert len({a.id, b.id, c.id}) == 3
    assert ArtifactSpec.from_json(a.to_json()).id == a.id
