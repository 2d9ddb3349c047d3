"""Tasks as data: the declared tasks build their items from the bundled data, and a user's task file with a bad
line is refused naming the line."""

from __future__ import annotations

import json

import pytest

from grads.eval.tasks import TaskSpec, build_items


def test_declared_tasks_build_items_from_bundled_data():
    from grads.eval.tasks import TASKS

    for name in ["arc_easy", "winogrande", "boolq", "piqa", "sciq"]:
        items = build_items(TASKS[name], None)
        assert items and all(0 <= it.answer < len(it.continuations) for it in items[:50]), name
    wino = build_items(TASKS["winogrande"], None)[0]
    assert wino.continuations[0] == wino.continuations[1] and wino.contexts[0] != wino.contexts[1]


def test_user_task_errors_name_the_line(tmp_path):
    from grads.errors import GradsError

    bad = tmp_path / "t.jsonl"
    bad.write_text(json.dumps({"question": "q", "choices": ["a", "b"], "answer": 0}) + "\n" +
                   json.dumps({"question": "q", "choices": ["a"], "answer": 3}) + "\n")
    with pytest.raises(GradsError) as err:
        build_items(TaskSpec("user", str(bad), "letter"), None)
    assert err.value.line == 2
