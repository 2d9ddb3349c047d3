"""Per-example problems (docs/reliability.md): an example with a non-finite loss or no answer token gets a status
and is left out of the selections; the run never aborts."""

from __future__ import annotations

import json
import math

import pyarrow.parquet as pq
import torch
from helpers import tiny_llama
from typer.testing import CliRunner

from grads.cli import app
from grads.core.gradnorms import IGNORE_INDEX
from grads.data.formats import load_pool


def test_per_example_problems_get_a_status_and_never_abort(tmp_path, monkeypatch, smol_tokenizer):
    """One example with a non-finite loss (real: the model has NaN embeddings for its words only) and one with no
    answer token (simulated: no valid input produces one today, see docs/reliability.md) are scored with a
    status, left out of every selection but the whole-pool baseline, and counted in selection.json and the
    report."""
    import grads.data.pool
    from grads.data.tokenize import tokenize_example

    records = [{"id": f"q{i}", "prompt": f"Question {i}: what is {i} plus {3 * i}?",
                "completion": f"Answer: {4 * i}." + " Because." * (i % 4)} for i in range(14)]
    records += [{"id": "nan-example", "prompt": "Which instrument?", "completion": "xylophone zeppelin"},
                {"id": "no-answer", "prompt": "Say nothing.", "completion": "..."},
                {"id": "separators", "prompt": "a\u2028b\x85c", "completion": "d"}]
    pool = tmp_path / "pool.jsonl"
    pool.write_bytes("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode())
    examples = [tokenize_example(smol_tokenizer, ex, 64) for ex in load_pool(pool).examples]
    others = {t for ex in examples if ex.id != "nan-example" for t in ex.input_ids}
    poison = {t for ex in examples if ex.id == "nan-example" for t in ex.input_ids} - others
    assert poison
    model = tiny_llama(vocab_size=len(smol_tokenizer), tied=False)
    with torch.no_grad():
        model.model.embed_tokens.weight[sorted(poison)] = float("nan")
    model.save_pretrained(tmp_path / "model")
    smol_tokenizer.save_pretrained(tmp_path / "model")

    real = grads.data.pool.tokenize_example

    def no_answer_for_one(tokenizer, example, max_length):
        tok = real(tokenizer, example, max_length)
        if tok.id == "no-answer":
            tok.labels = [IGNORE_INDEX] * len(tok.labels)
        return tok

    # the token cache is built with the patched tokeniser, so it must not land in (or come from) the shared cache
    monkeypatch.setenv("GRADS_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(grads.data.pool, "tokenize_example", no_answer_for_one)
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["select", "--model", str(tmp_path / "model"), "--data", str(pool), "--out",
                                      str(out), "--warmup-epochs", "0", "--max-length", "64", "--ratio", "0.5",
                                      "--quiet", *[x for m in ["grads", "random", "loss", "gradnorm", "full"]
                                                   for x in ("--method", m)]], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "selection.json").read_text())
    assert summary["status_counts"] == {"no_target": 1, "nonfinite": 1, "ok": 15} and summary["n_eligible"] == 15
    scores = pq.read_table(out / "scores.parquet").to_pandas().set_index("id")
    assert scores.loc["nan-example", "status"] == "nonfinite" and math.isnan(scores.loc["nan-example", "loss"])
    assert scores.loc["no-answer", "status"] == "no_target" and scores.loc["no-answer", "n_target_tokens"] == 0
    assert scores.drop(["nan-example", "no-answer"])["loss"].notna().all()
    for name, entry in summary["outputs"].items():
        if entry["method"] == "full":
            continue
        assert entry["n_selected"] == 8 and not {"nan-example", "no-answer"} & set(entry["ids"]), name
    # the whole-pool baseline keeps every input row, verbatim (U+2028 and U+0085 included)
    assert (out / "selected" / "full.jsonl").read_bytes() == pool.read_bytes()
    page = (out / "report.html").read_text()
    assert "<td>no_target</td><td>1</td>" in page and "<td>nonfinite</td><td>1</td>" in page
    assert "Eligible for selection: 15." in page
