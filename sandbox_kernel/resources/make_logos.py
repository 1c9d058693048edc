"""Draws the kernelspec logos (a padlock in Jupyter orange): ``logo-svg.svg`` and the
``logo-32x32.png``/``logo-64x64.png`` raster copies. Run once when the design changes:
``python -m sandbox_kernel.resources.make_logos``; the outputs are committed."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

HERE = Path(__file__).parent
ORANGE = (0xF3, 0x77, 0x26)

SVG = """<svg xmlns="http://www.w3.org/2000/svg" width="64" height="64" viewBox="0 0 1 1">
  <path d="M0.26 0.45 V0.35 A0.24 0.24 0 0 1 0.74 0.35 V0.45 H0.65 V0.35 A0.15 0.15 0 0 0 0.35 0.35 V0.45 Z" fill="#f37726"/>
  <path fill-rule="evenodd" fill="#f37726"
        d="M0.26 0.45 H0.74 A0.06 0.06 0 0 1 0.8 0.51 V0.86 A0.06 0.06 0 0 1 0.74 0.92 H0.26 A0.06 0.06 0 0 1 0.2 0.86 V0.51
           A0.06 0.06 0 0 1 0.26 0.45 Z M0.5 0.57 A0.07 0.07 0 0 0 0.47 0.703 V0.8 H0.53 V0.703 A0.07 0.07 0 0 0 0.5 0.57 Z"/>
</svg>
"""


def inside(x: float, y: float) -> bool:
    """The same shape as SVG, as a point test."""
    # shackle: the upper half ring (and its legs down to the body)
    r2 = (x - 0.5) ** 2 + (y - 0.35) ** 2
    if y <= 0.35 and 0.15**2 <= r2 <= 0.24**2:
        return True
    if 0.35 < y <= 0.45 and (0.26 <= x <= 0.35 or 0.65 <= x <= 0.74):
        return True
    # body: a rounded rectangle minus the keyhole
    if not (0.2 <= x <= 0.8 and 0.45 <= y <= 0.92):
        return False
    cx, cy = min(max(x, 0.26), 0.74), min(max(y, 0.51), 0.86)
    if (x - cx) ** 2 + (y - cy) ** 2 > 0.06**2:
        return False
    keyhole = (x - 0.5) ** 2 + (y - 0.64) ** 2 <= 0.07**2 or (0.47 <= x <= 0.53 and 0.64 <= y <= 0.8)
    return not keyhole


def png(size: int, samples: int = 4) -> bytes:
    rows = []
    for py in range(size):
        row = bytearray([0])  # filter: none
        for px in range(size):
            hits = sum(inside((px + (i + 0.5) / samples) / size, (py + (j + 0.5) / samples) / size)
                       for i in range(samples) for j in range(samples))
            row += bytes([*ORANGE, round(255 * hits / samples**2)])
        rows.append(bytes(row))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", size, size, 8, 6, 0, 0, 0)  # 8-bit RGBA
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"".join(rows), 9))
            + chunk(b"IEND", b""))


if __name__ == "__main__":
    (HERE / "logo-svg.svg").write_text(SVG)
    for size in (32, 64):
        (HERE / f"logo-{size}x{size}.png").write_bytes(png(size))
