"""The main text of an HTML page, as the `download` stage keeps it from a WARC response.

Resiliparse's `extract_plain_text(main_content=True)` (what DCLM uses) parses the page with a
real HTML5 parser (lexbor: a page without `</head>` or `<body>` is read as a browser reads
it), drops navigation, menus, footers, sidebars, hidden elements and the like, keeps `<pre>`
text as it is, and joins inline elements without adding spaces, so `北<a>京</a>市` stays
`北京市`. `bench/html.py` compares it with trafilatura and with the tag walker this replaced.

One fix around it. Resiliparse takes an element or text node whose whole text is a single
3-byte UTF-8 character for an icon-font glyph and drops it; the check is meant for the
private use area (U+E000-U+F8FF) but, comparing the bytes in the wrong order, matches nearly
every character from U+0800 to U+FFFF: Chinese characters, CJK punctuation, dashes. So
`<a>北京</a>、<a>上海</a>和<a>广州</a>` would lose its `、` and `和`. Before parsing, such a
character standing alone between two tags gets a WORD JOINER (U+2060) after it, which makes
the node longer than the check looks at; every WORD JOINER is taken out of the result.
"""

from __future__ import annotations

import re

# A single character of U+0800-U+FFFF (3 bytes in UTF-8) or a character reference, alone
# between two tags (spaces around it allowed): what resiliparse would drop as an icon glyph.
_LONE_WIDE_CHARACTER = re.compile(r">(\s*(?:[\u0800-\uffff]|&#?[0-9A-Za-z]+;)\s*)<")
_PADDING = "\u2060"  # WORD JOINER: invisible, and never wanted in training text
_TRAILING_SPACES = re.compile(r"[ \t]+\n")
_BLANK_LINE_RUN = re.compile(r"\n{3,}")


def _pad_lone_characters(html: str) -> str:
    return _LONE_WIDE_CHARACTER.sub(lambda m: f">{m.group(1)}{_PADDING}<", html)


def extract_main_text(html: str) -> tuple[str, str]:
    """(main text, title) of an HTML page; the text is "" when the page has none.

    Paragraphs and headings are separated by a blank line, other blocks (list items, table
    rows, `<br>`) by a line break; list items start with "•" or their number, and there is
    never more than one blank line in a row. Image alt texts, form fields and link targets
    are left out.
    """
    from resiliparse.extract.html2text import extract_plain_text
    from resiliparse.parse.html import HTMLTree

    tree = HTMLTree.parse(_pad_lone_characters(html))
    text = extract_plain_text(tree, main_content=True, alt_texts=False, noscript=False)
    text = _TRAILING_SPACES.sub("\n", text.replace(_PADDING, ""))
    title = " ".join((tree.title or "").replace(_PADDING, "").split())
    return _BLANK_LINE_RUN.sub("\n\n", text).strip(), title
