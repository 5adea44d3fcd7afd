import torch
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


def test_anp_masks_move_under_perturbation():
    from defenses.anp import AnpParams, learn_masks
    from defenses.base import DataMeter

    torch.manual_seed(0)
    model = Net()
    for q in model.parameters():
        q.requires_grad_(False)
    x = torch.rand(64, 3, 5, 5)
    y = torch.randint(0, 6, (64,))

    def masks(eps):
        meter = DataMeter()
        m = learn_masks(
            model,
            model.net.layer4,
            6,
            x,
            y,
            AnpParams(eps=eps, iterations=30, batch_size=16),
            torch.Generator().manual_seed(0),
            meter,
        )
        assert meter.steps == 30
        return m

    calm, perturbed = masks(0.0), masks(0.4)
    assert float(perturbed.min()) >= 0 and float(perturbed.max()) <= 1
    assert float((perturbed - calm).abs().max()) > 1e-3, "the adversarial perturbation must change what the masks learn"
    assert len(model.net.layer4._forward_hooks) == 0  # the hook is removed afterwards
