"""Leaderboard pages from result records alone: Markdown, CSV and one self-contained HTML
page, rendered from jinja2 templates (bench/templates) over data prepared here and in
bench/report/tables.py.

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

from bench.report import tables
from bench.report.tables import KEYS, LEVELS
from bench.store import atomic_write_bytes


def detectors(names) -> set[str]:
    """The defenses among `names` registered as detectors (`Defense.detector`): they return
    the model unchanged, so they get a table of their own and are never ranked."""
    from bench.core.registry import DEFENSES

    return {d for d in set(names) if d in DEFENSES and getattr(DEFENSES.get(d), "detector", False)}

CSV_COLUMNS = [
    *KEYS, "n_seeds", "n_took",
    *[f"{m}{s}" for m in ("ca", "asr", "ra") for s in ("", "_lo", "_hi", "_std")],
    "ca_retention", "der", "control", "control_retention", "bd_asr_all", "knob", "knob_chosen",
    *[f"{m}_r{lvl}{s}" for lvl in LEVELS for m in ("asr", "ca", "ra", "control", "retention") for s in ("", "_lo", "_hi")],
    *[f"{m}_r{lvl}_oracle{s}" for lvl in LEVELS for m in ("asr", "retention") for s in ("", "_lo", "_hi")],
    "auc_90", "auc_90_lo", "auc_90_hi",
    "wall_s", "clean_samples", "triggered_samples",
]  # fmt: skip

DEFINITIONS = [
    ("CA", "clean accuracy: top-1 on the clean test split."),
    ("ASR", "attack success rate: share of triggered test images whose true label is not the target that "
            "are classified as the target."),
    ("RA", "robust accuracy: share of the same triggered images classified as their true label."),
    ("CA retention", "CA after the defense / CA of the backdoored model (test)."),
    ("ASR@R (R = 99, 95, 90)", "the blind operating point, the same rule for every defense: the strongest "
                              "value of the defense's knob whose validation CA is >= R% of the backdoored model's, "
                              "reported on test. It reads no ASR, so no defense is credited with knowledge of the "
                              "trigger. The undefended model is always a candidate."),
    ("test ret.", "the test CA retention at the ASR@R point: R is matched on validation, and test can fall "
                  "below it."),
    ("oracle ASR@R", "an upper bound, never the headline: the knob value with the lowest validation ASR, measured "
                     "with the attacker's trigger, among those keeping R% of validation CA. A defense that does not "
                     "know the trigger could not make this choice."),
    ("AUC", "mean test ASR of the oracle-chosen knob value over retention levels uniform in [0.90, 1.00] "
            "(normalised area under the retention-ASR curve; an oracle upper bound like oracle ASR@R)."),
    ("own rule", "the defense's own deployable choice of its knob (TBAR: lowest validation ASR with CA >= "
                 "0.95 x backdoored, with its own known trigger); the CA/ASR/RA columns and DER use it."),
    ("DER", "BackdoorBench's defense effectiveness rating with the correct sign: (max(0, ASR_bd - ASR) - "
            "max(0, CA_bd - CA) + 1) / 2, in [0, 1]; higher is better."),
    ("control", "mean zero-shot accuracy on the suite's control datasets (CLIP settings)."),
    ("took", "a (cell, seed) whose backdoored test ASR is below 50% is no evidence about a defense: it is "
             "shown and left out of every average; k/n counts the rows that took."),
    ("± x", "half-width of the 95% confidence interval (Student t). In a cell's table it is over the cell's "
            "seeds; in a ranking over several cells it is over cells (each cell's seeds averaged first), "
            "since seeds of one cell share its victim, splits and recipe. One seed has no interval. An "
            "interval that would leave [0, 100] is shown clipped, as (low-high)."),
    ("rank", "within a ranking, 1 + the number of defenses whose interval lies wholly below this one's: "
             "neighbours whose intervals overlap share a rank (tied)."),
    ("significant", "paired t-test of per-cell differences (over seeds when the rows hold one cell), "
                    "Holm-adjusted over all pairs of the page, p < 0.05."),
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


def pct(mean, ci=None, digits: int = 1, bounded: bool = True) -> str:
    """'12.3 ± 4.5' (percent, with the CI half-width when there is one), or 'n/a'. For a
    rate (`bounded`: an accuracy or ASR, never a retention, which can pass 100%) an
    interval that would leave [0, 100] is shown clipped, '2.0 (0.0-9.1)'."""
    if _nan(mean):
        return "n/a"
    s = f"{100 * mean:.{digits}f}"
    if _nan(ci):
        return s
    lo, hi = mean - ci, mean + ci
    if bounded and (lo < 0 or hi > 1):
        return f"{s} ({100 * max(lo, 0.0):.{digits}f}-{100 * min(hi, 1.0):.{digits}f})"
    return f"{s} ± {100 * ci:.{digits}f}"


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
    # each adaptive attack against its plain counterpart (tables.adaptive_pairs): ASR@95 per
    # defense, and the backdoored model's own numbers (defense none) for what the attacker paid
    adaptive: pd.DataFrame = field(default_factory=pd.DataFrame)
    attacker_cost: dict[str, pd.DataFrame] = field(default_factory=dict)

    @property
    def defenses(self) -> list[str]:
        names = sorted(set(self.agg["defense"])) if len(self.agg) else []
        found = detectors(names)
        return sorted(names, key=lambda d: (d != "none", d in found, d))

    @property
    def groups(self) -> list[tuple]:
        return sorted({tuple(r) for r in self.agg[["model", "dataset", "setting"]].itertuples(index=False)})


def build(records: list[dict], suite: str, provenance: dict | None = None) -> Board:
    frame = tables.records_frame(records)
    agg = tables.aggregate(frame) if len(frame) else pd.DataFrame(columns=CSV_COLUMNS)
    ranked = frame[~frame["defense"].isin(detectors(frame["defense"]))] if len(frame) else frame  # detectors change no model
    summ = tables.summary(ranked) if len(ranked) else pd.DataFrame()
    empty = pd.DataFrame(columns=["group", "a", "b", "pairs", "unit", "diff", "ci", "p", "p_holm", "significant"])
    pairs = tables.pairwise(ranked) if len(ranked) else empty
    plain = plain_counterparts(records)
    adaptive = tables.adaptive_pairs(ranked, plain) if len(ranked) and plain else pd.DataFrame()
    cost = {}
    if len(adaptive):
        undefended = frame[frame["defense"] == "none"]
        cost = {m: tables.adaptive_pairs(undefended, plain, m) for m in ("ca", "asr", "control")}
    return Board(suite, records, frame, agg, summ, pairs, provenance or provenance_of(records, suite), adaptive, cost)


def plain_counterparts(records: list[dict]) -> dict[str, str]:
    """adaptive attack -> its plain version (`Attack.plain_counterpart`), for the attacks of
    `records` whose plain version ran too."""
    from bench.core.registry import ATTACKS
    from bench.protocol.spec import build_params

    configs = {r["config"]["attack"]: r["config"].get("attack_params") for r in records if r.get("status") == "ok"}
    out = {}
    for name, params in configs.items():
        if name not in ATTACKS or not getattr(ATTACKS.get(name), "adaptive", None):
            continue
        plain = ATTACKS.get(name).plain_counterpart(build_params(ATTACKS, name, params, "attack_params"))
        if plain in configs:
            out[name] = plain
    return out


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
    from bench.core.registry import DEFENSES

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
    CA / ASR (own rule) / ASR@95 (blind) with its test retention, with the knob value the
    own rule chose. Intervals are over the cell's seeds."""
    found = detectors(board.defenses)
    defenses = [d for d in board.defenses if d not in found]
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
            at95 = pct(r.asr_r95, r.asr_r95_ci)
            if not _nan(r.retention_r95):
                at95 += f" (test ret. {pct(r.retention_r95, bounded=False)})"
            cells.append({"values": [pct(r.ca, r.ca_ci), pct(r.asr, r.asr_ci), at95], "sort": [r.ca, r.asr, r.asr_r95],
                          "knob": knob})  # fmt: skip
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
            out.append({"attack": r.attack, "defense": r.defense, "took": took, "cols": ["attack did not take"] + [""] * 9})
            continue
        knob = "" if _nan(r.knob_chosen) or r.defense == "none" else f"{r.knob}={num(r.knob_chosen)}"
        out.append(
            {
                "attack": r.attack,
                "defense": r.defense,
                "took": took,
                "cols": [
                    pct(r.ca, r.ca_ci), pct(r.asr, r.asr_ci), pct(r.ra, r.ra_ci), pct(r.asr_r95, r.asr_r95_ci),
                    pct(r.retention_r95, bounded=False), pct(r.asr_r90, r.asr_r90_ci),
                    pct(r.asr_r95_oracle, r.asr_r95_oracle_ci), pct(r.auc_90, r.auc_90_ci), knob,
                    pct(r.control, r.control_ci),
                ],
            }
        )  # fmt: skip
    return out


LONG_HEAD = ["CA", "ASR", "RA", "ASR@95", "test ret. @95", "ASR@90", "oracle ASR@95", "AUC (oracle)", "own rule",
             "control"]  # fmt: skip


def _viridis(v: float) -> str:
    """A colour-blind-safe sequential colour (viridis, light end for low ASR) for v in [0, 1]."""
    stops = [(253, 231, 37), (94, 201, 98), (33, 145, 140), (59, 82, 139), (68, 1, 84)]
    x = min(max(v, 0.0), 1.0) * (len(stops) - 1)
    i = min(int(x), len(stops) - 2)
    t = x - i
    rgb = [round(a + (b - a) * t) for a, b in zip(stops[i], stops[i + 1], strict=True)]
    return f"rgb({rgb[0]},{rgb[1]},{rgb[2]})"


def tower_sizes(records: list[dict]) -> dict[str, int]:
    """Image-tower parameters of each model that can say (the ladder's rungs)."""
    from bench.core.config import ConfigError
    from bench.core.registry import UnknownNameError
    from bench.models.zoo import rung_params

    out = {}
    for r in records:
        c = r["config"]
        if c["model"] in out:
            continue
        try:
            out[c["model"]] = (rung_params(c["model"], c.get("model_params") or {}) or {}).get("visual")
        except (UnknownNameError, ConfigError):  # a model no plugin registers now: unknown size
            out[c["model"]] = None
    return {m: v for m, v in out.items() if v}


def answer(board: Board) -> dict:
    """The 30-second answer: ASR@95 at the blind point, defenses x (attack, setting), over
    the rows whose attack took, each cell's mean and interval over its seeds. In each
    column the lowest mean and every defense whose interval overlaps it are marked tied
    for best. Rows follow the first ranking (defenses over every row), then the others."""
    f = board.frame
    took = tables.took_rows(f)
    # one column per cell, sorted by setting, attack, then model size (a ladder reads left to
    # right from the smallest rung); rows of victims that did not learn the task are not in `took`
    sizes = tower_sizes(board.records)
    cols = sorted({tuple(r) for r in took[tables.CELL].itertuples(index=False)},
                  key=lambda c: (c[2], c[3], sizes.get(c[0], math.inf), c)) if len(took) else []  # fmt: skip
    order = list(dict.fromkeys(board.summary["defense"])) if len(board.summary) else []
    found = detectors(board.defenses)
    grid = {}
    for d in order:
        mine = took[took.defense == d].set_index(tables.CELL)
        for cell in cols:
            sel = mine.loc[[cell]] if cell in mine.index else mine.iloc[0:0]
            grid[d, cell] = tables.stats.mean_ci(sel["asr_r95"].tolist())
    best = {}
    for cell in cols:
        ests = [grid[d, cell] for d in order if d not in found and grid[d, cell].n]
        if ests:
            top = min(ests, key=lambda e: e.mean)
            best[cell] = top.mean + (0 if _nan(top.half) else top.half)
    rows = []
    for d in order:
        if d in found:
            continue
        cells = []
        for cell in cols:
            est = grid[d, cell]
            low = est.mean - (0 if _nan(est.half) else est.half)
            tied = bool(est.n) and cell in best and low <= best[cell] + 1e-12
            cells.append({"text": pct(est.mean, est.half, 0), "value": est.mean, "n": est.n, "best": tied,
                          "colour": None if _nan(est.mean) else _viridis(est.mean),
                          "dark": not _nan(est.mean) and est.mean > 0.55})  # fmt: skip
        rows.append({"defense": d, "cells": cells})
    # a column is named by its attack and setting, and by its model and dataset where those vary
    short = len({(c[3], c[2]) for c in cols}) == len(cols)
    return {"cols": [f"{c[3]} / {c[2]}" if short else f"{c[0]} / {c[1]} / {c[3]} / {c[2]}" for c in cols], "rows": rows}


def _num(v: float, fmt: str) -> str:
    """A plain number, or n/a where no row contributed one (a NaN mean)."""
    return "n/a" if _nan(v) else format(v, fmt)


def threat_models(board: Board) -> list[dict]:
    """Each defense on the page with the data it spends and what it knows of the attack."""
    from bench.core.registry import DEFENSES

    out = []
    found = detectors(board.defenses)
    for d in board.defenses:
        obj = DEFENSES.entry(d).obj if d in DEFENSES else None
        out.append({"defense": d, "data": getattr(obj, "data_used", "?"), "knows": getattr(obj, "knows", "?"),
                    "detector": d in found})  # fmt: skip
    return out


def rankings(board: Board) -> list[dict]:
    """The ranking tables: one per group of defenses over the rows all of them share."""
    out = []
    s = board.summary
    if not len(s):
        return out
    knows = {t["defense"]: t["knows"] for t in threat_models(board)}
    found = detectors(board.defenses)
    for g, grp in s.groupby("group", sort=True):
        rows = []
        for r in grp.itertuples():
            if r.defense in found:
                continue
            name = r.defense + (" (knows the trigger)" if knows.get(r.defense, "nothing") != "nothing" else "")
            rows.append(
                {
                    "defense": name,
                    "cols": [
                        f"{r.rank}{'=' if r.tied else ''}", f"{r.k}", f"{r.n_took}/{r.n}", pct(r.none_asr, r.none_asr_ci),
                        pct(r.asr_r95, r.asr_r95_ci), pct(r.retention_r95, r.retention_r95_ci, bounded=False),
                        pct(r.asr_r90, r.asr_r90_ci), pct(r.asr_r95_oracle, r.asr_r95_oracle_ci),
                        pct(r.asr, r.asr_ci), pct(r.ca_retention, r.ca_retention_ci, bounded=False),
                        pct(r.control_retention, r.control_retention_ci, bounded=False), _num(r.der, ".3f"),
                        _num(r.wall_s, ".1f"), _num(r.clean_samples, ".0f"), _num(r.triggered_samples, ".0f"),
                    ],
                }
            )  # fmt: skip
        first = grp.iloc[0]
        unit = (f"over {int(first.cells)} cells (each cell's seeds averaged first)" if first.unit == "cells"
                else f"over the {int(first.k)} seeds of one cell")  # fmt: skip
        newcomers = ", ".join(d for d in grp["defense"] if d not in set(s[s.group == 0]["defense"]))
        title = "every row whose attack took" if g == 0 else f"the {int(first.k)} rows that {newcomers} ran on"
        rows_note = (f"{int(first.k)} (cell, seed) rows in {int(first.cells)} cell(s); ± is the 95% interval {unit}"
                     if first.k > 1 else "one (cell, seed) row: one seed gives no interval")  # fmt: skip
        out.append({"group": int(g), "title": title, "note": rows_note, "rows": rows,
                    "significance": significance(board, int(g))})  # fmt: skip
    return out


SUMMARY_HEAD = [
    "defense", "rank", "shared rows", "its rows (took/run)", "ASR before (same rows)", "ASR@95", "test ret. @95", "ASR@90", "oracle ASR@95",
    "ASR (own rule)", "CA retention (own rule)", "control retention", "DER", "wall s", "clean samples",
    "triggered samples",
]  # fmt: skip


def significance(board: Board, group: int = 0) -> list[str]:
    p = board.pairs
    if p is None or not len(p):
        return []
    out = []
    for r in p[p["significant"] & (p["group"] == group)].itertuples():
        lower, higher = (r.a, r.b) if r.diff < 0 else (r.b, r.a)
        out.append(
            f"{lower} leaves less ASR@95 than {higher}: difference {pct(abs(r.diff), r.ci, bounded=False)} points "
            f"over {r.pairs} {r.unit} (Holm-adjusted p = {r.p_holm:.3g})"
        )
    return out


def adaptive_rows(board: Board) -> list[dict]:
    """One table per (cell, adaptive attack): per defense, ASR@95 at the blind point under
    the plain and the adaptive attack and their paired difference (tables.adaptive_pairs)."""
    a = board.adaptive
    if a is None or not len(a):
        return []
    out = []
    for (model, dataset, setting, adaptive, plain), grp in a.groupby(["model", "dataset", "setting", "adaptive", "plain"]):
        order = sorted(grp.itertuples(), key=lambda r: (r.defense != "none", r.defense))
        rows = [[r.defense, f"{r.pairs}/{r.seeds}", pct(r.plain_mean), pct(r.adaptive_mean),
                 pct(r.diff, r.ci, bounded=False), _num(r.p_holm, ".3g"),
                 "yes" if r.significant else "no"] for r in order]  # fmt: skip
        cost = []
        for metric, label in (("ca", "CA"), ("asr", "ASR"), ("control", "control (zero-shot)")):
            c = board.attacker_cost.get(metric)
            cell = (c["model"] == model) & (c["dataset"] == dataset) & (c["setting"] == setting)
            c = c[cell & (c["adaptive"] == adaptive)] if c is not None else c
            if c is not None and len(c):
                r = next(c.itertuples())
                cost.append([label, f"{r.pairs}/{r.seeds}", pct(r.plain_mean), pct(r.adaptive_mean),
                             pct(r.diff, r.ci, bounded=False), _num(r.p, ".3g")])  # fmt: skip
        agg = board.agg
        clean = agg[(agg["attack"] == "none") & (agg["defense"] == "none") & (agg["model"] == model)
                    & (agg["dataset"] == dataset) & (agg["setting"] == setting)]  # fmt: skip
        reference = pct(clean.iloc[0]["ca"], clean.iloc[0]["ca_ci"]) if len(clean) else "not run"
        out.append({"cell": f"{model} / {dataset} / {setting}", "adaptive": adaptive, "plain": plain, "rows": rows,
                    "cost": cost, "reference": reference})  # fmt: skip
    return out


ADAPTIVE_HEAD = ["defense", "seeds (both took/run)", "ASR@95 plain", "ASR@95 adaptive", "adaptive − plain",
                 "Holm p", "beyond the noise"]  # fmt: skip
COST_HEAD = ["backdoored model", "seeds", "plain", "adaptive", "adaptive − plain", "p"]


def detector_rows(board: Board) -> list[dict]:
    a = board.agg
    d = a[a["defense"].isin(detectors(board.defenses)) & (a["attack"] != "none")]
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
        "rankings": rankings(board),
        "threats": threat_models(board),
        "long_head": LONG_HEAD,
        "commands": board.provenance.get("commands") or [],
        "groups": [group_table(board, g) for g in board.groups],
        "long": [(g, long_rows(board, g)) for g in board.groups],
        "detectors": detector_rows(board),
        "adaptive": adaptive_rows(board),
        "adaptive_head": ADAPTIVE_HEAD,
        "cost_head": COST_HEAD,
        "failed": [r for r in board.records if r.get("status") == "failed"],
        "definitions": DEFINITIONS,
    }


def render_markdown(board: Board) -> str:
    return _env().get_template("leaderboard.md.j2").render(**_context(board))


def _b64(png: bytes | None) -> str | None:
    return None if png is None else base64.b64encode(png).decode()


def render_html(board: Board, root: Path | None = None) -> str:
    from bench.report import plots

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
    """The page's per-cell table: means over the seeds whose attack took, and each interval
    as its clipped bounds (`_lo`, `_hi`; rates within [0, 1], retentions unbounded)."""
    agg = board.agg.copy()
    for col in [c for c in CSV_COLUMNS if c.endswith("_lo")]:
        m = col[: -len("_lo")]
        if m in agg and f"{m}_ci" in agg:
            lo, hi = agg[m] - agg[f"{m}_ci"], agg[m] + agg[f"{m}_ci"]
            if "retention" not in m:
                lo, hi = lo.clip(lower=0.0), hi.clip(upper=1.0)
            agg[col], agg[f"{m}_hi"] = lo, hi
    for col in CSV_COLUMNS:
        if col not in agg:
            agg[col] = float("nan")
    return agg[CSV_COLUMNS].to_csv(index=False, float_format="%.4f")


def write(
    records: list[dict], suite: str, out_dir: Path, store=None, provenance: dict | None = None, suite_cfg=None,
    suite_ref: str | None = None,
) -> dict[str, Path]:
    """`<suite>.md`, `.csv`, `-rows.csv` and `.html` under `out_dir`; the HTML embeds the
    example images when `store` (the storage root the records came from) is given. With
    the suite's config, the page states the commands that regenerate it (bench/report/check.py),
    which `bench leaderboard --check` reruns."""
    from bench.report import check

    out_dir = Path(out_dir)
    board = build(records, suite, provenance)
    if suite_cfg is not None and len(board.frame):
        from bench.core.config import ConfigError
        from bench.core.registry import UnknownNameError

        try:
            board.provenance["commands"] = check.page_commands(board.frame, suite_cfg, suite_ref or suite)
        except (ConfigError, UnknownNameError) as e:  # records of a method or config this code no longer has
            board.provenance["commands"] = [f"(no command reproduces these records with this code: {e})"]
    paths = {"markdown": out_dir / f"{suite}.md", "csv": out_dir / f"{suite}.csv", "rows": out_dir / f"{suite}-rows.csv",
             "html": out_dir / f"{suite}.html"}  # fmt: skip
    atomic_write_bytes(paths["markdown"], render_markdown(board).encode())
    atomic_write_bytes(paths["csv"], csv_text(board).encode())
    atomic_write_bytes(paths["rows"], check.rows_csv(board.frame).encode())
    root = store.local_root() if store is not None else None
    atomic_write_bytes(paths["html"], render_html(board, root).encode())
    return paths


def escape(s: str) -> str:
    return html.escape(s)
