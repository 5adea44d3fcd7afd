"""Leaderboard tables from result records alone (pandas; Markdown and CSV)."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from bench.store import atomic_write_bytes

KEYS = ["model", "dataset", "setting", "attack", "defense"]
CSV_COLUMNS = [
    *KEYS,
    "n_seeds",
    "ca",
    "ca_std",
    "asr",
    "asr_std",
    "ra",
    "ra_std",
    "ca_retention",
    "der",
    "control",
    "wall_s",
    "clean_samples",
    "triggered_samples",
]


def select_records(records: list[dict], suite: str, prefer_ids: set[str] = frozenset()) -> list[dict]:
    """One record per (model, dataset, setting, attack, defense, seed) of `suite`.

    A store can hold several configurations of one cell (a changed default, another
    variant); averaging them would mix experiments. Records of the current plan
    (`prefer_ids`) win, then the newest. Failed records are kept only where the cell
    has no ok record, so a failure shows in the table instead of vanishing.
    """
    best: dict[tuple, dict] = {}
    for r in records:
        c = r.get("config", {})
        if c.get("suite") != suite:
            continue
        key = (*(c.get(k) for k in KEYS), c.get("seed"))
        rank = (r.get("status") == "ok", r.get("trial_id") in prefer_ids, r.get("created", ""))
        if key not in best or rank > best[key][0]:
            best[key] = (rank, r)
    return [r for _, r in best.values()]


def _num(v) -> float:
    return float("nan") if v is None else float(v)


def records_frame(records: list[dict]) -> pd.DataFrame:
    """One row per ok record, with the metrics flattened."""
    rows = []
    for r in records:
        if r.get("status") != "ok":
            continue
        c, m, cost = r["config"], r["metrics"], r["cost"]
        control = [v for v in (m.get("control") or {}).values() if v is not None]
        rows.append(
            {
                **{k: c[k] for k in KEYS},
                "seed": c["seed"],
                "ca": _num(m["ca"]),
                "asr": _num(m["asr"]),
                "ra": _num(m["ra"]),
                "ca_retention": _num(m.get("ca_retention")),
                "der": _num(m.get("der")),
                "control": sum(control) / len(control) if control else float("nan"),
                "wall_s": _num(cost.get("wall_s")),
                "clean_samples": _num(cost.get("clean_samples")),
                "triggered_samples": _num(cost.get("triggered_samples")),
                "alpha": _num((r.get("defense") or {}).get("alpha")),
                "target_found": _num((r.get("defense") or {}).get("target_correct")),
            }
        )
    return pd.DataFrame(
        rows,
        columns=[
            *KEYS,
            "seed",
            "ca",
            "asr",
            "ra",
            "ca_retention",
            "der",
            "control",
            "wall_s",
            "clean_samples",
            "triggered_samples",
            "alpha",
            "target_found",
        ],
    )


def aggregate(df: pd.DataFrame) -> pd.DataFrame:
    """Mean (and std for CA/ASR/RA) over seeds per (model, dataset, setting, attack, defense)."""
    if df.empty:
        return pd.DataFrame(columns=[*CSV_COLUMNS, "alpha", "target_found"])
    g = df.groupby(KEYS, sort=True, dropna=False)
    means = ["ca", "asr", "ra", "ca_retention", "der", "control", "wall_s", "clean_samples", "triggered_samples"]
    out = g[[*means, "alpha", "target_found"]].mean()
    for col in ("ca", "asr", "ra"):
        out[f"{col}_std"] = g[col].std(ddof=0)
    out["n_seeds"] = g["seed"].nunique()
    return out.reset_index()[[*CSV_COLUMNS, "alpha", "target_found"]]


def _pct(mean: float, std: float | None = None) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "n/a"
    s = f"{100 * mean:.1f}"
    if std is not None and not math.isnan(std) and std > 0:
        s += f" ± {100 * std:.1f}"
    return s


def main_table(agg: pd.DataFrame, defenses: list[str]) -> str:
    """Rows (model, dataset, setting, attack); per defense a CA / ASR / RA column group."""
    head = ["model", "dataset", "setting", "attack"] + [f"{d} {m}" for d in defenses for m in ("CA", "ASR", "RA")]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key, grp in agg.groupby(["model", "dataset", "setting", "attack"], sort=True):
        cells = list(key)
        by_def = {row.defense: row for row in grp.itertuples()}
        for d in defenses:
            row = by_def.get(d)
            if row is None:
                cells += ["n/a"] * 3
            else:
                cells += [_pct(row.ca, row.ca_std), _pct(row.asr, row.asr_std), _pct(row.ra, row.ra_std)]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


def summary_table(agg: pd.DataFrame) -> str:
    """Per defense, over attacked cells: mean CA retention, ASR, DER, control, cost; ranked by DER."""
    attacked = agg[agg["attack"] != "none"]
    if attacked.empty:
        return "_no attacked cells yet_"
    s = attacked.groupby("defense").agg(
        cells=("ca", "size"),
        ca_retention=("ca_retention", "mean"),
        asr=("asr", "mean"),
        der=("der", "mean"),
        control=("control", "mean"),
        wall_s=("wall_s", "mean"),
        clean_samples=("clean_samples", "mean"),
        triggered_samples=("triggered_samples", "mean"),
        target_found=("target_found", "mean"),
    )
    s = s.sort_values("der", ascending=False, na_position="last")
    lines = [
        "| defense | cells | CA retention | ASR | DER | control acc | wall s | clean samples | triggered samples | target found |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for d, r in s.iterrows():
        der = "n/a" if math.isnan(r.der) else f"{r.der:.3f}"
        lines.append(
            f"| {d} | {int(r.cells)} | {_pct(r.ca_retention)} | {_pct(r.asr)} | {der} | {_pct(r.control)} | "
            f"{r.wall_s:.1f} | {r.clean_samples:.0f} | {r.triggered_samples:.0f} | {_pct(r.target_found)} |"
        )
    return "\n".join(lines)


def render_markdown(records: list[dict], suite: str) -> str:
    df = records_frame(records)
    agg = aggregate(df)
    failed = [r for r in records if r.get("status") == "failed"]
    defenses = sorted(agg["defense"].unique(), key=lambda d: (d != "none", d)) if not agg.empty else []
    parts = [
        f"# Leaderboard: `{suite}` suite",
        "",
        "Generated by `bench leaderboard` from the result records; do not edit by hand.",
        "Accuracies in %, mean ± std over seeds. CA: clean accuracy; ASR: attack success rate;",
        "RA: robust accuracy (triggered images classified correctly). `none` attack: clean",
        "training on the same data (the reference); `none` defense: the backdoored model.",
        "",
        "## Main table",
        "",
        main_table(agg, defenses) if defenses else "_no records_",
        "",
        "## Defenses, averaged over attacked cells (ranked by DER)",
        "",
        summary_table(agg),
        "",
        "Control acc: mean zero-shot accuracy on the suite's control datasets after the defense",
        "(n/a where the setting has no zero-shot head). Samples: unique defender samples consumed.",
        "Target found: share of cells where trigger inversion named the attack's target (detectors",
        "and tbar-inverted). The detectors `neural-cleanse` and `decree` return the model unchanged.",
    ]
    if failed:
        parts += ["", f"## Failed trials ({len(failed)})", ""]
        parts += [f"- {r['config']['attack']}/{r['config']['defense']}: {r.get('error', '')}" for r in failed]
    return "\n".join(parts) + "\n"


def write(records: list[dict], suite: str, out_dir: Path) -> dict[str, Path]:
    out_dir = Path(out_dir)
    md = out_dir / f"{suite}.md"
    csv = out_dir / f"{suite}.csv"
    atomic_write_bytes(md, render_markdown(records, suite).encode())
    atomic_write_bytes(
        csv, aggregate(records_frame(records))[CSV_COLUMNS].to_csv(index=False, float_format="%.4f").encode()
    )
    return {"markdown": md, "csv": csv}
