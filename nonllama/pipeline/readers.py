"""File readers of the `download` stage: local files in, `Record`s and `BadRecord`s out.

`expand_local` turns a local SOURCE argument (file, directory or glob) into the files to
read; `iter_file` reads one file, whatever its format, as a stream of documents. A record
that cannot become a document (malformed line or CSV row, undecodable bytes, missing or
non-string text) is yielded as a `BadRecord` and reading goes on; a file that cannot be read
to its end (corrupt or truncated gzip/zstd/bz2/xz, a cut-off WARC) keeps the records read
before the break and ends in one `BadRecord` for the rest of the file, which says
"(after N records)". Problems with the request itself (no such path, unsupported suffix,
missing column, bad `--split-on`) raise `SourceError`.

Formats: .jsonl, .json, .csv, .txt and .xml (a MediaWiki dump), each plain or compressed
as .gz, .zst/.zstd, .bz2 or .xz; .parquet; .warc and .warc.gz; Wikipedia dump parts
(`*.xml-pNpN.bz2`).

`Record.meta` holds only values that `json.dumps(..., allow_nan=False)` accepts: NaN,
Infinity and -Infinity (which Python's json reads from JSON text, and Parquet float columns
hold) become None, i.e. null, as JavaScript's JSON.stringify writes them.

Every reader streams: memory stays bounded by one record (or one document plus a buffer),
except JSON arrays, which are small by nature and loaded whole.
"""

from __future__ import annotations

import bz2
import codecs
import csv
import datetime as dt
import decimal
import errno
import fnmatch
import gzip
import io
import json
import lzma
import math
import os
import re
import stat
import xml.etree.ElementTree as ET
import zlib
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from itertools import chain, islice
from pathlib import Path
from typing import IO, Any

import zstandard

from nonllama.pipeline.html import extract_main_text
from nonllama.pipeline.records import BadRecord, Record, SourceError

# Text formats: each may also be compressed with any of _COMPRESSIONS (`.jsonl.zst`).
_BASE_FORMATS: dict[str, str] = {
    ".jsonl": "jsonl",
    ".json": "json",
    ".csv": "csv",
    ".txt": "txt",
    ".xml": "wiki",  # a MediaWiki XML dump (the reader refuses any other XML)
}
_COMPRESSIONS: dict[str, str] = {
    ".gz": "gzip",
    ".zst": "zstd",
    ".zstd": "zstd",
    ".bz2": "bz2",
    ".xz": "xz",
}
# Formats that bring their own container: Parquet compresses inside the file, and a
# .warc.gz is one gzip member per record, which the WARC reader opens itself.
_OTHER_FORMATS: dict[str, tuple[str, str | None]] = {
    ".parquet": ("parquet", None),
    ".warc": ("warc", None),
    ".warc.gz": ("warc", None),
}

# suffix -> (format, compression); matched case-insensitively against the file name.
_FORMATS: dict[str, tuple[str, str | None]] = {
    **{
        base + suffix: (kind, compression)
        for base, kind in _BASE_FORMATS.items()
        for suffix, compression in [("", None), *_COMPRESSIONS.items()]
    },
    **_OTHER_FORMATS,
}

SUPPORTED_SUFFIXES: tuple[str, ...] = tuple(_FORMATS)
_SUFFIXES_LONGEST_FIRST = sorted(_FORMATS, key=len, reverse=True)  # .warc.gz before .gz-less

# Wikipedia splits big dumps into parts named like `enwiki-...-articles1.xml-p1p41242.bz2`:
# the `.xml` is not right before `.bz2`, so those names need a rule of their own.
_WIKI_PART_NAME = re.compile(r"\.xml-[^/\\]*\.bz2$")

_SUPPORTED_HELP = (
    f"{', '.join(_BASE_FORMATS)} (a MediaWiki dump), each plain or compressed as "
    f"{', '.join(_COMPRESSIONS)}; {', '.join(_OTHER_FORMATS)}; "
    "Wikipedia dump parts *.xml-pNpN.bz2"
)

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
    EOFError,  # truncated gzip / bz2 / xz
    zlib.error,
    lzma.LZMAError,
    zstandard.ZstdError,
    ET.ParseError,
    csv.Error,  # a bad row is a BadRecord of its own, a bad header an _UnreadableFile
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


def is_supported(name: str) -> bool:
    """Whether some reader reads a file of this name."""
    return _format_of(name) is not None


def glob_base(pattern: Path) -> Path:
    """The folder a glob SOURCE reads below: its leading part without wildcards."""
    return _glob_base(pattern)[0]


def _has_glob_magic(text: str) -> bool:
    return any(c in text for c in "*?[")


def _is_symlink_loop(link: str) -> bool:
    """Whether a directory symlink points at its own folder or one above it (a cycle)."""
    target = Path(os.path.realpath(link))
    here = Path(os.path.realpath(os.path.dirname(link) or "."))
    return target == here or target in here.parents


_NOT_FOLLOWED = "directory symlink (not followed)"


def _tree(directory: Path, skipped: list[str]) -> Iterator[tuple[str, list[str]]]:
    """(folder, file names) for `directory` and the folders below it, hidden ones left out.

    Symlinked folders are not entered (os.walk's default): a link to a parent would loop,
    and a link elsewhere would read data from outside the SOURCE. Each is noted in `skipped`,
    as is a folder that cannot be listed (os.walk would pass over it without a word).
    """

    def unlistable(exc: OSError) -> None:
        if not isinstance(exc, (FileNotFoundError, NotADirectoryError)):  # e.g. no permission
            skipped.append(f"{exc.filename}: cannot list the folder ({exc.strerror})")

    for dirpath, dirnames, filenames in os.walk(directory, onerror=unlistable):
        # Hidden folders (.git, .cache, our own .tmp) are never input.
        entered = []
        for name in sorted(dirnames):  # sorted: the same walk (and notes) on every machine
            if name.startswith("."):
                continue
            full = os.path.join(dirpath, name)
            if os.path.islink(full):
                loop = _is_symlink_loop(full)
                skipped.append(f"{full}: {'symlink loop' if loop else _NOT_FOLLOWED}")
                continue
            entered.append(name)
        dirnames[:] = entered
        yield dirpath, sorted(name for name in filenames if not name.startswith("."))


def _files_under(directory: Path, base: Path, skipped: list[str]) -> list[tuple[Path, str]]:
    """Supported, non-hidden files below `directory`, keyed relative to `base`."""
    found = []
    for dirpath, filenames in _tree(directory, skipped):
        for name in filenames:
            if _format_of(name) is not None:
                path = Path(dirpath, name)
                found.append((path, path.relative_to(base).as_posix()))
    return found


def _glob_base(pattern: Path) -> tuple[Path, tuple[str, ...]]:
    """(the leading part of a glob pattern that has no wildcard, the pattern's other parts).

    Keys are relative to that leading part.
    """
    parts = pattern.parts
    fixed = 0
    while fixed < len(parts) and not _has_glob_magic(parts[fixed]):
        fixed += 1
    return (Path(*parts[:fixed]) if fixed else Path(".")), parts[fixed:]


def _glob_paths(directory: Path, parts: Sequence[str], skipped: list[str]) -> Iterator[Path]:
    """Paths below `directory` that match the pattern components `parts`.

    What glob.glob(recursive=True) matches (`*`, `?` and `[...]` within a name, hidden names
    only for a component starting with ".", `**` for any number of folders), except that `**`
    does not enter symlinked folders (pathlib's rule since Python 3.13): glob.glob follows a
    link to a parent folder ~40 levels deep, reading the same files again at every level,
    and two such links make it run for ever. A wildcard naming a linked folder itself
    (`data/*/x.jsonl`) still follows it, one level per pattern component, unless the link
    points at a folder above it.
    """
    if not parts:
        yield directory
        return
    part, rest = parts[0], parts[1:]
    if part == "**":
        while rest and rest[0] == "**":
            rest = rest[1:]
        for dirpath, filenames in _tree(directory, skipped):
            if rest:
                yield from _glob_paths(Path(dirpath), rest, skipped)
            else:  # a trailing `**` is every file below
                yield from (Path(dirpath, name) for name in filenames)
        return
    if not _has_glob_magic(part):
        candidate = directory / part
        if rest:
            if candidate.is_dir():
                yield from _glob_paths(candidate, rest, skipped)
        elif os.path.lexists(candidate):
            yield candidate
        return
    try:
        names = sorted(entry.name for entry in os.scandir(directory))
    except (FileNotFoundError, NotADirectoryError):
        return
    except OSError as exc:
        skipped.append(f"{directory}: cannot list the folder ({exc.strerror})")
        return
    for name in names:
        if name.startswith(".") and not part.startswith("."):
            continue
        if fnmatch.fnmatchcase(name, part):
            path = directory / name
            if path.is_symlink() and path.is_dir() and _is_symlink_loop(str(path)):
                skipped.append(f"{path}: symlink loop")  # it would list its parent again
            elif not rest:
                yield path
            elif path.is_dir():
                yield from _glob_paths(path, rest, skipped)


def _distinct_files(
    candidates: Iterable[tuple[Path, str]], skipped: list[str]
) -> list[tuple[Path, str]]:
    """Candidates sorted by key, without the ones that cannot be read or were seen already.

    A symlink loop (ELOOP), a dangling symlink and anything that is not a regular file (a
    FIFO would block the reader) are noted in `skipped`; so is a second path to a file
    already listed (a symlink or hard link to it): the first key in sorted order keeps it.
    """
    by_key = dict((key, path) for path, key in candidates)  # the same path listed twice
    seen: dict[tuple[int, int], Path] = {}
    found = []
    for key, path in sorted(by_key.items()):
        try:
            info = os.stat(path)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                reason = "symlink loop"
            elif os.path.islink(path):
                reason = "dangling symlink"
            else:
                reason = f"cannot read ({exc.strerror})"
            skipped.append(f"{path}: {reason}")
            continue
        if not stat.S_ISREG(info.st_mode):
            skipped.append(f"{path}: not a regular file")
            continue
        identity = (info.st_dev, info.st_ino)
        if identity in seen:
            skipped.append(f"{path}: same file as {seen[identity]}")
            continue
        seen[identity] = path
        found.append((path, key))
    return found


def _with_skipped(message: str, skipped: list[str]) -> str:
    """A SourceError message that says why files that were found were not used."""
    if not skipped:
        return message
    more = f" and {len(skipped) - 1} more" if len(skipped) > 1 else ""
    return f"{message} ({len(skipped)} skipped: {skipped[0]}{more})"


def expand_local(spec: str, *, skipped: list[str] | None = None) -> list[tuple[Path, str]]:
    """A local SOURCE argument -> sorted list of (file path, key).

    `spec` may be a file, a directory (searched recursively for files with a supported
    suffix; hidden files and folders are skipped, symlinked folders are not entered) or a
    glob (`*`, `?`, `[`; `**` recurses, without entering symlinked folders). The key is the
    file's POSIX path relative to the directory given, or to the glob's fixed leading folder
    (so `data/*.jsonl` gives bare file names and `data/*/x.jsonl` gives `a/x.jsonl`,
    `b/x.jsonl`); for a single file it is the file name. Keys make document ids, so they
    must be stable and unique.

    Paths found but not used are skipped, never read twice and never a traceback: symlink
    loops, dangling symlinks, non-regular files, folders that cannot be listed, symlinked
    folders, and a second path to a file already listed (a symlink or hard link to it; the
    path whose key sorts first is kept). When `skipped` is given, one line per such path is
    appended to it, "<path>: <why>", e.g. "data/loop.jsonl: symlink loop",
    "data/b/x.jsonl: same file as data/a/x.jsonl", "data/gone.jsonl: dangling symlink",
    "data/link: directory symlink (not followed)".

    Raises SourceError (one line, naming `spec`) when `spec` is empty, when nothing exists
    or matches, or when a file named directly or matched by the glob has an unsupported
    suffix.
    """
    if not spec.strip():
        # Path("") is the current directory: an empty argument would read everything there.
        raise SourceError("empty SOURCE: give a file, a directory or a glob")
    notes: list[str] = []
    try:
        return _expand(spec, notes)
    finally:
        if skipped is not None:
            skipped.extend(dict.fromkeys(notes))  # a folder reached twice is noted once


def _expand(spec: str, notes: list[str]) -> list[tuple[Path, str]]:
    path = Path(os.path.expanduser(spec))
    if path.is_file():
        if _format_of(path.name) is None:
            raise SourceError(f"{spec}: unsupported file type (supported: {_SUPPORTED_HELP})")
        return [(path, path.name)]
    if path.is_dir():
        found = _distinct_files(_files_under(path, path, notes), notes)
        if not found:
            raise SourceError(
                _with_skipped(
                    f"{spec}: no files with a supported suffix in this directory "
                    f"(supported: {_SUPPORTED_HELP})",
                    notes,
                )
            )
        return found
    if _has_glob_magic(spec):
        base, parts = _glob_base(path)
        candidates: list[tuple[Path, str]] = []
        unsupported: list[str] = []
        for matched in _glob_paths(base, parts, notes):
            if matched.is_dir():
                candidates.extend(_files_under(matched, base, notes))
            elif matched.is_file() and _format_of(matched.name) is None:
                unsupported.append(str(matched))
            else:  # a supported file, or a broken link that _distinct_files reports
                candidates.append((matched, matched.relative_to(base).as_posix()))
        if unsupported:
            # A glob names files explicitly: reading some and silently dropping others
            # would hide data, so ask for a narrower pattern instead.
            more = f" and {len(unsupported) - 1} more" if len(unsupported) > 1 else ""
            raise SourceError(
                f"{spec}: matches {unsupported[0]}{more} with an unsupported suffix; narrow "
                f"the pattern (supported: {_SUPPORTED_HELP})"
            )
        found = _distinct_files(candidates, notes)
        if not found:
            raise SourceError(_with_skipped(f"{spec}: the pattern matches no files", notes))
        return found
    if os.path.islink(path):  # is_file/is_dir say False for a broken link: say why
        try:
            os.stat(path)
        except OSError as exc:
            broken = "symlink loop" if exc.errno == errno.ELOOP else "dangling symlink"
            raise SourceError(f"{spec}: {broken}") from None
    raise SourceError(f"{spec}: no such file or directory")


# zstd files are decompressed frame by frame (see _ZstdStream). Compressed bytes are read
# from the file _ZSTD_READ_BYTES at a time and handed to the decompressor _ZSTD_FEED_BYTES
# at a time: zstd expands data at most ~32,768 times (a 4-byte block can stand for 128 KiB),
# so one call makes at most ~32 MiB, whatever the file holds.
_ZSTD_READ_BYTES = 1 << 16
_ZSTD_FEED_BYTES = 1 << 10


def _is_zstd_magic(head: bytes) -> bool:
    """Whether 4 bytes start a zstd frame or a skippable frame (0x184D2A50-0x184D2A5F)."""
    return head == b"\x28\xb5\x2f\xfd" or (
        len(head) == 4 and head[1:] == b"\x2a\x4d\x18" and head[0] & 0xF0 == 0x50
    )


class _ZstdStream(io.RawIOBase):
    """The decompressed bytes of a .zst file, across all its frames; truncation is an error.

    zstandard's stream_reader(read_across_frames=True) simply stops where the input ends,
    so a cut-off download would read as a shorter, valid-looking file. Here each frame gets
    its own decompressobj, which says when the frame is complete (`eof`) and hands back the
    bytes after it (`unused_data`): the next frame (parallel compressors write several), a
    skippable frame (decompressobj passes over it) or garbage (which it rejects). A file
    that ends inside a frame raises _UnreadableFile.
    """

    def __init__(self, file: IO[bytes]) -> None:
        super().__init__()
        self._file = file
        # max_window_size: accept files made with `zstd --long` (windows up to 2 GiB).
        self._decompressor = zstandard.ZstdDecompressor(max_window_size=2**31)
        self._frame = self._decompressor.decompressobj()
        self._frames_done = 0
        self._frame_bytes = 0  # compressed bytes of the current frame fed so far
        self._input = memoryview(b"")
        self._input_at = 0
        self._output = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._output:
            if not self._decompress_some():
                return 0
        out = memoryview(buffer).cast("B")
        n = min(len(out), len(self._output))
        out[:n] = self._output[:n]
        self._output = self._output[n:]
        return n

    def _decompress_some(self) -> bool:
        """Feed the decompressor one more slice of input; False at a clean end of file."""
        if self._input_at >= len(self._input):
            self._input = memoryview(self._file.read(_ZSTD_READ_BYTES))
            self._input_at = 0
            if not self._input:
                if self._frame_bytes:
                    raise _UnreadableFile(
                        f"truncated zstd stream: the file ends inside frame "
                        f"{self._frames_done + 1}, {self._frame_bytes} bytes into it"
                    )
                return False
        piece = self._input[self._input_at : self._input_at + _ZSTD_FEED_BYTES]
        self._input_at += len(piece)
        self._frame_bytes += len(piece)
        try:
            self._output = memoryview(self._frame.decompress(piece))
        except zstandard.ZstdError as exc:
            started = self._frame_bytes > len(piece) or _is_zstd_magic(bytes(piece[:4]))
            if started:  # the frame header was fine: the damage is inside the frame
                frame = self._frames_done + 1
                raise _UnreadableFile(f"corrupt zstd frame {frame} ({exc})") from None
            if self._frames_done:
                raise _UnreadableFile(
                    f"data after zstd frame {self._frames_done} is not a zstd frame ({exc})"
                ) from None
            raise _UnreadableFile(f"not a zstd file ({exc})") from None
        if self._frame.eof:
            # The bytes fed past the end of this frame start the next one: feed them again.
            self._input_at -= len(self._frame.unused_data)
            self._frames_done += 1
            self._frame_bytes = 0
            self._frame = self._decompressor.decompressobj()
        return True

    def close(self) -> None:
        if not self.closed:
            self._file.close()
        super().close()


@contextmanager
def _open_binary(path: Path, compression: str | None) -> Iterator[IO[bytes]]:
    """A decompressed, buffered byte stream over `path` (never the whole file in memory).

    A truncated file raises when its end is reached, whatever the compression: gzip, bz2
    and lzma raise EOFError themselves, _ZstdStream raises _UnreadableFile.
    """
    stream: IO[bytes]
    if compression is None:
        stream = open(path, "rb")
    elif compression == "gzip":
        stream = gzip.open(path, "rb")
    elif compression == "bz2":
        stream = bz2.open(path, "rb")  # reads multistream dumps too
    elif compression == "xz":
        stream = lzma.open(path, "rb")  # .xz, concatenated streams too
    elif compression == "zstd":
        stream = io.BufferedReader(_ZstdStream(open(path, "rb", buffering=0)))
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
    text_field: str | None = "text",
    split_on: str | None = None,
    display_name: str | None = None,
) -> Iterator[Record | BadRecord]:
    """Read one file as documents, choosing the reader by the file's suffix.

    `text_field` is the key/column that holds the text (JSON, JSONL, Parquet, CSV);
    `split_on` only applies to .txt files: None (the file is one document), "blank-line",
    or a regular expression used as the separator. `display_name` (default `str(path)`)
    is what `BadRecord.file` says. Records carry a 0-based `position` that is stable
    across reruns (line/row/document/page ordinal, bad records included).

    `text_field=None` reads whole objects (JSON, JSONL, Parquet only): each Record's text is ""
    and its meta every field as it is (`sft` reads chat records this way, their checks its own).

    Raises SourceError at once for an unsupported suffix or an invalid `split_on`, and
    while reading for a Parquet/CSV file without the `text_field` column.
    """
    path = Path(path)
    shown = display_name if display_name is not None else str(path)
    fmt = _format_of(path.name)
    if fmt is None:
        raise SourceError(f"{shown}: unsupported file type (supported: {_SUPPORTED_HELP})")
    kind, compression = fmt
    if text_field is None and kind not in ("jsonl", "json", "parquet"):
        raise SourceError(f"{shown}: records are read from .jsonl, .json or .parquet files (each plain or "
                          "compressed), not from this file type")
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


class _JsonDecoder:
    """json.loads that also says whether the text held a float JSON cannot write back.

    Python's json reads NaN, Infinity and -Infinity, and numbers too big for a double (1e999)
    as non-finite floats, which json.dumps then writes as invalid JSON. The hooks only run
    for float literals and those constants: lines without floats cost nothing extra.
    """

    def __init__(self) -> None:
        self.non_finite = False  # set by the last decode() that met one
        self._decoder = json.JSONDecoder(parse_float=self._float, parse_constant=self._constant)

    def _float(self, text: str) -> float:
        value = float(text)
        if not math.isfinite(value):
            self.non_finite = True
        return value

    def _constant(self, name: str) -> float:
        self.non_finite = True
        return float(name)  # kept as a float so that a NaN text field says "float"

    def decode(self, text: str) -> Any:
        self.non_finite = False
        return self._decoder.decode(text)


def _json_safe(value: Any) -> Any:
    """`value` with every non-finite float (at any depth) replaced by None, like JSON.stringify."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_json_safe(item) for item in value]
    return value


def _meta_from(fields: dict[str, Any], text_field: str) -> dict[str, Any]:
    """Everything but the text; the source's own `id` becomes `source_id` (ours is the doc id)."""
    meta: dict[str, Any] = {}
    for key, value in fields.items():
        if key == text_field:
            continue
        meta["source_id" if key == "id" else key] = value
    return meta


def _record_from_object(
    obj: Any,
    text_field: str | None,
    position: int,
    shown: str,
    line: int,
    raw: str | None,
    non_finite: bool = False,
) -> Record | BadRecord:
    """A parsed JSON value -> Record, or BadRecord saying what is wrong with it.

    `non_finite`: the JSON held NaN/Infinity somewhere, so meta is cleaned of them.
    """

    def bad(reason: str) -> BadRecord:
        text = raw if raw is not None else json.dumps(obj, ensure_ascii=False, default=str)
        return BadRecord(shown, line, reason, _clip(text))

    if not isinstance(obj, dict):
        return bad(f"not a JSON object (got {_json_type(obj)})")
    if text_field is None:  # the whole object (see iter_file)
        if (raw is None or "\\u" in raw) and _has_lone_surrogate(obj):
            return bad("invalid Unicode: lone surrogate escape (\\uD800-\\uDFFF)")
        return Record("", position, _json_safe(obj) if non_finite else obj)
    if text_field not in obj:
        return bad(f"missing field {text_field!r}")
    text = obj[text_field]
    if not isinstance(text, str):
        return bad(f"field {text_field!r} is {_json_type(text)}, expected string")
    # Only a \uD8xx-style escape can put a lone surrogate into parsed JSON; such a string
    # cannot be encoded as UTF-8 and would break the Parquet writer downstream.
    if (raw is None or "\\u" in raw) and _has_lone_surrogate(obj):
        return bad("invalid Unicode: lone surrogate escape (\\uD800-\\uDFFF)")
    meta = _meta_from(obj, text_field)
    return Record(text, position, _json_safe(meta) if non_finite else meta)


def _read_jsonl(
    path: Path, compression: str | None, shown: str, text_field: str | None
) -> Iterator[Record | BadRecord]:
    """One JSON object per line; blank lines skipped; positions count non-blank lines."""
    decoder = _JsonDecoder()
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
                obj = decoder.decode(line)
            except (ValueError, RecursionError) as exc:
                yield BadRecord(shown, lineno, _json_error(exc), _clip(line.rstrip("\r\n")))
                continue
            yield _record_from_object(
                obj,
                text_field,
                this_position,
                shown,
                lineno,
                line.rstrip("\r\n"),
                decoder.non_finite,
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
    path: Path, compression: str | None, shown: str, text_field: str | None
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
    decoder = _JsonDecoder()
    try:
        items = decoder.decode(content)
    except (ValueError, RecursionError) as exc:
        # The array as a whole is broken: one BadRecord at the physical line of the error.
        line = exc.lineno if isinstance(exc, json.JSONDecodeError) else None
        yield BadRecord(shown, line, _json_error(exc, with_line=True), _clip(content))
        return
    del content
    for index, item in enumerate(items):
        # line = row: the element's 1-based index in the array
        yield _record_from_object(
            item, text_field, index, shown, index + 1, None, decoder.non_finite
        )


# --------------------------------------------------------------------------- Parquet


def _jsonable(value: Any) -> Any:
    """Parquet values (timestamps, decimals, bytes, maps) -> JSON-serialisable ones.

    NaN and infinities become None: json.dumps would write them as invalid JSON.
    """
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, (str, bool, int)):
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


def _read_parquet(path: Path, shown: str, text_field: str | None) -> Iterator[Record | BadRecord]:
    """Rows of a Parquet file, batch by batch; BadRecord.line is the 1-based row number."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
        columns = parquet.schema_arrow.names
        if text_field is None:  # whole rows (see iter_file)
            for row, fields in enumerate(
                f for batch in parquet.iter_batches(batch_size=_PARQUET_BATCH_ROWS) for f in batch.to_pylist()
            ):
                yield Record("", row, {k: _jsonable(v) for k, v in fields.items()})
            return
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

# The longest field read, in characters. csv's default (128 Ki) is smaller than many
# documents; no limit at all would let an unclosed quote gather the rest of a huge file
# into one field (csv holds a field in memory as 4 bytes a character) before it fails.
_CSV_FIELD_LIMIT = 1 << 24
# A broken record's lines are handed out again from memory up to this many characters; a
# longer one (bounded by the field limit) re-opens the file and skips to the line instead.
_CSV_REPLAY_CHARS = 1 << 20


class _CsvLines:
    """The physical lines of a CSV file for csv.reader, with a way back after a broken record.

    csv.reader with strict=True raises at the first malformed character, and an unclosed
    quote is only noticed at the next quote character or at the end of the file, by when
    the record's later lines have been read. `restart_after_first_line` hands those lines
    out again, so that the rows an unclosed quote swallowed are read as rows. The current
    record's lines are kept as they are read (no more than csv itself holds: a field is at
    most _CSV_FIELD_LIMIT characters); a long one is not replayed from memory but read
    again from the file.
    """

    def __init__(self, open_lines: Callable[[], Iterator[str]]) -> None:
        self._open_lines = open_lines
        self._source = open_lines()
        self._replay: deque[str] = deque()  # lines to hand out before the source's
        # The current record's lines: emptied (never replaced) by the caller at each record.
        self.kept: list[str] = []

    def lines(self) -> Iterator[str]:
        """Lines for one csv.reader: the replayed ones first, then the file's."""
        source, replay, keep = self._source, self._replay, self.kept.append
        while True:  # runs for every line of the file: a few cheap steps only
            if replay:
                line = replay.popleft()
            else:
                line = next(source, None)
                if line is None:
                    return
            keep(line)
            yield line

    def first_line(self) -> str:
        """The current record's first line, printable and clipped, for BadRecord.raw."""
        return _clip(_unescape_surrogates(self.kept[0].rstrip("\r\n"))) if self.kept else ""

    def restart_after_first_line(self, start: int) -> None:
        """Make the next lines handed out the ones after line `start`, the record's first."""
        if sum(map(len, self.kept)) <= _CSV_REPLAY_CHARS:
            self._replay.extendleft(reversed(self.kept[1:]))
        else:
            self._source.close()  # closes the file
            self._replay.clear()
            self._source = self._open_lines()
            for _ in islice(self._source, start):
                pass
        self.kept.clear()

    def close(self) -> None:
        self._source.close()


def _unescape_surrogates(text: str) -> str:
    """Text read with errors='surrogateescape' -> printable text (bad bytes as U+FFFD)."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _csv_error_reason(exc: csv.Error, start: int, end: int) -> str:
    """Why csv.reader refused the record on lines start..end."""
    message = str(exc)
    if message == "unexpected end of data":
        return "unclosed quote: the file ends inside a quoted field that starts on this line"
    if message.startswith("field larger than field limit"):
        return (
            f"field longer than {_CSV_FIELD_LIMIT} characters by line {end} "
            "(probably an unclosed quote on this line)"
        )
    if end > start:
        # Only a quoted field spans lines: the quote opened here ran on to where csv gave up.
        return f"unclosed quote? the quoted field from this line breaks on line {end}: {message}"
    return f"malformed CSV: {message}"


def _read_csv(
    path: Path, compression: str | None, shown: str, text_field: str
) -> Iterator[Record | BadRecord]:
    """CSV with a header row; BadRecord.line is the physical line where the row starts.

    Parsed strictly: a record csv refuses (an unclosed quote, text after a closing quote) is
    a BadRecord, and parsing starts again on the line after its first line, so an unclosed
    quote costs one record instead of swallowing the rest of the file. A quote inside an
    unquoted field (`5" screen`) is read as a character, as csv's strict mode does.
    """
    csv.field_size_limit(_CSV_FIELD_LIMIT)

    def open_lines() -> Iterator[str]:
        with _open_binary(path, compression) as stream:
            # surrogateescape keeps undecodable bytes visible per row instead of failing the file.
            with io.TextIOWrapper(
                stream, encoding="utf-8-sig", errors="surrogateescape", newline=""
            ) as text:
                yield from text

    lines = _CsvLines(open_lines)
    try:
        reader = csv.reader(lines.lines(), strict=True)
        try:
            header = next(reader, None)
            while header == []:  # blank lines before the header
                header = next(reader, None)
        except csv.Error as exc:
            raise _UnreadableFile(f"malformed CSV header: {exc}") from None
        if header is None:
            return
        if text_field not in header:
            raise SourceError(
                f"{shown}: no column {text_field!r} in the CSV header "
                f"(columns: {', '.join(_unescape_surrogates(h) for h in header)}); "
                "choose one with --text-field"
            )
        text_index = header.index(text_field)
        position = 0
        before = 0  # lines before the ones the current reader reads
        new_record = lines.kept.clear
        while True:
            start_line = before + reader.line_num + 1
            new_record()
            try:
                row = next(reader)
            except StopIteration:
                break
            except csv.Error as exc:
                reason = _csv_error_reason(exc, start_line, before + reader.line_num)
                yield BadRecord(shown, start_line, reason, lines.first_line())
                position += 1
                lines.restart_after_first_line(start_line)
                before = start_line
                reader = csv.reader(lines.lines(), strict=True)  # a fresh parser, outside any quote
                continue
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
    finally:
        lines.close()


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
                if _local_name(root.tag) != "mediawiki":
                    # any .xml file is taken for a dump: another XML would read as empty
                    raise _UnreadableFile(
                        f"not a MediaWiki XML dump (the root element is <{_local_name(root.tag)}>)"
                    )
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

_CHARSET = re.compile(rb"charset=[\"']?([A-Za-z0-9._-]+)", re.IGNORECASE)


def _decode_html(body: bytes, content_type: str) -> str | None:
    """The page as text: the charset of its Content-Type or <meta>, else UTF-8; None if neither decodes."""
    found = _CHARSET.search(content_type.encode("latin-1", "replace")) or _CHARSET.search(body[:4096])
    for charset in ([found.group(1).decode("ascii", "replace")] if found else []) + ["utf-8"]:
        try:
            return body.decode(charset)
        except (LookupError, UnicodeDecodeError):
            continue
    return None


class _WarcInput:
    """The byte stream warcio reads, watched for what warcio would let pass.

    warcio takes an EOFError while it parses a record's headers (which gzip raises for a
    cut-off member) for the clean end of the file, and it stops without a word where a file
    ends inside a record's headers. So this remembers the EOFError, and where the last byte
    that is not blank was read: anything not blank after the last whole record is a record
    the file lost.
    """

    def __init__(self, stream: io.BufferedIOBase) -> None:
        self._stream = stream
        self.position = 0
        self.data_end = 0  # just after the last non-blank byte read
        self.error: EOFError | None = None

    def read(self, size: int = -1) -> bytes:
        try:
            # read1: what one read of the file gives. A cut-off gzip member raises EOFError
            # on the next call, after the data before the cut was handed over; read() would
            # drop that data with the error.
            chunk = self._stream.read1(size)
        except EOFError as exc:
            self.error = exc
            raise
        kept = len(chunk.rstrip())
        if kept:
            self.data_end = self.position + kept
        self.position += len(chunk)
        return chunk

    def tell(self) -> int:
        return self.position


_WARC_DRAIN_BYTES = 1 << 16


def _check_record_complete(record: Any) -> None:
    """Raise if the file ended inside this WARC record's content.

    warcio hands over a cut-off record as if it were whole: its content is read through a
    LimitReader of the record's Content-Length, so what is left of that limit once the
    record is read to its end is what the file lacks.
    """
    from warcio.limitreader import LimitReader

    url = record.rec_headers.get_header("WARC-Target-URI") or ""
    length = record.rec_headers.get_header("Content-Length")
    if length is None or not length.strip().isdigit():
        # mandatory in every WARC record: headers without it were cut off (or made up)
        raise _UnreadableFile(
            f"truncated WARC file: the {record.rec_type} record {url} has no valid "
            f"Content-Length ({length!r})"
        )
    raw = record.raw_stream
    while raw.read(_WARC_DRAIN_BYTES):
        pass
    if isinstance(raw, LimitReader) and raw.limit > 0:
        raise _UnreadableFile(
            f"truncated WARC file: the {record.rec_type} record {url} lacks its last "
            f"{raw.limit} bytes"
        )


def _warc_document(record: Any, ordinal: int, shown: str) -> Record | BadRecord | None:
    """A WARC response record -> its page as a document; None when it is not a 2xx HTML page."""
    http = record.http_headers
    content_type = (http.get_header("Content-Type") or "") if http else ""
    if (
        http is None
        or not http.get_statuscode().startswith("2")
        or "html" not in content_type.lower()
    ):
        return None
    url = (record.rec_headers.get_header("WARC-Target-URI") or "").strip("<>")
    html = _decode_html(record.content_stream().read(), content_type)
    if html is None:
        return BadRecord(shown, None, f"{_UNDECODABLE}: {url}", url)
    try:
        text, title = extract_main_text(html)
    except Exception as exc:  # a parser failure costs this page, not the rest of the file
        reason = f"HTML extraction failed: {url}: {type(exc).__name__}: {exc}"
        return BadRecord(shown, None, reason, _clip(html))
    if not text:
        # Only menus, scripts or markup: quarantined and counted, where an empty document
        # would pass silently until normalize dropped it without the page's URL.
        return BadRecord(shown, None, f"no main text in the page: {url}", _clip(html))
    meta = {"url": url, "title": title, "warc_date": record.rec_headers.get_header("WARC-Date")}
    return Record(text, ordinal, meta)


def _read_warc(path: Path, shown: str) -> Iterator[Record | BadRecord]:
    """The HTML responses of a WARC file (as web crawlers write them) as their main text.

    Each page's main text is what `nonllama.pipeline.html.extract_main_text` keeps (menus,
    footers and other boilerplate dropped); a page with none, or one the extractor fails on,
    is a BadRecord naming its URL. Position is the ordinal of the response record; responses
    that are not successful HTML pages (images, redirects, errors) are skipped and take their
    ordinal with them. The URL, title and crawl date go to `meta`. Every record, skipped ones too, is checked to be
    whole before anything of it is yielded, and the file to hold nothing but whole records,
    so a truncated file ends in one BadRecord.
    """
    from warcio.archiveiterator import ArchiveIterator
    from warcio.exceptions import ArchiveLoadFailed

    ordinal = -1
    with open(path, "rb") as file:
        gzipped = file.read(2) == b"\x1f\x8b"
        file.seek(0)
        # gzip members are decompressed here, not by warcio: gzip raises EOFError for a
        # member cut short, where warcio's zlib would just stop.
        with gzip.open(file, "rb") if gzipped else file as stream:
            watched = _WarcInput(stream)
            archive = ArchiveIterator(watched)
            records = iter(archive)
            whole_until = 0  # where the last whole record ends
            while True:
                try:
                    record = next(records)
                except StopIteration:
                    break
                except ArchiveLoadFailed as exc:
                    raise _UnreadableFile(f"not a readable WARC file ({exc})") from None
                except _CONTAINER_ERRORS:
                    raise
                except Exception as exc:  # warcio fails in many ways on a damaged record
                    raise _UnreadableFile(
                        f"damaged WARC record ({type(exc).__name__}: {exc})"
                    ) from None
                if record.format != "warc":  # warcio reads anything else as a lenient old-style ARC
                    raise _UnreadableFile(f"not a WARC file (a record of format {record.format!r})")
                document = None
                if record.rec_type == "response":
                    ordinal += 1
                    document = _warc_document(record, ordinal, shown)
                _check_record_complete(record)
                if watched.error is not None:
                    raise watched.error
                if document is not None:
                    yield document
                # After the yield: this reads on to the next record, where the file may end.
                whole_until = archive.get_record_offset() + archive.get_record_length()
            if watched.error is not None:
                raise watched.error
            if watched.data_end > whole_until:
                raise _UnreadableFile(
                    f"truncated WARC file: it ends inside a record's headers, "
                    f"{watched.position - whole_until} bytes after the last whole record"
                )
