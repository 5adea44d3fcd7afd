"""Leaderboards from records: tables, HTML, and the --check that CI runs."""

import os
import subprocess
import sys

import pandas as pd
import pytest

from bench import leaderboard


def _record(attack: str, method: str, seed: int, ca: float, asr: float | None, bd_asr: float | None = 0.95, **extra) -> dict:
    matched = {
        lvl: {"knob": 1.0, "ca": ca, "asr": asr, "ra": None if asr is None else 1 - asr, "control_mean": 0.9}
        for lvl in ("0.99", "0.95", "0.90")
    }
    return {
        "schema": 1,
        "trial_id": f"{attack}-{method}-{seed}",
        "artifact_id": f"a-{attack}-{seed}",
        "status": "ok",
        "config": {"suite": "t", "model": "m", "dataset": "d", "setting": "finetune", "attack": attack,
                   "defense": method, "seed": seed},
        "metrics": {
            "ca": ca,
            "asr": asr,
            "ra": None if asr is None else 1 - asr,
            "ca_retention": 1.0,
            "der": 0.5,
            "control": {"colors": 0.9},
            "auc_90": asr,
            "backdoored": {"ca": 0.9, "asr": None if attack == "none" else bd_asr},
        },
        "matched": matched,
        "cost": {"wall_s": 1.0, "clean_samples": 10, "triggered_samples": 0},
        "created": "2026-11-28T00:00:00+00:00",
        **extra,
    }  # fmt: skip


RECORDS = [
    _record("badnets", "none", 0, 0.90, 0.95),
    _record("badnets", "none", 1, 0.92, 0.97, bd_asr=0.97),
    _record("badnets", "none", 2, 0.91, 0.20, bd_asr=0.20),  # this seed's attack did not take
    _record("badnets", "tbar", 0, 0.88, 0.02, curve=[{"knob": 0.0, "ca": 0.9, "asr": 0.9}, {"knob": 1.0, "ca": 0.88, "asr": 0.02}],
            knob={"name": "alpha", "chosen": 1.0, "continuous": True}),
    _record("badnets", "tbar", 1, 0.89, 0.04, bd_asr=0.97),
    _record("none", "none", 0, 0.93, None),
]  # fmt: skip


def test_cells_average_the_seeds_whose_attack_took_with_a_t_interval():
    from bench import tables

    agg = tables.aggregate(tables.records_frame(RECORDS))
    bd = agg[(agg.attack == "badnets") & (agg.defense == "none")].iloc[0]
    assert (bd.n_seeds, bd.n_took) == (3, 2)  # seed 2 did not take: shown, not averaged
    assert abs(bd.ca - 0.91) < 1e-12
    # two seeds: half-width t(0.975, 1) * sd / sqrt(2) = 12.706 * 0.01414 / 1.414
    assert abs(bd.ca_ci - 12.7062 * 0.0141421 / 2**0.5) < 1e-3
    summ = tables.summary(tables.records_frame(RECORDS)).set_index("defense")
    # `none` is averaged over exactly tbar's rows: seeds 0 and 1
    assert summ.loc["tbar", "k"] == 2 and abs(summ.loc["tbar", "none_asr"] - 0.96) < 1e-12


def test_markdown_names_why_a_cell_is_na_and_defines_its_terms():
    board = leaderboard.build(RECORDS, "t")
    md = leaderboard.render_markdown(board)
    assert "ASR at 95% clean-accuracy retention" in md and "**DER**" in md
    assert "| badnets | tbar | 2/2 |" in md
    table = leaderboard.group_table(board, ("m", "d", "finetune"))
    none_row = next(r for r in table["rows"] if r["attack"] == "none")
    tbar = none_row["cells"][table["defenses"].index("tbar")]
    assert tbar["na"] == "needs a trigger"  # a known-trigger defense on the clean reference
    csv = pd.read_csv(__import__("io").StringIO(leaderboard.csv_text(board)))
    assert list(csv.columns) == leaderboard.CSV_COLUMNS


def test_html_is_self_contained_sortable_and_has_provenance():
    page = leaderboard.render_html(leaderboard.build(RECORDS, "t"))
    assert 'id="provenance"' in page and "sortable-table" in page and "<script>" in page
    assert "src=\"http" not in page and "href=\"http" not in page  # nothing is fetched
    assert "data:image/png;base64," in page  # the plots are embedded
    assert "Definitions" in page and "DER" in page


def test_check_allows_the_committed_interval_and_flags_edits_beyond_it():
    from bench.check import compare

    fresh = leaderboard.build(RECORDS, "t").agg
    assert compare(fresh.copy(), fresh, floor=0.01) == []
    edited = fresh.copy()
    row = (edited.attack == "badnets") & (edited.defense == "none")
    edited.loc[row, "ca"] += 0.005  # within the floor
    assert compare(edited, fresh, floor=0.01) == []
    edited.loc[row, "asr"] += edited.loc[row, "asr_ci"] + 0.01  # beyond its own CI
    problems = compare(edited, fresh, floor=0.01)
    assert len(problems) == 1 and "m/d/finetune/badnets/none asr" in problems[0]
    counts = fresh.copy()
    counts.loc[counts.defense == "tbar", "clean_samples"] += 1  # counts must match exactly
    assert any("clean_samples" in p for p in compare(counts, fresh, floor=0.01))
    assert any("missing from the committed" in p for p in compare(fresh.iloc[1:], fresh, floor=0.01))


CHECK_SUITE = """
name: tinycheck
models: [tiny-resnet]
datasets: [shapes]
settings: [supervised]
attacks: [badnets]
defenses: [none, tbar]
control_datasets: []
setting_params: {supervised: {steps: 30, lr: 0.003, batch_size: 64}}
defense_params: {tbar: {steps: 5, alpha_points: 5, alpha_max: 2.0}}
"""


@pytest.mark.slow
def test_leaderboard_check_passes_on_a_rerun_and_fails_on_a_hand_edit(tmp_path):
    suite = tmp_path / "tinycheck.yaml"
    suite.write_text(CHECK_SUITE)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "BENCH_THREADS": "1"}

    def bench(*args):
        return subprocess.run(
            [sys.executable, "-m", "bench.cli", *args],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )

    lb = tmp_path / "lb"
    made = bench("run", "--suite", str(suite), "--executor", "serial", "--results", "res", "--leaderboards", str(lb))
    assert made.returncode == 0, made.stderr
    check = ["leaderboard", "--check", "--suite", str(suite), "--leaderboards", str(lb), "--executor", "serial"]
    ok = bench(*check)
    assert ok.returncode == 0, ok.stderr
    assert "check passed" in ok.stderr

    csv = lb / "tinycheck.csv"
    table = pd.read_csv(csv)
    table.loc[table.defense == "tbar", "ca"] = table.loc[table.defense == "tbar", "ca"] + 0.1  # a hand edit
    table.to_csv(csv, index=False)
    bad = bench(*check)
    assert bad.returncode == 1
    assert "check failed" in bad.stderr and "badnets/tbar ca" in bad.stderr
    assert pd.read_csv(csv).equals(table)  # --check never rewrites the committed file
