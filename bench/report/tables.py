"""Leaderboard data from result records: one row per record, cells aggregated over seeds
with confidence intervals, the per-defense summary over cells whose attack took, and
paired comparisons of defenses. Pure pandas; rendering lives in bench/report/leaderboard.py.

Exclusion rule (methods.md section 5): a (cell, seed) whose backdoored ASR is below
TOOK is no evidence about any defense. It stays visible in the main table (marked) and
is left out of every average; `none` is averaged over exactly the rows of each defense.

Units of replication (docs/protocol.md): within a cell the seeds are the unit; across
cells the cell is (its seeds share the victim, the splits and the attack recipe, so they
are not independent of each other across cells). A summary over several cells first
averages each cell's seeds, then takes the mean and t interval over cells; with one cell
it falls back to that cell's seeds and says so. A ranking covers only the rows that every
ranked defense shares (`ranking_groups`).
"""

from __future__ import annotations

import math

import pandas as pd

from bench.core import stats

KEYS = ["model", "dataset", "setting", "attack", "defense"]
CELL = ["model", "dataset", "setting", "attack"]
TOOK = 0.5  # backdoored ASR at or above which an attack "took"
# A backdoored model below this clean accuracy has not learned the attacked task (chance is
# 10% on the built-in tasks): what a defense does to it is no evidence either.
MIN_VICTIM_CA = 0.5


def learned(bd_ca: float | None) -> bool:
    """Whether a rung's backdoored model learned the attacked task (unknown counts as yes)."""
    return bd_ca is None or not math.isfinite(bd_ca) or bd_ca >= MIN_VICTIM_CA


LEVELS = ("99", "95", "90")
# Per-record metrics that are averaged over seeds, each with a 95% CI.
# `*_r{lvl}`: at the blind operating point (the strongest knob keeping R% of validation CA);
# `*_r{lvl}_oracle`: at the oracle point (lowest validation ASR with the attacker's trigger).
METRICS = [
    "ca", "asr", "ra", "ca_retention", "der", "control", "control_retention",
    *[f"{m}_r{lvl}" for lvl in LEVELS for m in ("asr", "ca", "ra", "control", "retention")],
    *[f"{m}_r{lvl}_oracle" for lvl in LEVELS for m in ("asr", "retention")],
    "auc_90", "bd_ca", "bd_asr",
]  # fmt: skip
COSTS = ["wall_s", "clean_samples", "triggered_samples", "steps"]


def _num(v) -> float:
    return float("nan") if v is None else float(v)


def _mean(values) -> float:
    vals = [v for v in values if v is not None]
    return sum(vals) / len(vals) if vals else float("nan")


def cpu_kind(cpu: str | None) -> str:
    """The CPU model a record ran on, without its core count ("AMD EPYC (2 cores)" -> "AMD
    EPYC"): with one torch thread per unit the core count does not change a number."""
    if not cpu:
        return "unknown"
    head, sep, tail = cpu.rpartition(" (")
    return head if sep and tail.endswith("cores)") else cpu


def record_row(r: dict) -> dict:
    """The flat row of one ok record."""
    c, m, cost = r["config"], r["metrics"], r.get("cost") or {}
    bd = m.get("backdoored") or {}
    d = r.get("defense") or {}
    row = {
        **{k: c[k] for k in KEYS},
        "seed": c["seed"],
        "trial_id": r.get("trial_id"),
        "cpu": cpu_kind((r.get("worker") or {}).get("cpu")),
        "ca": _num(m.get("ca")),
        "asr": _num(m.get("asr")),
        "ra": _num(m.get("ra")),
        "ca_retention": _num(m.get("ca_retention")),
        "der": _num(m.get("der")),
        "control": _mean((m.get("control") or {}).values()),
        "control_retention": _mean((m.get("control_retention") or {}).values()),
        "auc_90": _num(m.get("auc_90")),
        "bd_ca": _num(bd.get("ca")),
        "bd_asr": _num(bd.get("asr")),
        "knob": (r.get("knob") or {}).get("name"),
        "knob_chosen": _num((r.get("knob") or {}).get("chosen")) if isinstance((r.get("knob") or {}).get("chosen"), (int, float)) else float("nan"),
        "target_found": _num(d.get("target_correct")),
        "anomaly": _num((d.get("inversion") or {}).get("anomaly_index")),
        "detected": _num((d.get("inversion") or {}).get("detected")),
        **{k: _num(cost.get(k)) for k in COSTS},
    }
    def retention(p: dict) -> float:
        return _num(p.get("ca")) / row["bd_ca"] if p.get("ca") is not None and row["bd_ca"] else float("nan")

    for lvl in LEVELS:
        p = (r.get("matched_blind") or {}).get(f"0.{lvl}") or {}
        row[f"asr_r{lvl}"] = _num(p.get("asr"))
        row[f"ca_r{lvl}"] = _num(p.get("ca"))
        row[f"ra_r{lvl}"] = _num(p.get("ra"))
        row[f"control_r{lvl}"] = _num(p.get("control_mean"))
        row[f"retention_r{lvl}"] = retention(p)  # on test: validation matched it, test need not
        k = p.get("knob")
        row[f"knob_r{lvl}"] = _num(k) if isinstance(k, (int, float)) else float("nan")
        o = (r.get("matched") or {}).get(f"0.{lvl}") or {}
        row[f"asr_r{lvl}_oracle"] = _num(o.get("asr"))
        row[f"retention_r{lvl}_oracle"] = retention(o)
    # A cell with no trigger (the clean reference) has nothing to take; it is shown, never averaged.
    row["took"] = bool(row["bd_asr"] >= TOOK) if not math.isnan(row["bd_asr"]) else False
    row["learned"] = math.isnan(row["bd_ca"]) or row["bd_ca"] >= MIN_VICTIM_CA
    return row


def records_frame(records: list[dict]) -> pd.DataFrame:
    rows = [record_row(r) for r in records if r.get("status") == "ok"]
    return pd.DataFrame(rows) if rows else pd.DataFrame(columns=[*KEYS, "seed", *METRICS, *COSTS, "took", "learned"])


def aggregate(df: pd.DataFrame) -> pd.DataFrame:
    """Per (cell, defense): seeds run, seeds whose attack took, and for each metric the
    mean and CI half-width over the seeds whose attack took (all seeds for the clean
    reference, which has no ASR)."""
    out = []
    for key, grp in df.groupby(KEYS, sort=True, dropna=False):
        row = dict(zip(KEYS, key, strict=True))
        row["n_seeds"] = int(grp["seed"].nunique())
        row["n_took"] = int(grp["took"].sum())
        clean_ref = grp["bd_asr"].isna().all()
        use = grp if clean_ref else grp[grp["took"]]
        for m in METRICS:
            est = stats.mean_ci(use[m].tolist()) if m in use else stats.Estimate(float("nan"), float("nan"), 0)
            row[m], row[f"{m}_ci"] = est.mean, est.half
        for m in ("ca", "asr", "ra"):
            row[f"{m}_std"] = float(use[m].std(ddof=1)) if len(use) > 1 else float("nan")
        # the attack's own numbers over every seed, so a cell that did not take still says how far it got
        row["bd_asr_all"] = float(grp["bd_asr"].mean())
        for m in (*COSTS, "knob_chosen", "target_found", "anomaly", "detected", *[f"knob_r{lvl}" for lvl in LEVELS]):
            row[m] = float(use[m].mean()) if m in use and len(use) else float("nan")
        row["knob"] = grp["knob"].dropna().iloc[0] if grp["knob"].notna().any() else None
        out.append(row)
    return pd.DataFrame(out)


SUMMARY_METRICS = ["asr_r95", "retention_r95", "asr_r90", "retention_r90", "asr_r95_oracle", "auc_90", "asr",
                   "ca_retention", "control_retention", "der"]  # fmt: skip
ROW = [*CELL, "seed"]


def took_rows(df: pd.DataFrame) -> pd.DataFrame:
    """The (cell, seed, defense) rows that are evidence: an attacked cell whose attack took,
    on a victim that learned the task."""
    return df[(df["attack"] != "none") & df["took"] & df["learned"]] if len(df) else df


def ranking_groups(df: pd.DataFrame) -> list[tuple[list[str], list[tuple]]]:
    """Which defenses are ranked together, each group over the rows all of them share.

    The first group is every defense that ran on all the rows `none` has (the backdoored
    model is in every grid); then, for each smaller set of rows some defense ran on (par
    and cleanclip only on CLIP cells, say), the defenses that cover it, over those rows
    only. A defense is never ranked over rows another in its group lacks."""
    took = took_rows(df)
    rows = {d: set(map(tuple, g[ROW].itertuples(index=False))) for d, g in took.groupby("defense", sort=True)}
    if not rows:
        return []
    sets = sorted({frozenset(r) for r in rows.values()}, key=lambda r: (-len(r), sorted(r)))
    if "none" in rows:  # the full set first
        sets.remove(frozenset(rows["none"]))
        sets.insert(0, frozenset(rows["none"]))
    groups = []
    for rs in sets:
        members = [d for d in sorted(rows) if rows[d] >= rs]
        if len(members) >= 2 and all(set(members) != set(g) or len(rs) > len(r) for g, r in groups):
            groups.append((members, sorted(rs)))
    return groups


def over_cells(sub: pd.DataFrame, metric: str) -> stats.Estimate:
    """Mean and t interval with the cell as the unit: each cell's seeds averaged first. With
    a single cell, over its seeds (the unit within a cell)."""
    vals = sub[[*CELL, metric]].dropna()
    if vals.empty:
        return stats.Estimate(float("nan"), float("nan"), 0)
    per_cell = vals.groupby(CELL, sort=True)[metric].mean()
    return stats.mean_ci(per_cell.tolist()) if len(per_cell) > 1 else stats.mean_ci(vals[metric].tolist())


def summary(df: pd.DataFrame) -> pd.DataFrame:
    """Per ranking group (`ranking_groups`) and defense, over the group's shared rows: k rows
    of the n it ran, the cells, and the mean and CI of each summary metric with the cell as
    the unit (`unit` says which: "cells", or "seeds" with one cell); `none_*` are the
    backdoored model's numbers over the same rows. Within a group, ranked by ASR@95 (blind);
    `rank` counts the defenses whose interval lies wholly below this one's, plus one, so
    neighbours whose intervals overlap share a rank (`tied`)."""
    attacked = df[df["attack"] != "none"]
    took = took_rows(df)
    out = []
    for g, (members, rows) in enumerate(ranking_groups(df)):
        idx = pd.MultiIndex.from_tuples(rows, names=ROW)
        none = took[took["defense"] == "none"].set_index(ROW).reindex(idx).reset_index()
        n_cells = len({r[:4] for r in rows})
        for defense in members:
            sub = took[took["defense"] == defense].set_index(ROW).reindex(idx).reset_index()
            row = {"group": g, "defense": defense, "k": len(rows), "n": int((attacked["defense"] == defense).sum()),
                   "n_took": int((took["defense"] == defense).sum()), "cells": n_cells,
                   "unit": "cells" if n_cells > 1 else "seeds"}  # fmt: skip
            for m in SUMMARY_METRICS:
                est = over_cells(sub, m)
                row[m], row[f"{m}_ci"], row[f"{m}_n"] = est.mean, est.half, est.n
            est = over_cells(none, "asr")
            row["none_asr"], row["none_asr_ci"] = est.mean, est.half
            for m in COSTS:
                row[m] = float(sub[m].mean()) if len(sub) else float("nan")
            row["target_found"] = float(sub["target_found"].mean()) if len(sub) else float("nan")
            out.append(row)
    s = pd.DataFrame(out)
    if not len(s):
        return s
    s = s.sort_values(["group", "asr_r95", "defense"], na_position="last").reset_index(drop=True)
    s["rank"], s["tied"] = 0, False
    for _g, grp in s.groupby("group"):
        lo = (grp["asr_r95"] - grp["asr_r95_ci"].fillna(0)).clip(lower=0)
        hi = (grp["asr_r95"] + grp["asr_r95_ci"].fillna(0)).clip(upper=1)
        for i in grp.index:
            s.loc[i, "rank"] = 1 + int((hi < lo[i]).sum())
        s.loc[grp.index, "tied"] = s.loc[grp.index, "rank"].duplicated(keep=False)
    return s


def per_cell_wide(df: pd.DataFrame, metric: str, rows: list[tuple]) -> pd.DataFrame:
    """(cell) x defense: `metric` averaged over the cell's seeds among `rows`."""
    took = took_rows(df)
    idx = pd.MultiIndex.from_tuples(rows, names=ROW)
    sub = took.set_index(ROW)
    sub = sub[sub.index.isin(idx)].reset_index()
    return sub.pivot_table(index=CELL, columns="defense", values=metric, aggfunc="mean")


def pairwise(df: pd.DataFrame, metric: str = "asr_r95") -> pd.DataFrame:
    """Paired comparison of every two defenses of each ranking group on `metric` over the
    group's shared rows, with the cell as the unit: per-cell differences (each cell's seeds
    averaged), their mean (row minus column defense), 95% t interval and paired t-test
    p-value over cells, Holm-adjusted over all pairs of the page; with a single cell, over
    its seeds. `significant`: adjusted p < 0.05."""
    rows_out = []
    for g, (members, rows) in enumerate(ranking_groups(df)):
        n_cells = len({r[:4] for r in rows})
        if n_cells > 1:
            wide, unit = per_cell_wide(df, metric, rows), "cells"
        else:
            took = took_rows(df)
            wide = took.pivot_table(index=ROW, columns="defense", values=metric, aggfunc="first")
            wide, unit = wide[wide.index.isin(pd.MultiIndex.from_tuples(rows, names=ROW))], "seeds"
        for i, a in enumerate(members):
            for b in members[i + 1 :]:
                if a not in wide or b not in wide:
                    continue
                both = wide[[a, b]].dropna()
                if len(both) < 2:
                    continue
                r = stats.paired(both[a].tolist(), both[b].tolist())
                rows_out.append({"group": g, "a": a, "b": b, "pairs": len(both), "unit": unit, "diff": r.diff.mean,
                                 "ci": r.diff.half, "p": r.p})  # fmt: skip
    out = pd.DataFrame(rows_out, columns=["group", "a", "b", "pairs", "unit", "diff", "ci", "p"])
    out["p_holm"] = stats.holm(out["p"].tolist()) if len(out) else []
    out["significant"] = out["p_holm"] < 0.05
    return out


def adaptive_pairs(df: pd.DataFrame, plain_of: dict[str, str], metric: str = "asr_r95") -> pd.DataFrame:
    """Each adaptive attack against its plain counterpart (`plain_of`: adaptive -> plain,
    the same trigger), defense by defense, on `metric`, paired over seeds within one
    (model, dataset, setting): an adaptive and a plain artifact of one seed share the
    poisoned rows, the defender's split and the defender's seed, so the seed is the
    unit. Only seeds where both attacks took count (and where the victim learned the
    task). `diff` is adaptive minus plain with its 95% t interval and paired p-value,
    Holm-adjusted over the rows of one (model, dataset, setting, adaptive) table."""
    cols = ["model", "dataset", "setting", "adaptive", "plain", "defense", "pairs", "seeds", "plain_mean",
            "adaptive_mean", "diff", "ci", "p"]  # fmt: skip
    out = []
    took = took_rows(df)
    for adaptive, plain in sorted(plain_of.items()):
        a_rows, p_rows = took[took["attack"] == adaptive], took[took["attack"] == plain]
        if not len(a_rows) or not len(p_rows):
            continue
        key = ["model", "dataset", "setting", "defense", "seed"]
        both = a_rows.merge(p_rows, on=key, suffixes=("_a", "_p"))
        ran = df[df["attack"].isin([adaptive, plain])]
        for (model, dataset, setting, defense), grp in both.groupby(key[:4], sort=True):
            seeds = ran[(ran["model"] == model) & (ran["dataset"] == dataset) & (ran["setting"] == setting)
                        & (ran["defense"] == defense)]["seed"].nunique()  # fmt: skip
            pairs = grp[[f"{metric}_a", f"{metric}_p"]].dropna()
            r = stats.paired(pairs[f"{metric}_a"].tolist(), pairs[f"{metric}_p"].tolist())
            out.append({"model": model, "dataset": dataset, "setting": setting, "adaptive": adaptive, "plain": plain,
                        "defense": defense, "pairs": len(pairs), "seeds": int(seeds),
                        "plain_mean": pairs[f"{metric}_p"].mean(), "adaptive_mean": pairs[f"{metric}_a"].mean(),
                        "diff": r.diff.mean, "ci": r.diff.half, "p": r.p})  # fmt: skip
    res = pd.DataFrame(out, columns=cols)
    # Holm within each table (one per cell and adaptive attack), as the page says
    table = ["model", "dataset", "setting", "adaptive"]
    res["p_holm"] = res.groupby(table)["p"].transform(lambda p: stats.holm(p.tolist())) if len(res) else []
    res["significant"] = res["p_holm"] < 0.05
    return res
