"""TBAR analyses: the disentanglement error, cosine matrices, efficiency rows, and the
analyze/report commands on a tiny grid."""

import json
import os
import subprocess
import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.study import analysis


def _fake_predict(shift_clean: float, shift_trig: float):
    """Predictions of a fake model family: a label flips when a weighted sum crosses 1."""
    base = {"clean": torch.arange(40) % 4, "triggered": torch.arange(30) % 3}

    def predict_at(a_c: float, a_t: float, d: str) -> torch.Tensor:
        pred = base[d].clone()
        s = a_c * shift_clean + a_t * shift_trig
        if s > 1:
            pred[: int(10 * min(s, 3))] += 1
        return pred

    return predict_at


@given(st.floats(0, 2), st.floats(0, 2))
@settings(max_examples=30, deadline=None)
def test_xi_is_zero_at_the_origin_and_bounded(shift_c, shift_t):
    f = _fake_predict(shift_c, shift_t)
    assert analysis.disentanglement_error(f, 0.0, 0.0) == 0.0
    for a_c, a_t in [(0.5, 0.5), (1.0, 1.0), (0.0, 1.0)]:
        assert 0.0 <= analysis.disentanglement_error(f, a_c, a_t) <= 2.0


def test_xi_counts_disagreement_on_each_distribution():
    # The joint model differs from the clean-only model on 10 of 40 clean inputs and
    # from the trigger-only model on 10 of 30 triggered inputs.
    def predict_at(a_c, a_t, d):
        n = 40 if d == "clean" else 30
        pred = torch.zeros(n, dtype=torch.long)
        if a_c > 0 and a_t > 0:
            pred[:10] = 1
        return pred

    assert analysis.disentanglement_error(predict_at, 1.0, 1.0) == pytest.approx(10 / 40 + 10 / 30)


def test_cosine_matrix_has_a_unit_diagonal_and_is_symmetric():
    torch.manual_seed(0)
    vecs = {n: {"w": torch.randn(5, 3), "b": torch.randn(3)} for n in ("clean", "badnets", "blended")}
    names, mat = analysis.cosine_matrix(vecs)
    assert names == ["clean", "badnets", "blended"]
    for i in range(3):
        assert mat[i][i] == pytest.approx(1.0)
        for j in range(3):
            assert mat[i][j] == pytest.approx(mat[j][i])
            assert -1.0 - 1e-9 <= mat[i][j] <= 1.0 + 1e-9


def test_budget_configs_scale_only_the_training_length():
    from bench.core.config import SuiteConfig
    from bench.run.grid import Selection, plan_grid

    def base(setting_params):
        suite = SuiteConfig(name="budget", control_datasets=[], setting_params={"finetune": setting_params})
        return plan_grid(suite, Selection(attacks="wanet", defenses="none")).artifacts[0]

    cell = base({"epochs": 12, "lr": 3e-4})
    out = dict(analysis.budget_configs(cell, [0.25, 1, 2]))
    assert [c.setting_params.epochs for c in out.values()] == [3.0, 12, 24]
    assert out[1] == cell and out[1].id == cell.id  # 1x is the suite's own artifact
    assert len({c.id for c in out.values()}) == 3
    assert all(c.setting_params.lr == 3e-4 for c in out.values())
    assert cell.setting_params.epochs == 12  # the base spec is not changed
    steps = dict(analysis.budget_configs(base({"steps": 900}), [0.5, 2]))
    assert [c.setting_params.steps for c in steps.values()] == [450, 1800]


def test_efficiency_rows_use_only_cells_whose_attack_worked():
    def rec(attack, defense, bd_asr, clean, trig):
        return {"status": "ok", "config": {"attack": attack, "defense": defense},
                "metrics": {"backdoored": {"asr": bd_asr}, "asr": 0.1, "ca_retention": 0.9, "asr_removal": 0.8},
                "cost": {"clean_samples": clean, "triggered_samples": trig, "wall_s": 2.0}}  # fmt: skip

    rows = analysis.efficiency_rows(
        [
            rec("badnets", "tbar", 0.97, 0, 147),
            rec("wanet", "tbar", 0.02, 0, 147),
            rec("badnets", "finetune", 0.97, 2000, 0),
        ]
    )
    by = {r["defense"]: r for r in rows}
    assert by["tbar"]["cells"] == 1 and by["tbar"]["samples"] == 147
    assert by["finetune"]["samples"] == 2000


SUITE = """
name: tinyana
models: [tiny-clip]
datasets: [shapes-smoke]
settings: [finetune]
attacks: [blended]
defenses: [none, tbar, finetune]
control_datasets: [colors-smoke]
# blended, 80 steps at lr 2e-3: ASR 0.76 (badnets here: 0.19-0.41, below the 50% that counts as taken,
# and analyses refuse cells whose attack did not take)
setting_params: {finetune: {steps: 80, lr: 0.002}}
defense_params: {tbar: {steps: 5, alpha_points: 4}, finetune: {budget_x: 1, epochs: 1}}
"""


@pytest.mark.slow
def test_analyze_and_report_run_from_the_store(tmp_path):
    (tmp_path / "tinyana.yaml").write_text(SUITE)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "BENCH_THREADS": "2"}

    def bench(*args):
        r = subprocess.run([sys.executable, "-m", "bench.cli", *args, "--suite", "tinyana.yaml", "--results", "res"],
                           cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)  # fmt: skip
        assert r.returncode == 0, r.stderr[-3000:]
        return r

    bench("run", "--executor", "serial", "--leaderboards", "lb")
    bench("analyze", "alpha", "--attacks", "blended", "--out", "lb/tbar-analysis")
    bench("analyze", "disentanglement", "--attacks", "badnets,blended", "--grid", "0,1", "--steps", "5",
          "--out", "lb/tbar-analysis")  # fmt: skip
    bench("report", "tbar", "--out", "lb")
    stored = {p.name: json.loads(p.read_text()) for p in (tmp_path / "res" / "analysis").glob("*.json")}
    alpha = next(v for k, v in stored.items() if k.startswith("alpha-"))
    grid = [r["alpha"] for r in alpha["rows"]]
    # the chosen alpha is refined by bisection between grid points, so it lies within the grid's span
    assert len(grid) == 4 and min(grid) <= alpha["chosen_alpha"] <= max(grid)
    assert {"val_ca", "val_asr", "test_ca", "test_asr", "control"} <= set(alpha["rows"][0])
    dis = next(v for k, v in stored.items() if k.startswith("disentanglement-"))
    assert dis["xi"]["badnets"][0][0] == 0.0  # xi(0, 0) = 0: both sides are theta_pre
    assert [dis["cosine"]["matrix"][i][i] for i in range(3)] == pytest.approx([1.0, 1.0, 1.0])
    report = (tmp_path / "lb" / "tbar-report.md").read_text()
    assert "The paper's claims, point by point" in report and "tbar-analysis/alpha-" in report
    assert list((tmp_path / "lb" / "tbar-analysis").glob("*.png"))


def _rung(model, params, defense, asr95, ci, bd=0.9):
    return {"model": model, "defense": defense, "rows": 3, "visual_params": params, "asr_r95": asr95,
            "asr_r95_ci": ci, "asr_r90": asr95, "asr_r90_ci": ci, "ca_retention": 0.96, "ca_retention_ci": 0.01,
            "control_retention": 0.9, "control_retention_ci": 0.05, "bd_asr": bd, "bd_asr_ci": 0.02,
            "bd_ca": 0.85, "bd_ca_ci": 0.01}  # fmt: skip


def test_report_scale_section_states_the_trend_and_the_noise():
    from bench.study.report import scale_section

    falling = {"rows": [_rung("s", 1e5, "tbar", 0.60, 0.05), _rung("m", 1e6, "tbar", 0.30, 0.05),
                        _rung("l", 5e6, "tbar", 0.02, 0.01)],
               "xi": [{"model": "l", "variant": "triggered", "xi_11": 0.4, "xi_11_ci": 0.1, "n": 3}]}  # fmt: skip
    text = "\n".join(scale_section(falling))
    assert "falls at every step" in text and "do not overlap" in text
    # without a fitted slope nothing is claimed, however far apart the end rungs are
    assert "no slope could be fitted" in text and "can neither support nor refute" in text
    assert "97.8%: holds" in text  # removal at 95% for the largest rung: 1 - 0.02 / 0.9
    assert "66.7%: does not hold" in text and "0.40 ± 0.10" in text
    noisy = {"rows": [_rung("s", 1e5, "tbar", 0.50, 0.30), _rung("l", 5e6, "tbar", 0.40, 0.30)], "xi": []}
    text = "\n".join(scale_section(noisy))
    assert "CIs overlap" in text and "can neither support nor refute" in text
    assert "_none stored" in "\n".join(scale_section(None))

    # the slope over rung means decides, on its Holm-adjusted p
    def trend(removal, removal_ci, asr=-0.1, p=0.01, p_holm=0.02):
        return [{"defense": "tbar", "rungs": 4, "n": 12, "removal_r95_slope": removal, "removal_r95_slope_ci": removal_ci,
                 "removal_r95_p": p, "removal_r95_p_holm": p_holm, "asr_r95_slope": asr, "asr_r95_slope_ci": 0.05,
                 "asr_r95_p": 0.01, "bd_asr_slope": 0.0, "bd_asr_slope_ci": 0.01, "bd_asr_p": 1.0}]  # fmt: skip

    text = "\n".join(scale_section(noisy | {"trend": trend(0.1, 0.05)}))
    assert "over the means of these 4 rungs (the rung is the unit: 12 rows, 2 degrees of freedom" in text
    assert "removal at 95% changes by +10.0 ± 5.0 points per 10x" in text
    assert "ASR@95 by -10.0 ± 5.0" in text and "supports the expectation" in text
    # significant alone, not after Holm: no claim
    assert "can neither support nor refute" in "\n".join(scale_section(noisy | {"trend": trend(0.1, 0.08, p=0.03, p_holm=0.12)}))
    base = trend(0.12, 0.05)[0] | {"defense": "finetune", "vs_tbar_rungs": 4, "vs_tbar_slope": -0.02,
                                   "vs_tbar_slope_ci": 0.2, "vs_tbar_p": 0.7, "vs_tbar_p_holm": 0.7}  # fmt: skip
    text = "\n".join(scale_section(noisy | {"trend": [*trend(0.1, 0.05), base]}))
    assert "finetune +12.0 ± 5.0 (p = 0.01)" in text
    assert "Holm-adjusted over the 2 defenses fitted p = 0.02" in text
    assert "finetune -2.0 ± 20.0 points per 10x (adjusted p = 0.7): no difference from finetune's trend" in text
    faster = base | {"vs_tbar_slope": 0.3, "vs_tbar_slope_ci": 0.1, "vs_tbar_p_holm": 0.01}
    assert "grows faster with size than finetune's" in "\n".join(scale_section(noisy | {"trend": [*trend(0.1, 0.05), faster]}))
    # ASR@95 may fall only because the attack itself weakens with size: removal decides
    assert "contradicts" in "\n".join(scale_section(noisy | {"trend": trend(-0.1, 0.05, asr=-0.2)}))
    # a rung that never learned the task is shown but is not evidence about the trend
    broken = _rung("xs", 1e4, "tbar", 0.99, 0.01) | {"bd_ca": 0.2}
    text = "\n".join(scale_section({"rows": [broken, *falling["rows"]], "xi": []}))
    assert "not evidence (victim CA < 50%)" in text
    assert "50x in parameters" in text and "falls at every step" in text


def test_report_scale_sections_one_per_attack_newest_first():
    from bench.study.report import scale_sections

    def one(attack, created, asr):
        rows = [_rung("s", 1e5, "tbar", asr, 0.05), _rung("l", 5e6, "tbar", asr / 10, 0.01)]
        return {"kind": "scale", "suite": "scale", "attack": attack, "created": created, "rows": rows, "xi": []}

    text = "\n".join(scale_sections([one("sig", "2026-01-02", 0.5), one("blended", "2026-01-01", 0.6),
                                      one("blended", "2026-01-03", 0.7)]))  # fmt: skip
    assert text.count("## Does the premise need scale?") == 1
    assert text.index("### blended") < text.index("### sig")
    assert "tbar-analysis/scale-scale-blended.png" in text and "tbar-analysis/scale-scale-sig.png" in text
    assert "70.0" in text and "60.0" not in text  # the newest blended analysis wins
    assert "_none stored" in "\n".join(scale_sections([]))
    # xi is measured on a rung where the attack never took, and said so
    extra = one("sig", "2026-01-04", 0.5) | {"xi": [{"model": "xl", "variant": "mix", "xi_11": 0.15, "xi_11_ci": 0.1,
                                                     "n": 3, "visual_params": 1e7}]}  # fmt: skip
    assert "attack took on no seed" in "\n".join(scale_sections([extra])) and "xl mix 0.15 ± 0.10" in "\n".join(scale_sections([extra]))


def test_report_disentanglement_over_seeds_separates_bias_from_trigger():
    from bench.study.report import disentanglement_over_seeds

    def one(seed, bias):
        return {"model": "tiny-clip", "seed": seed, "xi": {"blended/mix": [[0.0, 0.2], [0.1, 0.3]]},
                "target_bias": {"blended/mix": [[0.0, bias], [0.0, 0.1]]},
                "trigger_effect": {"blended/mix": [[0.0, 0.9], [0.0, 0.9]]}}  # fmt: skip

    text = "\n".join(disentanglement_over_seeds([one(0, 0.04), one(1, 0.06)]))
    assert "| tiny-clip | blended/mix | 2 | 0.30 ± 0.00 |" in text
    # mean of 4% and 6%, half-width t(0.975, 1) * 1.41 / sqrt(2) = 12.7, shown clipped to [0, 100]
    assert "5.0 (0.0-17.7) | 90.0 ± 0.0 |" in text


def test_scale_trend_fits_rung_means_and_tests_tbar_against_each_baseline():
    import math

    from bench.core.stats import holm
    from bench.study.analysis import scale_trend

    def rec(model, defense, seed, asr95, bd_asr, bd_ca=0.9):
        return {"status": "ok", "trial_id": f"{model}-{defense}-{seed}",
                "config": {"model": model, "dataset": "scenes", "setting": "finetune", "attack": "blended",
                           "defense": defense, "seed": seed},
                "metrics": {"ca": 0.8, "asr": asr95, "backdoored": {"ca": bd_ca, "asr": bd_asr}},
                "matched_blind": {"0.95": {"asr": asr95, "ca": 0.8}}}  # fmt: skip

    # (rung, seed, ASR@95, backdoored ASR) for tbar, and finetune's ASR@95 on the same rows
    pts = [("s", 0, 0.6, 0.8), ("s", 1, 0.4, 0.8), ("m", 0, 0.3, 0.9), ("m", 1, 0.1, 0.9),
           ("l", 0, 0.1, 1.0), ("l", 1, 0.0, 0.9)]  # fmt: skip
    ft = {"s": 0.7, "m": 0.6, "l": 0.2}
    records = [rec(m, "tbar", seed, a, b) for m, seed, a, b in pts]
    records += [rec(m, "finetune", seed, ft[m], b) for m, seed, _, b in pts]
    records += [rec("xs", "tbar", 0, 0.99, 0.99, bd_ca=0.2),  # a rung that never learned the task
                rec("l", "tbar", 2, 0.3, 0.3)]  # an attack that did not take  # fmt: skip
    rows = [{"model": "s", "visual_params": 1e5, "bd_ca": 0.9}, {"model": "m", "visual_params": 1e6, "bd_ca": 0.9},
            {"model": "l", "visual_params": 1e7, "bd_ca": 0.9}, {"model": "xs", "visual_params": 1e4, "bd_ca": 0.2}]  # fmt: skip
    tbar, fine = scale_trend(records, rows)
    assert (tbar["defense"], tbar["n"], tbar["rungs"]) == ("tbar", 6, 3)

    def rung_means(f):
        return [sum(f(a, b) for m2, _, a, b in pts if m2 == m) / 2 for m in ("s", "m", "l")]

    # x = 5, 6, 7: the least-squares slope over three equally spaced rung means is (y_l - y_s) / 2
    for key, f in (("asr_r95", lambda a, b: a), ("removal_r95", lambda a, b: 1 - a / b), ("bd_asr", lambda a, b: b)):
        y = rung_means(f)
        assert math.isclose(tbar[f"{key}_slope"], (y[2] - y[0]) / 2, abs_tol=1e-12), key
    removal_tbar = rung_means(lambda a, b: 1 - a / b)
    removal_ft = [sum(1 - ft[m] / b for m2, _, _, b in pts if m2 == m) / 2 for m in ("s", "m", "l")]
    diff = [t - f for t, f in zip(removal_tbar, removal_ft, strict=True)]
    assert fine["vs_tbar_rungs"] == 3 and math.isclose(fine["vs_tbar_slope"], (diff[2] - diff[0]) / 2, abs_tol=1e-12)
    assert [tbar["removal_r95_p_holm"], fine["removal_r95_p_holm"]] == holm([tbar["removal_r95_p"], fine["removal_r95_p"]])
    assert fine["vs_tbar_p_holm"] == fine["vs_tbar_p"]  # one baseline: nothing to adjust for
