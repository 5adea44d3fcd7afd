"""WaNet, SIG, the BadCLIP patch, and trigger-visibility metrics, pinned to their formulas."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from attacks.badclip import BadClipParams, BadClipPatch, badclip_side
from attacks.sig import Sig, SigParams, sig_signal
from attacks.wanet import Wanet, WanetParams, identity_grid, warp
from bench.core import metrics


def test_wanet_is_the_identity_when_s_is_zero():
    x = torch.rand(3, 3, 32, 32)
    a = Wanet(WanetParams(s=0.0), (3, 32, 32), seed=0)
    assert torch.allclose(a.grid, identity_grid(32, 32))
    assert torch.allclose(a.apply(x), x, atol=1e-5)


@pytest.mark.parametrize("h", [16, 32, 64])
def test_wanet_moves_no_pixel_more_than_its_bound(h):
    p = WanetParams()
    a = Wanet(p, (3, h, h), seed=1)
    # |displacement| <= s * max|upsampled noise| / H * grid_rescale in grid units;
    # bicubic upsampling can overshoot the control points by at most 25%.
    bound = p.s * 1.25 * float(a.noise.abs().max()) / h * p.grid_rescale
    disp = (a.grid - identity_grid(h, h)).abs().max()
    assert float(disp) <= bound + 1e-6
    assert float(disp) > 0


def test_wanet_control_grid_is_normalised_and_seeded():
    a, b = Wanet(WanetParams(), (3, 32, 32), seed=3), Wanet(WanetParams(), (3, 32, 32), seed=3)
    assert a.noise.shape == (2, 4, 4) and torch.equal(a.noise, b.noise)
    assert math.isclose(float(a.noise.abs().mean()), 1.0, rel_tol=1e-5)


def test_wanet_noise_mode_keeps_labels_and_is_disjoint_from_poison():
    y = torch.arange(200) % 10
    x = torch.rand(200, 3, 16, 16)
    ps = Wanet(WanetParams(), (3, 16, 16), seed=0).poison(x, y, 10, 0.1, seed=5)
    cross = ps.other["noise_mode"]
    assert len(ps.poisoned) == 20 and len(cross) == 40
    assert not set(cross.tolist()) & set(ps.poisoned.tolist())
    assert torch.equal(ps.y[cross], y[cross]) and torch.all(ps.y[ps.poisoned] == 0)
    assert not torch.equal(ps.x[cross], x[cross])


def test_sig_column_profile_and_broadcast():
    prof = sig_signal(32, 40 / 255, 6)
    j = torch.arange(32, dtype=torch.float64)
    assert torch.allclose(prof.double(), 40 / 255 * torch.sin(2 * math.pi * j * 6 / 32), atol=1e-7)
    x = torch.full((2, 3, 32, 32), 0.5)
    out = Sig(SigParams(), (3, 32, 32), seed=0).apply(x)
    assert torch.allclose(out, (0.5 + prof).expand(2, 3, 32, 32))  # same on every row and channel
    assert float(Sig(SigParams(), (3, 8, 8), 0).apply(torch.ones(1, 3, 8, 8)).max()) == 1.0  # clipped


def test_sig_is_clean_label_and_poisons_80_percent_of_the_target_class():
    y = torch.arange(1000) % 10
    ps = Sig(SigParams(target=3), (3, 8, 8), seed=0).poison(torch.rand(1000, 3, 8, 8), y, 10, 0.1, seed=0)
    assert len(ps.poisoned) == 80 and torch.all(y[ps.poisoned] == 3)
    assert torch.equal(ps.y, y)  # no relabelling


@pytest.mark.parametrize(("h", "side"), [(32, 3), (64, 5), (224, 16)])
def test_badclip_patch_side_and_centre(h, side):
    assert badclip_side(h) == side
    a = BadClipPatch(BadClipParams(), (3, h, h), seed=0)
    assert (a.top, a.left) == ((h - side) // 2, (h - side) // 2)


def test_badclip_fit_raises_the_target_similarity_and_stays_in_range():
    torch.manual_seed(0)
    proj = torch.randn(3 * 16 * 16, 8)

    def encode(x):
        return torch.nn.functional.normalize(x.flatten(1) @ proj, dim=-1)

    head = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    x = torch.rand(64, 3, 16, 16)
    y = torch.arange(64) % 4
    a = BadClipPatch(BadClipParams(side=6, steps=60, lr=0.05, batch_size=32), (3, 16, 16), seed=0)
    info = a.fit(encode, head, x, y)
    assert info["cos_text_after"] > info["cos_text_before"]
    assert float(a.patch.min()) >= 0 and float(a.patch.max()) <= 1


def test_visibility_metrics_golden_values():
    x = torch.rand(4, 3, 16, 16)
    same = metrics.perturbation_stats(x, x.clone())
    assert same["l2"] == 0 and same["linf"] == 0 and same["psnr"] == math.inf
    assert same["ssim"] == pytest.approx(1.0)
    shifted = (x + 0.1).clamp(0, 1)
    d = shifted - x
    stats = metrics.perturbation_stats(x, shifted)
    assert stats["linf"] == pytest.approx(float(d.flatten(1).abs().amax(1).mean()))
    assert stats["psnr"] == pytest.approx(10 * math.log10(1 / float((d.double() ** 2).mean())), rel=1e-6)
    assert stats["ssim"] < 1


@settings(max_examples=25, deadline=None)
@given(st.integers(8, 64), st.integers(0, 2**31 - 1), st.sampled_from(["wanet", "sig", "badclip"]))
def test_new_triggers_are_pure_deterministic_and_in_range(size, seed, name):
    cls, params = {
        "wanet": (Wanet, WanetParams()),
        "sig": (Sig, SigParams()),
        "badclip": (BadClipPatch, BadClipParams()),
    }[name]
    x = torch.rand(2, 3, size, size)
    x0 = x.clone()
    out = cls(params, (3, size, size), seed).apply(x)
    assert torch.equal(x, x0)
    assert torch.equal(out, cls(params, (3, size, size), seed).apply(x))
    assert out.shape == x.shape and out.dtype == x.dtype
    assert float(out.min()) >= 0 and float(out.max()) <= 1


def test_warp_accepts_per_sample_grids():
    x = torch.rand(2, 3, 8, 8)
    g = identity_grid(8, 8).expand(2, 8, 8, 2)
    assert torch.allclose(warp(x, g), x, atol=1e-5)
