"""Property: any bytes given as a pool file either load or raise the project's own error, never a traceback."""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from grads.data.formats import load_pool
from grads.errors import GradsError

json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                                       max_size=3), max_leaves=8)
records = st.dictionaries(st.sampled_from(["prompt", "completion", "messages", "instruction", "output", "input",
                                           "id", "role", "content"]), json_values | st.text(max_size=10),
                          max_size=4)


def check(path, data: bytes) -> None:
    path.write_bytes(data)
    try:
        pool = load_pool(path)
    except GradsError as err:
        assert str(err).startswith(str(path))
    else:
        assert pool.examples and len({e.id for e in pool.examples}) == len(pool.examples)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=200))
def test_arbitrary_bytes(tmp_path, data):
    check(tmp_path / "pool.jsonl", data)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.lists(records, min_size=0, max_size=4))
def test_arbitrary_json_records(tmp_path, lines):
    check(tmp_path / "pool.jsonl", "".join(json.dumps(r) + "\n" for r in lines).encode())
    check(tmp_path / "pool.json", json.dumps(lines).encode())
