"""Trigger inversion on a planted backdoor: a real (small) badnets attack in the
micro suite's supervised setting, then neural-cleanse and decree on it."""

import pytest
import torch

from attacks.badnets import BadNets, BadNetsParams
from bench.core.config import SuiteConfig
from bench.data.base import load_dataset
from bench.protocol.settings import SETTINGS
from bench.run.grid import Selection, plan_grid
from bench.run.trial import run_attack
from bench.store import Store
from defenses.inversion import (
    DecreeParams,
    InversionParams,
    decree,
    mad_anomaly_index,
    mean_pairwise_cosine,
    neural_cleanse,
)


def test_mad_anomaly_index():
    norms = torch.tensor([10.0, 11.0, 9.0, 10.5, 9.5, 2.0])
    idx = mad_anomaly_index(norms)
    # median 9.75; absolute deviations [.25, 1.25, .75, .75, .25, 7.75] have median .75
    expect = torch.tensor([0.25, 1.25, 0.75, 0.75, 0.25, 7.75]) / (1.4826 * 0.75)
    assert torch.allclose(idx, expect, atol=1e-5)
    assert int(idx.argmax()) == 5 and float(idx[5]) > 2 and float(idx[:5].max()) < 2


def test_mean_pairwise_cosine_by_hand():
    e = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 3.0]])
    # pairs: (0,1) 0, (0,2) 1/sqrt2, (1,2) 1/sqrt2; the off-diagonal mean counts each twice over 6 entries
    assert abs(float(mean_pairwise_cosine(e)) - (2 / 2**0.5) / 3) < 1e-6


def test_decree_finds_a_patch_that_collapses_a_toy_encoder():
    """An encoder whose embedding is swamped by one direction when the 3x3 bottom-right
    corner is bright, and is otherwise a high-frequency function of every pixel (so no
    cheap mask elsewhere collapses it): DECREE's optimum is a small mask on that corner,
    and the reference procedure finds it within the default 300 steps."""
    torch.manual_seed(0)
    proj = torch.randn(3 * 32 * 32, 16) / 8

    def encode(x):
        g = torch.sigmoid(10 * (x[:, :, -3:, -3:].mean(dim=(1, 2, 3)) - 0.7))[:, None]
        return torch.cat([(1 - g) * torch.sin(5 * (x.flatten(1) - 0.5) @ proj), 3 * g.expand(-1, 4)], dim=1)

    class Head(torch.nn.Module):
        def forward(self, z):
            return encode(z)[:, -3:]

    x = torch.rand(128, 3, 32, 32)
    triggered = x.clone()
    triggered[:, :, -3:, -3:] = 1
    assert float(mean_pairwise_cosine(encode(x))) < 0.2 < 0.99 < float(mean_pairwise_cosine(encode(triggered)))
    inv = decree(encode, Head(), [], x, DecreeParams(steps=300), torch.Generator().manual_seed(0))
    true = torch.zeros(32, 32)
    true[-3:, -3:] = 1
    inside = float((inv.mask * true).sum() / true.sum())
    outside = float((inv.mask * (1 - true)).sum() / (1 - true).sum())
    assert inv.info["reached_threshold"], inv.info
    assert inside > 0.5 and outside < 1e-3, (inside, outside, inv.info)


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """tiny-resnet trained from scratch on shapes with 10% badnets (target 0)."""
    suite = SuiteConfig(
        name="planted",
        models=["tiny-resnet"],
        settings=["supervised"],
        control_datasets=[],
        # no crop-flip: 300 steps with the default augmentation plant only 22% ASR
        setting_params={"supervised": {"steps": 300, "batch_size": 128, "augment": "none"}},
    )
    spec = plan_grid(suite, Selection(attacks="badnets", defenses="none")).artifacts[0]
    store = Store(tmp_path_factory.mktemp("planted"))
    meta = run_attack(spec, store)
    setting = SETTINGS.get("supervised")()
    ds = load_dataset("shapes")
    model = setting.victim(spec.model, spec.model_params_json, ds, 0)
    from bench.store import load_weights
    load_weights(model, store.artifact_dir(spec.id) / "model")
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
def test_decree_measures_why_a_cross_entropy_backdoor_is_out_of_its_reach(planted):
    """A measured limitation, not a bug. DECREE looks for a small trigger that makes an
    encoder's embeddings of all triggered images nearly identical (mean pairwise cosine
    above 0.99): the signature of encoder backdoors (BadEncoder, poisoned CLIP
    pre-training). A backdoor implanted with cross-entropy (here a supervised classifier's
    penultimate features; in the harness, the `finetune` setting's image encoder behind a
    zero-shot head) only needs triggered embeddings on the target's side of the class
    boundaries. The real patch leaves them far from collapsed, so it is no solution of
    DECREE's problem, and whatever small mask DECREE finds is another one. Measured here
    (the planted classifier's penultimate features; the backdoor took): mean pairwise
    cosine 0.525 clean and 0.827 with the patch (trained without crop-flip; 0.576 and
    0.576 on an earlier, augmented victim): the patch pulls embeddings together, but
    not to the 0.99 DECREE calls a trigger. On tiny-clip/shapes/finetune badnets (ASR 0.59): 0.24
    clean, 0.44 with the patch, 0.25-0.26 with white 3x3 squares elsewhere; there the
    reference procedure's best mask (7.6% of the area) put mass 1e-6 inside the patch and
    0.076 outside (docs/methods.md, decree). The test pins the premise that fails; the toy
    test above shows the procedure finds a trigger where the premise holds."""
    model, meta, ds = planted
    assert meta["metrics"]["asr"] > 0.5, meta["metrics"]
    net = model
    encode = lambda x: net.net.forward_head(net.net.forward_features((x - 0.5) / 0.25), pre_logits=True)  # noqa: E731
    x = ds.val.x[:256]
    attack = BadNets(BadNetsParams(), (3, 32, 32), 0)
    with torch.no_grad():
        cos_clean = float(mean_pairwise_cosine(encode(x)))
        cos_patch = float(mean_pairwise_cosine(encode(attack.apply(x))))
    print({"cos_clean": cos_clean, "cos_patch": cos_patch})
    assert cos_patch < DecreeParams().sim_threshold - 0.1  # nowhere near DECREE's success criterion
