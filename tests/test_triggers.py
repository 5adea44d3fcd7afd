import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from attacks.badnets import BadNets, BadNetsParams, patch_side
from attacks.base import poison_indices, target_labels
from attacks.blended import Blended, BlendedParams, blend, noise_pattern


@pytest.mark.parametrize(("h", "side"), [(32, 3), (64, 6), (224, 21)])
def test_badnets_patch_side_and_bottom_right_position(h, side):
    assert patch_side(h) == side
    attack = BadNets(BadNetsParams(), (3, h, h), seed=0)
    x = torch.zeros(2, 3, h, h)
    out = attack.apply(x)
    changed = (out != x).any(dim=(0, 1))
    rows, cols = torch.nonzero(changed, as_tuple=True)
    assert rows.min() == h - side and rows.max() == h - 1
    assert cols.min() == h - side and cols.max() == h - 1
    assert int(changed.sum()) == side * side
    assert torch.all(out[:, :, h - side :, h - side :] == 1.0)


def test_badnets_center_checkerboard_and_random_location_is_seeded():
    a = BadNets(BadNetsParams(location="center", pattern="checkerboard"), (3, 32, 32), seed=0)
    assert (a.top, a.left) == (14, 14)
    assert a.patch[0, 0, 0] == 1 and a.patch[0, 0, 1] == 0
    r1 = BadNets(BadNetsParams(location="random"), (3, 32, 32), seed=5)
    r2 = BadNets(BadNetsParams(location="random"), (3, 32, 32), seed=5)
    assert (r1.top, r1.left) == (r2.top, r2.left)


def test_blend_is_exact():
    x = torch.rand(4, 3, 8, 8)
    p = torch.rand(3, 8, 8)
    assert torch.allclose(blend(x, p, 0.2), 0.8 * x + 0.2 * p)
    attack = Blended(BlendedParams(), (3, 8, 8), seed=3)
    assert torch.equal(attack.apply(x), blend(x, noise_pattern((3, 8, 8), 3), 0.2))


def test_blended_pattern_from_file(tmp_path):
    from PIL import Image

    Image.new("RGB", (50, 40), (255, 0, 0)).save(tmp_path / "p.png")
    a = Blended(BlendedParams(pattern_file=str(tmp_path / "p.png")), (3, 8, 8), seed=0)
    assert torch.allclose(a.pattern[0], torch.ones(8, 8)) and torch.all(a.pattern[1:] == 0)
    with pytest.raises(ValueError, match="pattern_file"):
        Blended(BlendedParams(pattern_file=str(tmp_path / "missing.png")), (3, 8, 8), seed=0)


@settings(max_examples=30, deadline=None)
@given(st.integers(8, 96), st.integers(1, 3), st.integers(0, 2**31 - 1), st.sampled_from(["badnets", "blended"]))
def test_triggers_are_pure_deterministic_and_in_range(size, n, seed, name):
    cls, params = (BadNets, BadNetsParams(location="random")) if name == "badnets" else (Blended, BlendedParams())
    x = torch.rand(n, 3, size, size)
    x0 = x.clone()
    a1, a2 = cls(params, (3, size, size), seed), cls(params, (3, size, size), seed)
    out = a1.apply(x)
    assert torch.equal(x, x0), "the input must not be modified"
    assert torch.equal(out, a2.apply(x)), "same config, same trigger"
    assert out.shape == x.shape and out.dtype == x.dtype
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0


def test_poison_indices_exclude_the_target_for_dirty_label():
    labels = torch.arange(100) % 10
    idx = poison_indices(labels, 0.3, target=0, seed=1)
    assert len(idx) == 30 and not torch.any(labels[idx] == 0)
    assert torch.equal(idx, poison_indices(labels, 0.3, target=0, seed=1))
    assert not torch.equal(idx, poison_indices(labels, 0.3, target=0, seed=2))


def test_poison_indices_clean_label_draw_only_from_target_and_cap():
    labels = torch.arange(100) % 10
    idx = poison_indices(labels, 0.05, target=3, seed=0, clean_label=True)
    assert len(idx) == 5 and torch.all(labels[idx] == 3)
    assert len(poison_indices(labels, 0.5, target=3, seed=0, clean_label=True)) == 10


def test_target_labels_all_to_one_and_all_to_all():
    y = torch.tensor([0, 1, 9])
    assert target_labels(y, 0, 10, False).tolist() == [0, 0, 0]
    assert target_labels(y, 0, 10, True).tolist() == [1, 2, 0]


def test_saved_trigger_tensors_are_exact(tmp_path):
    from safetensors.torch import load_file

    a = Blended(BlendedParams(), (3, 16, 16), seed=4)
    files = a.save_trigger(tmp_path)
    assert set(files) == {"trigger.safetensors", "trigger.png"}
    assert torch.equal(load_file(tmp_path / "trigger.safetensors")["pattern"], a.pattern)
    b = BadNets(BadNetsParams(), (3, 32, 32), seed=0)
    b.save_trigger(tmp_path / "b")
    saved = load_file(tmp_path / "b" / "trigger.safetensors")
    assert torch.equal(saved["patch"], b.patch) and int(saved["mask"].sum()) == 9
