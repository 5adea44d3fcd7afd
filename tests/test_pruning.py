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
