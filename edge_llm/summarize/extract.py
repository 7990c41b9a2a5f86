"""Text out of a document: .txt, .md, .html, .pdf (pypdf). Bad input (corrupt, or binary data
sent as text) is an ExtractError.

A PDF is read in two steps: check() opens it and counts its pages (cheap: the HTTP request
does it, so a corrupt, encrypted or oversized PDF is refused at once), and pdf_text() pulls
the text out page by page under a time limit (the job runner does it, off the HTTP thread)."""

from __future__ import annotations

import io
import re
import time
from collections.abc import Callable
from html.parser import HTMLParser

TYPES = {  # extension -> media type
    ".txt": "text/plain",
    ".md": "text/markdown",
    ".markdown": "text/markdown",
    ".html": "text/html",
    ".htm": "text/html",
    ".pdf": "application/pdf",
}
MEDIA_TYPES = set(TYPES.values())
PDF_MAGIC = b"%PDF-"
SNIFF_BYTES = 1024  # PDF readers find the header within the first KB
MAX_CONTROL_SHARE = 0.1  # text with more control characters than this is binary data (bytes 0-255: 24%)
_CONTROL = re.compile(r"[\x00-\x08\x0e-\x1f\x7f-\x9f]")  # C0 and C1 controls but tab, newlines, \v, \f


class ExtractError(ValueError):
    """The document cannot be read (corrupt) or holds no text."""


class UnsupportedType(ValueError):
    pass


class TooLarge(ExtractError):
    """The document is over a configured limit (pages)."""


def media_type(filename: str, content_type: str | None, data: bytes = b"") -> str:
    """The document's type: a PDF by its magic bytes whatever it was declared as (a declared
    text/plain PDF was summarized as its raw bytes), else the declared type, else the name's."""
    if data[:SNIFF_BYTES].lstrip().startswith(PDF_MAGIC):
        return "application/pdf"
    ct = (content_type or "").split(";")[0].strip().lower()
    if ct in MEDIA_TYPES:
        return ct
    ext = "." + filename.rsplit(".", 1)[-1].lower() if "." in filename else ""
    if ext in TYPES:
        return TYPES[ext]
    raise UnsupportedType(f"unsupported document type {ct or ext or 'unknown'}: send .txt, .md, .html or .pdf")


def extract(data: bytes, kind: str) -> str:
    if kind == "application/pdf":
        text = _pdf(data)
    else:
        text = decode(data)
        if kind == "text/html":
            text = _html(text)
    text = normalize(text)
    if not text:
        raise ExtractError("the document holds no extractable text")
    return text


def normalize(text: str) -> str:
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\x00", "")
    text = re.sub(r"[ \t\f\v]+", " ", text)
    text = re.sub(r" *\n *", "\n", text)
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def decode(data: bytes) -> str:
    """The text, or ExtractError for binary data (latin-1 decodes any bytes: a binary file
    became a "done" job with an invented summary)."""
    text = _decode_any(data)
    if "\x00" in text:
        raise ExtractError("the document is not text: it holds NUL bytes (binary data, or UTF-16 without a BOM?)")
    controls = len(text) - len(_CONTROL.sub("", text))
    if controls > MAX_CONTROL_SHARE * len(text):
        raise ExtractError(
            f"the document is not text: {controls / len(text):.0%} of its characters are control characters"
        )
    return text


def _decode_any(data: bytes) -> str:
    encodings = ("utf-8-sig", "utf-16") if data[:2] in (b"\xff\xfe", b"\xfe\xff") else ("utf-8-sig",)
    for enc in (*encodings, "cp1252"):  # cp1252 before latin-1: its quotes and euro sign are text, not C1 controls
        try:
            return data.decode(enc)
        except UnicodeDecodeError:
            continue
    return data.decode("latin-1")


_PDF_ERRORS = (ValueError, KeyError, TypeError, OSError, AttributeError, IndexError, RecursionError)


def _reader(data: bytes):
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    try:
        reader = PdfReader(io.BytesIO(data))
        encrypted = reader.is_encrypted
        if not encrypted:
            len(reader.pages)
    except (PdfReadError, *_PDF_ERRORS) as e:
        raise ExtractError(f"the PDF cannot be read: {e}") from None
    if encrypted:  # raised outside the try: ExtractError is a ValueError, which it rewraps
        raise ExtractError("the PDF is encrypted: send it without a password")
    return reader


def check_pdf(data: bytes, max_pages: int) -> int:
    """Open the PDF and count its pages; ExtractError if corrupt, TooLarge over max_pages."""
    pages = len(_reader(data).pages)
    if max_pages and pages > max_pages:
        raise TooLarge(f"the PDF has {pages} pages; the limit is {max_pages} (summarize.max_pdf_pages)")
    return pages


def pdf_text(data: bytes, max_pages: int, timeout_s: float, check: Callable[[], None] = lambda: None) -> str:
    """The text of every page, giving up after timeout_s (checked between pages). check() is
    called after each page; it raises to stop (the job was deleted)."""
    from pypdf.errors import PdfReadError

    reader, deadline, parts = _reader(data), time.monotonic() + timeout_s, []
    pages = reader.pages[:max_pages] if max_pages else reader.pages
    for n, page in enumerate(pages, 1):
        try:
            parts.append(page.extract_text() or "")
        except (PdfReadError, *_PDF_ERRORS) as e:
            raise ExtractError(f"the PDF cannot be read (page {n}): {e}") from None
        check()
        if time.monotonic() > deadline and n < len(pages):
            raise ExtractError(
                f"text extraction took longer than {timeout_s:g} s (summarize.extract_timeout_s); "
                f"stopped after page {n} of {len(pages)}"
            )
    text = normalize("\n\n".join(parts))
    if not text:
        raise ExtractError("the document holds no extractable text (a scanned PDF?)")
    return text


def _pdf(data: bytes) -> str:
    return pdf_text(data, 0, float("inf"))


class _HTMLText(HTMLParser):
    SKIP = {"script", "style", "noscript", "template", "head"}
    BLOCK = {"p", "div", "br", "li", "h1", "h2", "h3", "h4", "h5", "h6", "tr", "section", "article", "pre"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.skipping = 0

    def handle_starttag(self, tag, attrs):
        if tag in self.SKIP:
            self.skipping += 1
        elif tag in self.BLOCK:
            self.parts.append("\n\n")

    def handle_endtag(self, tag):
        if tag in self.SKIP and self.skipping:
            self.skipping -= 1
        elif tag in self.BLOCK:
            self.parts.append("\n\n")

    def handle_data(self, data):
        if not self.skipping:
            self.parts.append(data)


def _html(text: str) -> str:
    p = _HTMLText()
    p.feed(text)
    p.close()
    return "".join(p.parts)
