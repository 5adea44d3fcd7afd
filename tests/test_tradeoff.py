"""Matched-retention selection, refinement and the area summary (methods.md section 5)."""

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from bench.core import curves, tradeoff
from bench.core.tradeoff import IDENTITY, KnobSpec


def _pts(rows):
    return [{"knob": k, "ca": ca, "asr": asr} for k, ca, asr in rows]


def test_select_takes_lowest_asr_among_feasible_and_ties_go_to_the_weakest():
    pts = _pts([(0, 0.90, 0.95), (1, 0.89, 0.50), (2, 0.86, 0.10), (3, 0.80, 0.00)])
    assert pts[tradeoff.select(pts, 0.90, 0.95)]["knob"] == 2  # 0.855 line: 3 infeasible
    assert pts[tradeoff.select(pts, 0.90, 0.99)]["knob"] == 0  # 0.891 line: only the first is feasible
    assert pts[tradeoff.select(pts, 0.90, 0.98)]["knob"] == 1  # 0.882 line
    tie = _pts([(0, 0.9, 0.9), (1, 0.9, 0.1), (2, 0.9, 0.1)])
    assert tradeoff.select(tie, 0.9, 0.95) == 1


def test_refine_bisects_towards_the_crossing_and_moves_smoothly():
    # CA falls linearly from 1.0 (k=0) to 0.6 (k=4); ASR falls linearly from 1 to 0.
    def ev(k):
        return {"ca": 1.0 - 0.1 * k, "asr": max(0.0, 1.0 - 0.25 * k)}

    pts = [{"knob": float(k), **ev(k)} for k in range(5)]
    # at R = 0.95 the exact crossing is k = 0.5; the grid alone would choose k = 0
    assert pts[tradeoff.select(pts, 1.0, 0.95)]["knob"] == 0.0
    refined = tradeoff.refine(pts, 1.0, [0.95], ev, steps=6)
    best = refined[tradeoff.select(refined, 1.0, 0.95)]
    assert 0.5 - 1 / 64 <= best["knob"] <= 0.5
    assert [p["knob"] for p in refined] == sorted(p["knob"] for p in refined)


def test_auc_of_a_defense_that_does_nothing_is_the_backdoored_asr():
    pts = _pts([(IDENTITY, 0.9, 0.97), ("defended", 0.9, 0.97)])
    assert math.isclose(tradeoff.auc(pts, 0.9, lambda i: 0.97), 0.97)


def test_auc_integrates_the_step_function_over_retention():
    # identity (ret 1.0, ASR 1.0); a point at retention 0.95 with ASR 0.2; one at 0.85 with ASR 0.
    pts = _pts([(0, 1.0, 1.0), (1, 0.95, 0.2), (2, 0.85, 0.0)])
    test = {0: 1.0, 1: 0.2, 2: 0.0}
    # r in (0.95, 1.0]: only the identity is feasible -> 1.0; r in [0.90, 0.95]: point 1 -> 0.2
    assert math.isclose(tradeoff.auc(pts, 1.0, lambda i: test[i]), (0.05 * 1.0 + 0.05 * 0.2) / 0.1)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.floats(0.0, 1.0, allow_nan=False), st.floats(0.0, 1.0, allow_nan=False)), min_size=1, max_size=12
    ),
    st.floats(0.5, 1.0),
)
def test_selection_is_always_feasible_or_the_first_point(rows, level):
    pts = [{"knob": i, "ca": ca, "asr": asr} for i, (ca, asr) in enumerate(rows)]
    ca_ref = pts[0]["ca"]
    i = tradeoff.select(pts, ca_ref, level)
    assert i == 0 or pts[i]["ca"] >= level * ca_ref - 1e-12
    # nothing feasible has a lower ASR
    assert all(p["asr"] >= pts[i]["asr"] for p in pts if p["ca"] >= level * ca_ref - 1e-12) or i == 0


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.floats(0.0, 1.0), st.floats(0.0, 1.0)), min_size=1, max_size=8))
def test_auc_lies_between_the_smallest_and_largest_test_asr(rows):
    pts = [{"knob": 0, "ca": 1.0, "asr": 1.0}] + [{"knob": i + 1, "ca": ca, "asr": a} for i, (ca, a) in enumerate(rows)]
    test = [p["asr"] for p in pts]
    v = tradeoff.auc(pts, 1.0, lambda i: test[i])
    assert min(test) - 1e-9 <= v <= max(test) + 1e-9


def test_engine_curve_with_a_continuous_knob_reports_matched_points_and_leaves_the_chosen_state():
    """trade_off drives a fake model whose 'state' is the knob value."""
    state = {"k": 0.0}

    def at(k):
        state["k"] = 0.0 if k == IDENTITY else k

    def val():
        k = state["k"]
        return {"ca": 1.0 - 0.1 * k, "asr": max(0.0, 1.0 - 0.5 * k), "control": {"c": 1.0 - 0.05 * k}}

    def test():
        k = state["k"]
        return {"ca": 1.0 - 0.1 * k, "asr": max(0.0, 1.0 - 0.5 * k), "ra": 0.0, "control": {"c": 1.0}}

    spec = KnobSpec("alpha", [0.0, 1.0, 2.0], at, chosen=1.0, identity=0.0, continuous=True)
    out = curves.trade_off(spec, curves.Evaluator(val, test), val(), lambda: None, lambda: None, refine_steps=5)
    m = out["matched"]
    assert set(m) == {"0.99", "0.95", "0.90"}
    # exact crossings: CA = 1 - 0.1 k >= R  <=>  k <= 10 (1 - R)
    for level, k in (("0.99", 0.1), ("0.95", 0.5), ("0.90", 1.0)):
        assert k - 1 / 32 <= m[level]["knob"] <= k + 1e-9, (level, m[level]["knob"])
        assert m[level]["val_retention"] >= float(level) - 1e-9
    assert state["k"] == 1.0  # left at the defense's own choice
    assert 0.0 <= out["auc_90"] <= 1.0
    assert out["curve"][0]["knob"] == 0.0 and all("control_mean" in p for p in out["curve"])


def test_the_blind_point_is_the_strongest_knob_keeping_retention_whatever_the_asr():
    """ASR is lowest at k = 0.5 but CA keeps 90% up to k = 1: the oracle (lowest validation ASR)
    takes 0.5, the blind point (no ASR read) takes the boundary, refined towards k = 1."""
    state = {"k": 0.0}

    def at(k):
        state["k"] = 0.0 if k == IDENTITY else k

    def val():
        k = state["k"]
        return {"ca": 1.0 - 0.1 * k, "asr": abs(k - 0.5), "control": {}}

    def test():
        return {**val(), "ra": 0.0}

    spec = KnobSpec("alpha", [0.0, 0.5, 2.0], at, chosen=0.5, identity=0.0, continuous=True)
    out = curves.trade_off(spec, curves.Evaluator(val, test), val(), lambda: None, lambda: None, refine_steps=6)
    assert out["matched"]["0.90"]["knob"] == 0.5
    blind = out["matched_blind"]["0.90"]["knob"]
    assert 1.0 - 1.5 / 64 <= blind <= 1.0 and out["matched_blind"]["0.90"]["val_retention"] >= 0.9 - 1e-12
    assert abs(out["matched_blind"]["0.90"]["asr"] - abs(blind - 0.5)) < 1e-12  # its own test metrics


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(0.0, 1.0, allow_nan=False), min_size=1, max_size=12), st.floats(0.5, 1.0))
def test_the_blind_point_is_feasible_and_nothing_stronger_is(cas, level):
    pts = [{"knob": i, "ca": ca, "asr": None} for i, ca in enumerate([1.0, *cas])]
    i = tradeoff.strongest_feasible(pts, 1.0, level)
    assert pts[i]["ca"] >= level - 1e-12
    assert all(p["ca"] < level - 1e-12 for p in pts[i + 1 :])
