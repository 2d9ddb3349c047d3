"""report.html: what it shows for a pool with and without a spread of norms (issue 16), and hostile text in
ids, examples, paths and names escaped, never markup (docs/reliability.md, "Safety")."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
from helpers import score_table

from grads.core.rules import select
from grads.core.signals import DensitySpec, density
from grads.stages.report import FLAT_DENSITY, write_report

N = 50


def report_inputs(frame: pd.DataFrame, cfg: DensitySpec):
    frame = frame.copy()
    frame["combined"], frame["density"], h = density(frame, cfg)
    picked = select(frame, "grads", 0.1, cfg=cfg)
    ids = frame["id"].iloc[picked].tolist()
    summary = {"input": {"path": "/data/pool.jsonl", "n_examples": len(frame), "format": "prompt-completion",
                         "sha256": "0" * 64},
               "n_eligible": len(frame), "settings": {"model": {"model": "tiny"}}, "warmup_model": None,
               "signal": {"bandwidth": h, "signal": cfg.signal}, "status_counts": {"ok": len(frame)},
               "outputs": {"grads-0.1.jsonl": {"method": "grads", "ratio": 0.1, "n_selected": len(ids), "ids": ids,
                                               "rule": ""}}}
    rows = [json.dumps({"prompt": f"q{i}", "completion": "a"}) for i in range(len(frame))]
    return frame, summary, cfg, rows


def test_report_of_a_flat_pool_says_the_density_is_flat(tmp_path):
    cfg = DensitySpec()
    stale = tmp_path / "plots" / "signal_kde.png"
    stale.parent.mkdir()
    stale.write_bytes(b"an earlier run's plot")
    page = write_report(tmp_path, *report_inputs(score_table([0.1] * N, [0.1] * N), cfg)).read_text()
    assert FLAT_DENSITY in page and 'alt="signal and KDE"' not in page
    assert not stale.exists()  # no plot of a density that does not exist
    for kept in ['alt="embedding vs head"', 'alt="signal vs length"', "grads-0.1.jsonl", "Excluded examples",
                 "most representative", "Overlap between selections"]:
        assert kept in page, kept
    assert (tmp_path / "plots" / "emb_vs_head.png").exists()


def test_report_with_a_spread_still_draws_the_kde(tmp_path):
    cfg = DensitySpec()
    rng = np.random.default_rng(0)
    frame = score_table(rng.random(N) + 0.5, rng.random(N) + 0.5)
    page = write_report(tmp_path, *report_inputs(frame, cfg)).read_text()
    assert 'alt="signal and KDE"' in page and FLAT_DENSITY not in page
    assert (tmp_path / "plots" / "signal_kde.png").exists()


def test_report_escapes_every_example_text(tmp_path):
    """Ids, example text, the input path and the model name, all hostile: none becomes markup in report.html,
    and control characters are shown as escapes, not written raw."""
    import numpy as np
    import pandas as pd

    from grads.core.signals import DensitySpec
    from grads.stages.report import write_report

    hostile = "<script>alert(1)</script><img src=x onerror=alert(2)>"
    n = 12
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"id": [f"{hostile}{i}" for i in range(n)], "row": range(n),
                          "n_target_tokens": rng.integers(2, 40, n), "loss": rng.random(n),
                          "emb_grad_norm": rng.random(n) + 0.5, "head_grad_norm": rng.random(n) + 0.5,
                          "status": ["ok"] * (n - 1) + ["nonfinite"]})
    frame["combined"] = rng.normal(size=n)
    frame["density"] = rng.random(n)
    rows = [json.dumps({"prompt": f"{hostile} \x1b[31m red \u2028 {i}", "completion": "</table><h1>injected"})
            for i in range(n)]
    ids = frame["id"].tolist()
    summary = {"input": {"path": f"/data/{hostile}.jsonl", "n_examples": n, "format": "prompt-completion",
                         "sha256": "0" * 64},
               "n_eligible": n - 1, "settings": {"model": {"model": hostile}}, "warmup_model": hostile,
               "signal": {"bandwidth": 0.3, "signal": "zsum"}, "status_counts": {"ok": n - 1, hostile: 1},
               "outputs": {f"{hostile}.jsonl": {"method": "grads", "ratio": 0.5, "n_selected": 6, "ids": ids[:6],
                                                "rule": hostile}}}
    page = write_report(tmp_path, frame, summary, DensitySpec(), rows).read_text()
    for raw in ["<script", "<img src=x", "<h1>injected", "\x1b", "\u2028"]:
        assert raw not in page, raw
    assert page.count("&lt;script&gt;alert(1)&lt;/script&gt;") >= 10  # shown as text: ids, examples, path, ...
    assert "\\x1b[31m red \\u2028" in page


def test_report_shows_planted_noise_and_canaries_with_hostile_labels_escaped(tmp_path):
    """--labels and --canaries sections: a user's label such as '<b>$x$</b>' is text in the tables (escaped) and
    in the plot's legend (no mathtext), and the sections go when a rerun has neither."""
    from grads.core.noise import detection, kept_shares

    cfg = DensitySpec()
    rng = np.random.default_rng(2)
    frame, summary, cfg, rows = report_inputs(score_table(rng.random(N) + 0.5, rng.random(N) + 0.5), cfg)
    labels = np.array(["clean"] * 40 + ["<b>$x$</b>"] * 10, dtype=object)
    picked = frame.index[frame["id"].isin(summary["outputs"]["grads-0.1.jsonl"]["ids"])].to_numpy()
    summary["noise"] = {"labels": "labels.json", "counts": {"<b>$x$</b>": 10, "clean": 40},
                        "detection": detection(frame, labels, cfg),
                        "outputs": {"grads-0.1.jsonl": kept_shares(labels, picked, np.arange(N))}}
    summary["canaries"] = {"n": 4, "eligible": {"swap": 2, "shuffle": 2}, "kinds": ["swap", "shuffle"],
                           "outputs": {"grads-0.1.jsonl": {"kept": {"swap": 1, "shuffle": 0},
                                                           "kept_share": {"swap": 0.5, "shuffle": 0.0},
                                                           "pool_kept_share": 0.1}}}
    page = write_report(tmp_path, frame, summary, cfg, rows).read_text()
    assert "Planted noise" in page and "&lt;b&gt;$x$&lt;/b&gt;" in page and "<b>$x$</b>" not in page
    assert "Canaries" in page and "1 of 2" in page and "10.0%" in page
    assert (tmp_path / "plots" / "noise_kept.png").read_bytes()[:4] == b"\x89PNG"
    summary.pop("noise"), summary.pop("canaries")
    page = write_report(tmp_path, frame, summary, cfg, rows).read_text()
    assert "Planted noise" not in page and "Canaries" not in page
    assert not (tmp_path / "plots" / "noise_kept.png").exists()
