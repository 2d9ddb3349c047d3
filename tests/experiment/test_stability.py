"""Selection stability between two selection folders: Spearman of `combined` and Jaccard of the grads subsets,
against a hand computation."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from grads.experiment.stability import agreement, chance_jaccard, jaccard, stability, stability_lines


def selection_folder(path, combined: dict[str, float], subsets: dict[float, list[str]]):
    path.mkdir(parents=True)
    pd.DataFrame({"id": list(combined), "combined": list(combined.values())}).to_parquet(path / "scores.parquet")
    outputs = {f"grads-{r:g}.jsonl": {"method": "grads", "ratio": r, "ids": ids} for r, ids in subsets.items()}
    outputs["random-0.5.jsonl"] = {"method": "random", "ratio": 0.5, "ids": ["a"]}
    (path / "selection.json").write_text(json.dumps({"outputs": outputs}))
    return path


def test_agreement_by_hand(tmp_path):
    a = selection_folder(tmp_path / "a", {"a": 1.0, "b": 2.0, "c": 3.0, "d": 4.0, "e": math.nan},
                         {0.5: ["a", "b"], 0.25: ["a"]})
    b = selection_folder(tmp_path / "b", {"a": 1.0, "b": 3.0, "c": 2.0, "d": 4.0, "e": 0.0},
                         {0.5: ["b", "c"], 0.25: ["a"]})
    got = agreement(a, b)
    # e is not eligible in a (NaN): ranks over a..d are (1,2,3,4) and (1,3,2,4): ρ = 1 − 6·2/(4·15) = 0.8
    assert got["n_examples"] == 4 and got["spearman_combined"] == pytest.approx(0.8)
    assert got["jaccard"] == {"0.5": pytest.approx(1 / 3), "0.25": 1.0}
    assert got["chance_jaccard"]["0.5"] == pytest.approx(chance_jaccard(2, 4))


def test_jaccard_and_its_chance_level():
    assert jaccard({1, 2, 3}, {2, 3, 4}) == 0.5 and math.isnan(jaccard(set(), set()))
    # k = n/2: E|A∩B| = n/4, |A∪B| = 3n/4: a third
    assert chance_jaccard(50, 100) == pytest.approx(1 / 3)


def test_stability_skips_missing_folders_and_prints_a_table(tmp_path):
    a = selection_folder(tmp_path / "a", {"x": 1.0, "y": 2.0, "z": 3.0}, {0.5: ["x"]})
    b = selection_folder(tmp_path / "b", {"x": 3.0, "y": 2.0, "z": 1.0}, {0.5: ["z"]})
    rows = stability({"seed 0": a, "seed 1": b, "θ0": tmp_path / "absent"})
    assert [(r["a"], r["b"]) for r in rows] == [("seed 0", "seed 1")]
    assert rows[0]["spearman_combined"] == pytest.approx(-1.0) and rows[0]["jaccard"] == {"0.5": 0.0}
    assert "| seed 0 | seed 1 | -1.000 | 0.000 (" in "\n".join(stability_lines(rows))
    assert stability_lines([]) == []
