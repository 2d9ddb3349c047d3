"""report.html: a self-contained page (plots embedded, opens offline) with PNG copies in OUT/plots/.

Shows what the selection cost against one fine-tuning epoch on the pool, the combined signal's histogram and KDE
with each ratio's selected region shaded (or, when the signal has no spread, says that its density is flat), the
embedding-vs-head scatter coloured by selection, the signal against answer length with its correlation, the
excluded examples and why, the overlap between methods, and the most and
least representative examples (all text escaped).
"""

from __future__ import annotations

import base64
import html
import json
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from scipy.stats import pearsonr, spearmanr  # noqa: E402

from grads.config import SignalConfig  # noqa: E402
from grads.core.kde import kde_exact  # noqa: E402
from grads.core.rules import RULES  # noqa: E402
from grads.core.signals import (
    DensitySpec,  # noqa: E402
    no_spread,  # noqa: E402
)
from grads.infra import atomic  # noqa: E402

COLOURS = ["#d62728", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2"]


def _save(fig, path: Path) -> bytes:
    atomic.write_with(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight",
                                                    metadata={"Software": None}))
    plt.close(fig)
    return path.read_bytes()


def _selected_rows(frame: pd.DataFrame, entry: dict) -> np.ndarray:
    return frame["id"].isin(set(entry["ids"])).to_numpy()


def _focus_outputs(summary: dict) -> list[tuple[str, dict]]:
    """The outputs of the main method (grads if asked, else the first), smallest ratio last (drawn on top)."""
    outputs = list(summary["outputs"].items())
    methods = [e["method"] for _, e in outputs]
    focus = "grads" if "grads" in methods else methods[0]
    chosen = [(name, e) for name, e in outputs if e["method"] == focus]
    return sorted(chosen, key=lambda item: -(item[1]["ratio"] or 1.0))


def plot_signal(frame, summary, path: Path) -> bytes:
    ok = frame["status"] == "ok"
    s = frame.loc[ok, "combined"].to_numpy()
    h = summary["signal"]["bandwidth"]
    fig, ax = plt.subplots(figsize=(7.5, 4))
    ax.hist(s, bins=min(60, max(10, len(s) // 10)), density=True, color="#c7d7ea", edgecolor="white",
            label="combined signal s")
    grid = np.linspace(s.min() - 3 * h, s.max() + 3 * h, 600)
    curve = kde_exact(s, h, grid) if len(s) <= 20000 else kde_exact(np.random.default_rng(0).choice(s, 20000), h,
                                                                     grid)
    ax.plot(grid, curve, color="black", lw=1.5, label=f"KDE (h = {h:.3g})")
    dens = frame["density"].to_numpy()
    for colour, (name, entry) in zip(COLOURS, _focus_outputs(summary)):
        picked = _selected_rows(frame, entry)
        if picked.sum() == 0:
            continue
        sel_s = frame.loc[picked, "combined"].to_numpy()
        rule = RULES.get(entry["method"])
        if rule is not None and rule.reads == "density":  # the region of the curve above (below) the cut
            region = curve >= np.nanmin(dens[picked]) if rule.keeps == "high" else curve <= np.nanmax(dens[picked])
        else:
            region = (grid >= sel_s.min()) & (grid <= sel_s.max())
        ax.fill_between(grid, 0, curve, where=region, color=colour, alpha=0.3,
                        label=f"{name.removesuffix('.jsonl')}: {int(picked.sum())} selected")
    ax.set_xlabel("s = z(log ‖∂L/∂E‖) + z(log ‖∂L/∂W‖)" if summary["signal"]["signal"] == "zsum"
                  else f"signal ({summary['signal']['signal']})")
    ax.set_ylabel("density")
    ax.legend(fontsize=8)
    ax.set_title("Combined gradient signal, its density, and the selected regions")
    return _save(fig, path)


def plot_scatter(frame, summary, path: Path) -> bytes:
    ok = (frame["status"] == "ok").to_numpy()
    fig, ax = plt.subplots(figsize=(6, 5))
    a, b = np.log10(frame["emb_grad_norm"].to_numpy()), np.log10(frame["head_grad_norm"].to_numpy())
    ax.scatter(a[ok], b[ok], s=8, color="#bbbbbb", label="not selected", linewidths=0)
    for colour, (name, entry) in zip(COLOURS, _focus_outputs(summary)):
        picked = _selected_rows(frame, entry) & ok
        ax.scatter(a[picked], b[picked], s=10, color=colour, label=name.removesuffix(".jsonl"), linewidths=0)
    ax.set_xlabel("log10 ‖∂L/∂E‖ (input embedding)")
    ax.set_ylabel("log10 ‖∂L/∂W‖ (LM head)")
    ax.legend(fontsize=8)
    ax.set_title("Per-example gradient norms, coloured by selection")
    return _save(fig, path)


def length_correlation(frame) -> dict[str, float]:
    ok = frame["status"] == "ok"
    n, s = frame.loc[ok, "n_target_tokens"].to_numpy().astype(float), frame.loc[ok, "combined"].to_numpy()
    if len(s) < 3 or np.ptp(n) == 0 or np.ptp(s) == 0:
        return {"pearson_log_length": float("nan"), "spearman": float("nan")}
    return {"pearson_log_length": float(pearsonr(np.log(n), s)[0]), "spearman": float(spearmanr(n, s)[0])}


def plot_length(frame, corr, path: Path) -> bytes:
    ok = frame["status"] == "ok"
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.scatter(frame.loc[ok, "n_target_tokens"], frame.loc[ok, "combined"], s=8, alpha=0.6, linewidths=0)
    ax.set_xscale("log")
    ax.set_xlabel("answer length (target tokens)")
    ax.set_ylabel("combined signal s")
    ax.set_title(f"Signal vs answer length: Pearson r (log length) = {corr['pearson_log_length']:.2f}, "
                 f"Spearman ρ = {corr['spearman']:.2f}", fontsize=9)
    return _save(fig, path)


def overlap_table(summary: dict) -> tuple[list[str], list[list[float]]]:
    names = list(summary["outputs"])
    sets = [set(summary["outputs"][n]["ids"]) for n in names]
    matrix = [[len(x & y) / max(len(x | y), 1) for y in sets] for x in sets]
    return names, matrix


def _img(data: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(data).decode()}">'


def _table(header: list[str], rows: list[list[object]]) -> str:
    head = "".join(f"<th>{html.escape(_visible(str(h)))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_visible(str(c)))}</td>" for c in row) + "</tr>"
                   for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029]")


def _preview(text: str, limit: int = 300) -> str:
    """A short plain-text preview of one input row (escaped by _table, like every table cell)."""
    try:
        record = json.loads(text)
        text = " | ".join(str(v) for k, v in record.items() if k != "id")
    except (json.JSONDecodeError, AttributeError):
        pass
    return text if len(text) <= limit else text[:limit] + "…"


def _visible(text: str) -> str:
    """Control characters as visible escapes (\\x1b, \\u2028) rather than raw bytes in the page."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 256 else f"\\u{ord(m.group()):04x}",
                        text)


def cost_section(cost: dict | None) -> str:
    """What the selection cost, beside one fine-tuning epoch on the whole pool (selection.json's cost object)."""
    if not cost:
        return "<p>Not recorded.</p>"
    rows = [[stage, f"{cost[f'{stage}_seconds']:,.1f}", f"{cost[f'{stage}_examples']:,}",
             f"{cost[f'{stage}_tokens']:,}"] for stage in ("warmup", "scoring")]
    if cost["ratio_to_full_epoch"] is None:
        verdict = ("No warm-up ran, so nothing measured here says what a fine-tuning epoch on the pool costs: the "
                   "ratio is not given.")
    else:
        how = {"measured": "measured: the warm-up is that epoch",
               "steady pace": "estimated at the warm-up's pace: its seconds per step after the first",
               }.get(cost.get("full_epoch_from"), "estimated from the warm-up's seconds per token")
        verdict = (f"Selection cost {cost['ratio_to_full_epoch']:.2f}× one fine-tuning epoch on the whole pool with "
                   f"the same recipe ({cost['full_epoch_seconds']:,.1f} s, {how}).")
    return _table(["stage", "seconds", "examples", "tokens"], rows) + f"<p>{html.escape(verdict)}</p>"


def plot_kept(noise: dict, path: Path) -> bytes:
    """Per output, the share of each planted kind in the subset (stacked bars), the pool's share as a line."""
    outputs = noise["outputs"]
    kinds = sorted({k for o in outputs.values() for k in o["share"] if k != "clean"})
    names = list(outputs)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.45 * len(names) + 2), 4))
    bottom = np.zeros(len(names))
    for i, kind in enumerate(kinds):
        shares = np.array([outputs[n]["share"].get(kind, 0.0) for n in names])
        ax.bar(range(len(names)), shares, bottom=bottom, label=kind.replace("$", r"\$"),  # no mathtext
               color=COLOURS[i % len(COLOURS)])
        bottom += shares
    pool = sum(v for k, v in next(iter(outputs.values()))["pool_share"].items() if k != "clean") if names else 0
    ax.axhline(pool, color="black", linestyle="--", linewidth=1, label=f"pool: {pool:.1%} planted")
    ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=8)
    ax.set_ylabel("share of the subset")
    ax.set_title("Planted records kept by each selection")
    ax.legend(fontsize=8)
    return _save(fig, path)


def noise_section(summary: dict, plots: Path) -> str:
    """With --labels: each score's AUROC for planted records (overall and per kind) and what each output keeps."""
    noise = summary.get("noise")
    if not noise:
        (plots / "noise_kept.png").unlink(missing_ok=True)  # an earlier run's plot no longer applies
        return ""
    kinds = [k for k in noise["counts"] if k != "clean"]
    detect = [[name, d["direction"], f"{d['auroc']:.3f}"] + [f"{d['by_kind'].get(k, float('nan')):.3f}"
                                                             for k in kinds]
              for name, d in sorted(noise["detection"].items(), key=lambda item: -item[1]["auroc"])]
    labels = sorted({k for o in noise["outputs"].values() for k in o["share"]})
    kept = [[name] + [f"{o['share'].get(k, 0.0):.1%} (keeps {o['kept'].get(k, float('nan')):.0%})"
                      for k in labels] for name, o in noise["outputs"].items()]
    counts = ", ".join(f"{k} {n}" for k, n in noise["counts"].items())
    return (f"<h2>Planted noise</h2><p>Labels <code>{html.escape(noise['labels'])}</code>: {html.escape(counts)} "
            "among the eligible examples. AUROC: the chance that a planted record scores beyond a clean one in the "
            "direction shown (0.5: the score cannot tell them apart); per kind, in the same direction (below 0.5: "
            "that kind sits on the other side).</p>" +
            _table(["score", "flags by", "AUROC (planted)"] + [f"AUROC ({k})" for k in kinds], detect) +
            "<p>Each selection's share of every label, and the fraction of that label's records it keeps.</p>" +
            _table(["file"] + labels, kept) + _img(plot_kept(noise, plots / "noise_kept.png"), "planted kept"))


def canaries_section(summary: dict) -> str:
    """With --canaries: how many of each kind of canary every selection's rule would keep."""
    canaries = summary.get("canaries")
    if not canaries:
        return ""
    kinds = list(canaries["eligible"])
    rows = [[name, f"{o['pool_kept_share']:.1%}"] + [f"{o['kept'][k]} of {canaries['eligible'][k]}" for k in kinds]
            for name, o in canaries["outputs"].items()]
    return (f"<h2>Canaries</h2><p>{canaries['n']} noisy copies of this pool's own records, scored with it (the "
            "warm-up never saw them). Each rule was run again on the pool with the canaries added: a rule that "
            "removes bad data keeps a smaller share of the canaries than of the pool's own rows. No canary is in "
            "a selected file.</p>" + _table(["file", "pool rows kept"] + kinds, rows))


def controls_section(summary: dict) -> str:
    """Each matched control beside the subset it controls: what they share, what two random subsets of those sizes
    would share, and the warning when the control is close to a copy of its target."""
    rows = [[name, c["of"], f"{c['shared']} of {c['n_target']}", f"{c['chance']:.1f}", f"{c['p_value']:.2g}",
             f"{c['answer_tokens']:,} / {c['target_answer_tokens']:,}", c.get("warning", "")]
            for name, e in summary["outputs"].items() if (c := e.get("control"))]
    if not rows:
        return ""
    return ("<h2>Matched controls</h2><p>A matched control draws random examples of its target's count and answer "
            "lengths; it may draw some of the target's own examples, and a comparison with it concerns only the "
            "examples they do not share.</p>" +
            _table(["file", "controls", "shared", "chance", "p (hypergeometric)", "answer tokens / target's",
                    "warning"], rows))


FLAT_DENSITY = ("The density is flat: the signal has no spread (every eligible example has the same gradient "
                "norms, up to rounding), so every example is equally representative. Density rules (grads and its "
                "variants) therefore keep an arbitrary but deterministic subset, chosen by the hash of the example "
                "id (the tie-break).")


def write_report(out_dir: str | Path, frame: pd.DataFrame, summary: dict, cfg: DensitySpec,
                 rows: list[str] | None = None) -> Path:
    out_dir = Path(out_dir)
    plots = out_dir / "plots"
    ok = frame["status"] == "ok"
    corr = length_correlation(frame)
    sections = []
    if ok.sum() >= 2:
        if no_spread(frame.loc[ok, "combined"].to_numpy()):  # a KDE of one repeated value would only mislead
            (plots / "signal_kde.png").unlink(missing_ok=True)  # an earlier run's plot no longer applies
            sections.append(f"<p>{html.escape(FLAT_DENSITY)}</p>")
        else:
            sections.append(_img(plot_signal(frame, summary, plots / "signal_kde.png"), "signal and KDE"))
        sections.append(_img(plot_scatter(frame, summary, plots / "emb_vs_head.png"), "embedding vs head"))
        sections.append(_img(plot_length(frame, corr, plots / "signal_vs_length.png"), "signal vs length"))
    counts = summary["status_counts"]
    excluded = [[status, n, {"no_target": "no answer token (empty, or cut by --max-length)",
                             "nonfinite": "loss or norm is NaN/inf"}.get(status, "")]
                for status, n in counts.items() if status != "ok"]
    outputs = [[name, e["method"], "" if e["ratio"] is None else f"{e['ratio']:.4g}", e["n_selected"],
                e.get("rule", "")] for name, e in summary["outputs"].items()]
    names, matrix = overlap_table(summary)
    overlap = _table(["Jaccard overlap"] + names, [[n] + [f"{v:.2f}" for v in row] for n, row in zip(names, matrix)])
    examples = ""
    if rows is not None and ok.sum() > 0:
        order = frame.loc[ok].sort_values(["density", "id"], ascending=[False, True])
        pick = [("most representative (highest density)", order.head(5)),
                ("least representative (lowest density)", order.tail(5))]
        examples = "".join(f"<h3>{html.escape(title)}</h3>" + _table(
            ["id", "density", "s", "example"],
            [[r.id, f"{r.density:.4g}", f"{r.combined:.3f}", _preview(rows[int(r.row)])] for r in part.itertuples()])
            for title, part in pick)
    inp = summary["input"]
    excluded_html = _table(["status", "count", "why"], excluded) if excluded else \
        "<p>None: every example was scored.</p>"
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>grads selection report</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}}
table{{border-collapse:collapse;margin:0.5em 0 1.5em}}td,th{{border:1px solid #ccc;padding:3px 8px;font-size:13px;
text-align:left;vertical-align:top}}img{{max-width:100%;margin:0.5em 0}}code{{background:#f3f3f3}}</style></head><body>
<h1>grads selection report</h1>
<p>Input <code>{html.escape(inp['path'])}</code> ({inp['n_examples']} examples, format {html.escape(inp['format'])},
sha256 {html.escape(inp['sha256'][:16])}…). Eligible for selection: {summary['n_eligible']}.
Model <code>{html.escape(summary['settings']['model']['model'])}</code>; scores at
{html.escape(str(summary['warmup_model'] or 'the base model (no warm-up)'))}.
Signal <code>{html.escape(cfg.signal)}</code>, bandwidth {html.escape(str(cfg.bandwidth))} × {cfg.bandwidth_scale:g}
= {summary['signal']['bandwidth']:.4g}.</p>
<h2>Selections</h2>{_table(["file", "method", "ratio", "selected", "rule"], outputs)}
<h2>Cost</h2>{cost_section(summary.get("cost"))}
<h2>Signal and density</h2>{"".join(sections[:1])}
<h2>Embedding vs LM-head norm</h2>{"".join(sections[1:2])}
<h2>Length bias</h2><p>Correlation of the signal with answer length: Pearson r with log length
{corr['pearson_log_length']:.3f}, Spearman ρ {corr['spearman']:.3f}.</p>{"".join(sections[2:3])}
<h2>Excluded examples</h2>{excluded_html}
<h2>Overlap between selections</h2>{overlap}
{controls_section(summary)}
{noise_section(summary, plots)}
{canaries_section(summary)}
<h2>Examples</h2>{examples or "<p>(not shown)</p>"}
</body></html>
"""
    path = out_dir / "report.html"
    atomic.write_text(path, page)
    return path


def run_report(out_dir: str | Path) -> Path:
    """The report stage: read OUT/scores.parquet, OUT/selection.json and the input rows it names; write
    OUT/report.html and OUT/plots/*.png."""
    from grads.data.readers import raw_rows
    from grads.stages.select import load_scores

    out_dir = Path(out_dir)
    atomic.remove_stale_temps(out_dir / "plots")  # a kill during an earlier plot left its temporary file
    summary = json.loads((out_dir / "selection.json").read_text())
    settings = summary["settings"]
    signal = SignalConfig(**{k: settings["select"][k] for k in SignalConfig.model_fields}).spec()
    rows = raw_rows(settings["data"]["data"], settings["data"]["limit"])
    return write_report(out_dir, load_scores(out_dir), summary, signal, rows)
