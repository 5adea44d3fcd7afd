"""Leaderboard data from result records: one row per record, cells aggregated over seeds
with confidence intervals, the per-defense summary over cells whose attack took, and
paired comparisons of defenses. Pure pandas; rendering lives in bench/leaderboard.py.

Exclusion rule (methods.md section 5): a (cell, seed) whose backdoored ASR is below
TOOK is no evidence about any defense. It stays visible in the main table (marked) and
is left out of every average; `none` is averaged over exactly the rows of each defense.
"""

from __future__ import annotations

import math

import pandas as pd

from bench import stats

KEYS = ["model", "dataset", "setting", "attack", "defense"]
CELL = ["model", "dataset", "setting", "attack"]
TOOK = 0.5  # backdoored ASR at or above which an attack "took"
LEVELS = ("99", "95", "90")
# Per-record metrics that are averaged over seeds, each with a 95% CI.
METRICS = [
    "ca", "asr", "ra", "ca_retention", "der", "control", "control_retention",
    *[f"{m}_r{lvl}" for lvl in LEVELS for m in ("asr", "ca", "ra", "control", "retention")],
    "auc_90", "bd_ca", "bd_asr",
]  # fmt: skip
COSTS = ["wall_s", "clean_samples", "triggered_samples", "steps"]


def _num(v) -> float:
    return float("nan") if v is None else float(v)


def _mean(values) -> float:
    vals = [v for v in values if v is not None]
    return sum(vals) / len(vals) if vals else float("nan")


def record_row(r: dict) -> dict:
    """The flat row of one ok record."""
    c, m, cost = r["config"], r["metrics"], r.get("cost") or {}
    bd = m.get("backdoored") or {}
    d = r.get("defense") or {}
    row = {
        **{k: c[k] for k in KEYS},
        "seed": c["seed"],
        "trial_id": r.get("trial_id"),
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
    for lvl in LEVELS:
        p = (r.get("matched") or {}).get(f"0.{lvl}") or {}
        row[f"asr_r{lvl}"] = _num(p.get("asr"))
        row[f"ca_r{lvl}"] = _num(p.get("ca"))
        row[f"ra_r{lvl}"] = _num(p.get("ra"))
        row[f"control_r{lvl}"] = _num(p.get("control_mean"))
        row[f"retention_r{lvl}"] = _num(p.get("ca")) / row["bd_ca"] if p.get("ca") is not None and row["bd_ca"] else float("nan")
        k = p.get("knob")
        row[f"knob_r{lvl}"] = _num(k) if isinstance(k, (int, float)) else float("nan")
    # A cell with no trigger (the clean reference) has nothing to take; it is shown, never averaged.
    row["took"] = bool(row["bd_asr"] >= TOOK) if not math.isnan(row["bd_asr"]) else False
    return row


def records_frame(records: list[dict]) -> pd.DataFrame:
    rows = [record_row(r) for r in records if r.get("status") == "ok"]
    return pd.DataFrame(rows) if rows else pd.DataFrame(columns=[*KEYS, "seed", *METRICS, *COSTS, "took"])


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


SUMMARY_METRICS = ["asr_r95", "asr_r90", "auc_90", "asr", "ca_retention", "control_retention", "der"]


def summary(df: pd.DataFrame) -> pd.DataFrame:
    """Per defense, over the (cell, seed) rows whose attack took: k rows of n, and the
    mean and CI of each summary metric; `none_*` are the backdoored model's numbers over
    exactly the same rows. Ranked by ASR at 95% retention (lower is better)."""
    attacked = df[df["attack"] != "none"]
    none = attacked[attacked["defense"] == "none"].set_index([*CELL, "seed"])
    rows = []
    for defense, grp in attacked.groupby("defense", sort=True):
        took = grp[grp["took"]]
        row = {"defense": defense, "k": len(took), "n": len(grp), "cells": took[CELL].drop_duplicates().shape[0]}
        for m in SUMMARY_METRICS:
            est = stats.mean_ci(took[m].tolist())
            row[m], row[f"{m}_ci"] = est.mean, est.half
        base = none.reindex(took.set_index([*CELL, "seed"]).index)
        est = stats.mean_ci(base["asr"].tolist())
        row["none_asr"], row["none_asr_ci"] = est.mean, est.half
        for m in COSTS:
            row[m] = float(took[m].mean()) if len(took) else float("nan")
        row["target_found"] = float(took["target_found"].mean()) if len(took) else float("nan")
        rows.append(row)
    s = pd.DataFrame(rows)
    return s.sort_values(["asr_r95", "defense"], na_position="last").reset_index(drop=True) if len(s) else s


def pairwise(df: pd.DataFrame, metric: str = "asr_r95") -> pd.DataFrame:
    """Paired comparison of every two defenses on `metric` over the (cell, seed) rows
    whose attack took and where both have a record: mean difference (row minus column
    defense), its 95% CI, the paired t-test p-value, Holm-adjusted over all pairs, and
    whether the difference is beyond the noise (adjusted p < 0.05)."""
    took = df[(df["attack"] != "none") & df["took"]]
    wide = took.pivot_table(index=[*CELL, "seed"], columns="defense", values=metric, aggfunc="first")
    names = sorted(wide.columns)
    rows = []
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            both = wide[[a, b]].dropna()
            if len(both) < 2:
                continue
            r = stats.paired(both[a].tolist(), both[b].tolist())
            rows.append({"a": a, "b": b, "pairs": len(both), "diff": r.diff.mean, "ci": r.diff.half, "p": r.p})
    out = pd.DataFrame(rows, columns=["a", "b", "pairs", "diff", "ci", "p"])
    out["p_holm"] = stats.holm(out["p"].tolist()) if len(out) else []
    out["significant"] = out["p_holm"] < 0.05
    return out
