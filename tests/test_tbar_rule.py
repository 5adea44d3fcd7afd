from bench.core.config import from_dict
from defenses.tbar import TbarParams, select_alpha


def _curve(points):
    return [{"alpha": a, "ca": ca, "asr": asr} for a, ca, asr in points]


def test_picks_smallest_asr_subject_to_ca_constraint():
    c = _curve([(0, 0.9, 0.99), (1, 0.88, 0.5), (2, 0.86, 0.02), (3, 0.80, 0.0)])
    # 0.95 * 0.9 = 0.855: alpha 3 is infeasible, alpha 2 has the lowest feasible ASR
    assert c[select_alpha(c, 0.9, 0.95)]["alpha"] == 2


def test_ties_go_to_the_smaller_alpha():
    c = _curve([(0, 0.9, 0.9), (1, 0.9, 0.0), (2, 0.9, 0.0)])
    assert select_alpha(c, 0.9, 0.95) == 1


def test_no_feasible_point_falls_back_to_the_first():
    c = _curve([(0, 0.5, 0.9), (1, 0.4, 0.0)])
    assert select_alpha(c, 0.9, 0.95) == 0


def test_default_grid_reaches_four_in_21_points():
    a = from_dict(TbarParams, {}, "tbar").alphas()
    assert len(a) == 21 and a[0] == 0.0 and abs(a[-1] - 4.0) < 1e-6 and abs(a[17] - 3.4) < 1e-6
