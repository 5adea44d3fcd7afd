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

from bench.report import tables


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
        if r.get("status") != "ok" or c["attack"] == "none" or bd is None or bd < tables.TOOK or not r.get("curve"):
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


def alpha_analysis(result: dict) -> bytes:
    """CA, ASR, control accuracy and target bias against alpha (bench analyze alpha): the
    last panel separates the trigger effect from the target bias for theta_pre + alpha tau."""
    rows = result["rows"]
    a = [r["alpha"] for r in rows]
    fig, axes = plt.subplots(1, 4, figsize=(15, 3.4), sharex=True)
    panels = [
        ("CA (theta_bd - alpha tau)", [("val_ca", "validation"), ("test_ca", "test")]),
        ("ASR and target bias (theta_bd - alpha tau)", [("val_asr", "val ASR"), ("test_asr", "test ASR"),
                                                        ("test_target_bias", "test target bias")]),
        ("control accuracy", [("control", "test (control datasets)")]),
        ("theta_pre + alpha tau", [("pre_plus_tau_asr", "ASR (trigger effect)"),
                                   ("pre_plus_tau_target_bias", "target bias")]),
    ]  # fmt: skip
    for ax, (title, series) in zip(axes, panels, strict=True):
        for key, label in series:
            vals = [100 * r[key] if r.get(key) is not None else float("nan") for r in rows]
            ax.plot(a, vals, marker=".", label=label)
        if result.get("chosen_alpha") is not None and not title.startswith("theta_pre"):
            ax.axvline(result["chosen_alpha"], color="black", ls="--", lw=1, label="chosen alpha")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("alpha")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0].set_ylabel("%")
    c = result["config"]
    fig.suptitle(f"{c['defense']} on {c['model']}/{c['dataset']}/{c['setting']}/{c['attack']} (seed {c['seed']})")
    fig.tight_layout()
    return _png(fig)


def disentanglement(result: dict) -> bytes:
    """Per trigger vector (attack and variant): xi(a_c, a_t), and the two effects it adds
    up, separated: target bias (clean non-target images to t) and trigger effect
    (triggered images to t); plus the task-vector cosine matrix."""
    keys = list(result["xi"])
    maps = [("xi", "xi", 0, 2, "magma"), ("target_bias", "target bias", 0, 1, "viridis"),
            ("trigger_effect", "trigger effect (ASR)", 0, 1, "viridis")]  # fmt: skip
    maps = [m for m in maps if m[0] in result]
    rows, cols = len(keys) + 1, len(maps)
    fig, axes = plt.subplots(rows, cols, figsize=(3.9 * cols, 3.0 * rows), squeeze=False)
    grid = result["grid"]
    ticks = [f"{g:g}" for g in grid]
    for i, key in enumerate(keys):
        for j, (field, title, lo, hi, cmap) in enumerate(maps):
            ax = axes[i][j]
            im = ax.imshow(result[field][key], origin="lower", cmap=cmap, vmin=lo, vmax=hi)
            ax.set_xticks(range(len(grid)), ticks, fontsize=7)
            ax.set_yticks(range(len(grid)), ticks, fontsize=7)
            ax.set_xlabel("a_t (trigger vector)", fontsize=7)
            ax.set_ylabel("a_c (clean vector)", fontsize=7)
            ax.set_title(f"{title}: {key}", fontsize=8)
            fig.colorbar(im, ax=ax, fraction=0.046)
    names, mat = result["cosine"]["names"], result["cosine"]["matrix"]
    ax = axes[-1][0]
    im = ax.imshow(mat, cmap="coolwarm", vmin=-1, vmax=1)
    ax.set_xticks(range(len(names)), names, rotation=45, fontsize=6)
    ax.set_yticks(range(len(names)), names, fontsize=6)
    for i in range(len(names)):
        for j in range(len(names)):
            ax.text(j, i, f"{mat[i][j]:.2f}", ha="center", va="center", fontsize=6)
    ax.set_title("cosine of task vectors", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046)
    for ax in axes[-1][1:]:
        ax.axis("off")
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


def scale(result: dict) -> bytes:
    """The capacity ladder: image-tower parameters (log) against each matched-retention
    metric, target bias and xi(1, 1), means with 95% CIs over seeds."""
    rows = [r for r in result["rows"] if r.get("visual_params")]
    panels = [
        ("asr_r95", "ASR at 95% retention (%)"), ("asr_r90", "ASR at 90% retention (%)"),
        ("ca_retention", "CA retention, own rule (%)"), ("control_retention", "control retention (%)"),
        ("pre_plus_tau_target_bias", "target bias of theta_pre + tau (%)"),
    ]  # fmt: skip
    fig, axes = plt.subplots(2, 3, figsize=(14, 7.2))
    flat = list(axes.flat)
    for ax, (key, title) in zip(flat, panels, strict=False):
        for defense in sorted({r["defense"] for r in rows}):
            pts = sorted((r for r in rows if r["defense"] == defense and r.get(key) == r.get(key) and r.get(key) is not None),
                         key=lambda r: r["visual_params"])  # fmt: skip
            if not pts:
                continue
            ci = [100 * (r.get(f"{key}_ci") if r.get(f"{key}_ci") == r.get(f"{key}_ci") else 0) for r in pts]
            ax.errorbar([r["visual_params"] for r in pts], [100 * r[key] for r in pts], yerr=ci, marker="o",
                        capsize=3, label=defense)  # fmt: skip
        ax.set_xscale("log")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("image-tower parameters")
        ax.grid(alpha=0.3)
    ax = flat[5]
    sizes = {r["model"]: r["visual_params"] for r in rows}
    sizes |= {x["model"]: x["visual_params"] for x in result.get("xi", []) if x.get("visual_params")}
    for variant in ("triggered", "mix"):
        pts = sorted((x for x in result.get("xi", []) if x["variant"] == variant and sizes.get(x["model"])),
                     key=lambda x: sizes[x["model"]])  # fmt: skip
        if pts:
            ci = [x["xi_11_ci"] if x["xi_11_ci"] == x["xi_11_ci"] else 0 for x in pts]
            ax.errorbar([sizes[x["model"]] for x in pts], [x["xi_11"] for x in pts], yerr=ci, marker="s", capsize=3,
                        label=f"{variant} vector")  # fmt: skip
    ax.set_xscale("log")
    ax.set_title("xi(1, 1): 0 disentangled, 2 entangled", fontsize=9)
    ax.set_xlabel("image-tower parameters")
    ax.grid(alpha=0.3)
    from bench.report.tables import MIN_VICTIM_CA, learned

    # rungs whose victim never learned the task are no evidence (bench report leaves them
    # out of the trend): shade them so the eye does not read them as the ladder's low end
    unlearned = sorted({r["visual_params"] for r in rows if not learned(r.get("bd_ca"))})
    for a in flat:
        for x in unlearned:
            a.axvspan(x / 1.25, x * 1.25, color="0.85", zorder=0)
        if a.get_legend_handles_labels()[0]:
            a.legend(fontsize=7)
    if unlearned:
        flat[0].annotate(f"grey: victim CA < {100 * MIN_VICTIM_CA:.0f}%, not evidence", (0.02, 0.02),
                         xycoords="axes fraction", fontsize=7, color="0.3")  # fmt: skip
    attack = f", {result['attack']}" if result.get("attack") else ""
    fig.suptitle(f"Does TBAR's premise need scale? The capacity ladder{attack} (means, 95% CIs over seeds)", fontsize=10)
    fig.tight_layout()
    return _png(fig)
