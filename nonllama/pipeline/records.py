"""What readers yield: a document, or a record that could not be read."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class Record:
    """One document read from a source.

    `position` is the 0-based ordinal of the record within its file; together with the
    file it makes the document id stable across reruns. `meta` holds the pass-through
    fields (title, url, the source's own id as `source_id`, ...), JSON-serialisable.
    """

    text: str
    position: int
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class BadRecord:
    """A record that could not become a document; it goes to the quarantine file."""

    file: str
    line: int | None  # 1-based line (JSONL/CSV/TXT) or row (Parquet/JSON array), None if unknown
    reason: str  # short, e.g. "malformed JSON: Expecting ',' delimiter", "missing field 'text'"
    raw: str = ""  # the offending input, truncated to 1000 characters


class SourceError(Exception):
    """A source cannot be read at all (missing path, unknown scheme, bad option).

    The CLI prints it as a one-line error, without a traceback.
    """
