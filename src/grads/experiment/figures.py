"""The gain-against-forgetting plot of an experiment (OUT/g_vs_f.png)."""

from __future__ import annotations

import math
from pathlib import Path

from grads.infra import atomic


def plot_gain_forgetting(path: Path, rows: list[dict], kind: str = "bpb") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    g, f = ("G_bpb", "F_bpb") if kind == "bpb" else ("G", "F")
    fig, ax = plt.subplots(figsize=(7, 5))
    markers = {0.05: "o", 0.25: "s", 0.5: "^", None: "*"}
    methods = sorted({r["method"] for r in rows})
    colours = dict(zip(methods, plt.rcParams["axes.prop_cycle"].by_key()["color"] * 3))
    for r in rows:
        if math.isnan(r[f"{g}_mean"]) or math.isnan(r[f"{f}_mean"]):
            continue
        ax.errorbar(r[f"{f}_mean"], r[f"{g}_mean"], xerr=r[f"{f}_std"], yerr=r[f"{g}_std"],
                    fmt=markers.get(r["ratio"], "D"), color=colours[r["method"]], capsize=3, ms=8,
                    label=r["method"] if r["ratio"] is None else f"{r['method']} {r['ratio']:g}")
    ax.axhline(0, color="grey", lw=0.5)
    ax.axvline(0, color="grey", lw=0.5)
    unit = "bits per byte" if kind == "bpb" else "accuracy"
    ax.set_xlabel(f"F: forgetting (general {unit} lost) → worse")
    ax.set_ylabel(f"G: domain gain ({'held-out ' if kind == 'bpb' else ''}{unit} gained) → better")
    ax.set_title("Learn more (up), forget less (left): mean ± std over seeds")
    if ax.get_legend_handles_labels()[0]:  # a G_val-only experiment has no points
        ax.legend(fontsize=7, ncol=2)
    atomic.write_with(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight"))
    plt.close(fig)
