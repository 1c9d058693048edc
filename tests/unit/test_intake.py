"""Reading untrusted JSON within bounds (pure functions of ``sandbox_kernel.intake``)."""

from __future__ import annotations

import json

import pytest

from sandbox_kernel.intake import UntrustedInput, cost_budget, json_cost, loads_bounded, loads_string_fields


@pytest.mark.parametrize("text", [
    '{"name": "stdout", "text": "' + "csv,row,of,values\\n" * 50000 + '"}',  # prose and CSV with commas
    json.dumps({"cells": [{"source": ["x = f(a, b)[0]\n"] * 20000}]}),  # code
    json.dumps({"data": {"image/png": "iVBORw0KGgo" * 100000}}),  # base64
    json.dumps({"x": [1.5] * 200000, "y": list(range(200000))}),  # numeric arrays
])
def test_real_json_is_within_the_cost_budget(text):
    raw = text.encode()
    assert json_cost(raw) <= cost_budget(len(raw))
    assert loads_bounded(raw, "it") == json.loads(raw)


@pytest.mark.parametrize("text", ["[" + "{}," * 2_000_000 + "{}]", "[" + "[]," * 2_000_000 + "[]]"])
def test_container_floods_are_refused_before_parsing(text):
    with pytest.raises(UntrustedInput, match="in memory"):
        loads_bounded(text.encode(), "it")


def test_deep_nesting_is_refused():
    with pytest.raises(UntrustedInput, match="nested more than 100 levels"):
        loads_bounded(("[" * 150 + "]" * 150).encode(), "it")
    with pytest.raises(UntrustedInput, match="not valid JSON"):
        loads_bounded(("[" * 100000 + "]" * 100000).encode(), "it")


def test_cost_estimate_only_errs_high():
    raw = json.dumps([{"a": [1, 2, {"b": "c"}]}] * 1000).encode()
    import sys

    def size(o):
        inner = sum(size(v) + size(k) for k, v in o.items()) if isinstance(o, dict) else sum(map(size, o)) if isinstance(o, list) else 0
        return sys.getsizeof(o) + inner

    assert json_cost(raw) >= size(json.loads(raw))


@pytest.mark.parametrize("text,expected", [
    ('{"name": "stdout", "text": "hi\\n"}', {"name": "stdout", "text": "hi\n"}),
    (' { "text" : "\\u00e9" , "name":"stderr" } ', {"text": "é", "name": "stderr"}),
    ("{}", {}),
])
def test_stream_content_parser_builds_only_strings(text, expected):
    assert loads_string_fields(text.encode()) == expected


@pytest.mark.parametrize("text", ['{"name": 1}', '{"a": []}', "[]", '{"a": "b"} x', '{"a" "b"}', '{"a": "b",}', '{"a": "b'])
def test_stream_content_parser_refuses_anything_else(text):
    with pytest.raises(UntrustedInput):
        loads_string_fields(text.encode())
