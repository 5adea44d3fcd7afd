"""Leaderboard figures (matplotlib, rendered headless to PNG bytes).

Each function takes plain tables or records and returns PNG bytes, so the HTML page
can embed them and nothing here touches the store.
"""

from __future__ import annotations

import io
import math

import matplotlib

matplotlib.use("Agg")  # headless: CI and clusters have no display
import matplotlib.pyplot as plt
import pandas as pd


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def tradeoff(agg: pd.DataFrame) -> bytes | None:
    """CA retention (y) against ASR (x) at each defense's own rule, one point per cell
    whose attack took (the same rows as every average on the page): colour = defense,
    marker = attack. The ideal corner is top left."""
    pts = agg[(agg["attack"] != "none") & (agg["defense"] != "none") & (agg["n_took"] > 0) & agg["asr"].notna()]
    if pts.empty:
        return None
    fig, ax = plt.subplots(figsize=(8, 4.8))
    markers = dict(zip(sorted(pts["attack"].unique()), "osD^v<>pPX*h", strict=False))
    colors = dict(zip(sorted(pts["defense"].unique()), plt.get_cmap("tab10").colors + plt.get_cmap("Set2").colors, strict=False))
    for r in pts.itertuples():
        ax.scatter(100 * r.asr, 100 * r.ca_retention, marker=markers[r.attack], color=colors[r.defense], s=50, alpha=0.85)
    for d, col in colors.items():
        ax.scatter([], [], color=col, marker="s", label=d)
    for a, mk in markers.items():
        ax.scatter([], [], color="grey", marker=mk, label=a)
    ax.set_xlabel("ASR after defense (%), own rule")
    ax.set_ylabel("CA retention (%)")
    ax.axvline(5, color="grey", lw=0.8, ls=":")
    ax.axhline(95, color="grey", lw=0.8, ls=":")
    ax.set_title("Clean accuracy kept vs backdoor left (colour: defense, marker: attack; cells whose attack took)")
    ax.legend(fontsize=7, ncol=2, loc="center left", bbox_to_anchor=(1.01, 0.5))
    ax.grid(alpha=0.3)
    return _png(fig)


def curves(records: list[dict]) -> bytes | None:
    """Each defense's validation trade-off curve (CA retention vs ASR over its knob), one
    panel per attacked (model, setting, attack, seed 0 or the first seed) whose attack took."""
    by_panel: dict[tuple, list[dict]] = {}
    for r in records:
        c, m = r["config"], r.get("metrics") or {}
        bd = (m.get("backdoored") or {}).get("asr")
        if r.get("status") != "ok" or c["attack"] == "none" or bd is None or bd < 0.5 or not r.get("curve"):
            continue
        by_panel.setdefault((c["model"], c["setting"], c["attack"], c["seed"]), []).append(r)
    if not by_panel:
        return None
    first_seed: dict[tuple, int] = {}
    for model, setting, attack, seed in by_panel:
        k = (model, setting, attack)
        first_seed[k] = min(seed, first_seed.get(k, seed))
    panels = sorted(k for k in by_panel if k[3] == first_seed[k[:3]])
    cols = min(4, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.0 * rows), squeeze=False, sharey=True)
    names = sorted({r["config"]["defense"] for recs in by_panel.values() for r in recs} - {"none"})
    colors = dict(zip(names, plt.get_cmap("tab10").colors + plt.get_cmap("Set2").colors, strict=False))
    for ax, key in zip(axes.flat, panels, strict=False):
        for r in sorted(by_panel[key], key=lambda r: r["config"]["defense"]):
            d = r["config"]["defense"]
            if d == "none":
                continue
            pts = r["curve"]
            ref = pts[0]["ca"] or 1.0
            xs = [100 * (p["asr"] if p["asr"] is not None else float("nan")) for p in pts]
            ys = [100 * p["ca"] / ref for p in pts]
            order = sorted(range(len(pts)), key=lambda i: -ys[i])
            ax.plot([xs[i] for i in order], [ys[i] for i in order], marker=".", ms=3, lw=1, color=colors[d], label=d)
        ax.axhline(95, color="grey", lw=0.7, ls=":")
        ax.axhline(90, color="grey", lw=0.7, ls=":")
        ax.set_title(f"{key[2]} ({key[0]}, {key[1]}, s{key[3]})", fontsize=8)
        ax.set_xlabel("validation ASR (%)", fontsize=8)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    axes[0][0].set_ylabel("validation CA retention (%)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    if labels:  # a grid of the `none` row alone has curves but no defense to label
        fig.legend(handles, labels, fontsize=7, loc="lower center", ncol=min(6, len(labels)), bbox_to_anchor=(0.5, -0.02))
    fig.suptitle("Trade-off curves on validation (each defense over its strength knob; dotted: 95% and 90% retention)", fontsize=9)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    return _png(fig)


def alpha_curves(records: list[dict]) -> bytes | None:
    """Validation CA and ASR against TBAR's scaling coefficient, one panel per record."""
    curves = [r for r in records if r.get("status") == "ok" and r.get("curve")]
    if not curves:
        return None
    curves.sort(key=lambda r: (r["config"]["defense"], r["config"]["attack"], r["config"]["model"]))
    n = len(curves)
    cols = min(4, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 2.7 * rows), squeeze=False, sharey=True)
    for ax, rec in zip(axes.flat, curves, strict=False):
        c = rec["config"]
        alphas = [p.get("knob", p.get("alpha")) for p in rec["curve"]]
        ax.plot(alphas, [100 * p["ca"] for p in rec["curve"]], label="val CA", color="tab:blue")
        ax.plot(alphas, [100 * (p["asr"] or 0) for p in rec["curve"]], label="val ASR", color="tab:red")
        chosen = (rec.get("defense") or {}).get("alpha")
        if chosen is not None:
            ax.axvline(chosen, color="black", lw=1, ls="--")
        ax.set_title(f"{c['defense']} / {c['attack']}\n{c['model']} {c['setting']} s{c['seed']}", fontsize=8)
        ax.set_xlabel("alpha", fontsize=8)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    axes[0][0].set_ylabel("%")
    axes[0][0].legend(fontsize=7)
    fig.suptitle("TBAR validation curves (dashed: the chosen alpha)", fontsize=10)
    fig.tight_layout()
    return _png(fig)


def alpha_analysis(result: dict) -> bytes:
    """CA, ASR and control accuracy against alpha on validation and test (bench analyze alpha)."""
    rows = result["rows"]
    a = [r["alpha"] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4), sharex=True)
    panels = [
        ("CA", [("val_ca", "validation"), ("test_ca", "test")]),
        ("ASR", [("val_asr", "validation"), ("test_asr", "test")]),
        ("control accuracy", [("control", "test (control datasets)")]),
    ]
    for ax, (title, series) in zip(axes, panels, strict=True):
        for key, label in series:
            vals = [100 * r[key] if r.get(key) is not None else float("nan") for r in rows]
            ax.plot(a, vals, marker=".", label=label)
        if result.get("chosen_alpha") is not None:
            ax.axvline(result["chosen_alpha"], color="black", ls="--", lw=1, label="chosen alpha")
        ax.set_title(title)
        ax.set_xlabel("alpha")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("%")
    axes[0].legend(fontsize=8)
    c = result["config"]
    fig.suptitle(f"{c['defense']} on {c['model']}/{c['dataset']}/{c['setting']}/{c['attack']} (seed {c['seed']})")
    fig.tight_layout()
    return _png(fig)


def disentanglement(result: dict) -> bytes:
    """xi(a_c, a_t) heatmaps (one per attack) and the task-vector cosine matrix."""
    attacks = list(result["xi"])
    n = len(attacks) + 1
    fig, axes = plt.subplots(1, n, figsize=(3.6 * n, 3.4))
    axes = list(axes) if n > 1 else [axes]
    grid = result["grid"]
    ticks = [f"{g:g}" for g in grid]
    for ax, name in zip(axes, attacks, strict=False):
        im = ax.imshow(result["xi"][name], origin="lower", cmap="magma", vmin=0, vmax=2)
        ax.set_xticks(range(len(grid)), ticks, fontsize=7)
        ax.set_yticks(range(len(grid)), ticks, fontsize=7)
        ax.set_xlabel("a_t (trigger vector)")
        ax.set_ylabel("a_c (clean vector)")
        ax.set_title(f"xi: clean + {name}", fontsize=9)
        fig.colorbar(im, ax=ax, fraction=0.046)
    names, mat = result["cosine"]["names"], result["cosine"]["matrix"]
    ax = axes[-1]
    im = ax.imshow(mat, cmap="coolwarm", vmin=-1, vmax=1)
    ax.set_xticks(range(len(names)), names, rotation=45, fontsize=7)
    ax.set_yticks(range(len(names)), names, fontsize=7)
    for i in range(len(names)):
        for j in range(len(names)):
            ax.text(j, i, f"{mat[i][j]:.2f}", ha="center", va="center", fontsize=7)
    ax.set_title("cosine of task vectors", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    return _png(fig)


def budget(result: dict) -> bytes:
    """Test ASR (and CA) of each attack cell against its training budget."""
    rows = result["rows"]
    cells = sorted({(r["model"], r["setting"], r["attack"]) for r in rows})
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for cell in cells:
        pts = sorted((r for r in rows if (r["model"], r["setting"], r["attack"]) == cell), key=lambda r: r["epochs"])
        label = f"{cell[2]} ({cell[0]}, {cell[1]})"
        axes[0].plot([r["epochs"] for r in pts], [100 * (r["asr"] or 0) for r in pts], marker="o", label=label)
        axes[1].plot([r["epochs"] for r in pts], [100 * r["ca"] for r in pts], marker="o", label=label)
    axes[0].axhline(85, color="grey", ls=":", lw=1)
    axes[0].set_title("test ASR vs the attacker's training epochs")
    axes[1].set_title("test CA vs the attacker's training epochs")
    for ax in axes:
        ax.set_xlabel("epochs of attack training")
        ax.set_xscale("log", base=2)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("%")
    axes[1].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return _png(fig)
