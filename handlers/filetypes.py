"""What a file is, from its bytes: the declared mimetype and the file name are never trusted.

Only the kinds a referral needs are accepted (pictures, PDF, office documents); anything
else is refused. A dozen magic numbers and a look inside ZIP containers, so no library.
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass

from handlers.notify import format_time
from schemas.records import Attachment


@dataclass(frozen=True)
class FileType:
    kind: str  # short name shown to people: "PNG image", "PDF document" ...
    mimetype: str  # what the bot declares when it sends the file on
    extension: str


PNG = FileType("PNG image", "image/png", "png")
JPEG = FileType("JPEG image", "image/jpeg", "jpg")
GIF = FileType("GIF image", "image/gif", "gif")
WEBP = FileType("WebP image", "image/webp", "webp")
HEIC = FileType("HEIC image", "image/heic", "heic")
PDF = FileType("PDF document", "application/pdf", "pdf")
DOCX = FileType(
    "Word document",
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    "docx",
)
XLSX = FileType(
    "Excel workbook", "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet", "xlsx"
)
PPTX = FileType(
    "PowerPoint presentation",
    "application/vnd.openxmlformats-officedocument.presentationml.presentation",
    "pptx",
)
ODT = FileType("OpenDocument text", "application/vnd.oasis.opendocument.text", "odt")
ODS = FileType("OpenDocument spreadsheet", "application/vnd.oasis.opendocument.spreadsheet", "ods")
DOC = FileType("Word 97-2003 document", "application/msword", "doc")
XLS = FileType("Excel 97-2003 workbook", "application/vnd.ms-excel", "xls")
OLE = FileType("Office 97-2003 document", "application/x-ole-storage", "doc")

ALLOWED = (
    "pictures (PNG, JPEG, GIF, WebP, HEIC), PDF and office documents "
    "(Word, Excel, PowerPoint, OpenDocument)"
)

_HEIC_BRANDS = {b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1"}
_OLE_MAGIC = bytes.fromhex("d0cf11e0a1b11ae1")
_OPEN_DOCUMENT = {
    b"application/vnd.oasis.opendocument.text": ODT,
    b"application/vnd.oasis.opendocument.spreadsheet": ODS,
}


def sniff(data: bytes, name: str = "") -> FileType | None:
    """The file's type from its first bytes (and a ZIP's directory), or None if it is not
    one the bot accepts. `name` only tells a Word 97 file from an Excel 97 one (both OLE2);
    it never makes a file acceptable."""
    head = data[:64]
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return PNG
    if head.startswith(b"\xff\xd8\xff"):
        return JPEG
    if head.startswith((b"GIF87a", b"GIF89a")):
        return GIF
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return WEBP
    if head[4:8] == b"ftyp" and head[8:12] in _HEIC_BRANDS:
        return HEIC
    if head.startswith(b"%PDF-"):
        return PDF
    if head.startswith(_OLE_MAGIC):
        lower = name.lower()
        if lower.endswith(".xls"):
            return XLS
        if lower.endswith(".doc"):
            return DOC
        return OLE
    if head.startswith(b"PK\x03\x04"):
        return _zip_type(data)
    return None


def _zip_type(data: bytes) -> FileType | None:
    """Office Open XML (a `[Content_Types].xml` and its main part) or OpenDocument (a
    stored `mimetype` entry). Only the ZIP's directory and that one tiny entry are read,
    so a ZIP bomb costs nothing here."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            names = set(archive.namelist())
            if "[Content_Types].xml" in names:
                if "word/document.xml" in names:
                    return DOCX
                if "xl/workbook.xml" in names:
                    return XLSX
                if "ppt/presentation.xml" in names:
                    return PPTX
                return None
            if "mimetype" in names:
                info = archive.getinfo("mimetype")
                if info.file_size > 100:
                    return None
                return _OPEN_DOCUMENT.get(archive.read("mimetype").strip())
    except (
        zipfile.BadZipFile,
        OSError,
        ValueError,
        KeyError,
        EOFError,
        RuntimeError,
        NotImplementedError,
    ):
        return None
    return None


def size_text(size: int) -> str:
    if size >= 1024 * 1024:
        return f"{size / (1024 * 1024):.1f} MB"
    if size >= 1024:
        return f"{size / 1024:.0f} KB"
    return f"{size} bytes"


def attachment_lines(files: list[Attachment]) -> list[str]:
    """For `!show`: name, type, size, when."""
    return [
        f"{f.id}. {f.name} · {f.kind} · {size_text(f.size)} · {format_time(f.added_at)}"
        for f in files
    ]
