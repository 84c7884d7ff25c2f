"""File readers of the `download` stage: local files in, `Record`s and `BadRecord`s out.

`expand_local` turns a local SOURCE argument (file, directory or glob) into the files to
read; `iter_file` reads one file, whatever its format, as a stream of documents. A record
that cannot become a document (malformed line, undecodable bytes, missing or non-string
text) is yielded as a `BadRecord` and reading goes on; a file that cannot be read at all
(corrupt gzip, truncated bz2) ends in one `BadRecord` for the file. Problems with the
request itself (no such path, unsupported suffix, missing column, bad `--split-on`) raise
`SourceError`.

Every reader streams: memory stays bounded by one record (or one document plus a buffer),
except JSON arrays, which are small by nature and loaded whole.
"""

from __future__ import annotations

import bz2
import codecs
import csv
import datetime as dt
import decimal
import glob
import gzip
import io
import json
import os
import re
import sys
import xml.etree.ElementTree as ET
import zlib
from collections import deque
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from html.parser import HTMLParser
from itertools import chain
from pathlib import Path
from typing import IO, Any

import zstandard

from nonllama.pipeline.records import BadRecord, Record, SourceError

# suffix -> (format, compression); matched case-insensitively against the file name.
_FORMATS: dict[str, tuple[str, str | None]] = {
    ".jsonl": ("jsonl", None),
    ".jsonl.gz": ("jsonl", "gzip"),
    ".jsonl.zst": ("jsonl", "zstd"),
    ".json": ("json", None),
    ".json.gz": ("json", "gzip"),
    ".json.zst": ("json", "zstd"),
    ".parquet": ("parquet", None),
    ".csv": ("csv", None),
    ".csv.gz": ("csv", "gzip"),
    ".txt": ("txt", None),
    ".txt.gz": ("txt", "gzip"),
    ".txt.zst": ("txt", "zstd"),
    ".xml.bz2": ("wiki", "bz2"),
    ".warc": ("warc", None),
    ".warc.gz": ("warc", None),  # warcio reads gzip members itself
}

SUPPORTED_SUFFIXES: tuple[str, ...] = tuple(_FORMATS)
_SUFFIXES_LONGEST_FIRST = sorted(_FORMATS, key=len, reverse=True)  # .jsonl.gz before .gz-less

# Wikipedia splits big dumps into parts named like `enwiki-...-articles1.xml-p1p41242.bz2`:
# the `.xml` is not right before `.bz2`, so those names need a rule of their own.
_WIKI_PART_NAME = re.compile(r"\.xml-[^/\\]*\.bz2$")

_SUPPORTED_HELP = ", ".join(SUPPORTED_SUFFIXES) + " (and Wikipedia dump parts *.xml-pNpN.bz2)"

_RAW_LIMIT = 1000  # BadRecord.raw is truncated to this many characters
_UNDECODABLE = "undecodable bytes (not UTF-8)"
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
_PARQUET_BATCH_ROWS = 256  # rows per batch: bounded memory even with long documents
_JSON_SNIFF_BYTES = 1 << 16


class _UnreadableFile(Exception):
    """Raised inside a reader when the file as a whole cannot be read any further."""


# Errors that mean "the file (container) is broken", not "this record is bad".
_CONTAINER_ERRORS: tuple[type[BaseException], ...] = (
    OSError,  # includes gzip.BadGzipFile, bz2's "Invalid data stream", missing/unreadable file
    EOFError,  # truncated gzip / bz2
    zlib.error,
    zstandard.ZstdError,
    ET.ParseError,
    csv.Error,
    _UnreadableFile,
)


# --------------------------------------------------------------------------- files


def _format_of(name: str) -> tuple[str, str | None] | None:
    """(format, compression) for a file name, or None when the suffix is not supported."""
    lower = name.lower()
    for suffix in _SUFFIXES_LONGEST_FIRST:
        if lower.endswith(suffix):
            return _FORMATS[suffix]
    if _WIKI_PART_NAME.search(lower):
        return ("wiki", "bz2")
    return None


def _has_glob_magic(text: str) -> bool:
    return any(c in text for c in "*?[")


def _files_under(directory: Path, base: Path) -> list[tuple[Path, str]]:
    """Supported, non-hidden files below `directory`, keyed relative to `base`."""
    found = []
    for dirpath, dirnames, filenames in os.walk(directory):
        # Hidden folders (.git, .cache, our own .tmp) are never input.
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            if name.startswith(".") or _format_of(name) is None:
                continue
            path = Path(dirpath, name)
            found.append((path, path.relative_to(base).as_posix()))
    return found


def _glob_base(pattern: Path) -> Path:
    """The leading part of a glob pattern that has no wildcard: keys are relative to it."""
    parts = []
    for part in pattern.parts:
        if _has_glob_magic(part):
            break
        parts.append(part)
    return Path(*parts) if parts else Path(".")


def expand_local(spec: str) -> list[tuple[Path, str]]:
    """A local SOURCE argument -> sorted list of (file path, key).

    `spec` may be a file, a directory (searched recursively for files with a supported
    suffix; hidden files and folders are skipped) or a glob (`*`, `?`, `[`; `**` recurses).
    The key is the file's POSIX path relative to the directory given, or to the glob's
    fixed leading folder (so `data/*.jsonl` gives bare file names and `data/*/x.jsonl` gives
    `a/x.jsonl`, `b/x.jsonl`); for a single file it is the file name. Keys make document
    ids, so they must be stable and unique.

    Raises SourceError (one line, naming `spec`) when nothing exists or matches, or when a
    file named directly or matched by the glob has an unsupported suffix.
    """
    path = Path(os.path.expanduser(spec))
    if path.is_file():
        if _format_of(path.name) is None:
            raise SourceError(f"{spec}: unsupported file type (supported: {_SUPPORTED_HELP})")
        return [(path, path.name)]
    if path.is_dir():
        found = _files_under(path, path)
        if not found:
            raise SourceError(
                f"{spec}: no files with a supported suffix in this directory "
                f"(supported: {_SUPPORTED_HELP})"
            )
        return sorted(found, key=lambda item: item[1])
    if _has_glob_magic(spec):
        base = _glob_base(path)
        by_key: dict[str, Path] = {}
        unsupported: list[str] = []
        for match in sorted(glob.glob(str(path), recursive=True)):
            matched = Path(match)
            if matched.is_dir():
                by_key.update((key, p) for p, key in _files_under(matched, base))
            elif matched.is_file():
                if _format_of(matched.name) is None:
                    unsupported.append(match)
                else:
                    by_key[matched.relative_to(base).as_posix()] = matched
        if unsupported:
            # A glob names files explicitly: reading some and silently dropping others
            # would hide data, so ask for a narrower pattern instead.
            more = f" and {len(unsupported) - 1} more" if len(unsupported) > 1 else ""
            raise SourceError(
                f"{spec}: matches {unsupported[0]}{more} with an unsupported suffix; narrow "
                f"the pattern (supported: {_SUPPORTED_HELP})"
            )
        if not by_key:
            raise SourceError(f"{spec}: the pattern matches no files")
        return [(p, key) for key, p in sorted(by_key.items())]
    raise SourceError(f"{spec}: no such file or directory")


@contextmanager
def _open_binary(path: Path, compression: str | None) -> Iterator[IO[bytes]]:
    """A decompressed, buffered byte stream over `path` (never the whole file in memory)."""
    stream: IO[bytes]
    if compression is None:
        stream = open(path, "rb")
    elif compression == "gzip":
        stream = gzip.open(path, "rb")
    elif compression == "bz2":
        stream = bz2.open(path, "rb")  # reads multistream dumps too
    elif compression == "zstd":
        raw = open(path, "rb")  # closed with the reader (closefd)
        # read_across_frames: files written by parallel compressors are several frames;
        # max_window_size: accept files made with `zstd --long`.
        reader = zstandard.ZstdDecompressor(max_window_size=2**31).stream_reader(
            raw, read_across_frames=True, closefd=True
        )
        stream = io.BufferedReader(reader)  # type: ignore[arg-type]
    else:  # pragma: no cover - _FORMATS only holds the above
        raise ValueError(compression)
    try:
        yield stream
    finally:
        stream.close()


def _byte_lines(stream: IO[bytes]) -> Iterator[tuple[int, bytes]]:
    """(1-based line number, line bytes) with a leading UTF-8 BOM removed."""
    for lineno, raw in enumerate(stream, 1):
        if lineno == 1 and raw.startswith(codecs.BOM_UTF8):
            raw = raw[len(codecs.BOM_UTF8) :]
        yield lineno, raw


def _clip(text: str) -> str:
    return text[:_RAW_LIMIT]


def _compile_split_on(split_on: str) -> re.Pattern[str]:
    try:
        pattern = re.compile(split_on)
    except re.error as exc:
        raise SourceError(
            f"--split-on {split_on!r}: not a valid regular expression ({exc})"
        ) from exc
    if pattern.search("") is not None:
        raise SourceError(
            f"--split-on {split_on!r}: the pattern matches the empty string, so it would split "
            "everywhere; use 'blank-line' or a pattern that needs at least one character"
        )
    return pattern


def iter_file(
    path: Path,
    *,
    text_field: str = "text",
    split_on: str | None = None,
    display_name: str | None = None,
) -> Iterator[Record | BadRecord]:
    """Read one file as documents, choosing the reader by the file's suffix.

    `text_field` is the key/column that holds the text (JSON, JSONL, Parquet, CSV);
    `split_on` only applies to .txt files: None (the file is one document), "blank-line",
    or a regular expression used as the separator. `display_name` (default `str(path)`)
    is what `BadRecord.file` says. Records carry a 0-based `position` that is stable
    across reruns (line/row/document/page ordinal, bad records included).

    Raises SourceError at once for an unsupported suffix or an invalid `split_on`, and
    while reading for a Parquet/CSV file without the `text_field` column.
    """
    path = Path(path)
    shown = display_name if display_name is not None else str(path)
    fmt = _format_of(path.name)
    if fmt is None:
        raise SourceError(f"{shown}: unsupported file type (supported: {_SUPPORTED_HELP})")
    kind, compression = fmt
    pattern = None
    if kind == "txt" and split_on is not None and split_on != "blank-line":
        pattern = _compile_split_on(split_on)

    if kind == "jsonl":
        records = _read_jsonl(path, compression, shown, text_field)
    elif kind == "json":
        records = _read_json(path, compression, shown, text_field)
    elif kind == "parquet":
        records = _read_parquet(path, shown, text_field)
    elif kind == "csv":
        records = _read_csv(path, compression, shown, text_field)
    elif kind == "txt":
        records = _read_txt(path, compression, shown, split_on, pattern)
    elif kind == "warc":
        records = _read_warc(path, shown)
    else:
        records = _read_wiki(path, compression, shown)
    return _guard_container(records, shown)


def _guard_container(
    records: Iterator[Record | BadRecord], shown: str
) -> Iterator[Record | BadRecord]:
    """Turn a broken file into one BadRecord (after whatever could be read) instead of a crash."""
    count = 0
    try:
        for record in records:
            count += 1
            yield record
    except SourceError:
        raise
    except _CONTAINER_ERRORS as exc:
        lines = str(exc).strip().splitlines()
        message = lines[0] if lines else ""
        if not isinstance(exc, _UnreadableFile):  # those carry their own type name already
            message = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
        after = f" (after {count} records)" if count else ""
        yield BadRecord(shown, None, f"unreadable file: {message}{after}")


# --------------------------------------------------------------------------- JSON


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__  # bool, int, float, list, bytes, ...


def _json_error(exc: Exception, *, with_line: bool = False) -> str:
    if isinstance(exc, json.JSONDecodeError):
        where = f"line {exc.lineno} column {exc.colno}" if with_line else f"column {exc.colno}"
        return f"malformed JSON: {exc.msg} at {where}"
    if isinstance(exc, RecursionError):
        return "malformed JSON: nested too deeply"
    return f"malformed JSON: {exc}"


def _has_lone_surrogate(value: Any) -> bool:
    if isinstance(value, str):
        return _LONE_SURROGATE.search(value) is not None
    if isinstance(value, dict):
        return any(_has_lone_surrogate(k) or _has_lone_surrogate(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_lone_surrogate(v) for v in value)
    return False


def _meta_from(fields: dict[str, Any], text_field: str) -> dict[str, Any]:
    """Everything but the text; the source's own `id` becomes `source_id` (ours is the doc id)."""
    meta: dict[str, Any] = {}
    for key, value in fields.items():
        if key == text_field:
            continue
        meta["source_id" if key == "id" else key] = value
    return meta


def _record_from_object(
    obj: Any, text_field: str, position: int, shown: str, line: int, raw: str | None
) -> Record | BadRecord:
    """A parsed JSON value -> Record, or BadRecord saying what is wrong with it."""

    def bad(reason: str) -> BadRecord:
        text = raw if raw is not None else json.dumps(obj, ensure_ascii=False, default=str)
        return BadRecord(shown, line, reason, _clip(text))

    if not isinstance(obj, dict):
        return bad(f"not a JSON object (got {_json_type(obj)})")
    if text_field not in obj:
        return bad(f"missing field {text_field!r}")
    text = obj[text_field]
    if not isinstance(text, str):
        return bad(f"field {text_field!r} is {_json_type(text)}, expected string")
    # Only a \uD8xx-style escape can put a lone surrogate into parsed JSON; such a string
    # cannot be encoded as UTF-8 and would break the Parquet writer downstream.
    if (raw is None or "\\u" in raw) and _has_lone_surrogate(obj):
        return bad("invalid Unicode: lone surrogate escape (\\uD800-\\uDFFF)")
    return Record(text, position, _meta_from(obj, text_field))


def _read_jsonl(
    path: Path, compression: str | None, shown: str, text_field: str
) -> Iterator[Record | BadRecord]:
    """One JSON object per line; blank lines skipped; positions count non-blank lines."""
    with _open_binary(path, compression) as stream:
        position = 0
        for lineno, raw in _byte_lines(stream):
            if not raw.strip():
                continue
            this_position = position
            position += 1
            try:
                # Decode each line ourselves so one bad byte costs one record, not the file.
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                shown_raw = raw.decode("utf-8", "replace").rstrip("\r\n")
                yield BadRecord(shown, lineno, _UNDECODABLE, _clip(shown_raw))
                continue
            try:
                obj = json.loads(line)
            except (ValueError, RecursionError) as exc:
                yield BadRecord(shown, lineno, _json_error(exc), _clip(line.rstrip("\r\n")))
                continue
            yield _record_from_object(
                obj, text_field, this_position, shown, lineno, line.rstrip("\r\n")
            )


def _first_significant_byte(path: Path, compression: str | None) -> bytes:
    """The first byte that is not whitespace (or a BOM), b"" for an empty file."""
    with _open_binary(path, compression) as stream:
        start = True
        while chunk := stream.read(_JSON_SNIFF_BYTES):
            if start and chunk.startswith(codecs.BOM_UTF8):
                chunk = chunk[len(codecs.BOM_UTF8) :]
            start = False
            stripped = chunk.lstrip()
            if stripped:
                return stripped[:1]
    return b""


def _read_json(
    path: Path, compression: str | None, shown: str, text_field: str
) -> Iterator[Record | BadRecord]:
    """A JSON array of objects, or JSON Lines under a .json name (C4's `*.json.gz` are)."""
    if _first_significant_byte(path, compression) != b"[":
        yield from _read_jsonl(path, compression, shown, text_field)
        return
    with _open_binary(path, compression) as stream:
        data = stream.read()
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8) :]
    try:
        content = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        snippet = data[max(0, exc.start - 200) : exc.start + 200].decode("utf-8", "replace")
        yield BadRecord(shown, line, _UNDECODABLE, _clip(snippet))
        return
    del data
    try:
        items = json.loads(content)
    except (ValueError, RecursionError) as exc:
        # The array as a whole is broken: one BadRecord at the physical line of the error.
        line = exc.lineno if isinstance(exc, json.JSONDecodeError) else None
        yield BadRecord(shown, line, _json_error(exc, with_line=True), _clip(content))
        return
    del content
    for index, item in enumerate(items):
        # line = row: the element's 1-based index in the array
        yield _record_from_object(item, text_field, index, shown, index + 1, None)


# --------------------------------------------------------------------------- Parquet


def _jsonable(value: Any) -> Any:
    """Parquet values (timestamps, decimals, bytes, maps) -> JSON-serialisable ones."""
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("utf-8", "replace")
    return str(value)


def _read_parquet(path: Path, shown: str, text_field: str) -> Iterator[Record | BadRecord]:
    """Rows of a Parquet file, batch by batch; BadRecord.line is the 1-based row number."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
        columns = parquet.schema_arrow.names
        if text_field not in columns:
            raise SourceError(
                f"{shown}: no column {text_field!r} (columns: {', '.join(columns)}); "
                "choose one with --text-field"
            )
        row = 0
        for batch in parquet.iter_batches(batch_size=_PARQUET_BATCH_ROWS):
            for fields in batch.to_pylist():
                row += 1
                text = fields[text_field]
                if not isinstance(text, str):
                    raw = json.dumps(_jsonable(fields), ensure_ascii=False)
                    reason = f"field {text_field!r} is {_json_type(text)}, expected string"
                    yield BadRecord(shown, row, reason, _clip(raw))
                    continue
                meta = {k: _jsonable(v) for k, v in _meta_from(fields, text_field).items()}
                yield Record(text, row - 1, meta)
    except pa.ArrowException as exc:
        raise _UnreadableFile(f"{type(exc).__name__}: {exc}") from exc


# --------------------------------------------------------------------------- CSV


def _allow_huge_csv_fields() -> None:
    # The default limit (128 KiB) is smaller than many documents; sys.maxsize overflows a
    # C long on some platforms, so step down until it is accepted.
    limit = sys.maxsize
    while True:
        try:
            csv.field_size_limit(limit)
            return
        except OverflowError:
            limit //= 2


def _unescape_surrogates(text: str) -> str:
    """Text read with errors='surrogateescape' -> printable text (bad bytes as U+FFFD)."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _read_csv(
    path: Path, compression: str | None, shown: str, text_field: str
) -> Iterator[Record | BadRecord]:
    """CSV with a header row; BadRecord.line is the physical line where the row starts."""
    _allow_huge_csv_fields()
    with _open_binary(path, compression) as stream:
        # surrogateescape keeps undecodable bytes visible per row instead of failing the file.
        text = io.TextIOWrapper(stream, encoding="utf-8-sig", errors="surrogateescape", newline="")
        reader = csv.reader(text)
        header = next(reader, None)
        while header == []:  # blank lines before the header
            header = next(reader, None)
        if header is None:
            return
        if text_field not in header:
            raise SourceError(
                f"{shown}: no column {text_field!r} in the CSV header "
                f"(columns: {', '.join(_unescape_surrogates(h) for h in header)}); "
                "choose one with --text-field"
            )
        text_index = header.index(text_field)
        previous_end = reader.line_num
        position = 0
        for row in reader:
            start_line, previous_end = previous_end + 1, reader.line_num
            if not row or (len(header) > 1 and len(row) == 1 and not row[0].strip()):
                continue  # blank line
            this_position = position
            position += 1
            joined = ",".join(row)
            if len(row) != len(header):
                reason = f"wrong number of fields: {len(row)}, the header has {len(header)}"
                yield BadRecord(shown, start_line, reason, _clip(_unescape_surrogates(joined)))
                continue
            if _LONE_SURROGATE.search(joined):
                yield BadRecord(
                    shown, start_line, _UNDECODABLE, _clip(_unescape_surrogates(joined))
                )
                continue
            fields = dict(zip(header, row, strict=True))
            fields[text_field] = row[text_index]  # a duplicate column name must not hide it
            yield Record(row[text_index], this_position, _meta_from(fields, text_field))


# --------------------------------------------------------------------------- plain text

# Regex splitting works on a sliding buffer. A separator match is only trusted when it ends
# at least _REGEX_MARGIN characters before the end of the text read so far (more text could
# still change it). Only a pattern that needs to look further ahead than that could split
# differently from re.split over the whole file.
_REGEX_CHUNK = 1 << 20
_REGEX_MARGIN = 1 << 16
_REGEX_CONTEXT = 1 << 10  # emitted text kept before the buffer, for lookbehinds and `^`


def _decoded_lines(stream: IO[bytes]) -> Iterator[tuple[int, str, bool]]:
    """(line number, text with "\\n" line end, undecodable?) for each line of a text file."""
    for lineno, raw in _byte_lines(stream):
        try:
            text, bad = raw.decode("utf-8"), False
        except UnicodeDecodeError:
            text, bad = raw.decode("utf-8", "replace"), True
        if text.endswith("\r\n"):
            text = text[:-2] + "\n"
        yield lineno, text, bad


def _read_txt(
    path: Path,
    compression: str | None,
    shown: str,
    split_on: str | None,
    pattern: re.Pattern[str] | None,
) -> Iterator[Record | BadRecord]:
    """Plain text: the whole file, blank-line separated documents, or regex separated ones.

    Documents are stripped; empty ones are skipped and take no position. A document that
    contains undecodable bytes becomes one BadRecord at its first bad line.
    """
    with _open_binary(path, compression) as stream:
        lines = _decoded_lines(stream)
        if pattern is not None:
            yield from _regex_documents(lines, pattern, shown)
        elif split_on == "blank-line":
            yield from _blank_line_documents(lines, shown)
        else:
            yield from _whole_file_document(lines, shown)


def _document(
    text: str, position: int, shown: str, bad_line: tuple[int, str] | None
) -> Record | BadRecord:
    if bad_line is not None:
        lineno, line_text = bad_line
        return BadRecord(shown, lineno, _UNDECODABLE, _clip(line_text.rstrip("\n")))
    return Record(text, position, {})


def _whole_file_document(
    lines: Iterable[tuple[int, str, bool]], shown: str
) -> Iterator[Record | BadRecord]:
    parts: list[str] = []
    bad_line = None
    for lineno, text, bad in lines:
        parts.append(text)
        if bad and bad_line is None:
            bad_line = (lineno, text)
    document = "".join(parts).strip()
    if document:
        yield _document(document, 0, shown, bad_line)


def _blank_line_documents(
    lines: Iterable[tuple[int, str, bool]], shown: str
) -> Iterator[Record | BadRecord]:
    position = 0
    parts: list[str] = []
    bad_line = None
    for lineno, text, bad in chain(lines, [(0, "\n", False)]):  # a final blank line flushes
        if text.strip():
            parts.append(text)
            if bad and bad_line is None:
                bad_line = (lineno, text)
        elif parts:
            yield _document("".join(parts).strip(), position, shown, bad_line)
            position += 1
            parts, bad_line = [], None


def _regex_pieces(chunks: Iterable[str], pattern: re.Pattern[str]) -> Iterator[tuple[int, str]]:
    """Split a stream of text chunks on `pattern` like re.split (groups are not kept).

    Yields (absolute offset of the piece, piece). Holds one piece plus a buffer.
    """
    hay = ""  # some already emitted context, then the text not yet emitted
    hay_offset = 0  # absolute offset of hay[0]
    piece_start = 0  # index in hay where the current piece starts
    scan_from = 0  # index in hay from which separators can still be found
    pending: list[str] = []
    pending_len = 0
    empty_match_at = -1  # absolute offset of the last accepted empty match
    for chunk in chain(chunks, [None]):
        final = chunk is None
        if chunk is not None:
            pending.append(chunk)
            pending_len += len(chunk)
            # Join only once the new text is as long as the kept text: a long stretch
            # without any separator then costs O(n) copying and searching, not O(n^2).
            if pending_len < max(_REGEX_CHUNK, len(hay) - piece_start):
                continue
        hay += "".join(pending)
        pending, pending_len = [], 0
        limit = len(hay) if final else len(hay) - _REGEX_MARGIN
        next_scan = max(piece_start, limit - _REGEX_MARGIN)
        for match in pattern.finditer(hay, scan_from):
            if not final and match.end() > limit:
                next_scan = match.start()  # a long match (a run) may still grow: redo it whole
                break
            if match.end() == match.start():
                # A new search from where an empty match (a lookahead) split would find it
                # again; re.split takes each empty match once.
                if hay_offset + match.start() == empty_match_at:
                    continue
                empty_match_at = hay_offset + match.start()
            yield hay_offset + piece_start, hay[piece_start : match.start()]
            piece_start = match.end()
        if final:
            yield hay_offset + piece_start, hay[piece_start:]
            return
        scan_from = max(piece_start, next_scan)
        keep_from = max(0, piece_start - _REGEX_CONTEXT)
        hay = hay[keep_from:]
        hay_offset += keep_from
        piece_start -= keep_from
        scan_from -= keep_from


def _regex_documents(
    lines: Iterable[tuple[int, str, bool]], pattern: re.Pattern[str], shown: str
) -> Iterator[Record | BadRecord]:
    bad_lines: deque[tuple[int, int, int, str]] = deque()  # (start, end, line number, text)

    def texts() -> Iterator[str]:
        offset = 0
        for lineno, text, bad in lines:
            if bad:
                bad_lines.append((offset, offset + len(text), lineno, text))
            offset += len(text)
            yield text

    position = 0
    for start, piece in _regex_pieces(texts(), pattern):
        end = start + len(piece)
        while bad_lines and bad_lines[0][1] <= start:
            bad_lines.popleft()  # entirely before this piece: inside a separator
        document = piece.strip()
        if not document:
            continue
        hit = bad_lines[0] if bad_lines and bad_lines[0][0] < end else None
        yield _document(document, position, shown, (hit[2], hit[3]) if hit else None)
        position += 1


# --------------------------------------------------------------------------- Wikipedia

# Tags whose content is not prose: references, tables, galleries, formulas, ...
_WIKI_DROP_TAGS = frozenset(
    {
        "ref", "references", "table", "gallery", "math", "chem", "ce", "score", "timeline",
        "imagemap", "graph", "templatedata", "categorytree", "inputbox", "mapframe", "maplink",
    }
)  # fmt: skip
# Namespace keys whose links are markup, not text: Media (-2), File (6), Category (14).
_WIKI_LINK_NAMESPACE_KEYS = frozenset({"-2", "6", "14"})
# English names and the old "Image" alias; a dump's <siteinfo> adds its own local names.
_WIKI_DEFAULT_LINK_NAMESPACES = frozenset({"media", "file", "image", "category"})
# Interlanguage links look like [[de:Anarchismus]], [[zh-min-nan:...]], [[simple:...]].
_WIKI_LANGUAGE_PREFIX = re.compile(r"(?:[a-z]{2,3}(?:-[a-z0-9]+)*|simple)")
_WIKI_COMMENT = re.compile(r"<!--.*?(?:-->|\Z)", re.S)
_WIKI_REF = re.compile(r"<ref\b[^>]*?/>|<ref\b[^>]*>.*?</ref\s*>", re.S | re.I)
_WIKI_BRACKETS = re.compile(r"\[\[|\]\]")
_WIKI_APOSTROPHES = re.compile(r"(\w?)('{2,})(\w?)")
_BLANK_LINE_RUN = re.compile(r"\n{3,}")
# What removed templates leave behind: "( ; born 1970)", "()", double spaces.
_WIKI_EMPTY_PARENS = re.compile(r"\(\s*[,;]?\s*\)")
_WIKI_PAREN_PUNCTUATION = re.compile(r"\(\s*[,;]\s*")
_SPACE_RUN = re.compile(r"[ \t]{2,}")


def _local_name(tag: str) -> str:
    """'{http://www.mediawiki.org/xml/export-0.10/}page' -> 'page'."""
    return tag.rsplit("}", 1)[-1]


def _drop_tables(wikitext: str) -> str:
    """Remove {| ... |} tables (nested too), line by line as MediaWiki parses them.

    Done before parsing because mwparserfromhell leaves tables with odd attributes as text.
    An unclosed table is kept (the parser then does what it can) rather than eating the
    rest of the article.
    """
    if "{|" not in wikitext:
        return wikitext
    lines = wikitext.split("\n")
    kept: list[str] = []
    depth = 0
    opened_at = 0
    for index, line in enumerate(lines):
        start = line.lstrip(" :")  # tables may be indented with ':'
        if start.startswith("{|"):
            if depth == 0:
                opened_at = index
            depth += 1
        elif depth and start.startswith("|}"):
            depth -= 1
        elif depth == 0:
            kept.append(line)
    if depth:
        kept.extend(lines[opened_at:])
    return "\n".join(kept)


def _drop_links_to(wikitext: str, namespaces: frozenset[str]) -> str:
    """Remove [[File:...]]-style links whole, captions with nested [[links]] included."""
    lowered = wikitext.lower()
    if not any(f"{name}:" in lowered for name in namespaces):
        return wikitext
    names = "|".join(re.escape(name) for name in sorted(namespaces))
    link_start = re.compile(r"\[\[\s*(?:" + names + r")\s*:", re.I)
    out: list[str] = []
    pos = 0
    while (start := link_start.search(wikitext, pos)) is not None:
        depth = 0
        end = None
        for bracket in _WIKI_BRACKETS.finditer(wikitext, start.start()):
            depth += 1 if bracket.group() == "[[" else -1
            if depth == 0:
                end = bracket.end()
                break
        if end is None:  # unbalanced: leave the rest to the parser
            break
        out.append(wikitext[pos : start.start()])
        pos = end
    out.append(wikitext[pos:])
    return "".join(out)


def _is_non_prose_link(link: Any, namespaces: frozenset[str]) -> bool:
    """File/image/category links and interlanguage links: markup, not text."""
    title = str(link.title).strip()
    if title.startswith(":"):  # [[:Category:X]] is an ordinary, visible link
        return False
    prefix, colon, rest = title.partition(":")
    if not colon:
        return False
    prefix = prefix.strip().lower()
    if prefix in namespaces:
        return True
    return (
        link.text is None
        and not rest.startswith(" ")
        and _WIKI_LANGUAGE_PREFIX.fullmatch(prefix) is not None
    )


def _prune_wikicode(code: Any, namespaces: frozenset[str]) -> None:
    """Remove templates, comments, refs, tables, file/category/language links, in place.

    Rebuilds each node list once (linear), rather than calling Wikicode.remove per node,
    which searches the whole tree every time.
    """
    from mwparserfromhell.nodes import Argument, Comment, Tag, Template, Wikilink

    kept = []
    for node in code.nodes:
        if isinstance(node, Template):
            # {{lang|grc|ἀναρχία}} and {{lang-grc|ἀναρχία}} wrap words of the sentence.
            words = _lang_template_text(node)
            if words is not None:
                _prune_wikicode(words, namespaces)
                kept.extend(words.nodes)
            continue
        if isinstance(node, (Argument, Comment)):
            continue
        if isinstance(node, Tag) and str(node.tag).strip().lower() in _WIKI_DROP_TAGS:
            continue
        if isinstance(node, Wikilink) and _is_non_prose_link(node, namespaces):
            continue
        for child in node.__children__():
            _prune_wikicode(child, namespaces)
        kept.append(node)
    code.nodes = kept


def _lang_template_text(template: Any) -> Any | None:
    """The text argument of a {{lang}} / {{lang-xx}} template, None for other templates."""
    name = str(template.name).strip().lower()
    positional = [param.value for param in template.params if not param.showkey]
    if name == "lang" and len(positional) >= 2:
        return positional[1]
    if name.startswith("lang-") and positional:
        return positional[0]
    return None


def _leftover_apostrophes(match: re.Match[str]) -> str:
    # Bold/italic marks the parser could not pair. In ''Iliad'''s the middle run is an
    # apostrophe plus a closing '': keep one apostrophe between letters, drop the rest.
    before, run, after = match.groups()
    keep = "'" if before and after and len(run) in (3, 4) else ""
    return f"{before}{keep}{after}"


def _wikitext_to_text(
    wikitext: str, namespaces: frozenset[str] = _WIKI_DEFAULT_LINK_NAMESPACES
) -> str:
    """Wikitext -> plain prose: markup, templates, refs, tables and non-prose links removed,
    section headings kept as lines of their own, at most one blank line in a row.

    `namespaces` are the lower-cased namespace names whose links are dropped (File, ...).
    """
    import mwparserfromhell

    # Comments, refs, tables and file links go before parsing: the parser sometimes leaves
    # them as text (odd attributes, nested markup), and they are a large part of a typical
    # article, so parsing without them is also faster.
    wikitext = _WIKI_COMMENT.sub("", wikitext)
    wikitext = _WIKI_REF.sub("", wikitext)
    wikitext = _drop_tables(wikitext)
    wikitext = _drop_links_to(wikitext, namespaces)
    code = mwparserfromhell.parse(wikitext)
    _prune_wikicode(code, namespaces)
    text = code.strip_code(normalize=True, collapse=True)
    text = _WIKI_APOSTROPHES.sub(_leftover_apostrophes, text)
    text = _WIKI_PAREN_PUNCTUATION.sub("(", _WIKI_EMPTY_PARENS.sub("", text))
    lines = [_SPACE_RUN.sub(" ", line).strip() for line in text.split("\n")]
    return _BLANK_LINE_RUN.sub("\n\n", "\n".join(lines)).strip()


def _page_fields(page: ET.Element) -> tuple[str, str | None, str | None, bool, str]:
    """(title, ns, page id, has <redirect>, wikitext of the last revision) of a <page>."""
    title, ns, page_id, redirect, wikitext = "", None, None, False, ""
    for child in page:
        tag = _local_name(child.tag)
        if tag == "title":
            title = child.text or ""
        elif tag == "ns":
            ns = (child.text or "").strip()
        elif tag == "id" and page_id is None:  # revision and contributor ids come later
            page_id = (child.text or "").strip()
        elif tag == "redirect":
            redirect = True
        elif tag == "revision":
            for part in child:
                if _local_name(part.tag) == "text":
                    wikitext = part.text or ""
    return title, ns, page_id, redirect, wikitext


def _link_namespaces(siteinfo: ET.Element) -> frozenset[str]:
    """The dump's own names for the Media/File/Category namespaces, plus the English ones."""
    names = set(_WIKI_DEFAULT_LINK_NAMESPACES)
    for element in siteinfo.iter():
        if _local_name(element.tag) != "namespace" or not (element.text or "").strip():
            continue
        if element.get("key") in _WIKI_LINK_NAMESPACE_KEYS:
            names.add(element.text.strip().lower())
    return frozenset(names)


def _read_wiki(path: Path, compression: str | None, shown: str) -> Iterator[Record | BadRecord]:
    """Articles of a MediaWiki XML dump as plain text; redirects and non-article pages skipped.

    Position is the ordinal of the page among all <page> elements, so ids do not move when
    the filtering rules change. Pages whose text ends up empty are still yielded (empty
    text); the normalize stage drops them with a reason.
    """
    namespaces = _WIKI_DEFAULT_LINK_NAMESPACES
    with _open_binary(path, compression) as stream:
        root = None
        ordinal = -1
        for event, element in ET.iterparse(stream, events=("start", "end")):
            if root is None:
                root = element
            if event != "end":
                continue
            tag = _local_name(element.tag)
            if tag == "siteinfo":
                namespaces = _link_namespaces(element)
                continue
            if tag != "page":
                continue
            ordinal += 1
            title, ns, page_id, redirect, wikitext = _page_fields(element)
            root.clear()  # pages already read would otherwise stay in the tree
            if redirect or (ns not in (None, "", "0")):
                continue
            if wikitext.lstrip()[:9].lower() == "#redirect":
                continue
            meta: dict[str, Any] = {
                "title": title,
                "page_id": int(page_id) if page_id and page_id.isdigit() else page_id,
            }
            try:
                text = _wikitext_to_text(wikitext, namespaces)
            except Exception as exc:  # mwparserfromhell can fail on pathological markup
                reason = f"unparseable wikitext: {type(exc).__name__}: {exc}"
                yield BadRecord(shown, None, reason, _clip(f"{title}\n{wikitext}"))
                continue
            yield Record(text, ordinal, meta)


# ------------------------------------------------------------------------------------- WARC

# Elements whose text a reader never sees; elements that start a new line of text.
_HTML_HIDDEN = frozenset({"script", "style", "noscript", "template", "svg", "head", "iframe", "object"})
_HTML_BLOCKS = frozenset({
    "address", "article", "aside", "blockquote", "br", "dd", "div", "dl", "dt", "fieldset",
    "figcaption", "figure", "footer", "form", "h1", "h2", "h3", "h4", "h5", "h6", "header", "hr",
    "li", "main", "nav", "ol", "p", "pre", "section", "table", "td", "th", "tr", "ul", "option",
    "button", "label", "summary", "details", "caption",
})
# inline elements that sit next to each other without spaces in the markup (links of a menu)
_HTML_WORD_BREAKS = frozenset({"a", "img", "input", "select", "textarea", "span"})
_HTML_SPACES = re.compile(r"[ \t\r\f\v\u00a0]+")
_CHARSET = re.compile(rb"charset=[\"']?([A-Za-z0-9._-]+)", re.IGNORECASE)


class _HtmlText(HTMLParser):
    """The visible text of an HTML page, one line per block element.

    Deliberately plain: menus, cookie banners and footers stay in as lines of their own, the
    way a simple extractor (or Common Crawl's WET files) gives them, so that the filter's line
    cleaning and dedup's paragraph rules are what remove them, with counts.
    """

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.lines: list[str] = []
        self.current: list[str] = []
        self.hidden = 0
        self.title: list[str] = []
        self.in_title = False

    def _break(self) -> None:
        line = _HTML_SPACES.sub(" ", "".join(self.current)).strip()
        if line:
            self.lines.append(line)
        self.current = []

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag == "title":
            self.in_title = True
        if tag in _HTML_HIDDEN:
            self.hidden += 1
        elif tag in _HTML_BLOCKS:
            self._break()
        elif tag in _HTML_WORD_BREAKS:
            self.current.append(" ")

    def handle_startendtag(self, tag: str, attrs: list) -> None:
        if tag in _HTML_BLOCKS:
            self._break()

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self.in_title = False
        if tag in _HTML_HIDDEN:
            self.hidden = max(0, self.hidden - 1)
        elif tag in _HTML_BLOCKS:
            self._break()
        elif tag in _HTML_WORD_BREAKS:
            self.current.append(" ")

    def handle_data(self, data: str) -> None:
        if self.in_title:
            self.title.append(data)
        elif not self.hidden:
            self.current.append(data.replace("\n", " "))

    def text(self) -> str:
        self._break()
        return "\n".join(self.lines)


def html_to_text(html: str) -> tuple[str, str]:
    """(visible text, title) of an HTML document."""
    parser = _HtmlText()
    parser.feed(html)
    parser.close()
    return parser.text(), _HTML_SPACES.sub(" ", "".join(parser.title)).strip()


def _decode_html(body: bytes, content_type: str) -> str | None:
    """The page as text: the charset of its Content-Type or <meta>, else UTF-8; None if neither decodes."""
    found = _CHARSET.search(content_type.encode("latin-1", "replace")) or _CHARSET.search(body[:4096])
    for charset in ([found.group(1).decode("ascii", "replace")] if found else []) + ["utf-8"]:
        try:
            return body.decode(charset)
        except (LookupError, UnicodeDecodeError):
            continue
    return None


def _read_warc(path: Path, shown: str) -> Iterator[Record | BadRecord]:
    """The HTML responses of a WARC file (as web crawlers write them) as plain text.

    Position is the ordinal of the response record; responses that are not successful HTML
    pages (images, redirects, errors) are skipped and take their ordinal with them. The URL,
    title and crawl date go to `meta`.
    """
    from warcio.archiveiterator import ArchiveIterator
    from warcio.exceptions import ArchiveLoadFailed

    ordinal = -1
    with open(path, "rb") as stream:
        try:
            for record in ArchiveIterator(stream):
                if record.format != "warc":  # warcio reads anything else as a lenient old-style ARC
                    raise _UnreadableFile(f"not a WARC file (a record of format {record.format!r})")
                if record.rec_type != "response":
                    continue
                ordinal += 1
                http = record.http_headers
                content_type = (http.get_header("Content-Type") or "") if http else ""
                if http is None or not http.get_statuscode().startswith("2") or "html" not in content_type.lower():
                    continue
                url = record.rec_headers.get_header("WARC-Target-URI") or ""
                html = _decode_html(record.content_stream().read(), content_type)
                if html is None:
                    yield BadRecord(shown, None, f"{_UNDECODABLE}: {url}", url)
                    continue
                text, title = html_to_text(html)
                meta = {"url": url.strip("<>"), "title": title,
                        "warc_date": record.rec_headers.get_header("WARC-Date")}
                yield Record(text, ordinal, meta)
        except ArchiveLoadFailed as exc:
            raise _UnreadableFile(f"not a readable WARC file ({exc})") from None
