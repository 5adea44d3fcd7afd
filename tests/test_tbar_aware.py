"""The TBAR-aware attack: same trigger and poisoned rows as its base attack, TBAR's recipe
simulated with TBAR's own defaults, and a surviving term whose gradient is the
backdoor loss's gradient at the subtracted weights."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import attacks  # noqa: F401  (registers the built-ins)
from attacks.tbar_aware import SurviveSubtraction, TbarAware, TbarAwareParams, norms_frozen
from bench.core.registry import ATTACKS
from bench.core.splits import subseed

SHAPE = (3, 8, 8)


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(256, 3))


def _loss(model, batch):
    x, y = batch
    return F.cross_entropy(model(x), y)


def _batch(n=24, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, *SHAPE, generator=g), torch.randint(0, 3, (n,), generator=g)


def test_it_uses_the_base_attacks_trigger_and_poisoned_rows():
    for base in ("blended", "badnets", "sig"):
        aware = TbarAware(TbarAwareParams(base=base, target=1), SHAPE, 7)
        plain = ATTACKS.get(base)(ATTACKS.get(base).Params(target=1), SHAPE, 7)
        x, y = _batch()
        assert torch.equal(aware.apply(x), plain.apply(x))
        a, b = aware.poison(x, y, 3, 0.25, 3), plain.poison(x, y, 3, 0.25, 3)
        assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y) and torch.equal(a.poisoned, b.poisoned)


def test_the_simulated_recipe_is_tbars_published_one():
    from defenses.tbar import TbarParams

    sim, tbar = TbarAwareParams(), TbarParams()
    assert (sim.sim_steps, sim.sim_lr, sim.sim_batch_size) == (tbar.steps, tbar.lr, tbar.batch_size)
    assert sim.sim_samples == round(tbar.data_fraction * 8000)  # the built-in train splits hold 8000 images


def test_weight_zero_is_the_plain_loss():
    net = _net()
    attack = TbarAware(TbarAwareParams(weight=0.0, refresh=1, sim_samples=8, sim_batch_size=4), SHAPE, 0)
    loss = attack.training_loss(_loss, net, list(net.parameters()), 3)
    batch = _batch()
    assert torch.equal(loss(net, batch), _loss(net, batch)) and loss.simulations == 0


def test_the_surviving_term_is_the_backdoor_loss_at_the_subtracted_weights():
    net = _net()
    net[1].eval()  # norm statistics frozen, as the finetune setting trains
    params = TbarAwareParams(target=0, refresh=1, sim_samples=12, sim_steps=3, sim_lr=1e-2, sim_batch_size=4,
                             triggered_rows=5, survive_alpha=2.0)  # fmt: skip
    attack = TbarAware(params, SHAPE, 0)
    encoder = list(net[0].parameters())  # a subset: the head is not TBAR's
    loss_fn = attack.training_loss(_loss, net, encoder, 3)
    assert isinstance(loss_fn, SurviveSubtraction) and loss_fn.names == ["0.weight", "0.bias"]
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x, y = _batch()
    total = loss_fn(net, (x, y))
    assert loss_fn.simulations == 1 and loss_fn.tau_norms[0] > 0
    assert set(loss_fn.tau) == {"0.weight", "0.bias"}
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in before.items())  # nothing moved, stats included
    grads = torch.autograd.grad(total, [net[0].weight, net[4].weight])

    # By hand: a is the generator's next draw after the simulation's one epoch of batches.
    replay = torch.Generator().manual_seed(subseed(0, "tbar-aware"))
    keep = attack.targets(y, 3) != y
    assert int(keep.sum()) >= 12  # the simulation's set is the last 12 such rows: 3 batches, one epoch
    torch.randperm(12, generator=replay)  # the one epoch's shuffle (bench.core.train.index_batches)
    a = 2.0 * float(torch.rand((), generator=replay))
    xt, yt = attack.apply(x[keep][:5]), attack.targets(y[keep][:5], 3)
    shifted = _net()
    shifted.load_state_dict(net.state_dict())
    with torch.no_grad():
        shifted[0].weight -= a * loss_fn.tau["0.weight"]
        shifted[0].bias -= a * loss_fn.tau["0.bias"]
    shifted.eval()  # norms frozen in the surviving pass
    surviving = _loss(shifted, (xt, yt))
    expected = torch.autograd.grad(_loss(net, (x, y)), [net[0].weight, net[4].weight])
    g_surv = torch.autograd.grad(surviving, [shifted[0].weight, shifted[4].weight])
    torch.testing.assert_close(grads[0], expected[0] + g_surv[0])
    torch.testing.assert_close(grads[1], expected[1] + g_surv[1])


def test_norms_frozen_restores_the_training_flags():
    net = _net().train()
    net[1].eval()
    with norms_frozen(net):
        assert not net[1].training and net[0].training
    assert not net[1].training and net[0].training
    net[1].train()
    with norms_frozen(net):
        x, _ = _batch()
        stats = net[1].running_mean.clone()
        net(x)
        assert torch.equal(net[1].running_mean, stats)
    assert net[1].training


def test_it_is_adaptive_and_knobs_are_checked():
    assert "tbar-aware" in ATTACKS.resolve("adaptive") and "tbar-aware" not in ATTACKS.resolve("all")
    assert ATTACKS.entry("tbar-aware").settings == ("finetune", "supervised")
    fields = {f.name for f in dataclasses.fields(TbarAwareParams)}
    assert {"survive_alpha", "weight", "refresh"} <= fields


@pytest.mark.slow
def test_tbar_aware_runs_through_the_engine_and_records_its_simulations(tmp_path):
    from bench.core.config import SuiteConfig
    from bench.run.grid import Selection, plan_grid, run_serial
    from bench.store import Store

    suite = SuiteConfig(name="adaptive", models=["tiny-resnet"], datasets=["shapes-smoke"], settings=["supervised"],
                        control_datasets=[], setting_params={"supervised": {"steps": 12, "batch_size": 32}},
                        attack_params={"tbar-aware": {"refresh": 5, "sim_steps": 3}})  # fmt: skip
    summary = run_serial(plan_grid(suite, Selection(attacks="tbar-aware", defenses="none")), Store(tmp_path))
    assert summary.failed == []
    (rec,) = summary.records
    # steps 5 and 10: at step 0 the buffer of clean non-target rows holds fewer than one
    # simulated batch (32; a batch of 32 carries poisoned and target rows too)
    assert rec["attack"]["training"]["attacker"]["simulations"] == 2
    assert rec["attack"]["poison"]["n_poisoned"] > 0
