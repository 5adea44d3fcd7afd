"""CLP's pruning rule against a hand computation, and its knob."""

import math

import torch
from torch import nn

from defenses.clp import Clp, ClpParams, conv_bn_lipschitz, free_u, prunable_layers


class ConvBn(nn.Module):
    def __init__(self, n_out=5, k=1):
        super().__init__()
        self.conv = nn.Conv2d(2, n_out, k, bias=False)
        self.bn = nn.BatchNorm2d(n_out)

    def forward(self, x):
        return self.bn(self.conv(x)).mean(dim=(2, 3))


def test_uclc_is_the_spectral_norm_of_the_bn_scaled_kernel():
    net = ConvBn(n_out=2, k=3)
    a, b = torch.tensor([1.0, 2.0]), torch.arange(1.0, 10.0)
    with torch.no_grad():
        net.conv.weight[0] = torch.outer(a, b).reshape(2, 3, 3)  # rank one: sigma_max = |a| |b|
        net.conv.weight[1] = 0
        net.conv.weight[1, 0, 1, 1] = -3.0
        net.bn.weight.copy_(torch.tensor([0.5, -2.0]))
        net.bn.running_var.copy_(torch.tensor([4.0, 0.25]))
    lips = conv_bn_lipschitz(net.conv, net.bn)
    # channel 0: |0.5 / 2| * |a| * |b|; channel 1: |-2 / 0.5| * 3
    assert math.isclose(float(lips[0]), 0.25 * math.sqrt(5) * math.sqrt(285), rel_tol=1e-5)
    assert math.isclose(float(lips[1]), 12.0, rel_tol=1e-6)


def _outlier_net():
    """Five 1x1 channels with UCLC 1, 1, 1, 1, 10 (unit BN scale)."""
    net = ConvBn()
    with torch.no_grad():
        net.conv.weight.zero_()
        net.conv.weight[:, 0, 0, 0] = torch.tensor([1.0, 1.0, -1.0, 1.0, 10.0])
        net.bn.weight.fill_(1.0)
        net.bn.bias.fill_(0.3)
        net.bn.running_var.fill_(1.0)
    return net


def test_clp_prunes_channels_above_mean_plus_u_std_and_uses_no_data():
    import types

    net = _outlier_net()
    (layer,) = prunable_layers(net)
    assert torch.allclose(layer.lips, torch.tensor([1.0, 1.0, 1.0, 1.0, 10.0]))
    # mean 2.8, unbiased std sqrt((4 * 1.8^2 + 7.2^2) / 4) = sqrt(16.2): the outlier's z is 7.2 / 4.0249 = 1.789
    z = 7.2 / math.sqrt(16.2)
    assert math.isclose(free_u([layer]), z, rel_tol=1e-5)
    ctx = types.SimpleNamespace(model=net)
    out = Clp(ClpParams(u=1.5)).run(ctx)
    assert out.extra["pruned"] == 1 and out.meter.as_cost()["clean_samples"] == 0 and out.meter.steps == 0
    w, b = net.bn.weight.detach(), net.bn.bias.detach()  # views: they follow the knob's edits below
    assert float(w[4]) == 0 and float(b[4]) == 0  # weight and bias both zeroed
    assert float(w[0]) == 1 and math.isclose(float(b[0]), 0.3, rel_tol=1e-6)
    # the knob: larger u prunes less; the identity is the smallest u pruning nothing
    assert out.knob.identity == out.knob.values[0] and out.knob.continuous and out.knob.chosen == 1.5
    assert all(a > b for a, b in zip(out.knob.values, out.knob.values[1:], strict=False))
    out.knob.at(out.knob.identity)
    assert float(w[4]) == 1 and math.isclose(float(b[4]), 0.3, rel_tol=1e-6)
    out.knob.at(z - 1e-3)
    assert float(w[4]) == 0
    out.knob.at(0.0)  # above the mean: only the outlier still
    assert int((net.bn.weight == 0).sum()) == 1


def test_clp_on_a_vit_prunes_mlp_units_by_row_norm():
    from open_clip.transformer import VisionTransformer

    torch.manual_seed(0)
    vit = VisionTransformer(image_size=8, patch_size=4, width=8, layers=2, heads=2, mlp_ratio=2.0, output_dim=4)
    with torch.no_grad():
        vit.transformer.resblocks[1].mlp.c_fc.weight[3] *= 50  # one loud hidden unit
    model = nn.Module()
    model.visual = vit
    layers = prunable_layers(vit)
    assert [lay.name for lay in layers] == ["transformer.resblocks.0.mlp.c_fc", "transformer.resblocks.1.mlp.c_fc"]
    w = vit.transformer.resblocks[1].mlp.c_fc.weight.detach()
    assert torch.allclose(layers[1].lips, w.norm(dim=1))
    clp = Clp(ClpParams())
    import types

    out = clp.run(types.SimpleNamespace(model=model))
    assert out.extra["pruned_per_layer"].get("transformer.resblocks.1.mlp.c_fc", 0) >= 1
    assert float(vit.transformer.resblocks[1].mlp.c_fc.weight[3].detach().abs().sum()) == 0
    assert float(vit.transformer.resblocks[1].mlp.c_fc.bias[3].detach()) == 0
    assert any("ViT" in d for d in clp.deviations_in("finetune"))
