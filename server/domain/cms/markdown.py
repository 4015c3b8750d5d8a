"""Markdown to safe HTML for CMS pages and FAQ answers.

Two independent layers, so that a mistake in one does not open a hole:

1. ``markdown-it-py`` renders CommonMark (plus tables and strikethrough) with
   ``html=False``: raw HTML in the source (``<script>``, ``<img onerror>``...) is
   escaped into visible text instead of passed through, and its link validator
   refuses ``javascript:``, ``vbscript:``, ``file:`` and ``data:`` URLs.
2. ``nh3`` (bindings to the Rust ``ammonia`` sanitizer) then parses the result as
   a browser would and keeps only the tags and attributes Markdown produces, with
   ``http``/``https``/``mailto`` links only, and adds ``rel="noopener noreferrer nofollow"``.
"""

from __future__ import annotations

from functools import lru_cache

import nh3
from markdown_it import MarkdownIt

_renderer = MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False}).enable(
    ["table", "strikethrough"]
)

ALLOWED_TAGS = frozenset(
    {
        "p", "br", "hr", "h1", "h2", "h3", "h4", "h5", "h6",
        "em", "strong", "s", "code", "pre", "blockquote",
        "ul", "ol", "li", "a", "img",
        "table", "thead", "tbody", "tr", "th", "td",
    }
)  # fmt: skip
ALLOWED_ATTRIBUTES = {
    "a": {"href", "title"},
    "img": {"src", "alt", "title"},
    "ol": {"start"},
    "th": {"style"},  # table column alignment, reduced to text-align below
    "td": {"style"},
}
ALLOWED_URL_SCHEMES = frozenset({"http", "https", "mailto"})


def sanitize_html(html: str) -> str:
    """Keep only Markdown's own tags and attributes; drop scripts, handlers and unsafe URLs."""
    return nh3.clean(
        html,
        tags=set(ALLOWED_TAGS),
        clean_content_tags={"script", "style"},
        attributes={tag: set(names) for tag, names in ALLOWED_ATTRIBUTES.items()},
        url_schemes=set(ALLOWED_URL_SCHEMES),
        link_rel="noopener noreferrer nofollow",
        filter_style_properties={"text-align"},
        strip_comments=True,
    )


@lru_cache(maxsize=256)
def render_markdown(source: str) -> str:
    """Markdown source → sanitized HTML (memoised: public pages are read far more often than edited)."""
    return sanitize_html(_renderer.render(source))
