"""Leaderboard pages from result records alone: Markdown, CSV and one self-contained HTML
page, rendered from jinja2 templates (bench/templates) over data prepared here and in
bench/tables.py.

The page answers in order: which defense leaves the least backdoor at matched clean
accuracy (the heatmap), with what confidence (summary and paired comparisons), and the
detail per (model, dataset, setting), with every `n/a` saying why.
"""

from __future__ import annotations

import base64
import hashlib
import html
import math
from dataclasses import dataclass, field
from pathlib import Path

import jinja2
import pandas as pd

from bench import tables
from bench.store import atomic_write_bytes
from bench.tables import KEYS, LEVELS

DETECTORS = ("neural-cleanse", "decree")  # return the model unchanged: their own table

CSV_COLUMNS = [
    *KEYS, "n_seeds", "n_took",
    "ca", "ca_ci", "ca_std", "asr", "asr_ci", "asr_std", "ra", "ra_ci", "ra_std",
    "ca_retention", "der", "control", "control_retention", "bd_asr_all", "knob", "knob_chosen",
    *[f"{m}_r{lvl}{s}" for lvl in LEVELS for m in ("asr", "ca", "ra", "control", "retention") for s in ("", "_ci")],
    "auc_90", "auc_90_ci",
    "wall_s", "clean_samples", "triggered_samples",
]  # fmt: skip

DEFINITIONS = [
    ("CA", "clean accuracy: top-1 on the clean test split."),
    ("ASR", "attack success rate: share of triggered test images whose true label is not the target that "
            "are classified as the target."),
    ("RA", "robust accuracy: share of the same triggered images classified as their true label."),
    ("CA retention", "CA after the defense / CA of the backdoored model (test)."),
    ("ASR@R (R = 99, 95, 90)", "matched retention: the defense's knob value with the lowest validation ASR "
                              "among those keeping validation CA >= R% of the backdoored model's, reported on "
                              "test. The undefended model is always a candidate, so a defense that cannot reach "
                              "R scores the backdoored ASR. Validation ASR uses the attack's trigger for every "
                              "defense (the evaluator's protocol; no defense is shown it)."),
    ("AUC", "mean test ASR of the validation-chosen knob value over retention levels uniform in "
            "[0.90, 1.00] (normalised area under the retention-ASR curve; lower is better)."),
    ("own rule", "the defense's own deployable choice of its knob (TBAR: lowest validation ASR with CA >= "
                 "0.95 x backdoored, with its own trigger); the CA/ASR/RA columns and DER use it."),
    ("DER", "BackdoorBench's defense effectiveness rating with the correct sign: (max(0, ASR_bd - ASR) - "
            "max(0, CA_bd - CA) + 1) / 2, in [0, 1]; higher is better."),
    ("control", "mean zero-shot accuracy on the suite's control datasets (CLIP settings)."),
    ("took", "a (cell, seed) whose backdoored test ASR is below 50% is no evidence about a defense: it is "
             "shown and left out of every average; k/n counts the rows that took."),
    ("± x", "half-width of the 95% confidence interval over seeds (Student t); a single seed has none."),
    ("significant", "paired t-test over (cell, seed) rows, Holm-adjusted over all pairs, p < 0.05."),
]  # fmt: skip


def select_records(records: list[dict], suite: str, prefer_ids: set[str] = frozenset()) -> list[dict]:
    """One record per (model, dataset, setting, attack, defense, seed) of `suite`.

    A store can hold several configurations of one cell (a changed default, another
    variant); averaging them would mix experiments. Records of the current plan
    (`prefer_ids`) win, then the newest. Failed records are kept only where the cell
    has no ok record, so a failure shows in the table instead of vanishing.
    """
    best: dict[tuple, tuple] = {}
    for r in records:
        c = r.get("config", {})
        if c.get("suite") != suite:
            continue
        key = (*(c.get(k) for k in KEYS), c.get("seed"))
        rank = (r.get("status") == "ok", r.get("trial_id") in prefer_ids, r.get("created", ""))
        if key not in best or rank > best[key][0]:
            best[key] = (rank, r)
    return [r for _, r in best.values()]


# ---------------------------------------------------------------- formatting


def _nan(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def pct(mean, ci=None, digits: int = 1) -> str:
    """'12.3 ± 4.5' (percent, with the CI half-width when there is one), or 'n/a'."""
    if _nan(mean):
        return "n/a"
    s = f"{100 * mean:.{digits}f}"
    if not _nan(ci):
        s += f" ± {100 * ci:.{digits}f}"
    return s


def num(v, digits: int = 2) -> str:
    return "n/a" if _nan(v) else f"{v:.{digits}f}".rstrip("0").rstrip(".") if "." in f"{v:.{digits}f}" else f"{v}"


# ---------------------------------------------------------------- the page's data


@dataclass
class Board:
    suite: str
    records: list[dict]
    frame: pd.DataFrame
    agg: pd.DataFrame
    summary: pd.DataFrame
    pairs: pd.DataFrame
    provenance: dict = field(default_factory=dict)

    @property
    def defenses(self) -> list[str]:
        names = sorted(set(self.agg["defense"])) if len(self.agg) else []
        return sorted(names, key=lambda d: (d != "none", d in DETECTORS, d))

    @property
    def groups(self) -> list[tuple]:
        return sorted({tuple(r) for r in self.agg[["model", "dataset", "setting"]].itertuples(index=False)})


def build(records: list[dict], suite: str, provenance: dict | None = None) -> Board:
    frame = tables.records_frame(records)
    agg = tables.aggregate(frame) if len(frame) else pd.DataFrame(columns=CSV_COLUMNS)
    summ = tables.summary(frame) if len(frame) else pd.DataFrame()
    pairs = tables.pairwise(frame) if len(frame) else pd.DataFrame(columns=["a", "b", "pairs", "diff", "ci", "p"])
    return Board(suite, records, frame, agg, summ, pairs, provenance or provenance_of(records, suite))


def provenance_of(records: list[dict], suite: str) -> dict:
    """Where the numbers come from: code commit(s), versions, hardware, seeds, suite hash."""
    ok = [r for r in records if r.get("status") == "ok"]
    versions = sorted({tuple(sorted((r.get("versions") or {}).items())) for r in ok})
    commits = sorted({dict(v).get("git_commit", "unknown")[:12] for v in versions})
    seeds = sorted({r["config"]["seed"] for r in ok})
    hw = sorted(
        {
            f"{(r.get('worker') or {}).get('device', '?')}"
            f"{' / ' + r['worker']['cpu'] if (r.get('worker') or {}).get('cpu') else ''}"
            for r in ok
        }
    )
    threads = sorted({str((r.get("worker") or {}).get("torch_threads")) for r in ok})
    first = dict(versions[-1]) if versions else {}
    suite_cfg = sorted({hashlib.sha256(str(r["config"].get("setting_params", "")).encode()).hexdigest()[:8] for r in ok})
    return {
        "suite": suite,
        "records": len(records),
        "seeds": ", ".join(map(str, seeds)) or "none",
        "commits": ", ".join(commits) or "unknown",
        "versions": ", ".join(f"{k} {v}" for k, v in first.items() if k != "git_commit"),
        "hardware": "; ".join(hw) or "unknown",
        "threads": ", ".join(threads),
        "config_hashes": ", ".join(suite_cfg),
        "created": max((r.get("created", "") for r in ok), default=""),
    }


def na_reason(board: Board, cell: tuple, defense: str) -> str:
    """Why a (cell, defense) has no number: failed, unsupported, needs a trigger, or not run."""
    from bench.registry import DEFENSES

    _model, _dataset, setting, attack = cell
    for r in board.records:
        c = r["config"]
        if (c["model"], c["dataset"], c["setting"], c["attack"], c["defense"]) == (*cell, defense):
            if r.get("status") == "failed":
                return "failed"
    if defense in DEFENSES:
        e = DEFENSES.entry(defense)
        if setting not in e.settings:
            return "unsupported"
        if attack == "none" and getattr(e.obj, "uses_attack_knowledge", False):
            return "needs a trigger"
    return "not run"


def _agg_row(board: Board, cell: tuple, defense: str):
    a = board.agg
    m = a[(a.model == cell[0]) & (a.dataset == cell[1]) & (a.setting == cell[2]) & (a.attack == cell[3]) & (a.defense == defense)]
    return None if m.empty else m.iloc[0]


def group_table(board: Board, group: tuple) -> dict:
    """One (model, dataset, setting): attacks as rows, defenses as column groups of
    CA / ASR (own rule) / ASR@95, with the knob value the own rule chose."""
    defenses = [d for d in board.defenses if d not in DETECTORS]
    a = board.agg
    attacks = sorted(set(a[(a.model == group[0]) & (a.dataset == group[1]) & (a.setting == group[2])]["attack"]))
    attacks.sort(key=lambda x: (x == "none", x))
    rows = []
    for attack in attacks:
        cell = (*group, attack)
        bd = _agg_row(board, cell, "none")
        took = None if bd is None else (int(bd.n_took), int(bd.n_seeds))
        cells = []
        for d in defenses:
            r = _agg_row(board, cell, d)
            if r is None:
                reason = na_reason(board, cell, d)
                cells.append({"na": reason, "values": [f"n/a ({reason})"] * 3})
                continue
            knob = "" if _nan(r.knob_chosen) or d == "none" else f"{r.knob}={num(r.knob_chosen)}"
            if attack != "none" and r.n_took == 0:
                cells.append({"na": "did not take", "values": ["n/a (attack did not take)"] * 3, "knob": knob})
                continue
            cells.append(
                {
                    "values": [pct(r.ca, r.ca_ci), pct(r.asr, r.asr_ci), pct(r.asr_r95, r.asr_r95_ci)],
                    "sort": [r.ca, r.asr, r.asr_r95],
                    "knob": knob,
                }
            )
        label = attack if attack != "none" else "none (clean reference)"
        rows.append({"attack": attack, "label": label, "took": took, "bd_asr": None if bd is None else bd.bd_asr_all, "cells": cells})
    return {"group": group, "defenses": defenses, "rows": rows}


def long_rows(board: Board, group: tuple) -> list[dict]:
    """The Markdown table of a group: one row per (attack, defense)."""
    a = board.agg
    g = a[(a.model == group[0]) & (a.dataset == group[1]) & (a.setting == group[2])]
    out = []
    for r in g.sort_values(["attack", "defense"], key=lambda s: s.map(lambda v: (v == "none", v)) if s.name == "attack" else s.map(lambda v: (v != "none", v))).itertuples():
        took = f"{r.n_took}/{r.n_seeds}" if r.attack != "none" else f"-/{r.n_seeds}"
        if r.attack != "none" and r.n_took == 0:
            out.append({"attack": r.attack, "defense": r.defense, "took": took, "cols": ["attack did not take"] + [""] * 7})
            continue
        knob = "" if _nan(r.knob_chosen) or r.defense == "none" else f"{r.knob}={num(r.knob_chosen)}"
        out.append(
            {
                "attack": r.attack,
                "defense": r.defense,
                "took": took,
                "cols": [
                    pct(r.ca, r.ca_ci), pct(r.asr, r.asr_ci), pct(r.ra, r.ra_ci), pct(r.asr_r95, r.asr_r95_ci),
                    pct(r.asr_r90, r.asr_r90_ci), pct(r.auc_90, r.auc_90_ci), knob, pct(r.control, r.control_ci),
                ],
            }
        )  # fmt: skip
    return out


def answer(board: Board) -> dict:
    """The 30-second answer: ASR at 95% retention, defenses x (attack, setting), over the
    rows whose attack took, as a heatmap."""
    f = board.frame
    took = f[(f["attack"] != "none") & f["took"]] if len(f) else f
    cols = sorted({(r.attack, r.setting) for r in took.itertuples()}) if len(took) else []
    rows = []
    order = list(board.summary["defense"]) if len(board.summary) else []
    for d in order:
        if d in DETECTORS:
            continue
        cells = []
        for attack, setting in cols:
            sel = took[(took.defense == d) & (took.attack == attack) & (took.setting == setting)]
            est = tables.stats.mean_ci(sel["asr_r95"].tolist())
            cells.append({"text": pct(est.mean, est.half, 0), "value": est.mean, "n": est.n})
        rows.append({"defense": d, "cells": cells})
    return {"cols": [f"{a} / {s}" for a, s in cols], "rows": rows}


def _num(v: float, fmt: str) -> str:
    """A plain number, or n/a where no row contributed one (a NaN mean)."""
    return "n/a" if _nan(v) else format(v, fmt)


def summary_rows(board: Board) -> list[dict]:
    out = []
    for r in board.summary.itertuples():
        if r.defense in DETECTORS:
            continue
        out.append(
            {
                "defense": r.defense,
                "cols": [
                    f"{r.k}/{r.n}", pct(r.none_asr, r.none_asr_ci), pct(r.asr_r95, r.asr_r95_ci),
                    pct(r.asr_r90, r.asr_r90_ci), pct(r.auc_90, r.auc_90_ci), pct(r.asr, r.asr_ci),
                    pct(r.ca_retention, r.ca_retention_ci), pct(r.control_retention, r.control_retention_ci),
                    _num(r.der, ".3f"), _num(r.wall_s, ".1f"), _num(r.clean_samples, ".0f"),
                    _num(r.triggered_samples, ".0f"),
                ],
            }
        )  # fmt: skip
    return out


SUMMARY_HEAD = [
    "defense", "rows took k/n", "ASR before (same rows)", "ASR@95", "ASR@90", "AUC 0.90-1", "ASR (own rule)",
    "CA retention (own rule)", "control retention", "DER", "wall s", "clean samples", "triggered samples",
]  # fmt: skip


def significance(board: Board) -> list[str]:
    p = board.pairs
    if p is None or not len(p):
        return []
    out = []
    for r in p[p["significant"]].itertuples():
        lower, higher = (r.a, r.b) if r.diff < 0 else (r.b, r.a)
        out.append(
            f"{lower} leaves less ASR@95 than {higher}: difference {pct(abs(r.diff), r.ci)} points over {r.pairs} "
            f"rows (Holm-adjusted p = {r.p_holm:.3g})"
        )
    return out


def detector_rows(board: Board) -> list[dict]:
    a = board.agg
    d = a[a["defense"].isin(DETECTORS) & (a["attack"] != "none")]
    out = []
    for r in d.sort_values(["setting", "attack", "defense"]).itertuples():
        out.append(
            {
                "cols": [
                    r.model, r.dataset, r.setting, r.attack, r.defense, f"{r.n_took}/{r.n_seeds}",
                    pct(r.target_found), num(r.anomaly), pct(r.detected), pct(getattr(r, "mask_overlap", float("nan"))),
                ]
            }
        )  # fmt: skip
    return out


# ---------------------------------------------------------------- rendering


def _env() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("bench", "templates"),
        autoescape=jinja2.select_autoescape(["html"]),
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["pct"] = pct
    return env


def _context(board: Board) -> dict:
    return {
        "suite": board.suite,
        "prov": board.provenance,
        "answer": answer(board),
        "summary_head": SUMMARY_HEAD,
        "summary": summary_rows(board),
        "significance": significance(board),
        "groups": [group_table(board, g) for g in board.groups],
        "long": [(g, long_rows(board, g)) for g in board.groups],
        "detectors": detector_rows(board),
        "failed": [r for r in board.records if r.get("status") == "failed"],
        "definitions": DEFINITIONS,
    }


def render_markdown(board: Board) -> str:
    return _env().get_template("leaderboard.md.j2").render(**_context(board))


def _b64(png: bytes | None) -> str | None:
    return None if png is None else base64.b64encode(png).decode()


def render_html(board: Board, root: Path | None = None) -> str:
    from bench import plots

    ctx = _context(board)
    ctx["plots"] = {
        "tradeoff": _b64(plots.tradeoff(board.agg) if len(board.agg) else None),
        "curves": _b64(plots.curves(board.records)),
    }
    ctx["thumbs"] = thumbnails(board.records, root)
    ctx["samples"] = dataset_samples(board)
    ctx["pairs"] = board.pairs.to_dict("records") if len(board.pairs) else []
    return _env().get_template("leaderboard.html.j2").render(**ctx)


def thumbnails(records: list[dict], root: Path | None) -> list[dict]:
    """Per attack artifact (one seed each), its poisoned example image and trigger image."""
    if root is None:
        return []
    seen: dict[tuple, dict] = {}
    for r in sorted(records, key=lambda r: (r["config"]["attack"], r["config"]["setting"], r["config"]["seed"])):
        c, aid = r["config"], r.get("artifact_id")
        key = (c["attack"], c["model"], c["setting"])
        if c["attack"] == "none" or key in seen or aid is None:
            continue
        folder = Path(root) / "artifacts" / aid
        imgs = []
        for name, label in (("example_clean.png", "clean"), ("example_triggered.png", "triggered"), ("trigger.png", "trigger")):
            if (folder / name).exists():
                imgs.append({"label": label, "b64": base64.b64encode((folder / name).read_bytes()).decode()})
        if imgs:
            seen[key] = {"title": f"{c['attack']} ({c['model']}, {c['setting']})", "images": imgs}
    return list(seen.values())


def dataset_samples(board: Board) -> list[dict]:
    """A grid of test images of each attacked dataset (built-in sets only: no download)."""
    from bench.data.preview import sample_grid_png

    out = []
    for dataset in sorted({g[1] for g in board.groups}):
        png = sample_grid_png(dataset)
        if png is not None:
            out.append({"dataset": dataset, "b64": base64.b64encode(png).decode()})
    return out


def csv_text(board: Board) -> str:
    agg = board.agg.copy()
    for col in CSV_COLUMNS:
        if col not in agg:
            agg[col] = float("nan")
    return agg[CSV_COLUMNS].to_csv(index=False, float_format="%.4f")


def write(records: list[dict], suite: str, out_dir: Path, store=None, provenance: dict | None = None) -> dict[str, Path]:
    """`<suite>.md`, `.csv` and `.html` under `out_dir`; the HTML embeds the example
    images when `store` (the storage root the records came from) is given."""
    out_dir = Path(out_dir)
    board = build(records, suite, provenance)
    paths = {"markdown": out_dir / f"{suite}.md", "csv": out_dir / f"{suite}.csv", "html": out_dir / f"{suite}.html"}
    atomic_write_bytes(paths["markdown"], render_markdown(board).encode())
    atomic_write_bytes(paths["csv"], csv_text(board).encode())
    root = store.local_root() if store is not None else None
    atomic_write_bytes(paths["html"], render_html(board, root).encode())
    return paths


def escape(s: str) -> str:
    return html.escape(s)
