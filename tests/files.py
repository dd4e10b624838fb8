"""Small real files of each kind, for attachment tests, with a marker inside."""

from __future__ import annotations

import io
import os
import struct
import zipfile
import zlib


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png(marker: str = "", side: int = 16) -> bytes:
    """A valid side x side RGB PNG of random pixels, with `marker` in a tEXt chunk."""
    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    rows = b"".join(b"\x00" + os.urandom(side * 3) for _ in range(side))
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"tEXt", b"Comment\x00" + marker.encode())
        + _chunk(b"IDAT", zlib.compress(rows))
        + _chunk(b"IEND", b"")
    )


def pdf(marker: str = "", padding: int = 0) -> bytes:
    """A one-page PDF whose text is `marker` (plus `padding` random bytes in a comment)."""
    text = f"BT /F1 12 Tf 20 100 Td ({marker}) Tj ET".encode()
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 200 200] /Contents 4 0 R >>",
        b"<< /Length %d >>\nstream\n" % len(text) + text + b"\nendstream",
    ]
    out = bytearray(b"%PDF-1.4\n%" + os.urandom(padding).hex().encode() + b"\n")
    offsets = []
    for n, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % n + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer << /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        xref,
    )
    return bytes(out)


def office(main_part: str, marker: str = "") -> bytes:
    """An Office Open XML container with `main_part` (word/document.xml ...)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("[Content_Types].xml", "<Types/>")
        z.writestr(main_part, f"<doc>{marker}</doc>")
    return buf.getvalue()


def odt(marker: str = "", mimetype: str = "application/vnd.oasis.opendocument.text") -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr(zipfile.ZipInfo("mimetype"), mimetype, compress_type=zipfile.ZIP_STORED)
        z.writestr("content.xml", f"<office>{marker}</office>", compress_type=zipfile.ZIP_DEFLATED)
    return buf.getvalue()


def executable(marker: str = "") -> bytes:
    """Not an allowed type: a Windows executable's header."""
    return b"MZ\x90\x00\x03\x00\x00\x00" + marker.encode() + os.urandom(64)
