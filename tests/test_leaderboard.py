"""Leaderboards from records: tables, HTML, and the --check that CI runs."""

import os
import subprocess
import sys

import pandas as pd
import pytest

from bench.report import leaderboard


def _record(attack: str, method: str, seed: int, ca: float, asr: float | None, bd_asr: float | None = 0.95,
            model: str = "m", oracle_asr: float | None = None, **extra) -> dict:  # fmt: skip
    """A record whose blind point has test ASR `asr` and whose oracle point has `oracle_asr` (default: 0)."""
    def point(a):
        return {"knob": 1.0, "ca": ca, "asr": a, "ra": None if a is None else 1 - a, "control_mean": 0.9}

    lvls = ("0.99", "0.95", "0.90")
    oracle = None if asr is None else (0.0 if oracle_asr is None else oracle_asr)
    return {
        "schema": 1,
        "trial_id": f"{model}-{attack}-{method}-{seed}",
        "artifact_id": f"a-{attack}-{seed}",
        "status": "ok",
        "config": {"suite": "t", "model": model, "dataset": "d", "setting": "finetune", "attack": attack,
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
        "matched": {lvl: point(oracle) for lvl in lvls},
        "matched_blind": {lvl: point(asr) for lvl in lvls},
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
    from bench.report import tables

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


def test_the_headline_is_the_blind_point_and_the_oracle_is_a_labelled_column():
    board = leaderboard.build(RECORDS, "t")
    tbar = board.agg[(board.agg.attack == "badnets") & (board.agg.defense == "tbar")].iloc[0]
    assert abs(tbar.asr_r95 - 0.03) < 1e-12 and tbar.asr_r95_oracle == 0.0  # blind: the records' ASR; oracle: 0
    md = leaderboard.render_markdown(board)
    assert "blind operating point" in md and "oracle ASR@95" in md and "test ret. @95" in md
    assert "| tbar | triggered (its known trigger, labelled with the target) | the trigger and the target |" in md
    assert "tbar (knows the trigger)" in md


def test_intervals_are_clipped_to_0_100_and_retentions_are_not():
    assert leaderboard.pct(0.02, 0.05) == "2.0 (0.0-7.0)"
    assert leaderboard.pct(0.5, 0.1) == "50.0 ± 10.0"
    assert leaderboard.pct(0.98, 0.05, bounded=False) == "98.0 ± 5.0"
    board = leaderboard.build(RECORDS, "t")
    csv = pd.read_csv(__import__("io").StringIO(leaderboard.csv_text(board)))
    for m in ("ca", "asr", "asr_r95"):
        assert (csv[f"{m}_lo"].dropna() >= 0).all() and (csv[f"{m}_hi"].dropna() <= 1).all()


def _grid(cells: dict[str, list[float]], extra: dict[str, dict[str, list[float]]]) -> list[dict]:
    """Records over cells (one model each) x 3 seeds: `none` at 0.9, tbar and finetune at the
    given ASRs per cell, and `extra` defenses on some cells only."""
    recs = []
    for model, (tbar, ft) in cells.items():
        for seed in range(3):
            recs.append(_record("badnets", "none", seed, 0.9, 0.9, model=model))
            recs.append(_record("badnets", "tbar", seed, 0.88, tbar + 0.01 * seed, model=model))
            recs.append(_record("badnets", "finetune", seed, 0.88, ft + 0.01 * seed, model=model))
            for d, per_model in extra.items():
                if model in per_model:
                    recs.append(_record("badnets", d, seed, 0.88, per_model[model][0] + 0.01 * seed, model=model))
    return recs


def test_a_ranking_covers_only_shared_rows_and_its_interval_is_over_cells():
    from bench.core import stats
    from bench.report import tables

    recs = _grid({"m1": [0.10, 0.50], "m2": [0.20, 0.60], "m3": [0.30, 0.40]}, {"par": {"m1": [0.05]}})
    summ = tables.summary(tables.records_frame(recs))
    main = summ[summ.group == 0].set_index("defense")
    assert set(main.index) == {"none", "tbar", "finetune"}  # par ran on m1 only: not in the main ranking
    # cells are the unit: the mean and t interval of the three cell means (0.11, 0.21, 0.31)
    want = stats.mean_ci([0.11, 0.21, 0.31])
    assert abs(main.loc["tbar", "asr_r95"] - want.mean) < 1e-12 and abs(main.loc["tbar", "asr_r95_ci"] - want.half) < 1e-12
    assert main.loc["tbar", "unit"] == "cells" and main.loc["tbar", "k"] == 9
    side = summ[summ.group == 1].set_index("defense")
    assert set(side.index) == {"none", "tbar", "finetune", "par"} and side.loc["par", "unit"] == "seeds"
    assert abs(side.loc["tbar", "asr_r95"] - 0.11) < 1e-12  # tbar over par's rows only
    pairs = tables.pairwise(tables.records_frame(recs))
    tf = pairs[(pairs.group == 0) & (pairs.a == "finetune") & (pairs.b == "tbar")].iloc[0]
    assert tf.unit == "cells" and tf.pairs == 3  # three cells, not nine rows
    d = stats.paired([0.51, 0.61, 0.41], [0.11, 0.21, 0.31])
    assert abs(tf["diff"] - d.diff.mean) < 1e-12 and abs(tf.p - d.p) < 1e-12
    md = leaderboard.render_markdown(leaderboard.build(recs, "t"))
    assert "## Ranking over every row whose attack took" in md and "## Ranking over the 3 rows that par ran on" in md


def test_overlapping_neighbours_share_a_rank():
    from bench.report import tables

    recs = _grid({"m1": [0.10, 0.12], "m2": [0.30, 0.31], "m3": [0.20, 0.25]}, {})
    main = tables.summary(tables.records_frame(recs)).set_index("defense")
    assert main.loc["tbar", "rank"] == main.loc["finetune", "rank"] == 1 and main.loc["tbar", "tied"]
    assert main.loc["none", "rank"] == 3  # both intervals lie wholly below none's


def test_the_check_is_exact_and_fails_on_one_image_and_on_a_missing_row():
    from bench.report import check, tables

    rows = check.read_rows(check.rows_csv(tables.records_frame(RECORDS)))
    assert check.compare_rows(rows, rows.copy()) == []
    one_image = rows.copy()
    one_image.loc[one_image.defense == "tbar", "asr_r95"] += 1 / 1800  # one triggered test image
    problems = check.compare_rows(rows, one_image)
    assert len(problems) == 2 and all("asr_r95: committed" in p for p in problems)
    problems = check.compare_rows(rows, rows.iloc[1:])
    assert problems == [f"{'/'.join(map(str, rows.iloc[0][check.ROW_KEYS]))}: in the committed page, not produced by "
                        "the rerun"]  # fmt: skip
    # what --add-reference asks of another CPU kind's rerun: the same rows, whatever their values
    assert check.compare_keys(rows, one_image) == []
    assert check.compare_keys(rows, rows.iloc[1:]) == problems
    assert check.compare_keys(rows.iloc[1:], rows) == [problems[0].replace(
        "in the committed page, not produced by the rerun", "produced by the rerun, missing from the committed page")]


CHECK_SUITE = """
name: tinycheck
models: [tiny-resnet]
datasets: [shapes-smoke]
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
    page = (lb / "tinycheck.md").read_text()
    command = (f"bench run --suite {suite} --models tiny-resnet --datasets shapes-smoke --settings supervised "
               "--attacks badnets --defenses tbar --seeds 0 --leaderboards leaderboards")  # fmt: skip
    assert command in page  # the page states the command that made it, derived from its rows
    # a suite given by file finds its records by the suite's name, and regenerates the same page
    again = bench("leaderboard", "--suite", str(suite), "--results", "res", "--leaderboards", str(tmp_path / "lb2"))
    assert again.returncode == 0, again.stderr
    assert (tmp_path / "lb2" / "tinycheck-rows.csv").read_text() == (lb / "tinycheck-rows.csv").read_text()
    check = ["leaderboard", "--check", "--suite", str(suite), "--leaderboards", str(lb), "--executor", "serial"]
    ok = bench(*check)
    assert ok.returncode == 0, ok.stderr
    assert "check passed" in ok.stderr and command in ok.stderr.replace("\n", "")

    rows = lb / "tinycheck-rows.csv"
    original = rows.read_text()
    table = pd.read_csv(rows, float_precision="round_trip")
    clean_test = 1 / 500  # one clean test image of shapes-smoke
    table.loc[table.defense == "tbar", "ca"] = table.loc[table.defense == "tbar", "ca"] + clean_test  # a hand edit
    table.to_csv(rows, index=False)
    edited = rows.read_text()
    bad = bench(*check)
    assert bad.returncode == 1
    assert "check failed" in bad.stderr and "badnets/tbar/0 ca" in bad.stderr
    assert rows.read_text() == edited  # --check never rewrites the committed file
    rows.write_text(original)

    # Rows made on another CPU kind are not compared (reruns are bitwise identical within a
    # kind only): the check says so in one line and fails, until this kind's reference is added.
    table = pd.read_csv(rows, float_precision="round_trip")
    table["cpu"] = "Some Other CPU"
    table.to_csv(rows, index=False)
    other = bench(*check)
    lines = [ln for ln in other.stderr.splitlines() if ln.strip()]
    assert other.returncode == 1 and len(lines) == 1, other.stderr
    assert "no committed rows" in lines[0] and "Some Other CPU" in lines[0] and "--add-reference" in lines[0]
    added = bench(*check, "--add-reference")
    assert added.returncode == 0, added.stderr
    (ref,) = lb.glob("tinycheck-rows@*.csv")
    assert pd.read_csv(ref)["cpu"].nunique() == 1
    assert bench(*check).returncode == 0  # now compared, exactly, with this kind's reference
    ref.write_text(edited)  # the hand-edited rows (made on this kind) as its reference: the check fails
    assert bench(*check).returncode == 1


def test_an_adaptive_attack_is_paired_with_its_plain_version_seed_by_seed():
    """tbar-aware (base blended) against blended: per defense, ASR@95 paired over the seeds
    where both took, adaptive minus plain with a t interval; a seed where the adaptive attack
    did not take drops out of the pair; the page shows the table and the attacker's cost."""
    from bench.core import stats

    params = {"base": "blended"}
    plain = {("none", s): a for s, a in enumerate((0.90, 0.92, 0.94))}
    plain |= {("tbar", s): a for s, a in enumerate((0.10, 0.20, 0.15))}
    adaptive = {("none", s): a for s, a in enumerate((0.99, 0.98, 0.30))}  # seed 2 did not take
    adaptive |= {("tbar", s): a for s, a in enumerate((0.80, 0.95, 0.05))}
    recs = [_record("blended", d, s, 0.85, a, bd_asr=plain[("none", s)]) for (d, s), a in plain.items()]
    recs += [_record("tbar-aware", d, s, 0.80, a, bd_asr=adaptive[("none", s)]) for (d, s), a in adaptive.items()]
    for r in recs:
        r["config"]["attack_params"] = params if r["config"]["attack"] == "tbar-aware" else {}
    recs.append(_record("none", "none", 0, 0.87, None))
    assert leaderboard.plain_counterparts(recs) == {"tbar-aware": "blended"}
    board = leaderboard.build(recs, "t")
    a = board.adaptive.set_index("defense")
    assert list(a.index) == ["none", "tbar"] and set(a["pairs"]) == {2} and set(a["seeds"]) == {3}
    want = stats.paired([0.80, 0.95], [0.10, 0.20])
    assert a.loc["tbar", "diff"] == want.diff.mean and a.loc["tbar", "ci"] == want.diff.half
    assert a.loc["tbar", "p"] == want.p
    ca = board.attacker_cost["ca"].iloc[0]
    assert abs(ca["diff"] - (0.80 - 0.85)) < 1e-12 and ca["pairs"] == 2
    md = leaderboard.render_markdown(board)
    assert "## Adaptive attack: tbar-aware against plain blended" in md
    assert "| tbar | 2/3 | 15.0 | 87.5 | 72.5 ± " in md
    assert "What the attacker paid" in md and "clean reference's CA is 87.0" in md


def test_a_page_without_adaptive_attacks_has_no_adaptive_section():
    board = leaderboard.build(RECORDS, "t")
    assert not len(board.adaptive) and "Adaptive attack" not in leaderboard.render_markdown(board)
