"""Broken input for nonllama.pipeline.readers: truncated or corrupt compressed files, cut-off
WARC files, malformed CSV. Every case ends in records kept plus BadRecords with a reason,
never a traceback and never a silently shorter result. Files are written with the real
compressors (gzip, bz2, lzma, zstandard, warcio)."""

from __future__ import annotations

import bz2
import contextlib
import gzip
import io
import json
import lzma
import re
import struct
from pathlib import Path

import pytest
import zstandard

from nonllama.pipeline import readers
from nonllama.pipeline.readers import iter_file
from nonllama.pipeline.records import BadRecord, Record

COMPRESS = {
    ".gz": gzip.compress,
    ".bz2": lambda data: bz2.compress(data, 1),  # 100 kB blocks: a cut file keeps some
    ".xz": lzma.compress,
    ".zst": zstandard.ZstdCompressor().compress,
    ".zstd": zstandard.ZstdCompressor().compress,
}


def read(path: Path, **kwargs) -> tuple[list[Record], list[BadRecord]]:
    good, bad = [], []
    for item in iter_file(path, **kwargs):
        (bad if isinstance(item, BadRecord) else good).append(item)
    return good, bad


def docs(n: int, words: int = 20) -> bytes:
    """n JSON lines that compress badly enough for a cut in the middle to land mid-file."""
    return b"".join(
        json.dumps(
            {"text": f"document {i} " + " ".join(f"w{i * 7 + j}" for j in range(words))}
        ).encode()
        + b"\n"
        for i in range(n)
    )


def after_count(reason: str) -> int:
    match = re.search(r"\(after (\d+) records\)$", reason)
    assert match, reason
    return int(match.group(1))


# --------------------------------------------------------------------------- truncation


@pytest.mark.parametrize("suffix", sorted(COMPRESS))
def test_truncated_compressed_file_keeps_the_records_before_the_break(tmp_path, suffix):
    payload = docs(3000)
    path = tmp_path / f"docs.jsonl{suffix}"
    data = COMPRESS[suffix](payload)
    path.write_bytes(data[: len(data) // 2])
    good, bad = read(path)
    assert 0 < len(good) < 3000
    # what was read is exactly the file's first records, positions unchanged
    assert [(r.text, r.position) for r in good] == [
        (json.loads(line)["text"], i) for i, line in enumerate(payload.splitlines()[: len(good)])
    ]
    assert len(bad) == 1 and bad[0].line is None
    assert bad[0].reason.startswith("unreadable file: ")
    assert after_count(bad[0].reason) == len(good)
    # every compression says it was cut short: EOFError "ended before the end-of-stream
    # marker" for gzip/bz2/xz, our own words for zstd
    assert "truncated" in bad[0].reason or "ended before the end-of-stream" in bad[0].reason


def test_truncated_zstd_says_so_and_counts_records(tmp_path):
    payload = docs(3000)
    data = zstandard.ZstdCompressor().compress(payload)
    path = tmp_path / "docs.jsonl.zst"
    path.write_bytes(data[: len(data) * 2 // 3])
    good, bad = read(path)
    assert 0 < len(good) < 3000
    [broken] = bad
    assert re.fullmatch(
        r"unreadable file: truncated zstd stream: the file ends inside frame 1, \d+ bytes "
        rf"into it \(after {len(good)} records\)",
        broken.reason,
    ), broken.reason


def test_zstd_cut_anywhere_is_never_silent(tmp_path):
    # two frames, a skippable frame between them: every cut either reads every record or
    # ends in the truncation BadRecord (a cut exactly between frames is a whole file)
    payload = docs(200, words=5)
    lines = payload.splitlines(keepends=True)
    compressor = zstandard.ZstdCompressor()
    first, second = (
        compressor.compress(b"".join(lines[:100])),
        compressor.compress(b"".join(lines[100:])),
    )
    skippable = struct.pack("<II", 0x184D2A5E, 3) + b"abc"
    data = first + skippable + second
    boundaries = {len(first), len(first) + len(skippable), len(data)}
    path = tmp_path / "docs.jsonl.zst"
    for cut in range(1, len(data), 37):
        path.write_bytes(data[:cut])
        good, bad = read(path)
        if cut in boundaries:
            assert bad == []
        else:
            assert len(bad) == 1 and "truncated zstd stream" in bad[0].reason, cut
        assert [r.position for r in good] == list(range(len(good)))


def test_zstd_frames_skippable_frames_and_long_windows(tmp_path):
    payload = docs(300)
    lines = payload.splitlines(keepends=True)
    parts = [b"".join(lines[i : i + 50]) for i in range(0, 300, 50)]
    skippable = struct.pack("<II", 0x184D2A50, 8) + b"metadata"
    # `zstd --long=28`-style frames: written as a stream (no content size), their header
    # asks for a 256 MiB window, above what zstandard decodes by default (128 MiB)
    params = zstandard.ZstdCompressionParameters.from_level(19, window_log=28, enable_ldm=True)
    long = zstandard.ZstdCompressor(compression_params=params).compressobj()
    long_frame = long.compress(parts[1]) + long.flush()
    assert zstandard.get_frame_parameters(long_frame).window_size == 1 << 28
    plain = zstandard.ZstdCompressor()
    frames = [plain.compress(parts[0]), long_frame] + [plain.compress(p) for p in parts[2:]]
    data = skippable + b"".join(frame + skippable for frame in frames)
    path = tmp_path / "docs.jsonl.zst"
    path.write_bytes(data)
    good, bad = read(path)
    assert bad == []
    assert [r.text for r in good] == [json.loads(line)["text"] for line in lines]
    # an empty file and an empty frame are empty files, not errors
    path.write_bytes(b"")
    assert read(path) == ([], [])
    path.write_bytes(plain.compress(b""))
    assert read(path) == ([], [])


def test_not_zstd_and_garbage_after_the_last_frame(tmp_path):
    path = tmp_path / "docs.jsonl.zst"
    path.write_bytes(b'{"text": "plain text, not zstd"}\n')
    good, bad = read(path)
    assert good == [] and len(bad) == 1
    assert bad[0].reason.startswith("unreadable file: not a zstd file (")

    frame = zstandard.ZstdCompressor().compress(docs(10))
    for garbage in (b"\n", b"trailing garbage that is not a frame" * 3):
        path.write_bytes(frame + garbage)
        good, bad = read(path)
        assert len(good) == 10 and len(bad) == 1
        assert bad[0].reason == (
            "unreadable file: data after zstd frame 1 is not a zstd frame (zstd decompressor "
            "error: Unknown frame descriptor) (after 10 records)"
        )
    # the first bytes of a magic number: a next frame that was cut off
    path.write_bytes(frame + b"\x28\xb5\x2f")
    good, bad = read(path)
    assert (
        len(good) == 10 and "truncated zstd stream: the file ends inside frame 2" in bad[0].reason
    )


def test_corrupt_zstd_frame_is_one_bad_record(tmp_path):
    data = bytearray(zstandard.ZstdCompressor(write_checksum=True).compress(docs(3000)))
    middle = len(data) // 2
    data[middle : middle + 64] = bytes(64)
    path = tmp_path / "docs.jsonl.zst"
    path.write_bytes(bytes(data))
    good, bad = read(path)
    assert 0 < len(good) < 3000
    # lines torn by the damage may come first as malformed JSON: the file's BadRecord is last
    assert bad[-1].reason.startswith("unreadable file: corrupt zstd frame 1 (")
    assert after_count(bad[-1].reason) == len(good) + len(bad) - 1


@pytest.mark.parametrize("suffix", [".gz", ".bz2", ".xz"])
def test_not_really_compressed_is_one_bad_record(tmp_path, suffix):
    path = tmp_path / f"docs.jsonl{suffix}"
    path.write_bytes(b'{"text": "plain, not compressed"}\n' * 20)
    good, bad = read(path)
    assert good == [] and len(bad) == 1 and bad[0].reason.startswith("unreadable file: ")


@pytest.mark.parametrize("suffix", [".csv.gz", ".csv.zst", ".txt.xz", ".txt.bz2", ".xml.zst"])
def test_truncation_is_reported_for_every_format(tmp_path, suffix):
    # ~1 MB that does not compress to nothing: zstd and bz2 decompress whole blocks only
    n = 20_000
    if suffix.startswith(".csv"):
        payload = b"id,text\n" + b"".join(
            b"%d,row number %d %d\n" % (i, i, i * i) for i in range(n)
        )
    elif suffix.startswith(".txt"):
        payload = b"".join(b"story %d %d\n\n" % (i, i * i) for i in range(n))
    else:
        pages = "".join(
            f"<page><title>P{i}</title><ns>0</ns><id>{i}</id><revision><text>word {i * i}"
            "</text></revision></page>"
            for i in range(1, n)
        )
        payload = f"<mediawiki>{pages}</mediawiki>".encode()
    data = COMPRESS[suffix[4:]](payload)
    path = tmp_path / f"data{suffix}"
    path.write_bytes(data[: len(data) // 2])
    good, bad = read(path, split_on="blank-line")
    assert good and bad[-1].reason.startswith("unreadable file: ")
    assert after_count(bad[-1].reason) == len(good) + len(bad) - 1


# --------------------------------------------------------------------------- WARC


def write_warc(path: Path, pages: int, gzipped: bool) -> None:
    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter

    body = b"<html><body>" + b"<p>a paragraph of the page</p>" * 40 + b"</body></html>"
    with open(path, "wb") as f:
        writer = WARCWriter(f, gzip=gzipped)
        for i in range(pages):
            url = f"https://example.com/{i}"
            writer.write_record(
                writer.create_warc_record(
                    url, "request", payload=io.BytesIO(b"GET / HTTP/1.1\r\n\r\n")
                )
            )
            headers = StatusAndHeaders(
                "200 OK", [("Content-Type", "text/html")], protocol="HTTP/1.1"
            )
            writer.write_record(
                writer.create_warc_record(
                    url, "response", payload=io.BytesIO(body), http_headers=headers
                )
            )


@pytest.mark.parametrize("gzipped", [True, False])
def test_truncated_warc_ends_in_a_bad_record_with_the_count(tmp_path, gzipped):
    path = tmp_path / ("crawl.warc.gz" if gzipped else "crawl.warc")
    write_warc(path, 6, gzipped)
    whole = [r.text for r in iter_file(path)]
    assert len(whole) == 6
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 5 // 9])  # half would cut between two pages
    good, bad = read(path)
    assert 0 < len(good) < 6 and [r.text for r in good] == whole[: len(good)]
    assert len(bad) == 1 and after_count(bad[0].reason) == len(good)
    expected = "EOFError: Compressed file ended" if gzipped else "truncated WARC file"
    assert bad[0].reason.startswith(f"unreadable file: {expected}"), bad[0].reason


@pytest.mark.parametrize("gzipped", [True, False])
def test_warc_cut_anywhere_is_never_silent_nor_a_traceback(tmp_path, gzipped):
    # Cut points over the whole file (records, HTTP headers, WARC headers, gzip trailers):
    # the result is the first pages whole, then one BadRecord -- unless the cut falls where
    # a record ends, which leaves a complete, shorter file.
    path = tmp_path / ("crawl.warc.gz" if gzipped else "crawl.warc")
    write_warc(path, 3, gzipped)
    whole = [r.text for r in iter_file(path)]
    data = path.read_bytes()
    silent_cuts = 0
    for cut in range(1, len(data), 5):
        path.write_bytes(data[:cut])
        with contextlib.redirect_stderr(io.StringIO()):  # warcio warns on stderr
            good, bad = read(path)
        assert [r.text for r in good] == whole[: len(good)], cut
        assert len(bad) <= 1, cut
        if not bad:
            silent_cuts += 1
            rest = data[cut:]
            # only at a record boundary: a gzip member starts, or blank lines then a record
            assert rest.startswith(b"\x1f\x8b") or rest.lstrip(b"\r\n")[:5] in (b"", b"WARC/"), cut
    assert silent_cuts < len(data) // 5 // 20


# --------------------------------------------------------------------------- CSV


def csv_rows(n: int, broken: dict[int, str], quoted: bool = True) -> str:
    """A header and rows 1..n (row i on physical line i + 1), some replaced by `broken`;
    with `quoted`, every third row has a quoted field."""
    lines = ["id,text,lang"]
    for i in range(1, n + 1):
        row = f'{i},"row {i}, with a comma",en' if quoted and i % 3 == 0 else f"{i},row {i},en"
        lines.append(broken.get(i, row))
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("later_quotes", [False, True])
def test_csv_unclosed_quote_costs_one_record(tmp_path, later_quotes):
    # later_quotes: the unclosed quote is noticed at the next quote character (row 12),
    # else only at the end of the file
    path = tmp_path / "docs.csv"
    broken = {10: '10,"row 10 opens a quote and never closes it,en'}
    path.write_text(csv_rows(100, broken, quoted=later_quotes))
    good, bad = read(path)
    assert len(good) == 99
    assert [(b.line, b.raw) for b in bad] == [
        (11, '10,"row 10 opens a quote and never closes it,en')
    ]
    assert "unclosed quote" in bad[0].reason
    # the rows after it are read as rows, positions as if the bad row were a record
    assert [r.meta["source_id"] for r in good] == [str(i) for i in range(1, 101) if i != 10]
    assert [r.position for r in good] == [i - 1 for i in range(1, 101) if i != 10]
    assert good[9].text == "row 11" and good[10].text.startswith("row 12")


def test_csv_unclosed_quote_on_the_last_row(tmp_path):
    path = tmp_path / "docs.csv"
    path.write_text(csv_rows(5, {5: '5,"the last row, unclosed,en'}))
    good, bad = read(path)
    assert [r.meta["source_id"] for r in good] == ["1", "2", "3", "4"]
    assert [(b.line, b.reason) for b in bad] == [
        (6, "unclosed quote: the file ends inside a quoted field that starts on this line")
    ]
    # no newline at the end of the file either
    path.write_text('id,text\n1,one\n2,"two')
    good, bad = read(path)
    assert [r.text for r in good] == ["one"] and [b.line for b in bad] == [3]


def test_csv_strict_errors_quarantine_the_row_and_reading_goes_on(tmp_path):
    path = tmp_path / "docs.csv"
    path.write_text(
        "id,text\n"
        '1,"abc"def\n'  # text after a closing quote
        '2,a 5" screen\n'  # a quote inside an unquoted field: a character, as csv reads it
        '3,"multi\nline ""quoted""\ndocument"\n'  # lines 4-6: one document
        '4,"a\nb"x\n'  # lines 7-8: breaks on its second line
        "5,fine\n"
    )
    good, bad = read(path)
    assert [(r.text, r.position) for r in good] == [
        ('a 5" screen', 1),
        ('multi\nline "quoted"\ndocument', 2),
        ("fine", 5),
    ]
    assert [(b.line, b.reason, b.raw) for b in bad] == [
        (2, "malformed CSV: ',' expected after '\"'", '1,"abc"def'),
        (
            7,
            "unclosed quote? the quoted field from this line breaks on line 8: "
            "',' expected after '\"'",
            '4,"a',
        ),
        # parsing starts again on line 8, which is no row of its own
        (8, "wrong number of fields: 1, the header has 2", 'b"x'),
    ]


def test_csv_multiline_fields_keep_their_start_lines(tmp_path):
    path = tmp_path / "docs.csv"
    # lines: 1 header, 2-4 row 1, 5-6 row 2, 7 blank, 8 row 3, 9 row 4
    path.write_text('id,text\n1,"first\n\nparagraph two"\n2,"x\r\ny"\n\n3,bad,extra\n4,"cafe"\n')
    good, bad = read(path)
    assert [(r.text, r.position) for r in good] == [
        ("first\n\nparagraph two", 0),
        ("x\r\ny", 1),
        ("cafe", 3),
    ]
    assert [(b.line, b.reason) for b in bad] == [(8, "wrong number of fields: 3, the header has 2")]


@pytest.mark.parametrize("suffix", [".csv", ".csv.gz"])
def test_csv_resync_after_a_long_broken_record_rereads_the_file(tmp_path, monkeypatch, suffix):
    # A broken record longer than the replay buffer: reading starts again by re-opening
    # the file and skipping to the line, with the same result as from memory.
    content = csv_rows(300, {20: '20,"unclosed,en', 250: '250,"unclosed again,en'}, quoted=False)
    path = tmp_path / f"docs{suffix}"
    path.write_bytes(
        gzip.compress(content.encode()) if suffix.endswith(".gz") else content.encode()
    )
    expected = read(path)
    monkeypatch.setattr(readers, "_CSV_REPLAY_CHARS", 100)
    good, bad = read(path)
    assert (good, bad) == expected
    assert len(good) == 298 and [b.line for b in bad] == [21, 251]
    assert good[-1].meta["source_id"] == "300"


def test_csv_field_limit_bounds_an_unclosed_quote(tmp_path, monkeypatch):
    monkeypatch.setattr(readers, "_CSV_FIELD_LIMIT", 1000)
    path = tmp_path / "docs.csv"
    path.write_text('id,text\n1,"opens\n' + "".join(f"{i},filler row {i}\n" for i in range(2, 200)))
    good, bad = read(path)
    assert len(good) == 198
    assert bad[0].line == 2 and bad[0].reason.startswith("field longer than 1000 characters")
    monkeypatch.undo()  # each read sets csv's limit: the next one is back to the real one
    big = "word " * 40_000
    path.write_text(f"id,text\n1,{big}\n")
    assert [r.text for r in read(path)[0]] == [big]
