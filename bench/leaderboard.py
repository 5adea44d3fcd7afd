"""Leaderboard tables from result records alone (pandas; Markdown and CSV)."""

from __future__ import annotations

import base64
import html
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


Table = tuple[list[str], list[list[str]]]  # header, rows of formatted cells


def md_table(table: Table) -> str:
    head, rows = table
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def html_table(table: Table) -> str:
    head, rows = table
    th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = "".join(
        "<tr>" + "".join(f'<td class="{"na" if c == "n/a" else ""}">{html.escape(str(c))}</td>' for c in row) + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


def main_rows(agg: pd.DataFrame, defenses: list[str]) -> Table:
    """Rows (model, dataset, setting, attack); per defense a CA / ASR / RA column group."""
    head = ["model", "dataset", "setting", "attack"] + [f"{d} {m}" for d in defenses for m in ("CA", "ASR", "RA")]
    rows = []
    for key, grp in agg.groupby(["model", "dataset", "setting", "attack"], sort=True):
        cells = list(key)
        by_def = {row.defense: row for row in grp.itertuples()}
        for d in defenses:
            row = by_def.get(d)
            if row is None:
                cells += ["n/a"] * 3
            else:
                cells += [_pct(row.ca, row.ca_std), _pct(row.asr, row.asr_std), _pct(row.ra, row.ra_std)]
        rows.append(cells)
    return head, rows


def main_table(agg: pd.DataFrame, defenses: list[str]) -> str:
    return md_table(main_rows(agg, defenses))


def summary_frame(agg: pd.DataFrame) -> pd.DataFrame:
    """Per defense, over attacked cells: mean CA retention, ASR, DER, control, cost; ranked by DER."""
    attacked = agg[agg["attack"] != "none"]
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
    return s.sort_values("der", ascending=False, na_position="last")


def summary_rows(agg: pd.DataFrame) -> Table:
    head = [
        "defense", "cells", "CA retention", "ASR", "DER", "control acc", "wall s", "clean samples",
        "triggered samples", "target found",
    ]  # fmt: skip
    rows = []
    for d, r in summary_frame(agg).iterrows():
        der = "n/a" if math.isnan(r.der) else f"{r.der:.3f}"
        rows.append(
            [d, int(r.cells), _pct(r.ca_retention), _pct(r.asr), der, _pct(r.control), f"{r.wall_s:.1f}",
             f"{r.clean_samples:.0f}", f"{r.triggered_samples:.0f}", _pct(r.target_found)]
        )  # fmt: skip
    return head, rows


def summary_table(agg: pd.DataFrame) -> str:
    if (agg["attack"] != "none").sum() == 0:
        return "_no attacked cells yet_"
    return md_table(summary_rows(agg))


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


CSS = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:1400px;color:#222}
table{border-collapse:collapse;font-size:13px;margin:1em 0}
th,td{border:1px solid #ccc;padding:3px 7px;text-align:right}
th{background:#f3f3f3} td:first-child,th:first-child{text-align:left}
td.na{color:#aaa} img.plot{max-width:100%} .thumbs{display:flex;flex-wrap:wrap;gap:1em}
.thumbs figure{margin:0;text-align:center;font-size:12px} .thumbs img{width:96px;image-rendering:pixelated}
"""


def _img(png: bytes, cls: str = "plot", alt: str = "") -> str:
    return f'<img class="{cls}" alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def trigger_thumbnails(records: list[dict], root: Path | None) -> str:
    """One thumbnail per attack artifact's saved trigger image(s), read from the store."""
    if root is None:
        return "<p>n/a (no storage root given)</p>"
    seen: dict[str, str] = {}
    for r in sorted(records, key=lambda r: (r["config"]["attack"], r["config"]["model"])):
        c, aid = r["config"], r.get("artifact_id")
        if c["attack"] == "none" or aid in seen or aid is None:
            continue
        files = (r.get("attack") or {}).get("trigger_files") or []
        figs = []
        for name in files:
            path = Path(root) / "artifacts" / aid / name
            if path.suffix == ".png" and path.exists():
                figs.append(_img(path.read_bytes(), "thumb", f"{c['attack']} {name}") + f"<br>{html.escape(name)}")
        label = f"{c['attack']}<br>{c['model']} / {c['setting']} / s{c['seed']}"
        seen[aid] = "".join(f"<figure>{f}<figcaption>{label}</figcaption></figure>" for f in figs) or (
            f"<figure>n/a<figcaption>{label}</figcaption></figure>"
        )
    return '<div class="thumbs">' + "".join(seen.values()) + "</div>" if seen else "<p>n/a</p>"


def render_html(records: list[dict], suite: str, root: Path | None = None) -> str:
    """One self-contained page: tables, the trade-off plot, TBAR curves, trigger thumbnails."""
    from bench import plots

    agg = aggregate(records_frame(records))
    defenses = sorted(agg["defense"].unique(), key=lambda d: (d != "none", d)) if not agg.empty else []
    tradeoff = plots.tradeoff(agg) if not agg.empty else None
    curves = plots.alpha_curves(records)
    failed = [r for r in records if r.get("status") == "failed"]
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>bench leaderboard: {html.escape(suite)}</title>",
        f"<style>{CSS}</style></head><body>",
        f"<h1>Leaderboard: <code>{html.escape(suite)}</code> suite</h1>",
        "<p>Generated by <code>bench leaderboard</code> from the result records. Accuracies in %, mean ± std "
        "over seeds. CA: clean accuracy; ASR: attack success rate; RA: robust accuracy.</p>",
        "<h2>Main table</h2>",
        html_table(main_rows(agg, defenses)) if defenses else "<p>n/a</p>",
        "<h2>Defenses, averaged over attacked cells (ranked by DER)</h2>",
        html_table(summary_rows(agg)) if (agg["attack"] != "none").any() else "<p>n/a</p>",
        "<h2>Trade-off: CA retention vs ASR</h2>",
        _img(tradeoff, alt="trade-off") if tradeoff else "<p>n/a</p>",
        "<h2>TBAR: validation curves over the scaling coefficient</h2>",
        _img(curves, alt="alpha curves") if curves else "<p>n/a (no TBAR records)</p>",
        "<h2>Triggers</h2>",
        trigger_thumbnails(records, root),
    ]
    if failed:
        parts.append(f"<h2>Failed trials ({len(failed)})</h2><ul>")
        parts += [
            f"<li>{html.escape(r['config']['attack'])}/{html.escape(r['config']['defense'])}: "
            f"{html.escape(r.get('error', ''))}</li>"
            for r in failed
        ]
        parts.append("</ul>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def csv_text(records: list[dict]) -> str:
    return aggregate(records_frame(records))[CSV_COLUMNS].to_csv(index=False, float_format="%.4f")


def write(records: list[dict], suite: str, out_dir: Path, store=None) -> dict[str, Path]:
    """`<suite>.md`, `.csv` and `.html` under `out_dir`; the HTML embeds the trigger images
    when `store` (the storage root the records came from) is given."""
    out_dir = Path(out_dir)
    paths = {"markdown": out_dir / f"{suite}.md", "csv": out_dir / f"{suite}.csv", "html": out_dir / f"{suite}.html"}
    atomic_write_bytes(paths["markdown"], render_markdown(records, suite).encode())
    atomic_write_bytes(paths["csv"], csv_text(records).encode())
    root = store.local_root() if store is not None else None
    atomic_write_bytes(paths["html"], render_html(records, suite, root).encode())
    return paths


# ---------------------------------------------------------------- --check

# Accuracy-like columns may move by rounding across CPUs and thread counts; counts of
# consumed samples are decided by code, not arithmetic, so they must match exactly.
TOLERANT = ["ca", "ca_std", "asr", "asr_std", "ra", "ra_std", "ca_retention", "der", "control"]
EXACT = ["n_seeds", "clean_samples", "triggered_samples"]


def compare(committed: pd.DataFrame, fresh: pd.DataFrame, tol: float) -> list[str]:
    """Differences between a committed leaderboard CSV and a fresh one, as readable lines
    (empty when they agree). Wall seconds are not compared: they measure the machine."""
    problems = []
    old = committed.set_index(KEYS)
    new = fresh.set_index(KEYS)
    for key in old.index.difference(new.index):
        problems.append(f"{'/'.join(map(str, key))}: in the committed table, not produced by the rerun")
    for key in new.index.difference(old.index):
        problems.append(f"{'/'.join(map(str, key))}: produced by the rerun, missing from the committed table")
    for key in old.index.intersection(new.index):
        a, b = old.loc[key], new.loc[key]
        for col in TOLERANT + EXACT:
            x, y = a.get(col), b.get(col)
            if pd.isna(x) and pd.isna(y):
                continue
            if pd.isna(x) != pd.isna(y):
                problems.append(f"{'/'.join(map(str, key))} {col}: committed {x}, rerun {y}")
                continue
            limit = tol if col in TOLERANT else 0.0
            if abs(float(x) - float(y)) > limit + 1e-9:
                problems.append(f"{'/'.join(map(str, key))} {col}: committed {x}, rerun {y} (tolerance {limit})")
    return problems
