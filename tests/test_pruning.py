import torch
import torch.nn.functional as F
from torch import nn

from defenses.fine_pruning import prune_until
from defenses.units import UnitMask, unit_activations, unit_layer


def test_prune_until_stops_at_the_rules_point():
    order = torch.arange(100)
    calls = []

    def ca(k):
        calls.append(k)
        return 1.0 - 0.01 * k

    best, curve = prune_until(ca, order, step=1, threshold=0.9 * 1.0)
    # CA(10) = 0.90 is still allowed, CA(11) = 0.89 is the first below: keep 10, stop there
    assert best == 10 and calls[-1] == 11 and curve[-1] == {"pruned": 11, "ca": 1.0 - 0.11}


def test_prune_until_with_coarse_steps_and_an_immediate_drop():
    order = torch.arange(50)
    assert prune_until(lambda k: 1.0 - 0.004 * k, order, step=5, threshold=0.9)[0] == 25
    assert prune_until(lambda k: 0.0, order, step=5, threshold=0.9)[0] == 0


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Module()
        self.net.layer4 = nn.Conv2d(3, 6, 3, padding=1)

    def forward(self, x):
        return self.net.layer4(x).mean(dim=(2, 3))


def test_unit_mask_switches_channels_off_and_activations_rank_them():
    torch.manual_seed(0)
    model = Net()
    layer = unit_layer(model)
    assert layer is model.net.layer4
    x = torch.rand(8, 3, 5, 5)
    acts = unit_activations(model, layer, x, batch_size=3)
    assert torch.allclose(acts, model.net.layer4(x).mean(dim=(0, 2, 3)), atol=1e-6)
    m = UnitMask(layer, 6)
    m.mask[[1, 4]] = 0
    out = model(x)
    assert torch.all(out[:, [1, 4]] == 0) and torch.all(out[:, [0, 2, 3, 5]] != 0)
    m.remove()
    assert torch.all(model(x)[:, 1] != 0)


class BnNet(nn.Module):
    """conv -> BatchNorm -> ReLU -> pooled linear head, plus a LayerNorm on the logits."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 3)
        self.ln = nn.LayerNorm(3)
        with torch.no_grad():
            self.bn.weight.uniform_(0.5, 1.5)
            self.bn.bias.uniform_(-0.5, 0.5)
            self.bn.running_mean.uniform_(-0.1, 0.1)

    def forward(self, x):
        return self.ln(self.fc(torch.relu(self.bn(self.conv(x))).mean(dim=(2, 3))))


def _anp_by_hand(net, xb, yb, mask, noise, p):
    """One ANP iteration written with the functional ops, as the reference's
    NoisyBatchNorm2d computes them (train mode: batch statistics)."""
    (dw_bn, dw_ln), (db_bn, db_ln) = noise

    def run(cw_bn, cb_bn, cw_ln, cb_ln):
        h = F.batch_norm(net.conv(xb), None, None, net.bn.weight * cw_bn, net.bn.bias * cb_bn, training=True)
        h = net.fc(torch.relu(h).mean(dim=(2, 3)))
        return F.layer_norm(h, (3,), net.ln.weight * cw_ln, net.ln.bias * cb_ln)

    m_bn, m_ln = (t.clone().requires_grad_(True) for t in mask)
    d = [t.clone().requires_grad_(True) for t in (dw_bn, dw_ln, db_bn, db_ln)]
    loss = F.cross_entropy(run(m_bn + d[0], 1 + d[2], m_ln + d[1], 1 + d[3]), yb)
    grads = torch.autograd.grad(loss, d)
    d = [(t + p.eps * g.sign()).detach() for t, g in zip(d, grads, strict=True)]  # one signed step, NOT clamped
    robust = F.cross_entropy(run(m_bn + d[0], 1 + d[2], m_ln + d[1], 1 + d[3]), yb)
    natural = F.cross_entropy(run(m_bn, 1.0, m_ln, 1.0), yb)
    g_bn, g_ln = torch.autograd.grad(p.trade_off * natural + (1 - p.trade_off) * robust, [m_bn, m_ln])
    # SGD with momentum: the first step is lr * grad; then the clip to [0, 1]
    return [(m - p.lr * g).clamp(0, 1).detach() for m, g in zip((m_bn, m_ln), (g_bn, g_ln), strict=True)], d


def test_anp_iteration_matches_a_functional_hand_computation():
    from defenses.anp import AnpParams, learn_masks, norm_layers
    from defenses.base import DataMeter

    torch.manual_seed(0)
    net = BnNet()
    x, y = torch.rand(16, 3, 5, 5), torch.randint(0, 3, (16,))
    p = AnpParams(iterations=1, batch_size=8, lr=5.0, augment="none")
    stats = (net.bn.running_mean.clone(), net.bn.running_var.clone(), net.bn.num_batches_tracked.clone())
    meter = DataMeter()
    layers, masks, _ = learn_masks(net, net, x, y, p, torch.Generator().manual_seed(3), meter)
    assert [n for n, _ in layers] == ["bn", "ln"] and [n for n, _ in norm_layers(net)] == ["bn", "ln"]
    # replay the generator: the batch, then U(-eps, eps) for the weight noises and the bias noises
    gen = torch.Generator().manual_seed(3)
    idx = torch.randint(16, (8,), generator=gen)
    noise = [(torch.rand(4, generator=gen) * 2 - 1) * p.eps, (torch.rand(3, generator=gen) * 2 - 1) * p.eps]
    noise = (noise, [(torch.rand(4, generator=gen) * 2 - 1) * p.eps, (torch.rand(3, generator=gen) * 2 - 1) * p.eps])
    expect, d = _anp_by_hand(net, x[idx], y[idx], [torch.ones(4), torch.ones(3)], noise, p)
    assert torch.allclose(masks[0], expect[0], atol=1e-5) and torch.allclose(masks[1], expect[1], atol=1e-5)
    assert max(float(t.abs().max()) for t in d) > p.eps  # the reference does not clamp the perturbation
    assert float((masks[0] - 1).abs().max()) > 1e-3  # the step moved the masks
    # BN statistics are exactly as before, the hooks are gone, the weights untouched
    assert torch.equal(net.bn.running_mean, stats[0]) and torch.equal(net.bn.running_var, stats[1])
    assert torch.equal(net.bn.num_batches_tracked, stats[2])
    assert not net.bn._forward_hooks and not net.ln._forward_hooks
    assert meter.steps == 1 and meter.samples_seen == 8


def test_anp_prunes_by_threshold_on_the_norm_weight_and_restores():
    from bench.core.tradeoff import IDENTITY
    from defenses import anp
    from defenses.base import DataMeter

    torch.manual_seed(0)
    net = BnNet()
    w_bn, b_bn = net.bn.weight.detach().clone(), net.bn.bias.detach().clone()
    fake = [torch.tensor([0.0, 0.15, 0.2, 0.9]), torch.tensor([0.05, 1.0, 0.3])]

    def fake_learn(clf, encoder, x, y, p, gen, meter, idx):
        return anp.norm_layers(encoder), fake, {}

    import types

    ctx = types.SimpleNamespace(
        model=net, classify=lambda m: m, progress=lambda m: None, generator=lambda: torch.Generator(),
        clean_subset=lambda f: (types.SimpleNamespace(x=torch.rand(4, 3, 5, 5), labels=torch.zeros(4).long()), torch.arange(4)),
    )  # fmt: skip
    orig, anp.learn_masks = anp.learn_masks, fake_learn
    try:
        out = anp.Anp(anp.AnpParams()).run(ctx)
    finally:
        anp.learn_masks = orig
    # threshold 0.2 (<=): bn neurons 0, 1, 2 and ln neuron 0 lose their weight; biases stay
    assert out.extra["pruned"] == 4 and out.knob.chosen == 0.2 and out.knob.identity is None
    assert torch.equal(net.bn.weight.detach(), torch.tensor([0.0, 0.0, 0.0, float(w_bn[3])]))
    assert torch.equal(net.bn.bias.detach(), b_bn) and float(net.ln.weight[0].detach()) == 0 and float(net.ln.weight[1].detach()) == 1
    out.knob.at(0.1)
    assert int((net.bn.weight == 0).sum()) == 1 and float(net.ln.weight[0].detach()) == 0
    out.knob.at(IDENTITY)
    assert torch.equal(net.bn.weight.detach(), w_bn) and bool((net.ln.weight == 1).all())
    assert DataMeter().as_cost() == out.meter.as_cost()  # the fake learner consumed nothing


def test_vit_units_are_ranked_at_the_pooled_class_token():
    """open_clip pools the class token (pool_type 'tok'): a last-block MLP unit's
    activity is its activation there, not a mean over every token."""
    from open_clip.transformer import VisionTransformer

    from defenses.units import token_pool

    torch.manual_seed(0)
    vit = VisionTransformer(image_size=8, patch_size=4, width=16, layers=1, heads=2, mlp_ratio=2.0, output_dim=8)

    class Clf(nn.Module):
        def __init__(self):
            super().__init__()
            self.visual = vit

        def forward(self, x):
            return self.visual(x)

    model = Clf().eval()
    layer = unit_layer(model)
    x = torch.rand(5, 3, 8, 8)
    seen = []
    h = layer.register_forward_hook(lambda m, i, o: seen.append(o))
    model(x)
    h.remove()
    hidden = seen[0]  # (N, 1 + 4 patches, 32), batch first
    assert hidden.shape == (5, 5, 32)
    acts = unit_activations(model, layer, x, tokens=token_pool(model))
    assert torch.allclose(acts, hidden[:, 0].mean(0), atol=1e-6)
    assert not torch.allclose(acts, hidden.mean(dim=(0, 1)), atol=1e-3)
    vit.pool_type = "avg"
    assert torch.allclose(unit_activations(model, layer, x, tokens=token_pool(model)), hidden[:, 1:].mean(dim=(0, 1)), atol=1e-6)
    assert token_pool(Net()) is None  # a CNN: channels are averaged over positions as before
