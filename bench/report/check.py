"""`bench leaderboard --check`: rerun exactly the grid that made a page and compare every
(cell, seed, defense) value with the committed one, exactly.

A page keeps its rows (`<suite>-rows.csv`: one row per record, every number at full
precision). The commands that regenerate the page are derived from those rows
(`page_selections`: the smallest set of `bench run` selections whose grids are exactly the
page's rows, checked by planning each), printed on the page, and rerun by the check. With
the reproducibility mode (bench/core/repro.py) a rerun on a machine of this kind is bitwise
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

from bench.report.tables import KEYS, LEVELS

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
    """The page's rows, sorted, with the columns the check compares and the CPU that made each."""
    cols = [c for c in ["cpu", *ROW_VALUES] if c in frame]
    out = frame[[*ROW_KEYS, *cols]].copy() if len(frame) else pd.DataFrame(columns=[*ROW_KEYS, "cpu", *ROW_VALUES])
    for c in ROW_VALUES:
        if c not in out:
            out[c] = float("nan")
    if "cpu" not in out:
        out["cpu"] = "unknown"
    return out[[*ROW_KEYS, "cpu", *ROW_VALUES]].sort_values(ROW_KEYS).reset_index(drop=True)


# ---------------------------------------------------------------- one reference per CPU kind
# The reproducibility mode caps every library at AVX2 and runs one thread per unit, which
# makes reruns bitwise identical on machines of one kind. Across CPU vendors it does not
# (measured: the ci rows made on an AMD EPYC and rerun on an Intel Xeon differ in every
# cell, e.g. the clean reference's CA 84.75% vs 84.50%; docs/protocol.md). So the check
# compares a rerun with rows made on the same CPU model: the page's own rows, or a
# reference `<suite>-rows@<kind>.csv` committed beside them for another kind.


def kind_slug(kind: str) -> str:
    return "-".join("".join(ch.lower() if ch.isalnum() else " " for ch in kind).split()) or "unknown"


def reference_for(folder, suite: str, kind: str):
    """(path, rows) of the committed rows made on CPU `kind`, else (None, [kinds found])."""
    from pathlib import Path

    folder = Path(folder)
    found = []
    for path in [folder / f"{suite}-rows.csv", *sorted(folder.glob(f"{suite}-rows@*.csv"))]:
        if not path.exists():
            continue
        rows = read_rows(path.read_text())
        kinds = set(rows["cpu"]) if "cpu" in rows else {"unknown"}
        if kinds == {kind}:
            return path, rows
        found.append(", ".join(sorted(map(str, kinds))))
    return None, found


def reference_path(folder, suite: str, kind: str):
    from pathlib import Path

    return Path(folder) / f"{suite}-rows@{kind_slug(kind)}.csv"


def rows_csv(frame: pd.DataFrame) -> str:
    """Full precision (shortest round-trip repr of every float): read back exactly by `read_rows`."""
    return rows_table(frame).to_csv(index=False)


def read_rows(text: str) -> pd.DataFrame:
    return pd.read_csv(io.StringIO(text), float_precision="round_trip")


def _same(x, y) -> bool:
    xn = x is None or (isinstance(x, float) and math.isnan(x))
    yn = y is None or (isinstance(y, float) and math.isnan(y))
    return (xn and yn) or (not xn and not yn and float(x) == float(y))


def compare_keys(committed: pd.DataFrame, fresh: pd.DataFrame) -> list[str]:
    """The rows one side has and the other lacks (by ROW_KEYS), one readable line each;
    what `--add-reference` needs, since another CPU kind's values may differ."""
    old = committed.set_index(ROW_KEYS).index
    new = fresh.set_index(ROW_KEYS).index
    return [f"{'/'.join(map(str, k))}: in the committed page, not produced by the rerun" for k in old.difference(new)] + [
        f"{'/'.join(map(str, k))}: produced by the rerun, missing from the committed page" for k in new.difference(old)
    ]


def compare_rows(committed: pd.DataFrame, fresh: pd.DataFrame) -> list[str]:
    """Every difference between the committed rows and a rerun's, one readable line each
    (empty when they are identical)."""
    problems = compare_keys(committed, fresh)
    old = committed.set_index(ROW_KEYS)
    new = fresh.set_index(ROW_KEYS)
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
        from bench.run.grid import Selection

        return Selection(attacks=",".join(self.attacks), defenses=",".join(self.defenses),
                         models=",".join(self.models), datasets=",".join(self.datasets),
                         settings=",".join(self.settings), seeds=",".join(map(str, self.seeds)))  # fmt: skip

    def command(self, suite_ref: str) -> str:
        return (f"bench run --suite {suite_ref} --models {','.join(self.models)} --datasets {','.join(self.datasets)} "
                f"--settings {','.join(self.settings)} --attacks {','.join(self.attacks)} "
                f"--defenses {','.join(self.defenses)} --seeds {','.join(map(str, self.seeds))} "
                "--leaderboards leaderboards")  # fmt: skip


def _planned_rows(suite, sel: PageSelection) -> set[tuple]:
    from bench.run.grid import plan_grid

    plan = plan_grid(suite, sel.selection())
    return {
        (t.artifact.model, t.artifact.dataset, t.artifact.setting, t.artifact.attack, t.defense, t.artifact.seed)
        for t in plan.trials
    }  # fmt: skip


def page_selections(rows: pd.DataFrame, suite) -> list[PageSelection]:
    """Selections whose grids, planned with `suite`, together give exactly the page's rows.

    Per (model, dataset, setting): defenses that ran on the same attacks and seeds form one
    selection (a known-trigger defense is skipped on the clean reference by the planner,
    so it needs no command of its own); two selections with the same seeds are merged when
    the merged grid plans exactly their union; a defense whose rows are no grid gets one
    selection per seed. Selections that differ only in the (model, dataset, setting) are
    then merged the same way. `none` is in every grid; a `none` row no other defense
    shares gets a selection too. Every selection is checked by planning it."""
    want = {tuple(r) for r in rows[ROW_KEYS].itertuples(index=False)}
    chosen: list[tuple[PageSelection, set]] = []
    for (model, dataset, setting), g in rows.groupby(GROUP, sort=True):
        place = ((model,), (dataset,), (setting,))
        mine = {r for r in want if r[:3] == (model, dataset, setting)}
        by_key: dict[tuple, list[str]] = {}
        for d, gd in g.groupby("defense", sort=True):
            if d != "none":
                by_key.setdefault((tuple(sorted(set(gd["attack"]))), tuple(sorted(set(gd["seed"])))), []).append(d)
        local: list[tuple[PageSelection, set]] = []
        for (attacks, seeds), defenses in sorted(by_key.items()):
            sel = PageSelection(*place, attacks, tuple(defenses), seeds)
            got = _planned_rows(suite, sel)
            if {r for r in mine if r[4] in defenses} <= got <= mine:
                local.append((sel, got))
                continue
            for d in defenses:  # rows that are no grid: one selection per (defense, seed)
                for seed in seeds:
                    atk = tuple(sorted({r[3] for r in mine if r[4] == d and r[5] == seed}))
                    one = PageSelection(*place, atk, (d,), (seed,))
                    local.append((one, _planned_rows(suite, one)))
        chosen += _merge(local, suite, _union_grids)
        covered = set().union(*(got for _, got in chosen)) if chosen else set()
        left = {r for r in mine if r not in covered}
        for seed in sorted({r[5] for r in left}):
            attacks = tuple(sorted({r[3] for r in left if r[5] == seed}))
            one = PageSelection(*place, attacks, ("none",), (seed,))
            chosen.append((one, _planned_rows(suite, one)))
    return [s for s, _ in _merge(chosen, suite, _union_places)]


def _union_grids(a: PageSelection, b: PageSelection) -> PageSelection:
    return PageSelection(a.models, a.datasets, a.settings, tuple(sorted({*a.attacks, *b.attacks})),
                         tuple(sorted({*a.defenses, *b.defenses})), a.seeds)  # fmt: skip


def _union_places(a: PageSelection, b: PageSelection) -> PageSelection | None:
    if (a.attacks, a.defenses, a.seeds) != (b.attacks, b.defenses, b.seeds):
        return None
    return PageSelection(tuple(sorted({*a.models, *b.models})), tuple(sorted({*a.datasets, *b.datasets})),
                         tuple(sorted({*a.settings, *b.settings})), a.attacks, a.defenses, a.seeds)  # fmt: skip


def _merge(chosen: list[tuple[PageSelection, set]], suite, union) -> list[tuple[PageSelection, set]]:
    """Greedily merge selections (same seeds) whose merged grid plans exactly their union."""
    merged: list[tuple[PageSelection, set]] = []
    for sel, got in chosen:
        for i, (m, mgot) in enumerate(merged):
            u = union(m, sel) if m.seeds == sel.seeds else None
            if u is None:
                continue
            planned = _planned_rows(suite, u)
            if planned == mgot | got:
                merged[i] = (u, planned)
                break
        else:
            merged.append((sel, got))
    return merged


def page_commands(rows: pd.DataFrame, suite, suite_ref: str) -> list[str]:
    return [s.command(suite_ref) for s in page_selections(rows, suite)]


def union_plan(suite, selections: Iterable[PageSelection]):
    """One plan holding every trial (and artifact) of the selections, each once."""
    from bench.run.grid import Plan, plan_grid

    plan, seen_t, seen_a = Plan(), set(), set()
    for sel in selections:
        part = plan_grid(suite, sel.selection())
        for a in part.artifacts:
            if a.id not in seen_a:
                seen_a.add(a.id)
                plan.artifacts.append(a)
        for t in part.trials:
            if t.id not in seen_t:
                seen_t.add(t.id)
                plan.trials.append(t)
    return plan
