"""Where output may be cut: every cap (the kernel's stream, a cell's output, the batch runner's
per-cell and per-notebook budgets) drops bytes at a limit, and the limit may fall inside a
multi-byte UTF-8 character. Cutting there leaves a broken character before the marker (a
``\\ufffd`` in the notebook, a decode error in a strict reader). One rule, used by all of them:
the cut moves back to the start of the character the limit falls in."""

from __future__ import annotations

__all__ = ["utf8_prefix", "utf8_prefix_text"]


def _continuation(byte: int) -> bool:
    return byte & 0xC0 == 0x80


def utf8_prefix(data: bytes, limit: int) -> bytes:
    """``data[:limit]`` without a partial character at its end: when ``data[limit]`` continues a
    character, the cut moves back past that character's lead byte (at most 3 bytes).

    Bytes that are not UTF-8 are cut at ``limit`` as before; the back-off never goes further
    than one character's length, so a binary stream is not shortened by more than 3 bytes."""
    if limit >= len(data):
        return data
    cut = max(limit, 0)
    back = 0
    while cut > 0 and back < 3 and _continuation(data[cut]):
        cut -= 1
        back += 1
    if cut < limit and data[cut] & 0xC0 != 0xC0:  # no lead byte where the walk stopped: not UTF-8
        return data[:limit]
    return data[:cut]


def utf8_prefix_text(text: str, limit: int) -> str:
    """The longest prefix of ``text`` whose UTF-8 encoding fits in ``limit`` bytes."""
    return utf8_prefix(text.encode("utf-8", "surrogatepass"), limit).decode("utf-8", "surrogatepass")
