"""Model output as safe HTML: markdown-it-py (CommonMark + tables + strikethrough, raw HTML
escaped), Pygments for code, and nh3 (the ammonia sanitizer) over the result, so nothing a
model writes can become a script, a style or an event handler."""

from __future__ import annotations

import html

import nh3
from markdown_it import MarkdownIt
from pygments import highlight
from pygments.formatters import HtmlFormatter
from pygments.lexers import get_lexer_by_name
from pygments.util import ClassNotFound

STYLE = "github-dark"  # readable on the pages' dark panels (axe-core's contrast check passes)
PREFIX = "tok-"
TAGS = {
    "p",
    "br",
    "hr",
    "strong",
    "em",
    "s",
    "del",
    "code",
    "pre",
    "blockquote",
    "ul",
    "ol",
    "li",
    "a",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "table",
    "thead",
    "tbody",
    "tr",
    "th",
    "td",
    "span",
    "div",
}
ATTRIBUTES = {
    "a": {"href", "title"},
    "ol": {"start"},
    "span": {"class"},
    "div": {"class"},
    "code": {"class"},
    "th": {"style"},
    "td": {"style"},
    "img": {"alt"},
}
_FORMATTER = HtmlFormatter(nowrap=True, classprefix=PREFIX)


def _fence(_renderer, tokens, idx, _options, _env) -> str:
    """A code block with its language label (the page adds a copy button to .code-head)."""
    code, info = tokens[idx].content, tokens[idx].info.strip()
    name = info.split()[0].lower() if info else ""
    try:
        lexer = get_lexer_by_name(name) if name else None
    except ClassNotFound:
        lexer = None
    body = highlight(code, lexer, _FORMATTER) if lexer else html.escape(code)
    label = html.escape(name or "text")
    return (
        f'<div class="code"><div class="code-head"><span class="code-lang">{label}</span></div>'
        f'<pre><code class="language-{label}">{body}</code></pre></div>'
    )


_MD = MarkdownIt("commonmark", {"html": False}).enable(["table", "strikethrough"])
_MD.add_render_rule("fence", _fence)
_MD.add_render_rule("code_block", _fence)
# an image would be fetched from wherever it points: shown as its description instead
_MD.add_render_rule("image", lambda _r, tokens, idx, _o, _e: html.escape(f"[image: {tokens[idx].content}]"))


def render(text: str) -> str:
    """Sanitized HTML for one message."""
    return nh3.clean(
        _MD.render(text),
        tags=TAGS,
        attributes=ATTRIBUTES,
        url_schemes={"http", "https", "mailto"},
        link_rel="noopener noreferrer nofollow",
        filter_style_properties={"text-align"},
        set_tag_attribute_values={"a": {"target": "_blank"}},
    )


def stylesheet() -> str:
    """Pygments' colours for highlighted code, scoped to code blocks."""
    return HtmlFormatter(style=STYLE, classprefix=PREFIX).get_style_defs(".code pre")
