import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from bench.core import metrics

frac = st.floats(0, 1, allow_nan=False)


def test_der_golden_example_from_methods_md():
    # CA 0.90 -> 0.88, ASR 0.95 -> 0.02 gives DER = (0.93 - 0.02 + 1) / 2 = 0.955
    assert math.isclose(metrics.der(0.90, 0.88, 0.95, 0.02), 0.955, abs_tol=1e-12)


def test_der_subtracts_the_clean_accuracy_drop():
    # BackdoorBench's bug adds the CA drop; a defense that destroys CA must score lower.
    assert metrics.der(0.9, 0.5, 0.95, 0.02) < metrics.der(0.9, 0.9, 0.95, 0.02)
    assert metrics.der(0.9, 0.9, 0.9, 0.9) == 0.5


@given(frac, frac, frac, frac)
def test_der_in_unit_interval(ca_bd, ca_def, asr_bd, asr_def):
    assert 0.0 <= metrics.der(ca_bd, ca_def, asr_bd, asr_def) <= 1.0


def test_asr_and_ra_exclude_target_class_images():
    labels = torch.tensor([0, 1, 2, 3, 0])
    targets = torch.zeros(5, dtype=torch.long)
    pred = torch.tensor([0, 0, 2, 1, 0])
    # non-target images: indices 1, 2, 3 -> predicted target at 1 only
    assert metrics.attack_success_rate(pred, labels, targets) == 1 / 3
    assert metrics.robust_accuracy(pred, labels, targets) == 1 / 3


def test_asr_is_nan_when_every_image_is_of_the_target_class():
    z = torch.zeros(3, dtype=torch.long)
    assert math.isnan(metrics.attack_success_rate(z, z, z))


def test_accuracy_retention_and_removal():
    assert metrics.accuracy(torch.tensor([1, 2, 3]), torch.tensor([1, 2, 0])) == 2 / 3
    assert metrics.ca_retention(0.45, 0.9) == 0.5
    assert math.isclose(metrics.asr_removal(0.95, 0.019), 0.98)


@given(st.lists(st.integers(0, 4), min_size=1, max_size=50), st.integers(0, 4))
def test_asr_plus_ra_at_most_one(labels, target):
    y = torch.tensor(labels)
    t = torch.full_like(y, target)
    pred = (y * 3 + 1) % 5
    asr, ra = metrics.attack_success_rate(pred, y, t), metrics.robust_accuracy(pred, y, t)
    if not math.isnan(asr):
        assert 0 <= asr + ra <= 1 + 1e-12


# ---------------------------------------------------------------- uncertainty (bench/core/stats.py)


def test_mean_ci_matches_a_hand_computation_with_students_t():
    from bench.core.stats import mean_ci

    e = mean_ci([0.2, 0.4, 0.6])
    # sd = 0.2, t(0.975, 2) = 4.302653, half = 4.302653 * 0.2 / sqrt(3)
    assert abs(e.mean - 0.4) < 1e-12 and abs(e.half - 4.302653 * 0.2 / 3**0.5) < 1e-5 and e.n == 3
    assert mean_ci([0.5]).n == 1 and mean_ci([0.5]).half != mean_ci([0.5]).half  # NaN half-width


def test_paired_t_test_and_holm_adjustment():
    from scipy import stats as st

    from bench.core.stats import holm, paired

    a, b = [0.9, 0.8, 0.7, 0.95], [0.5, 0.6, 0.4, 0.7]
    r = paired(a, b)
    assert abs(r.p - st.ttest_rel(a, b).pvalue) < 1e-12
    assert r.diff.low > 0  # a is higher in every pair
    assert holm([0.01, 0.04, 0.03]) == [0.03, 0.06, 0.06]


def test_slope_matches_a_hand_computation_and_refuses_too_few_points():
    from bench.core.stats import slope

    # y = 1 - 0.2 x + e: slope by hand = sum((x - 2)(y - ybar)) / sum((x - 2)^2)
    x, y = [1.0, 2.0, 3.0, 2.0], [0.82, 0.58, 0.42, 0.62]
    ybar = sum(y) / 4
    b = sum((a - 2) * (c - ybar) for a, c in zip(x, y, strict=True)) / sum((a - 2) ** 2 for a in x)
    resid = [c - (ybar + b * (a - 2)) for a, c in zip(x, y, strict=True)]
    se = (sum(r * r for r in resid) / 2 / sum((a - 2) ** 2 for a in x)) ** 0.5
    f = slope(x, y)
    assert abs(f.slope - b) < 1e-12 and abs(f.half - 4.302653 * se) < 1e-5 and f.n == 4  # t(0.975, 2)
    assert f.p < 0.05 and f.slope < 0
    assert math.isnan(slope([1.0, 2.0], [0.1, 0.2]).half)  # 2 points: no interval
    assert math.isnan(slope([1.0, 1.0, 1.0], [0.1, 0.2, 0.3]).slope)  # one x: no slope
    assert slope([1.0, 2.0, 3.0, float("nan")], [0.3, 0.2, 0.1, 0.5]).n == 3  # NaN rows are dropped


def _reference_ssim(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """torchmetrics' SSIM map with the same settings, averaged over the valid region
    (the convention of bench.core.metrics.ssim; see its docstring)."""
    tm = pytest.importorskip("torchmetrics.functional.image", reason="torchmetrics is in the test extra")
    _, full = tm.structural_similarity_index_measure(
        x, y, gaussian_kernel=True, sigma=1.5, kernel_size=11, data_range=1.0, k1=0.01, k2=0.03,
        reduction="none", return_full_image=True,
    )  # fmt: skip
    return full[..., 5:-5, 5:-5].mean(dim=(1, 2, 3))


@pytest.mark.parametrize("shape", [(3, 3, 32, 32), (2, 3, 40, 24), (2, 1, 11, 11), (1, 3, 64, 64)])
@pytest.mark.parametrize("noise", [0.0, 0.02, 0.3])
def test_ssim_equals_the_reference_implementation_on_the_valid_region(shape, noise):
    g = torch.Generator().manual_seed(hash((shape, noise)) % 2**31)
    x = torch.rand(shape, generator=g, dtype=torch.float64)
    y = (x + noise * torch.randn(shape, generator=g, dtype=torch.float64)).clamp(0, 1)
    ours = metrics.ssim(x, y)
    assert ours.shape == (shape[0],)
    torch.testing.assert_close(ours, _reference_ssim(x, y), rtol=0, atol=1e-10)


def test_ssim_differs_from_the_reference_full_image_mean_only_by_the_border():
    # The documented convention: torchmetrics' default number also averages the
    # reflect-padded border, ours does not; close, but not equal.
    tm = pytest.importorskip("torchmetrics.functional.image", reason="torchmetrics is in the test extra")
    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, 3, 32, 32, generator=g, dtype=torch.float64)
    y = (x + 0.1 * torch.randn(x.shape, generator=g, dtype=torch.float64)).clamp(0, 1)
    full = tm.structural_similarity_index_measure(x, y, data_range=1.0, reduction="none")
    ours = metrics.ssim(x, y)
    assert not torch.allclose(ours, full, rtol=0, atol=1e-6)
    torch.testing.assert_close(ours, full, rtol=0, atol=0.01)


def test_ssim_of_an_image_with_itself_is_one_and_it_is_symmetric():
    g = torch.Generator().manual_seed(2)
    x = torch.rand(2, 3, 32, 32, generator=g, dtype=torch.float64)
    y = torch.rand(2, 3, 32, 32, generator=g, dtype=torch.float64)
    torch.testing.assert_close(metrics.ssim(x, x), torch.ones(2, dtype=torch.float64))
    torch.testing.assert_close(metrics.ssim(x, y), metrics.ssim(y, x))
