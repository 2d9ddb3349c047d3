"""What a selection costs against the fine-tune it replaces, and how far each cheaper setting's selection agrees
with the faithful one, in one run.

Each setting is a `grads select` folder under --out (resumable: a finished folder is reused with the seconds it
recorded, so a killed run loses only the setting it was in):

  default          the paper's: one epoch of LoRA warm-up on the whole pool, then scoring at θ1
  warmup-F         the warm-up on a seeded fraction F of the pool
  theta0           no warm-up: scoring at the base model
  len-L            scoring on examples cut to L tokens (the warm-up and the fine-tunes keep --max-length)
  A+B              both (e.g. warmup-0.05+len-128, theta0+len-128)
  seed-N           the default with warm-up seed N: the faithful method's own noise
  proxy            needs --target: the target's own default selection, against which --model's selections are
                   read as a proxy's (their seconds over the target's epoch; their agreement with its selection)

The full-pool epoch is the default's warm-up: one epoch of LoRA fine-tuning on the whole pool with the recipe of
the final fine-tune (the same examples, batch size, learning rate and length as the `full` arm), so its seconds
are that epoch's, measured (with --measure-full-epoch it is also trained on its own, as `grads train` would).
Agreement with the default: Jaccard of the grads 5% and 50% subsets and Spearman of `combined` over the examples
both score. The method's own noise: the same figures between the default and each seed-N (and each --noise-from
folder, a faithful selection of the same pool by another warm-up seed).

  python benchmarks/pipeline_cost.py --out benchmarks-cost --json benchmarks/results/pipeline_cost.json
  python benchmarks/pipeline_cost.py --settings warmup-0.05 theta0 --noise-from results/claim-medmcqa/select-seed-1
  python benchmarks/pipeline_cost.py --model random:smollm2-135m --tokenizer DIR --device cuda --dtype bf16 ...
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

RATIOS = (0.05, 0.5)
DEFAULT_SETTINGS = ("default", "warmup-0.05", "warmup-0.1", "warmup-0.25", "warmup-0.5", "theta0", "len-128",
                    "warmup-0.05+len-128", "theta0+len-128", "seed-1")
GOAL = 0.25  # the target: a selection at or under a quarter of a full-pool epoch


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m-instruct",
                   help="a grads model name or folder, or random:NAME (random weights of a real shape, with "
                        "--tokenizer)")
    p.add_argument("--tokenizer", type=Path, help="a folder holding the tokenizer of a random:NAME model")
    p.add_argument("--target", help="the model a proxy selects for (setting `proxy`), e.g. gemma3-270m")
    p.add_argument("--data", type=Path, help="the pool (default: the bundled MedMCQA pool, prepared into OUT/data)")
    p.add_argument("--limit", type=int, default=1200)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=8, help="warm-up and scoring batch size (the experiments' 8)")
    p.add_argument("--settings", nargs="+", default=list(DEFAULT_SETTINGS))
    p.add_argument("--noise-from", nargs="*", type=Path, default=[],
                   help="faithful selections of the same pool by other warm-up seeds (select folders)")
    p.add_argument("--measure-full-epoch", action="store_true",
                   help="also train one full-pool epoch on its own (the same job as the default's warm-up)")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    p.add_argument("--out", type=Path, default=Path("benchmarks-cost"))
    p.add_argument("--json", type=Path, help="write the figures here too (e.g. benchmarks/results/pipeline_cost.json)")
    p.add_argument("--from-json", type=Path, help="run nothing: read the figures of an earlier run from this file")
    p.add_argument("--plot", type=Path, help="draw agreement against cost ratio here (a PNG)")
    p.add_argument("--markdown", action="store_true", help="print the table for docs/performance.md")
    return p


def parse_setting(name: str) -> dict:
    """The select settings a setting name stands for: `default`, `proxy`, or parts joined by `+`."""
    if name in ("default", "proxy"):
        return {}
    parts = {"warmup": ("warmup_fraction", float), "len": ("score_max_length", int), "seed": ("seed", int)}
    select = {}
    for part in name.split("+"):
        key, _, value = part.rpartition("-")
        try:
            field, kind = parts[key] if part != "theta0" else ("warmup_epochs", float)
            select[field] = kind(value) if part != "theta0" else 0.0
        except (KeyError, ValueError):
            raise SystemExit(f"unknown setting {name!r}: use default, proxy, or parts joined by +: warmup-F, "
                             "theta0, len-L, seed-N") from None
    return select


def random_model_folder(name: str, tokenizer: Path | None, out: Path) -> str:
    """A random-weight model of a real shape saved as a model folder, with a real tokenizer beside it."""
    from bench_models import load
    from transformers import AutoTokenizer

    folder = out / "models" / name.replace(":", "-")
    if not (folder / "config.json").exists():
        if tokenizer is None:
            raise SystemExit(f"{name} needs --tokenizer (a folder holding a tokenizer of its vocabulary)")
        load(name, "cpu", "fp32").save_pretrained(folder)
        AutoTokenizer.from_pretrained(tokenizer).save_pretrained(folder)
    return str(folder)


def pool_file(data: Path | None, out: Path) -> Path:
    """The pool: `data`, or the bundled MedMCQA pool prepared once into OUT/data."""
    out.mkdir(parents=True, exist_ok=True)
    if data is not None:
        return data
    from grads.data.bundled import prepare_medmcqa

    if not (out / "data" / "prepare.json").exists():
        prepare_medmcqa(out / "data")
    return out / "data" / "pool.jsonl"


def select_job(args, model: str, pool: Path, folder: Path, **select):
    from grads.config import DataConfig, ModelConfig, ScoreConfig, SelectConfig, SelectJob, TrainConfig

    return SelectJob(model=ModelConfig(model=model, device=args.device, dtype=args.dtype),
                     data=DataConfig(data=pool, limit=args.limit, max_length=args.max_length),
                     score=ScoreConfig(batch_size=args.batch_size),
                     train=TrainConfig(lora=True, epochs=1.0, batch_size=args.batch_size,
                                       activation_checkpointing=False),
                     select=SelectConfig(methods=("grads",), ratios=RATIOS, **select), out=folder)


def warmup_key(select: dict) -> tuple:
    """What decides a setting's warm-up (settings that share it train it once)."""
    return (select.get("warmup_epochs", 1.0), select.get("warmup_fraction", 1.0), select.get("seed", 0))


def run_setting(args, model: str, pool: Path, folder: Path, select: dict, donor: Path | None = None) -> Path:
    """The setting's selection folder, made once; `donor`: a finished folder of the same model whose warm-up this
    setting shares (copied, so it is trained once; its recorded seconds count for both)."""
    import shutil

    from grads.pipeline import run_select

    warm = Path("warmup") / "model"
    if donor is not None and (donor / warm / "done.json").exists() and not (folder / warm).exists():
        shutil.copytree(donor / warm, folder / warm)
    if not (folder / "selection.json").exists():
        from grads.infra import atomic

        started, load_before = time.time(), os.getloadavg()
        run_select(select_job(args, model, pool, folder, **select), progress=False,
                   log=lambda m: print(f"  {folder.name}: {m}", file=sys.stderr))
        # when and beside what it ran: a resumed benchmark's settings may come from different sittings
        atomic.write_json(folder / "bench.json", {
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)), "wall_seconds":
            round(time.time() - started, 1), "load_average": {"before": load_before, "after": os.getloadavg()}})
        print(f"  {folder.name}: {time.time() - started:.0f} s", file=sys.stderr)
    return folder


def sitting(folder: Path) -> dict:
    """When the setting ran and the machine's load average around it (bench.json; absent for a donor's copy)."""
    path = folder / "bench.json"
    return json.loads(path.read_text()) if path.exists() else {}


def agreement(a: Path, b: Path) -> dict:
    """Jaccard of the grads subsets at each ratio and Spearman of `combined` over the examples both score."""
    import pyarrow.parquet as pq

    out = {}
    subsets = [json.loads((f / "selection.json").read_text())["outputs"] for f in (a, b)]
    for ratio in RATIOS:
        x, y = (set(s[f"grads-{ratio:g}.jsonl"]["ids"]) for s in subsets)
        out[f"jaccard_{ratio:g}"] = round(len(x & y) / len(x | y), 4)
    frames = [pq.read_table(f / "scores.parquet", columns=["id", "status", "combined"]).to_pandas() for f in (a, b)]
    both = frames[0][frames[0].status == "ok"].merge(frames[1][frames[1].status == "ok"], on="id")
    out["spearman"] = round(float(spearmanr(both.combined_x, both.combined_y)[0]), 4)
    return out


def chance_jaccard(n: int, k: int) -> float:
    """Expected Jaccard of two independent random k-subsets of n: k²/n over 2k − k²/n (the expected overlap)."""
    overlap = k * k / n
    return round(overlap / (2 * k - overlap), 4)


def cost_of(folder: Path) -> dict:
    return json.loads((folder / "selection.json").read_text())["cost"]


def full_epoch_seconds(args, model: str, pool: Path, default: Path) -> dict:
    """The full-pool LoRA epoch: the default's warm-up (the same job); with --measure-full-epoch, also trained on
    its own."""
    measured = {"seconds": cost_of(default)["warmup_seconds"], "how": "the default's warm-up (the same job)"}
    if args.measure_full_epoch:
        from grads.config import TrainJob
        from grads.stages.train import run_train, training_record

        job = select_job(args, model, pool, args.out / "full-epoch")
        model_dir = run_train(TrainJob(model=job.model, data=job.data, train=job.train, out=args.out / "full-epoch"),
                              progress=False)
        measured |= {"trained_on_its_own": training_record(model_dir)["seconds"]}
    return measured


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    report = json.loads(args.from_json.read_text()) if args.from_json else measure(args)
    if args.markdown:
        print(markdown_table(report))
    if args.plot:
        plot(report, args.plot)
    return report


def measure(args) -> dict:
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    pool = pool_file(args.data, args.out)
    model = random_model_folder(args.model, args.tokenizer, args.out) if args.model.startswith("random:") \
        else args.model
    load_before = os.getloadavg()
    plans = {name: parse_setting(name) for name in dict.fromkeys(["default", *args.settings])}
    folders, donors = {}, {}
    for name, select in plans.items():
        if name != "proxy":
            folders[name] = run_setting(args, model, pool, args.out / name, select, donors.get(warmup_key(select)))
            donors.setdefault(warmup_key(select), folders[name])
    epoch = full_epoch_seconds(args, model, pool, folders["default"])
    default = json.loads((folders["default"] / "selection.json").read_text())
    rows = {}
    for name, folder in folders.items():
        cost = cost_of(folder)
        seconds = cost["warmup_seconds"] + cost["scoring_seconds"]
        rows[name] = {"settings": plans[name], "warmup_seconds": cost["warmup_seconds"],
                      "scoring_seconds": cost["scoring_seconds"], "seconds": round(seconds, 1),
                      "ratio_to_full_epoch": round(seconds / epoch["seconds"], 4), "sitting": sitting(folder),
                      # what selection.json said of itself: its epoch estimated from its own warm-up, and its ratio
                      "own_estimate": {**{k: cost[k] for k in ("full_epoch_seconds", "ratio_to_full_epoch")},
                                       # a selection.json older than the key estimated per token
                                       "full_epoch_from": cost.get("full_epoch_from", "seconds per token")}
                      if cost["ratio_estimated"] and cost["full_epoch_seconds"] else None,
                      **(agreement(folders["default"], folder) if name != "default" else {})}
    noise_folders = {name: folders[name] for name in folders if name.startswith("seed-")}
    noise_folders |= {str(f): f for f in args.noise_from}
    noise = {name: agreement(folders["default"], f) for name, f in noise_folders.items()}
    bar = {k: round(float(np.mean([n[k] for n in noise.values()])), 4) for k in next(iter(noise.values()), {})}
    report = {
        "model": args.model, "pool": str(pool), "limit": args.limit, "max_length": args.max_length,
        "batch_size": args.batch_size, "full_epoch": epoch, "settings": rows, "noise": noise, "noise_mean": bar,
        "chance_jaccard": {f"{r:g}": chance_jaccard(default["n_eligible"],
                                                    default["outputs"][f"grads-{r:g}.jsonl"]["n_selected"])
                           for r in RATIOS},
        "load_average": {"before": load_before, "after": os.getloadavg()},
    }
    if "proxy" in plans:
        report["proxy"] = proxy_report(args, pool, folders)
    report["goal"] = goal(rows, noise, bar, report["chance_jaccard"])
    print_report(report)
    if args.json:
        from grads.infra import atomic

        atomic.write_json(args.json, report)
    return report


def proxy_report(args, pool: Path, folders: dict[str, Path]) -> dict:
    """--model's selections read as a proxy's for --target: their seconds over the target's own full epoch (its
    default warm-up) and their agreement with the target's own default selection."""
    if not args.target:
        raise SystemExit("the proxy setting needs --target")
    target = run_setting(args, args.target, pool, args.out / "target-default", {})
    target_epoch = cost_of(target)["warmup_seconds"]
    target_cost = cost_of(target)
    return {"target": args.target, "target_full_epoch_seconds": target_epoch,
            "target_selection_ratio": round((target_cost["warmup_seconds"] + target_cost["scoring_seconds"])
                                            / target_epoch, 4),
            "as_proxy": {name: {"ratio_to_target_epoch": round((cost_of(f)["warmup_seconds"]
                                                                 + cost_of(f)["scoring_seconds"]) / target_epoch, 4),
                                **agreement(target, f)} for name, f in folders.items()}}


def goal(rows: dict, noise: dict, bar: dict, chance: dict) -> dict:
    """The cheapest setting at or under GOAL × a full epoch whose agreement with the default is within the
    method's own noise (each figure at least the mean agreement of two faithful selections). The criterion is
    read only where it can tell settings apart: every faithful pair's Jaccard above what two random subsets of
    the same sizes share (else any selection, random data included, would be "within the noise")."""
    if not bar:
        return {"reached": None, "why": "no noise reference (run a seed-N setting or pass --noise-from)"}
    within = [name for name, row in rows.items() if name != "default" and not name.startswith("seed-")
              and all(row[k] >= bar[k] for k in bar)]
    at_chance = sorted({ratio for pair in noise.values() for ratio, j in chance.items()
                        if pair[f"jaccard_{ratio}"] <= j})
    if at_chance:
        return {"reached": None, "within_noise": within, "goal_ratio": GOAL,
                "why": f"two faithful selections (other warm-up seeds) share no more than chance at ratio(s) "
                       f"{', '.join(at_chance)}: agreement within that noise says nothing"}
    cheap = sorted((rows[n]["ratio_to_full_epoch"], n) for n in within if rows[n]["ratio_to_full_epoch"] <= GOAL)
    return {"reached": bool(cheap), "setting": cheap[0][1] if cheap else None, "within_noise": within,
            "goal_ratio": GOAL}


AGREEMENT = {"jaccard_0.05": "Jaccard of the 5% subsets", "jaccard_0.5": "Jaccard of the 50% subsets",
             "spearman": "Spearman of combined"}


def markdown_table(report: dict) -> str:
    """One row per setting: seconds, the ratio to the full-pool epoch and the agreement with the default; then the
    faithful pairs (the noise) and chance."""
    lines = ["| setting | warm-up s | scoring s | × full epoch | J 5% | J 50% | Spearman |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for name, row in report["settings"].items():
        agree = " | ".join(f"{row[k]:.3f}" if k in row else "(itself)" for k in AGREEMENT)
        lines.append(f"| {name} | {row['warmup_seconds']:.0f} | {row['scoring_seconds']:.0f} | "
                     f"{row['ratio_to_full_epoch']:.2f} | {agree} |")
    for name, pair in report["noise"].items():
        lines.append(f"| faithful pair: default vs {name} | | | | "
                     + " | ".join(f"{pair[k]:.3f}" for k in AGREEMENT) + " |")
    chance = report["chance_jaccard"]
    lines.append(f"| chance (two random subsets) | | | | {chance['0.05']:.3f} | {chance['0.5']:.3f} | 0 |")
    own = {n: r["own_estimate"] for n, r in report["settings"].items() if r.get("own_estimate")}
    if own:
        parts = [f"{n} {e['full_epoch_seconds']:.0f} s by {e.get('full_epoch_from', 'seconds per token')} (its "
                 f"ratio {e['ratio_to_full_epoch']:.2f}, measured {report['settings'][n]['ratio_to_full_epoch']:.2f})"
                 for n, e in own.items()]
        lines += ["", "What each fractional warm-up's selection.json estimated the epoch to be (at its steady pace, or "
                      "from its seconds per token where its done.json predates seconds_by_step), against the "
                      f"measured epoch of {report['full_epoch']['seconds']:.0f} s: {'; '.join(parts)}."]
    if "proxy" in report:
        proxy = report["proxy"]
        lines += ["", f"As a proxy for {proxy['target']} (its full-pool epoch "
                      f"{proxy['target_full_epoch_seconds']:.0f} s; its own default selection "
                      f"{proxy['target_selection_ratio']:.2f}× that epoch):", "",
                  "| proxy setting | × target epoch | J 5% | J 50% | Spearman |", "|---|---:|---:|---:|---:|"]
        for name, row in proxy["as_proxy"].items():
            lines.append(f"| {name} | {row['ratio_to_target_epoch']:.2f} | "
                         + " | ".join(f"{row[k]:.3f}" for k in AGREEMENT) + " |")
    return "\n".join(lines)


def plot(report: dict, path: Path) -> None:
    """Agreement with the faithful selection against the cost ratio, one panel per agreement figure, with the
    faithful pairs' mean (the method's own noise), chance and the goal's cost."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from grads.infra import atomic

    rows = {n: r for n, r in report["settings"].items() if n != "default" and not n.startswith("seed-")}
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.6), sharex=True)
    for ax, (key, title) in zip(axes, AGREEMENT.items()):
        for name, row in rows.items():
            ax.scatter(row["ratio_to_full_epoch"], row[key], color="tab:blue")
            ax.annotate(name, (row["ratio_to_full_epoch"], row[key]), fontsize=7, xytext=(3, 3),
                        textcoords="offset points")
        if key in report["noise_mean"]:
            ax.axhline(report["noise_mean"][key], color="tab:green", ls="--", label="two faithful selections")
        chance = report["chance_jaccard"].get(key.removeprefix("jaccard_")) if key.startswith("jaccard") else 0.0
        ax.axhline(chance, color="grey", ls=":", label="chance")
        ax.axvline(GOAL, color="tab:red", ls="-.", label=f"goal: {GOAL}× an epoch")
        ax.scatter(report["settings"]["default"]["ratio_to_full_epoch"], 1.0, marker="*", s=120, color="black",
                   label="the faithful selection (default)")
        ax.set(title=title, xlabel="cost: × a full-pool LoRA epoch", ylim=(min(-0.05, ax.get_ylim()[0]), 1.02),
               xlim=(0, max(1.0, ax.get_xlim()[1])))
    axes[0].set_ylabel("agreement with the faithful selection")
    axes[0].legend(fontsize=8, loc="center right")
    fig.tight_layout()
    atomic.write_with(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)


def print_report(report: dict) -> None:
    print(f"full-pool LoRA epoch: {report['full_epoch']['seconds']:.1f} s ({report['full_epoch']['how']})")
    print(f"{'setting':<24}{'warm-up s':>10}{'scoring s':>10}{'÷ epoch':>9}{'J@5%':>7}{'J@50%':>7}{'ρ':>7}")
    for name, row in report["settings"].items():
        print(f"{name:<24}{row['warmup_seconds']:>10.1f}{row['scoring_seconds']:>10.1f}"
              f"{row['ratio_to_full_epoch']:>9.3f}" + "".join(f"{row.get(k, float('nan')):>7.3f}"
                                                           for k in ("jaccard_0.05", "jaccard_0.5", "spearman")))
    print(f"noise (mean of {len(report['noise'])} faithful pairs): {report['noise_mean']}; "
          f"chance Jaccard {report['chance_jaccard']}")
    if "proxy" in report:
        proxy = report["proxy"]
        print(f"proxy for {proxy['target']} (its epoch {proxy['target_full_epoch_seconds']:.1f} s): "
              + "; ".join(f"{n} {v['ratio_to_target_epoch']:.3f}× J@5% {v['jaccard_0.05']:.3f}"
                          for n, v in proxy["as_proxy"].items()))
    print(f"goal (≤ {GOAL}× an epoch, within the noise): {report['goal']}")


if __name__ == "__main__":
    main()
