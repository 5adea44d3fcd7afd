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
