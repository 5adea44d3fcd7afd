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


def tradeoff(agg: pd.DataFrame, min_backdoor_asr: float = 0.5) -> bytes | None:
    """CA retention (y) against ASR (x) per defense: the ideal corner is top left.

    Only cells whose attack worked (backdoored ASR >= `min_backdoor_asr`) are drawn: a
    defense cannot be judged on a backdoor that was never there."""
    cells = ["model", "dataset", "setting", "attack"]
    before = agg[agg["defense"] == "none"].set_index(cells)["asr"].rename("asr_before")
    attacked = agg.join(before, on=cells)
    attacked = attacked[(attacked["attack"] != "none") & attacked["asr"].notna()]
    attacked = attacked[attacked["asr_before"] >= min_backdoor_asr]
    if attacked.empty:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    markers = "osD^v<>pPX*h"
    for i, (defense, grp) in enumerate(sorted(attacked.groupby("defense"), key=lambda kv: kv[0])):
        ax.scatter(
            100 * grp["asr"],
            100 * grp["ca_retention"],
            label=defense,
            marker=markers[i % len(markers)],
            s=45,
            alpha=0.8,
        )
    ax.set_xlabel("ASR after defense (%)")
    ax.set_ylabel("CA retention (%)")
    ax.axvline(5, color="grey", lw=0.8, ls=":")
    ax.axhline(90, color="grey", lw=0.8, ls=":")
    ax.set_title(
        f"Clean accuracy kept vs backdoor left\n(one point per cell whose attack reached ASR >= {100 * min_backdoor_asr:.0f}%)"
    )
    ax.legend(fontsize=8, ncol=2, loc="lower right")
    ax.grid(alpha=0.3)
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
        alphas = [p["alpha"] for p in rec["curve"]]
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
