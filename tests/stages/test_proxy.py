"""Cheaper selections: a proxy model's warm-up and scores choose the data for another model (--score-model), and
scoring on examples cut shorter than the training data (--score-max-length)."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
from helpers import tiny_llama
from typer.testing import CliRunner

from grads.cli import app


def select(model, pool, out, *extra, warmup="1"):
    args = ["select", "--model", str(model), "--data", str(pool), "--limit", "24", "--out", str(out),
            "--max-length", "64", "--batch-size", "4", "--ratio", "0.25", "--ratio", "0.5", "--quiet",
            "--warmup-epochs", warmup, *extra]
    result = CliRunner().invoke(app, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return out


def chosen(out) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((out / "selected").iterdir())}


@pytest.fixture(scope="module")
def other_model(tmp_path_factory, smol_tokenizer):
    """Another tiny model (other weights, the same tokenizer): the proxy."""
    path = tmp_path_factory.mktemp("proxy-model")
    tiny_llama(vocab_size=len(smol_tokenizer), tied=True, hidden=32, seed=7).save_pretrained(path)
    smol_tokenizer.save_pretrained(path)
    return path


@pytest.mark.e2e  # warms up tiny models
def test_the_proxys_warmup_and_scores_choose_the_data_and_both_models_are_recorded(tiny_model_dir, other_model,
                                                                                    medmcqa_dir, tmp_path):
    pool = medmcqa_dir / "pool.jsonl"
    proxied = select(tiny_model_dir, pool, tmp_path / "proxied", "--score-model", str(other_model))
    by_proxy_alone = select(other_model, pool, tmp_path / "proxy-alone")
    by_target = select(tiny_model_dir, pool, tmp_path / "target")
    assert chosen(proxied) == chosen(by_proxy_alone) and chosen(proxied) != chosen(by_target)
    summary = json.loads((proxied / "selection.json").read_text())
    assert summary["settings"]["model"]["model"] == str(tiny_model_dir)
    assert summary["settings"]["select"]["score_model"] == str(other_model)
    warm = json.loads((proxied / "warmup" / "model" / "done.json").read_text())
    assert warm["base_model"] == str(other_model)  # the proxy warmed up, not the target
    # a proxy's warm-up does not measure the target's epoch: no ratio, but its seconds are there
    assert summary["cost"]["ratio_to_full_epoch"] is None and summary["cost"]["scoring_seconds"] > 0


@pytest.mark.e2e  # warms up a tiny model
def test_a_proxy_equal_to_the_target_is_no_proxy_byte_for_byte(tiny_model_dir, medmcqa_dir, tmp_path):
    pool = medmcqa_dir / "pool.jsonl"
    plain = select(tiny_model_dir, pool, tmp_path / "plain")
    same = select(tiny_model_dir, pool, tmp_path / "same", "--score-model", str(tiny_model_dir))
    assert chosen(same) == chosen(plain)
    assert (same / "scores.parquet").read_bytes() == (plain / "scores.parquet").read_bytes()


@pytest.mark.e2e  # scores a tiny model
def test_scoring_at_a_shorter_length_scores_what_that_max_length_would(tiny_model_dir, medmcqa_dir, tmp_path):
    """At θ0 (no warm-up, so the training length cannot matter) --score-max-length 32 gives the scores and the
    selection of --max-length 32; the recorded training-side tokens stay those of --max-length 64."""
    pool = medmcqa_dir / "pool.jsonl"
    short = select(tiny_model_dir, pool, tmp_path / "short", "--score-max-length", "32", warmup="0")
    cut = select(tiny_model_dir, pool, tmp_path / "cut", "--max-length", "32", warmup="0")
    full = select(tiny_model_dir, pool, tmp_path / "full", warmup="0")
    assert chosen(short) == chosen(cut)
    a, b = (pq.read_table(p / "score" / "scores.parquet").to_pandas() for p in (short, cut))
    assert (a["n_tokens"] <= 32).all() and a["n_tokens"].tolist() == b["n_tokens"].tolist()
    for column in ("loss", "emb_grad_norm", "head_grad_norm"):
        assert a[column].to_numpy() == pytest.approx(b[column].to_numpy(), rel=1e-5, nan_ok=True)
    whole = pq.read_table(full / "score" / "scores.parquet").column("n_tokens").to_numpy()
    assert whole.max() > 32  # the cut is real
    assert json.loads((short / "score" / "score.json").read_text())["job"]["data"]["max_length"] == 32
    assert json.loads((short / "selection.json").read_text())["cost"]["scoring_tokens"] == int(a["n_tokens"].sum())
