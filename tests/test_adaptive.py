"""Adaptive-Blend and Adaptive-Patch (attacks/adaptive.py): pure trigger functions as
properties, the poison sets against the reference's construction, and their place in the
registry (`--attacks all` leaves them out, `--attacks adaptive` selects them)."""

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from attacks.adaptive import (
    AdapBlend,
    AdapBlendParams,
    AdapPatch,
    AdapPatchParams,
    cover_indices,
    masked_blend,
    piece_mask,
    split_in_order,
)
from bench.core.registry import ATTACKS

SHAPE = (3, 32, 32)


@given(side=st.sampled_from([2, 4, 8]), data=st.data())
def test_piece_mask_zeroes_exactly_the_drawn_pieces(side, data):
    pieces = side * side
    masked = data.draw(st.integers(0, pieces))
    seed = data.draw(st.integers(0, 2**32 - 1))
    m = piece_mask(32, 32, pieces, masked, np.random.default_rng(seed))
    step = 32 // side
    cells = m.reshape(side, step, side, step).permute(0, 2, 1, 3).reshape(pieces, -1)
    assert set(m.unique().tolist()) <= {0.0, 1.0}
    assert all(len(set(c.tolist())) == 1 for c in cells)  # whole pieces, never parts of one
    assert int((cells[:, 0] == 0).sum()) == masked
    assert torch.equal(m, piece_mask(32, 32, pieces, masked, np.random.default_rng(seed)))  # seeded


@given(alpha=st.floats(0, 1), seed=st.integers(0, 1000))
def test_masked_blend_moves_only_unmasked_pixels_toward_the_pattern(alpha, seed):
    g = torch.Generator().manual_seed(seed)
    x, pattern = torch.rand(2, *SHAPE, generator=g), torch.rand(SHAPE, generator=g)
    mask = (torch.rand(32, 32, generator=g) > 0.5).float()
    out = masked_blend(x, pattern, mask, alpha)
    assert torch.equal(out[..., mask == 0], x[..., mask == 0])
    expect = (1 - alpha) * x + alpha * pattern
    assert torch.allclose(out[..., mask == 1], expect[..., mask == 1], atol=1e-6)
    assert out.min() >= -1e-6 and out.max() <= 1 + 1e-6


@given(n=st.integers(0, 50), k=st.integers(1, 6))
def test_split_in_order_cuts_consecutive_blocks_that_cover_everything(n, k):
    idx = torch.arange(100, 100 + n)
    blocks = split_in_order(idx, k)
    assert len(blocks) == k and torch.equal(torch.cat(blocks), idx)
    assert max(len(b) for b in blocks) - min(len(b) for b in blocks) <= 1


def _data(n=400, classes=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, *SHAPE, generator=g), torch.arange(n) % classes


def test_adap_blend_poisons_payload_and_cover_as_the_reference_does():
    x, y = _data()
    attack = AdapBlend(AdapBlendParams(poison_rate=0.1), SHAPE, seed=3)
    ps = attack.poison(x, y, 10, default_rate=0.5, seed=7)
    payload, cover = ps.poisoned, ps.other["cover"]
    assert len(payload) == 40 and len(cover) == 40  # cover rate = the poison rate by default
    assert not set(payload.tolist()) & set(cover.tolist())
    assert (y[payload] != 0).all() and (ps.y[payload] == 0).all()  # dirty-label payload, target 0
    assert torch.equal(ps.y[cover], y[cover])  # cover keeps its true label
    touched = torch.cat([payload, cover])
    rest = torch.ones(len(y), dtype=torch.bool)
    rest[touched] = False
    assert torch.equal(ps.x[rest], x[rest]) and torch.equal(ps.y[rest], y[rest])
    # each triggered training image carries the pattern on exactly half of its 16 pieces, at alpha 0.15
    for i in touched.tolist():
        changed = (ps.x[i] != x[i]).any(0).reshape(4, 8, 4, 8).permute(0, 2, 1, 3).reshape(16, -1).any(1)
        assert int(changed.sum()) == 8
        expect = masked_blend(x[i], attack.pattern, torch.ones(32, 32), 0.15)
        on = (ps.x[i] != x[i]).any(0)
        assert torch.allclose(ps.x[i][:, on], expect[:, on])
    # at test time the whole pattern, at test_alpha 0.2
    assert torch.allclose(attack.apply(x[:2]), 0.8 * x[:2] + 0.2 * attack.pattern, atol=1e-6)
    again = attack.poison(x, y, 10, default_rate=0.5, seed=7)
    assert torch.equal(again.x, ps.x) and torch.equal(again.other["cover"], cover)  # a function of its seed


def test_adap_patch_gives_each_training_sample_one_weak_patch_and_tests_with_two():
    x, y = _data()
    attack = AdapPatch(AdapPatchParams(poison_rate=0.05), SHAPE, seed=3)
    ps = attack.poison(x, y, 10, default_rate=0.5, seed=7)
    payload, cover = ps.poisoned, ps.other["cover"]
    assert len(payload) == 20 and len(cover) == 40  # cover rate twice the poison rate by default
    regions = [attack.masks[j].bool() for j in range(4)]
    for idx in (payload, cover):
        for j, block in enumerate(split_in_order(idx, 4)):
            for i in block.tolist():
                on = (ps.x[i] != x[i]).any(0)
                assert on.any() and not (on & ~regions[j]).any()  # only patch j, nowhere else
                alpha = (0.5, 0.2, 0.5, 0.3)[j]
                expect = (1 - alpha) * x[i] + alpha * attack.marks[j]
                assert torch.allclose(ps.x[i][:, regions[j]], expect[:, regions[j]], atol=1e-6)
    assert torch.equal(ps.y[cover], y[cover]) and (ps.y[payload] == 0).all()
    test = attack.apply(x[:1])[0]
    both = regions[0] | regions[2]
    assert torch.allclose(test[:, both], (attack.marks[0] + attack.marks[2])[:, both])  # full opacity
    assert torch.equal(test[:, ~both], x[0][:, ~both])


def test_cover_indices_never_overlap_the_payload():
    taken = torch.tensor([0, 5, 9])
    c = cover_indices(10, 0.5, taken, seed=1)
    assert len(c) == 5 and not set(c.tolist()) & {0, 5, 9}
    assert len(cover_indices(10, 1.0, taken, seed=1)) == 7  # never more than is free


def test_bad_adaptive_knobs_are_refused_when_built():
    with pytest.raises(ValueError, match="perfect square"):
        AdapBlendParams(pieces=15)
    with pytest.raises(ValueError, match="test_patches"):
        AdapPatchParams(test_patches=(4,))
    with pytest.raises(ValueError, match="equal pieces"):
        AdapBlend(AdapBlendParams(pieces=25), SHAPE, 0)


def test_all_leaves_adaptive_attacks_out_and_adaptive_selects_them():
    adaptive = ATTACKS.resolve("adaptive")
    assert {"adap-blend", "adap-patch"} <= set(adaptive)
    assert not set(adaptive) & set(ATTACKS.resolve("all"))
    assert set(ATTACKS.resolve("all,adaptive")) == set(ATTACKS.names())
    assert ATTACKS.resolve("badnets,adap-blend") == ["badnets", "adap-blend"]
    assert all(ATTACKS.get(a).adaptive for a in adaptive)


@pytest.mark.slow
@pytest.mark.parametrize("attack", ["adap-blend", "adap-patch"])
def test_adaptive_attacks_run_through_the_engine(tmp_path, attack):
    from bench.core.config import SuiteConfig
    from bench.run.grid import Selection, plan_grid, run_serial
    from bench.store import Store

    suite = SuiteConfig(name="adaptive", models=["tiny-resnet"], datasets=["shapes-smoke"], settings=["supervised"],
                        control_datasets=[], setting_params={"supervised": {"steps": 10, "batch_size": 32}})  # fmt: skip
    summary = run_serial(plan_grid(suite, Selection(attacks=attack, defenses="none")), Store(tmp_path))
    assert summary.failed == []
    (rec,) = summary.records
    poison = rec["attack"]["poison"]
    assert poison["n_poisoned"] > 0 and poison["n_cover"] > 0
    assert rec["deviations"]["attack"]  # its departures from the reference ride in the record
