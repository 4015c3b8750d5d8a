"""Cut text into chunks for embedding: paragraphs first, then sentences, then words.

A chunk holds at most ``max_chars`` characters (800 by default: about 200 word
pieces, inside all-MiniLM-L6-v2's 256-token window together with a title).
Whole paragraphs are packed together while they fit; a paragraph that does not
fit is cut at sentence ends, and a sentence that does not fit at spaces. Each
chunk after the first starts with the last sentences of the previous one (at
most ``overlap`` characters), so a thought cut at a boundary is still found.
The result depends only on the input: re-chunking unchanged text gives the
same chunks (which is what lets ingestion skip re-embedding them).

Also: text extraction from the knowledge file types (plain text, Markdown, PDF).
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass

_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n+|\n(?=#{1,6} )")
_SENTENCE_END = re.compile(r"(?<=[.!?…。])[\"')\]]*\s+")
_SPACES = re.compile(r"[ \t\r\f\v]+")

# A source is cut at this many characters (about 2,500 chunks); the rest is not indexed.
MAX_SOURCE_CHARS = 2_000_000


@dataclass(frozen=True, slots=True)
class _Unit:
    text: str
    # Glue before this unit when it follows another in a chunk.
    glue: str


def clean_text(text: str) -> str:
    """NULs out (PostgreSQL text cannot hold them), newlines unified, runs of spaces collapsed."""
    text = text.replace("\x00", "").replace("\r\n", "\n").replace("\r", "\n")
    return "\n".join(_SPACES.sub(" ", line).strip() for line in text.split("\n")).strip()


def _split_long(text: str, max_chars: int) -> list[str]:
    """Pieces of at most ``max_chars``, cut at spaces when there are any."""
    pieces = []
    while len(text) > max_chars:
        cut = text.rfind(" ", 0, max_chars + 1)
        if cut <= 0:
            cut = max_chars
        pieces.append(text[:cut].strip())
        text = text[cut:].strip()
    if text:
        pieces.append(text)
    return pieces


def _units(text: str, max_chars: int) -> list[_Unit]:
    units: list[_Unit] = []
    for paragraph in _PARAGRAPH_BREAK.split(text):
        paragraph = paragraph.strip()
        if not paragraph:
            continue
        if len(paragraph) <= max_chars:
            units.append(_Unit(paragraph, "\n\n"))
            continue
        glue = "\n\n"
        for sentence in _SENTENCE_END.split(paragraph):
            for piece in _split_long(sentence.strip(), max_chars):
                units.append(_Unit(piece, glue))
                glue = " "
    return units


def _length(units: list[_Unit]) -> int:
    return sum(len(u.text) for u in units) + sum(len(u.glue) for u in units[1:])


def _join(units: list[_Unit]) -> str:
    return "".join((u.glue if i else "") + u.text for i, u in enumerate(units))


def _tail(units: list[_Unit], overlap: int) -> list[_Unit]:
    """The last units of a chunk that fit in ``overlap`` characters; else the end of the
    last unit, cut at a space."""
    if overlap <= 0 or not units:
        return []
    tail: list[_Unit] = []
    for unit in reversed(units):
        if _length([unit, *tail]) > overlap:
            break
        tail.insert(0, unit)
    if tail:
        return tail
    last = units[-1].text
    start = last.find(" ", len(last) - overlap)
    return [_Unit(last[start + 1 :], " ")] if 0 <= start < len(last) - 1 else []


def chunk_text(text: str, *, max_chars: int = 800, overlap: int = 120) -> list[str]:
    """``text`` as a list of chunks (empty for blank text)."""
    max_chars = max(50, max_chars)
    overlap = max(0, min(overlap, max_chars // 2))
    text = clean_text(text)[:MAX_SOURCE_CHARS]
    if not text:
        return []
    if len(text) <= max_chars:
        return [text]
    chunks: list[list[_Unit]] = []
    current: list[_Unit] = []
    fresh = 0  # units in ``current`` that are not overlap
    for unit in _units(text, max_chars):
        if current and _length([*current, unit]) > max_chars:
            if fresh:
                chunks.append(current)
            current = _tail(current, overlap)
            while current and _length([*current, unit]) > max_chars:
                current.pop(0)
            fresh = 0
        current.append(unit)
        fresh += 1
    if fresh:
        chunks.append(current)
    return [_join(c) for c in chunks]


# -- extraction -----------------------------------------------------------------------------


class UnsupportedContent(ValueError):
    """The file's type cannot be indexed (or its bytes are not what the type says)."""


TEXT_TYPES = {"text/plain", "text/markdown", "text/x-markdown"}
PDF_TYPES = {"application/pdf"}
_MD_IMAGE = re.compile(r"!\[([^\]]*)\]\([^)]*\)")
_MD_LINK = re.compile(r"\[([^\]]+)\]\([^)]*\)")


def _media_type(content_type: str) -> tuple[str, str | None]:
    kind, _, params = content_type.partition(";")
    charset = None
    for param in params.split(";"):
        name, _, value = param.strip().partition("=")
        if name.lower() == "charset" and value:
            charset = value.strip().strip('"')
    return kind.strip().lower(), charset


def extract_text(data: bytes, content_type: str) -> str:
    """The text of a knowledge file: plain text, Markdown (links and images reduced
    to their words) or PDF (the text layer, page by page, via pypdf)."""
    kind, charset = _media_type(content_type)
    if kind in TEXT_TYPES:
        try:
            text = data.decode(charset or "utf-8", errors="replace")
        except LookupError:
            text = data.decode("utf-8", errors="replace")
        if kind != "text/plain":
            text = _MD_LINK.sub(r"\1", _MD_IMAGE.sub(r"\1", text))
        return clean_text(text)
    if kind in PDF_TYPES:
        return clean_text(_pdf_text(data))
    raise UnsupportedContent(f"cannot index files of type {kind or 'unknown'}")


def _pdf_text(data: bytes) -> str:
    try:
        from pypdf import PdfReader
        from pypdf.errors import PdfReadError
    except ImportError as exc:  # pragma: no cover - the "pdf" extra is part of dev and CI
        raise UnsupportedContent("PDF support needs pypdf: pip install 'lounges[pdf]'") from exc
    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted and not reader.decrypt(""):
            raise UnsupportedContent("the PDF is encrypted")
        pages = []
        total = 0
        for page in reader.pages:
            text = page.extract_text() or ""
            pages.append(text)
            total += len(text)
            if total > MAX_SOURCE_CHARS:
                break
        return "\n\n".join(pages)
    except UnsupportedContent:
        raise
    except (PdfReadError, ValueError, KeyError, TypeError) as exc:
        raise UnsupportedContent(f"not a readable PDF: {exc}") from exc
