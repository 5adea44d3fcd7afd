"""Leaderboards from records: tables, HTML, and the --check that CI runs."""

import os
import subprocess
import sys

import pandas as pd
import pytest

from bench import leaderboard


def _record(attack: str, method: str, seed: int, ca: float, asr: float | None, **extra) -> dict:
    return {
        "schema": 1,
        "trial_id": f"{attack}-{method}-{seed}",
        "artifact_id": f"a-{attack}-{seed}",
        "status": "ok",
        "config": {
            "suite": "t",
            "model": "m",
            "dataset": "d",
            "setting": "s",
            "attack": attack,
            "defense": method,
            "seed": seed,
        },
        "metrics": {
            "ca": ca,
            "asr": asr,
            "ra": None if asr is None else 1 - asr,
            "ca_retention": 1.0,
            "der": 0.5,
            "control": {"colors": 0.9},
        },
        "cost": {"wall_s": 1.0, "clean_samples": 10, "triggered_samples": 0},
        "created": "2026-11-28T00:00:00+00:00",
        **extra,
    }


RECORDS = [
    _record("badnets", "none", 0, 0.90, 0.95),
    _record("badnets", "none", 1, 0.92, 0.97),
    _record(
        "badnets",
        "tbar",
        0,
        0.88,
        0.02,
        curve=[{"alpha": 0.0, "ca": 0.9, "asr": 0.9}, {"alpha": 1.0, "ca": 0.88, "asr": 0.02}],
        defense={"alpha": 1.0},
    ),
    _record("none", "none", 0, 0.93, None),
]


def test_main_table_averages_seeds_and_shows_missing_cells_as_na():
    agg = leaderboard.aggregate(leaderboard.records_frame(RECORDS))
    head, rows = leaderboard.main_rows(agg, ["none", "tbar"])
    by_attack = {r[3]: r for r in rows}
    assert by_attack["badnets"][4] == "91.0 ± 1.0"  # mean ± std over the two seeds
    assert by_attack["none"][head.index("tbar CA")] == "n/a"  # no record: shown, not dropped
    csv = pd.read_csv(__import__("io").StringIO(leaderboard.csv_text(RECORDS)))
    assert list(csv.columns) == leaderboard.CSV_COLUMNS
    assert csv.loc[(csv.attack == "badnets") & (csv.defense == "none"), "n_seeds"].item() == 2


def test_html_is_self_contained_with_plots():
    page = leaderboard.render_html(RECORDS, "t")
    assert page.count("data:image/png;base64,") == 2  # trade-off + TBAR curves
    assert "<script" not in page and "http" not in page.replace("https://", "")  # nothing fetched
    assert "n/a" in page


def test_compare_flags_edits_beyond_tolerance_and_missing_rows():
    fresh = leaderboard.aggregate(leaderboard.records_frame(RECORDS))
    assert leaderboard.compare(fresh.copy(), fresh, tol=0.02) == []
    edited = fresh.copy()
    edited.loc[edited.defense == "tbar", "asr"] += 0.05
    edited.loc[edited.defense == "tbar", "ca"] += 0.01  # within tolerance: not reported
    problems = leaderboard.compare(edited, fresh, tol=0.02)
    assert len(problems) == 1 and "m/d/s/badnets/tbar asr" in problems[0]
    counts = fresh.copy()
    counts.loc[counts.defense == "tbar", "clean_samples"] += 1  # counts must match exactly
    assert any("clean_samples" in p for p in leaderboard.compare(counts, fresh, tol=0.02))
    assert any("missing from the committed" in p for p in leaderboard.compare(fresh.iloc[1:], fresh, tol=0.02))


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
