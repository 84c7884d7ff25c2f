"""Markdown structure that the text stages must leave whole: which lines are fenced code.

normalize leaves code exactly as written and filter neither cuts its lines nor judges it as
prose; both must agree on what code is, so both ask :func:`fenced_lines`.
"""

from __future__ import annotations

import polars as pl

# A fence line (CommonMark): ``` or ~~~ (or longer), indented by at most 3 spaces; a backtick
# fence's info string has no backtick (```` ```x``` ```` on a line is inline code, not a fence)
FENCE = r"^ {0,3}(?:`{3,}[^`]*|~{3,}.*)$"


def fenced_lines(lines: pl.DataFrame, text: str, doc: str = "doc") -> pl.Series:
    """Per row of a line table (one row per line, in document and line order): whether the line
    belongs to a fenced code block, fences included.

    Inside a block is after an odd number of fence lines of the document (a cumulative sum per
    document); an unclosed fence runs to the end of the document, as in CommonMark. Not modelled:
    a fence of the other kind or a longer fence inside a block (```` inside ~~~) closes it here.
    """
    fence = lines[text].fill_null("").str.contains(FENCE)
    if not fence.any():  # most prose has no fence: no window computation
        return pl.Series("fenced", [False] * lines.height, dtype=pl.Boolean)
    fences = pl.col("fence").cast(pl.Int32)
    return lines.select(doc).with_columns(fence=fence).select(
        (pl.col("fence") | ((fences.cum_sum() - fences) % 2 == 1).over(doc)).alias("fenced")
    )["fenced"]
