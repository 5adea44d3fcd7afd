"""`bench leaderboard --check`: rerun exactly the grid that made a page and compare every
(cell, seed, defense) value with the committed one, exactly.

A page keeps its rows (`<suite>-rows.csv`: one row per record, every number at full
precision). The commands that regenerate the page are derived from those rows
(`page_selections`: the smallest set of `bench run` selections whose grids are exactly the
page's rows, checked by planning each), printed on the page, and rerun by the check. With
the reproducibility mode (bench/repro.py) a rerun on a machine of this kind is bitwise
identical, so nothing is allowed to move: ASR is a count out of the triggered test images
and CA one out of the clean test images, and a change of one image, a missing row or an
extra one fails the check.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterable
from dataclasses import dataclass

import pandas as pd

from bench.tables import KEYS, LEVELS

ROW_KEYS = [*KEYS, "seed"]
# Every number of a row that code decides (wall seconds measure the machine and are left out).
ROW_VALUES = [
    "bd_ca", "bd_asr", "ca", "asr", "ra", "control", "control_retention", "der", "auc_90", "knob_chosen",
    *[f"{m}_r{lvl}" for lvl in LEVELS for m in ("asr", "ca", "ra", "control", "knob")],
    *[f"asr_r{lvl}_oracle" for lvl in LEVELS],
    "clean_samples", "triggered_samples", "steps",
]  # fmt: skip
GROUP = ["model", "dataset", "setting"]


def rows_table(frame: pd.DataFrame) -> pd.DataFrame:
    """The page's rows, sorted, with the columns the check compares."""
    cols = [c for c in ROW_VALUES if c in frame]
    out = frame[[*ROW_KEYS, *cols]].copy() if len(frame) else pd.DataFrame(columns=[*ROW_KEYS, *ROW_VALUES])
    for c in ROW_VALUES:
        if c not in out:
            out[c] = float("nan")
    return out[[*ROW_KEYS, *ROW_VALUES]].sort_values(ROW_KEYS).reset_index(drop=True)


def rows_csv(frame: pd.DataFrame) -> str:
    """Full precision (shortest round-trip repr of every float): read back exactly by `read_rows`."""
    return rows_table(frame).to_csv(index=False)


def read_rows(text: str) -> pd.DataFrame:
    return pd.read_csv(io.StringIO(text), float_precision="round_trip")


def _same(x, y) -> bool:
    xn = x is None or (isinstance(x, float) and math.isnan(x))
    yn = y is None or (isinstance(y, float) and math.isnan(y))
    return (xn and yn) or (not xn and not yn and float(x) == float(y))


def compare_rows(committed: pd.DataFrame, fresh: pd.DataFrame) -> list[str]:
    """Every difference between the committed rows and a rerun's, one readable line each
    (empty when they are identical)."""
    problems = []
    old = committed.set_index(ROW_KEYS)
    new = fresh.set_index(ROW_KEYS)
    for key in old.index.difference(new.index):
        problems.append(f"{'/'.join(map(str, key))}: in the committed page, not produced by the rerun")
    for key in new.index.difference(old.index):
        problems.append(f"{'/'.join(map(str, key))}: produced by the rerun, missing from the committed page")
    for key in old.index.intersection(new.index):
        a, b = old.loc[key], new.loc[key]
        for col in ROW_VALUES:
            x = a[col] if col in a.index else float("nan")
            y = b[col] if col in b.index else float("nan")
            if not _same(x, y):
                problems.append(f"{'/'.join(map(str, key))} {col}: committed {x!r}, rerun {y!r}")
    return problems


# ---------------------------------------------------------------- the page's own commands


@dataclass(frozen=True)
class PageSelection:
    """One `bench run` selection: its grid is a part of the page."""

    models: tuple[str, ...]
    datasets: tuple[str, ...]
    settings: tuple[str, ...]
    attacks: tuple[str, ...]
    defenses: tuple[str, ...]
    seeds: tuple[int, ...]

    def selection(self):
        from bench.grid import Selection

        return Selection(attacks=",".join(self.attacks), defenses=",".join(self.defenses),
                         models=",".join(self.models), datasets=",".join(self.datasets),
                         settings=",".join(self.settings), seeds=",".join(map(str, self.seeds)))  # fmt: skip

    def command(self, suite_ref: str) -> str:
        return (f"bench run --suite {suite_ref} --models {','.join(self.models)} --datasets {','.join(self.datasets)} "
                f"--settings {','.join(self.settings)} --attacks {','.join(self.attacks)} "
                f"--defenses {','.join(self.defenses)} --seeds {','.join(map(str, self.seeds))} "
                "--leaderboards leaderboards")  # fmt: skip


def _planned_rows(suite, sel: PageSelection) -> set[tuple]:
    from bench.grid import plan_grid

    plan = plan_grid(suite, sel.selection())
    return {
        (t["artifact"]["model"], t["artifact"]["dataset"], t["artifact"]["setting"], t["artifact"]["attack"],
         t["defense"], t["artifact"]["seed"])
        for t in plan.trials
    }  # fmt: skip


def page_selections(rows: pd.DataFrame, suite) -> list[PageSelection]:
    """Selections whose grids, planned with `suite`, together give exactly the page's rows.

    Per (model, dataset, setting), defenses with the same seeds are run together over the
    union of their attacks when that plans exactly their rows (a known-trigger defense is
    skipped on the clean reference by the planner, so it needs no command of its own);
    otherwise each defense gets its own. Selections that differ only in the (model,
    dataset, setting) are then merged where the merged grid plans exactly their union.
    `none` is in every grid; a `none` row no other defense shares gets a selection too."""
    want = {tuple(r) for r in rows[ROW_KEYS].itertuples(index=False)}
    chosen: list[tuple[PageSelection, set]] = []
    for (model, dataset, setting), g in rows.groupby(GROUP, sort=True):
        place = ((model,), (dataset,), (setting,))
        by_defense = {d: gd for d, gd in g.groupby("defense", sort=True) if d != "none"}
        by_seeds: dict[tuple, list[str]] = {}
        for d, gd in by_defense.items():
            by_seeds.setdefault(tuple(sorted(set(gd["seed"]))), []).append(d)
        for seeds, defenses in sorted(by_seeds.items()):
            attacks = tuple(sorted(set(g[g["defense"].isin(defenses)]["attack"])))
            sel = PageSelection(*place, attacks, tuple(defenses), seeds)
            got = _planned_rows(suite, sel)
            mine = {r for r in want if r[:3] == (model, dataset, setting) and r[4] in (*defenses, "none")}
            theirs = {r for r in mine if r[4] in defenses}
            if theirs <= got <= mine:
                chosen.append((sel, got))
                continue
            for d in defenses:
                gd = by_defense[d]
                one = PageSelection(*place, tuple(sorted(set(gd["attack"]))), (d,), tuple(sorted(set(gd["seed"]))))
                chosen.append((one, _planned_rows(suite, one)))
        covered = set().union(*(got for _, got in chosen)) if chosen else set()
        left = {r for r in want if r[:3] == (model, dataset, setting) and r not in covered}
        for seeds in sorted({r[5] for r in left}):
            attacks = tuple(sorted({r[3] for r in left if r[5] == seeds}))
            one = PageSelection(*place, attacks, ("none",), (seeds,))
            chosen.append((one, _planned_rows(suite, one)))
    return _merge_places(chosen, suite)


def _merge_places(chosen: list[tuple[PageSelection, set]], suite) -> list[PageSelection]:
    merged: list[tuple[PageSelection, set]] = []
    for sel, got in chosen:
        for i, (m, mgot) in enumerate(merged):
            if (m.attacks, m.defenses, m.seeds) != (sel.attacks, sel.defenses, sel.seeds):
                continue
            union = PageSelection(
                tuple(sorted({*m.models, *sel.models})), tuple(sorted({*m.datasets, *sel.datasets})),
                tuple(sorted({*m.settings, *sel.settings})), sel.attacks, sel.defenses, sel.seeds,
            )  # fmt: skip
            planned = _planned_rows(suite, union)
            if planned == mgot | got:
                merged[i] = (union, planned)
                break
        else:
            merged.append((sel, got))
    return [s for s, _ in merged]


def page_commands(rows: pd.DataFrame, suite, suite_ref: str) -> list[str]:
    return [s.command(suite_ref) for s in page_selections(rows, suite)]


def union_plan(suite, selections: Iterable[PageSelection]):
    """One plan holding every trial (and artifact) of the selections, each once."""
    from bench.grid import Plan, plan_grid
    from bench.trial import artifact_id, trial_id

    plan, seen_t, seen_a = Plan(), set(), set()
    for sel in selections:
        part = plan_grid(suite, sel.selection())
        for a in part.artifacts:
            if artifact_id(a) not in seen_a:
                seen_a.add(artifact_id(a))
                plan.artifacts.append(a)
        for t in part.trials:
            if trial_id(t) not in seen_t:
                seen_t.add(trial_id(t))
                plan.trials.append(t)
    return plan
