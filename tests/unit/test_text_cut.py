"""Output caps cut at a character boundary: the marker follows the last complete character."""

from __future__ import annotations

import os

import pytest

from sandbox_kernel.launch.process import forward_capped
from sandbox_kernel.text_cut import utf8_prefix, utf8_prefix_text


@pytest.mark.parametrize("char", ["é", "€", "😀"])
@pytest.mark.parametrize("extra", [0, 1, 2, 3])
def test_a_cut_inside_a_character_moves_back_to_its_start(char, extra):
    data = ("ab" + char * 3).encode()
    limit = 2 + len(char.encode()) + extra
    cut = utf8_prefix(data, limit)
    assert cut.decode() == "ab" + char * (1 + extra // len(char.encode()))
    assert len(cut) <= limit


def test_ascii_binary_and_short_data_are_cut_at_the_limit():
    assert utf8_prefix(b"abcdef", 3) == b"abc"
    assert utf8_prefix(b"abc", 10) == b"abc"
    assert utf8_prefix(b"\x80\x80\x80\x80\x80", 4) == b"\x80\x80\x80\x80"  # not UTF-8: no back-off
    assert utf8_prefix("é".encode(), 1) == b""
    assert utf8_prefix(b"", 0) == b""


def test_text_prefix_counts_bytes_not_characters():
    assert utf8_prefix_text("ééé", 5) == "éé"
    assert utf8_prefix_text("a€", 3) == "a"


def test_the_kernel_stream_cap_keeps_whole_characters():
    """forward_capped over a real pipe: the cap (7 bytes) falls inside the third '€'."""
    r, w = os.pipe()
    sink_r, sink_w = os.pipe()
    with os.fdopen(r, "rb", buffering=0) as stream:
        thread = forward_capped(stream, sink_w, 7, "kernel process")
        os.write(w, "€€€€".encode())
        os.close(w)
        thread.join(timeout=30)
    os.close(sink_w)
    out = b""
    while chunk := os.read(sink_r, 4096):
        out += chunk
    os.close(sink_r)
    text = out.decode()  # strict: a split character would raise
    assert text.startswith("€€\n[sandbox-kernel: kernel process output beyond 7 bytes dropped]")
