"""Model-written text into safe HTML: every byte of it is escaped; code blocks go through Pygments,
whose HTML formatter escapes what it highlights. Nothing here ever marks raw model text as safe."""
from __future__ import annotations

import re

from markupsafe import Markup, escape
from pygments import highlight
from pygments.formatters import HtmlFormatter
from pygments.lexers import PythonLexer

_FENCE = re.compile(r"```([A-Za-z0-9_+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.S)
_FORMATTER = HtmlFormatter(nowrap=True, classprefix="hl-")


def code_html(code: str) -> Markup:
    """Python source as highlighted, escaped HTML (without the surrounding <pre>)."""
    return Markup(highlight(code, PythonLexer(), _FORMATTER))


def response_html(text: str | None) -> Markup:
    """A controller reply: prose escaped as-is, fenced code blocks highlighted."""
    if not text:
        return Markup("")
    parts: list[str] = []
    pos = 0
    for m in _FENCE.finditer(text):
        parts.append(f'<span class="prose">{escape(text[pos:m.start()])}</span>')
        lang = escape(m.group(1) or "code")
        parts.append(f'<span class="fence">```{lang}</span><code class="hl">{code_html(m.group(2))}</code>'
                     f'<span class="fence">```</span>')
        pos = m.end()
    parts.append(f'<span class="prose">{escape(text[pos:])}</span>')
    return Markup("".join(parts))


def highlight_css() -> str:
    return _FORMATTER.get_style_defs(".hl")
