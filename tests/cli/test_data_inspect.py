"""`grads data inspect` on real MedMCQA records with the tiny model's tokenizer."""

from __future__ import annotations

from typer.testing import CliRunner

from grads.cli import app


def test_data_inspect_reports_tokens(tiny_model_dir, medmcqa_dir):
    result = CliRunner().invoke(app, ["data", "inspect", str(medmcqa_dir / "pool.jsonl"), "--model",
                                      str(tiny_model_dir), "--limit", "20", "--max-length", "128"])
    assert result.exit_code == 0, result.output
    assert "20 examples, format prompt-completion, ids from field" in result.output
    assert "truncated to 128:" in result.output
