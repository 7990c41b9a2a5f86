"""Text out of a document: .txt, .md, .html, .pdf (pypdf). Bad input is an ExtractError."""

from __future__ import annotations

import io
import re
from html.parser import HTMLParser

TYPES = {  # extension -> media type
    ".txt": "text/plain", ".md": "text/markdown", ".markdown": "text/markdown",
    ".html": "text/html", ".htm": "text/html", ".pdf": "application/pdf",
}
MEDIA_TYPES = set(TYPES.values())


class ExtractError(ValueError):
    """The document cannot be read (corrupt) or holds no text."""


class UnsupportedType(ValueError):
    pass


def media_type(filename: str, content_type: str | None) -> str:
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
        text = _decode(data)
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


def _decode(data: bytes) -> str:
    for enc in ("utf-8-sig", "utf-16") if data[:2] in (b"\xff\xfe", b"\xfe\xff") else ("utf-8-sig",):
        try:
            return data.decode(enc)
        except UnicodeDecodeError:
            continue
    return data.decode("latin-1")


def _pdf(data: bytes) -> str:
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError
    try:
        reader = PdfReader(io.BytesIO(data))
        return "\n\n".join(page.extract_text() or "" for page in reader.pages)
    except (PdfReadError, ValueError, KeyError, TypeError, OSError) as e:
        raise ExtractError(f"the PDF cannot be read: {e}") from None


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
