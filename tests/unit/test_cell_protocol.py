"""The cell socket's request schema: what the kernel sends passes, anything else is refused
with the bad field named (the integration tests send the same attacks over the real socket)."""

from __future__ import annotations

import pytest

from sandbox_kernel.cell_protocol import (MAX_ALLOW, MAX_HEADER, MAX_SOURCE, CellRequest, RequestError, decode_header,
                                          encode_request, option_problems)
from sandbox_kernel.kernel.magics import options_to_override
from sandbox_kernel.policy import PolicyError, secure_default, tighten


@pytest.mark.parametrize("line", [
    "", "--network deny", "--allow 10.0.0.0/8:443 --allow 192.0.2.7", "--memory 64M --max-output 1K",
    "--cpu 5 --timeout 1.5 --processes 10", "--timeout 2", "--fs scratch-only",
])
def test_every_request_the_kernel_sends_passes_the_schema(line):
    options = options_to_override("sh", line)
    body = "echo hé\n".encode()
    wire = encode_request("sh", body, options)
    header, rest = wire.split(b"\n", 1)
    assert decode_header(header) == CellRequest("sh", options, len(body)) and rest == body


def test_the_execute_request_id_travels_in_the_header():
    wire = encode_request("sh", b"true", {}, "a1b2-c3_4")
    assert decode_header(wire.split(b"\n", 1)[0]).msg_id == "a1b2-c3_4"
    # The kernel leaves out an id it could not have been sent with (none, or too long).
    for unusable in (None, "", "x" * 129):
        assert decode_header(encode_request("sh", b"", {}, unusable).split(b"\n", 1)[0]).msg_id is None


def _header(**fields) -> bytes:
    import json

    return json.dumps({"kind": "sh", "options": {}, "source_bytes": 0, **fields}).encode()


@pytest.mark.parametrize("header, field", [
    (b"", "request"),
    (b"[1]", "request"),
    (b"null", "request"),
    (b"\xff\xfe", "request"),
    (b"[" * 100_000, "request"),
    (b"[" * 30_000, "request"),
    (b'{"kind": "sh", "source_bytes": 1' + b"0" * 5000 + b', "options": {}}', "request"),
    (b'{"kind": "sh", "source": "true", "options": "x"}', "request.options"),
    (b'{"kind": "sh", "source": "true", "options": {}}', "request.source"),
    (_header(kind=1), "request.kind"),
    (_header(kind="bash"), "request.kind"),
    (_header(source_bytes=-1), "request.source_bytes"),
    (_header(source_bytes=True), "request.source_bytes"),
    (_header(source_bytes=1.0), "request.source_bytes"),
    (_header(source_bytes=MAX_SOURCE + 1), "request.source_bytes"),
    (b'{"kind": "sh", "options": {}, "source_bytes": 1e400}', "request.source_bytes"),
    (_header(extra=1), "request.extra"),
    (_header(options=[1]), "request.options"),
    (_header(options="x"), "request.options"),
    (_header(options={"resources": []}), "request.options.resources"),
    (_header(options={"privilege": {"mode": "inherit"}}), "request.options.privilege.mode"),
    (_header(options={"resources": {"memory_bytes": "1G"}}), "--memory"),
    (_header(options={"resources": {"memory_bytes": True}}), "--memory"),
    (_header(options={"resources": {"memory_bytes": 1.5}}), "--memory"),
    (_header(options={"resources": {"wall_seconds": "5"}}), "--timeout"),
    (_header(options={"network": {"mode": ["deny"]}}), "--network"),
    (_header(options={"network": {"allow": [[[[1]]]]}}), "--allow"),
    (_header(options={"network": {"allow": ["10.0.0.1"] * (MAX_ALLOW + 1)}}), "--allow"),
    (b" " * (MAX_HEADER + 1), "request"),
    (_header(msg_id=7), "request.msg_id"),
    (_header(msg_id=""), "request.msg_id"),
    (_header(msg_id="x" * 129), "request.msg_id"),
])
def test_malformed_headers_are_refused_naming_the_field(header, field):
    with pytest.raises(RequestError) as err:
        decode_header(header)
    assert field in [f for f, _ in err.value.problems], err.value.problems


@pytest.mark.parametrize("options, option", [
    ({"resources": {"wall_seconds": float("nan")}}, "--timeout"),
    ({"resources": {"wall_seconds": -1}}, "--timeout"),
    ({"resources": {"memory_bytes": 2**62}}, "--memory"),
    ({"network": {"mode": "unrestricted"}}, "--network"),
])
def test_values_are_left_to_the_policy_model(options, option):
    """The schema checks JSON types; ranges and looseness are the policy model's to refuse."""
    import json

    request = decode_header(json.dumps({"kind": "sh", "options": options, "source_bytes": 0}).encode())
    with pytest.raises(PolicyError) as err:
        tighten(secure_default(), request.options)
    assert option in [o for o, _ in option_problems(err.value, request.options)]


def test_the_kernel_side_refuses_what_the_supervisor_would():
    with pytest.raises(ValueError, match="larger than"):
        encode_request("sh", b"x" * (MAX_SOURCE + 1), {})
    with pytest.raises(ValueError, match="options take more than"):
        encode_request("sh", b"", {"network": {"allow": ["10.0.0.1"] * MAX_HEADER}})
