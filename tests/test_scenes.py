"""The built-in cluttered scenes and the training-time augmentation."""

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.core.augment import crop_flip
from bench.data import scenes


def test_scenes_are_deterministic_balanced_and_in_range():
    x1, a1 = scenes.generate(40, seed=7)
    x2, a2 = scenes.generate(40, seed=7)
    assert np.array_equal(x1, x2) and np.array_equal(a1, a2)
    assert x1.shape == (40, 3, 32, 32) and x1.dtype == np.uint8
    assert np.bincount(a1[:, 0], minlength=10).tolist() == [4] * 10  # labels cycle through a permutation
    assert not np.array_equal(x1, scenes.generate(40, seed=8)[0])


def test_scene_textures_carry_energy_at_high_spatial_frequencies():
    """The property that makes sub-pixel warps (WaNet) visible: unlike `shapes`' flat
    backgrounds, neighbouring pixels differ everywhere."""
    from bench.data import shapes

    def textured(images: np.ndarray) -> float:
        """Share of images whose median neighbouring-pixel difference exceeds 1%."""
        d = np.abs(np.diff(images.astype(np.float32) / 255, axis=-1)).mean(1)
        return float(np.mean(np.median(d.reshape(len(images), -1), axis=1) > 0.01))

    assert textured(scenes.generate(100, seed=3)[0]) >= 0.95  # texture everywhere, in (nearly) every scene
    assert textured(shapes.generate(100, seed=3)[0]) < 0.5  # mostly flat backgrounds


def test_style_key_names_the_generator_version():
    assert scenes.style_key()["version"] == scenes.VERSION


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(1, 4))
def test_crop_flip_is_a_seeded_permutation_of_padded_pixels(seed, padding):
    x = torch.rand(6, 3, 8, 8)
    a = crop_flip(x, torch.Generator().manual_seed(seed), padding)
    b = crop_flip(x, torch.Generator().manual_seed(seed), padding)
    assert torch.equal(a, b) and a.shape == x.shape
    for i in range(len(x)):
        # every output pixel is an input pixel or zero padding
        vals = set(x[i].flatten().tolist()) | {0.0}
        assert set(a[i].flatten().tolist()) <= vals


def test_crop_flip_with_no_shift_is_the_identity_or_its_mirror():
    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).view(2, 1, 4, 4)
    out = crop_flip(x, torch.Generator().manual_seed(0), padding=0)
    for i in range(2):
        assert torch.equal(out[i], x[i]) or torch.equal(out[i], x[i].flip(-1))
