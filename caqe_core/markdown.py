"""Markdown from configs (consent text, descriptions) to safe HTML."""

from __future__ import annotations

from markdown_it import MarkdownIt

# Raw HTML in a config is escaped, so a config cannot inject scripts.
_renderer = MarkdownIt("commonmark", {"html": False, "linkify": False})


def render_markdown(text: str) -> str:
    return _renderer.render(text)
