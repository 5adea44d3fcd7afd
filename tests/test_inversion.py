"""Trigger inversion on a planted backdoor: a real (small) badnets attack in the
micro suite's supervised setting, then neural-cleanse and decree on it."""

import pytest
import torch

from attacks.badnets import BadNets, BadNetsParams
from bench.config import SuiteConfig
from bench.data.base import load_dataset
from bench.grid import Selection, plan_grid
from bench.settings import SETTINGS
from bench.store import Store
from bench.trial import run_attack
from defenses.inversion import InversionParams, decree, mad_anomaly_index, neural_cleanse


def test_mad_anomaly_index():
    norms = torch.tensor([10.0, 11.0, 9.0, 10.5, 9.5, 2.0])
    idx = mad_anomaly_index(norms)
    # median 9.75; absolute deviations [.25, 1.25, .75, .75, .25, 7.75] have median .75
    expect = torch.tensor([0.25, 1.25, 0.75, 0.75, 0.25, 7.75]) / (1.4826 * 0.75)
    assert torch.allclose(idx, expect, atol=1e-5)
    assert int(idx.argmax()) == 5 and float(idx[5]) > 2 and float(idx[:5].max()) < 2


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """tiny-resnet trained from scratch on shapes with 10% badnets (target 0)."""
    suite = SuiteConfig(
        name="planted",
        models=["tiny-resnet"],
        settings=["supervised"],
        control_datasets=[],
        setting_params={"supervised": {"steps": 300, "batch_size": 128}},
    )
    acfg = plan_grid(suite, Selection(attacks="badnets", defenses="none")).artifacts[0]
    store = Store(tmp_path_factory.mktemp("planted"))
    meta = run_attack(acfg, store)
    setting = SETTINGS.get("supervised")()
    ds = load_dataset("shapes")
    model = setting.victim(acfg["model"], acfg["model_params"], ds, 0)
    from bench.store import load_weights
    from bench.trial import artifact_id

    load_weights(model, store.artifact_dir(artifact_id(acfg)) / "model")
    return model.eval(), meta, ds


@pytest.mark.slow
def test_neural_cleanse_names_the_planted_target(planted):
    model, meta, ds = planted
    assert meta["metrics"]["asr"] > 0.9, meta["metrics"]
    x = ds.val.x[:200]
    inv = neural_cleanse(model, x, ds.num_classes, InversionParams(steps=120), torch.Generator().manual_seed(0))
    assert inv.target == 0, inv.info
    norms = inv.info["mask_l1"]
    assert norms[0] == min(norms) and norms[0] < 0.5 * sorted(norms)[len(norms) // 2], inv.info


@pytest.mark.slow
@pytest.mark.xfail(
    strict=False,
    reason="measured: on the planted tiny-resnet backdoor, DECREE (with its L1 schedule) collapses the "
    "penultimate embeddings with a 1.4%-area mask outside the patch and names class 4, not 0. On the micro "
    "tiny-clip finetune victims it names the right target (0) for badnets and blended, but its 1.1%-area mask "
    "still lies wholly outside the patch (mask mass inside 0.0); neural-cleanse's mask does overlap (0.22 vs 0.003)",
)
def test_decree_mask_overlaps_the_badnets_patch(planted):
    model, _, ds = planted
    net = model  # an encoder: the classifier's penultimate features
    encode = lambda x: net.net.forward_head(net.net.forward_features((x - 0.5) / 0.25), pre_logits=True)  # noqa: E731
    x = ds.val.x[:256]
    inv = decree(
        encode,
        model,
        list(model.parameters()),
        x,
        InversionParams(steps=300, lr=0.1),
        torch.Generator().manual_seed(0),
        0.5,
    )
    true = BadNets(BadNetsParams(), (3, 32, 32), 0).mask()
    inside = float((inv.mask * true).sum() / true.sum())
    outside = float((inv.mask * (1 - true)).sum() / (1 - true).sum())
    assert inside > 3 * outside, (inside, outside)
    assert inv.target == 0
