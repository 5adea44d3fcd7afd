import pytest
import torch
from torch import nn

from bench.core import taskvec


def _model(seed):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))


def test_negation_agrees_with_direct_arithmetic_exactly():
    theta_bd = taskvec.trainable_params(_model(0))
    theta_t = taskvec.trainable_params(_model(1))
    tau = taskvec.difference(theta_t, theta_bd)
    via_module = taskvec.apply(theta_bd, tau, -1.0)
    for k in theta_bd:
        direct = theta_bd[k] - 1.0 * (theta_t[k] - theta_bd[k])
        assert torch.equal(via_module[k], direct)
        assert torch.allclose(via_module[k], 2 * theta_bd[k] - theta_t[k], atol=1e-6)


def test_scale_add_and_roundtrip():
    a, b = taskvec.trainable_params(_model(0)), taskvec.trainable_params(_model(1))
    tau = taskvec.difference(b, a)
    assert all(torch.allclose(v, 2 * tau[k]) for k, v in taskvec.add(tau, tau).items())
    assert all(torch.allclose(v, 0.5 * tau[k]) for k, v in taskvec.scale(tau, 0.5).items())
    back = taskvec.apply(a, tau, 1.0)
    assert all(torch.allclose(back[k], b[k]) for k in a)
    assert taskvec.cosine(tau, tau) == pytest.approx(1.0)


def test_functions_are_pure():
    a, b = taskvec.trainable_params(_model(0)), taskvec.trainable_params(_model(1))
    a0 = {k: v.clone() for k, v in a.items()}
    taskvec.apply(a, taskvec.difference(b, a), -2.0)
    assert all(torch.equal(a[k], a0[k]) for k in a)


def test_load_params_changes_the_model_function():
    m, other = _model(0), _model(1)
    x = torch.randn(5, 4)
    taskvec.load_params(m, taskvec.trainable_params(other))
    assert torch.equal(m(x), other(x))


def test_mismatched_keys_are_an_error():
    a = taskvec.trainable_params(_model(0))
    b = dict(a)
    b.pop(next(iter(b)))
    with pytest.raises(ValueError, match="different parameters"):
        taskvec.difference(a, b)


def test_only_trainable_float_params_are_included():
    m = _model(0)
    m[0].weight.requires_grad_(False)
    assert "0.weight" not in taskvec.trainable_params(m)
