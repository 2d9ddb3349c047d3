"""The letter prompt that domain SFT data and the letter-style evaluation share (one format for both)."""

from __future__ import annotations

LETTERS = "ABCDEFGHIJ"


def letter_prompt(question: str, choices: list[str]) -> str:
    options = "\n".join(f"{LETTERS[i]}. {c}" for i, c in enumerate(choices))
    return f"{question.strip()}\n{options}"
