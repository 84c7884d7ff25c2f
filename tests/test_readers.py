"""Tests for nonllama.pipeline.readers: every format, bad records, sources, real corpora."""

from __future__ import annotations

import bz2
import csv
import datetime as dt
import gzip
import io
import json
import lzma
import math
import os
import random
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from nonllama.pipeline import readers
from nonllama.pipeline.readers import SUPPORTED_SUFFIXES, expand_local, iter_file
from nonllama.pipeline.records import BadRecord, Record, SourceError

CORPORA = Path(__file__).resolve().parents[1].parent / "shared" / "corpora"
UNDECODABLE = "undecodable bytes (not UTF-8)"


@pytest.fixture
def corpora() -> Path:
    if not CORPORA.is_dir():
        pytest.skip(f"shared corpora not found at {CORPORA} (only CI and dev checkouts have it)")
    return CORPORA


def read(path: Path, **kwargs) -> tuple[list[Record], list[BadRecord]]:
    good, bad = [], []
    for item in iter_file(path, **kwargs):
        (bad if isinstance(item, BadRecord) else good).append(item)
    return good, bad


def jsonl_bytes(*objects) -> bytes:
    return b"".join(json.dumps(o).encode() + b"\n" for o in objects)


# --------------------------------------------------------------------------- suffixes


def test_supported_suffixes_include_every_documented_format():
    for suffix in (".jsonl", ".jsonl.gz", ".jsonl.zst", ".json", ".json.gz", ".parquet", ".csv"):
        assert suffix in SUPPORTED_SUFFIXES
    for suffix in (".txt", ".txt.gz", ".xml.bz2"):
        assert suffix in SUPPORTED_SUFFIXES


COMPRESSORS = {
    "": lambda data: data,
    ".gz": gzip.compress,
    ".zst": zstandard.ZstdCompressor().compress,
    ".zstd": zstandard.ZstdCompressor().compress,
    ".bz2": bz2.compress,
    ".xz": lzma.compress,
}


def test_every_text_format_takes_every_compression():
    for base in (".jsonl", ".json", ".csv", ".txt", ".xml"):
        for compression in COMPRESSORS:
            assert base + compression in SUPPORTED_SUFFIXES
    for suffix in (".parquet", ".warc", ".warc.gz"):
        assert suffix in SUPPORTED_SUFFIXES
    for suffix in (".parquet.gz", ".warc.zst", ".gz", ".tar.gz", ".md.xz"):
        assert suffix not in SUPPORTED_SUFFIXES
        assert readers._format_of("x" + suffix) is None
    assert readers._format_of("A.JSONL.XZ") == ("jsonl", "xz")
    assert readers._format_of("wiki-1.xml-p1p99.bz2") == ("wiki", "bz2")


@pytest.mark.parametrize("compression", sorted(COMPRESSORS))
@pytest.mark.parametrize("base", [".jsonl", ".json", ".csv", ".txt", ".xml"])
def test_every_format_reads_the_same_under_every_compression(tmp_path, base, compression):
    texts = [f"document {i}, number {i}" for i in range(30)]
    if base == ".jsonl":
        payload = jsonl_bytes(*({"text": t} for t in texts))
    elif base == ".json":
        payload = json.dumps([{"text": t} for t in texts]).encode()
    elif base == ".csv":
        buffer = io.StringIO()
        csv.writer(buffer).writerows([["text"]] + [[t] for t in texts])
        payload = buffer.getvalue().encode()
    elif base == ".txt":
        payload = "\n\n".join(texts).encode()
    else:
        pages = [wiki_page(f"T{i}", 0, i, t) for i, t in enumerate(texts)]
        write_wiki_dump(tmp_path / "w.xml.bz2", pages)
        payload = bz2.decompress((tmp_path / "w.xml.bz2").read_bytes())
    path = tmp_path / f"docs{base}{compression}"
    path.write_bytes(COMPRESSORS[compression](payload))
    good, bad = read(path, split_on="blank-line")
    assert bad == []
    assert [(r.text, r.position) for r in good] == [(t, i) for i, t in enumerate(texts)]
    assert expand_local(str(path)) == [(path, path.name)]


def test_an_xml_file_that_is_no_mediawiki_dump_is_a_bad_record(tmp_path):
    path = tmp_path / "sitemap.xml"
    path.write_text('<?xml version="1.0"?><urlset><url><loc>https://x</loc></url></urlset>')
    good, bad = read(path)
    assert good == []
    assert [b.reason for b in bad] == [
        "unreadable file: not a MediaWiki XML dump (the root element is <urlset>)"
    ]


def test_unsupported_suffix_is_a_source_error(tmp_path):
    path = tmp_path / "notes.md"
    path.write_text("# hi\n")
    with pytest.raises(SourceError, match=r"notes\.md.*\.jsonl"):
        iter_file(path)


# --------------------------------------------------------------------------- JSONL


def test_jsonl_records_positions_and_meta(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_bytes(
        jsonl_bytes(
            {
                "id": "a1",
                "text": "first",
                "url": "http://x",
                "metadata": {"lang": "en", "n": [1, 2]},
            },
        )
        + b"\n   \n"  # blank lines are skipped silently
        + jsonl_bytes({"text": "second"})
    )
    good, bad = read(path)
    assert bad == []
    assert [(r.text, r.position) for r in good] == [("first", 0), ("second", 1)]
    assert good[0].meta == {
        "source_id": "a1",
        "url": "http://x",
        "metadata": {"lang": "en", "n": [1, 2]},
    }
    assert good[1].meta == {}
    json.dumps(good[0].meta)  # meta must stay JSON-serialisable


@pytest.mark.parametrize("suffix", [".jsonl.gz", ".jsonl.zst"])
def test_compressed_jsonl_reads_like_plain(tmp_path, suffix):
    payload = jsonl_bytes(*({"text": f"doc {i}", "id": i} for i in range(50)))
    path = tmp_path / f"docs{suffix}"
    if suffix.endswith(".gz"):
        path.write_bytes(gzip.compress(payload))
    else:
        # two frames, as parallel compressors write them: both must be read
        half = len(payload) // 2
        cut = payload.index(b"\n", half) + 1
        compressor = zstandard.ZstdCompressor()
        path.write_bytes(compressor.compress(payload[:cut]) + compressor.compress(payload[cut:]))
    good, bad = read(path)
    assert bad == []
    assert [r.text for r in good] == [f"doc {i}" for i in range(50)]
    assert [r.meta["source_id"] for r in good] == list(range(50))


def test_jsonl_bad_records_keep_line_numbers_and_neighbours(tmp_path):
    lines = [
        b'{"text": "good one"}',  # 1
        b'{"text": "broken", ',  # 2 malformed
        b"",  # 3 blank
        b'["a", "list"]',  # 4 not an object
        b'{"body": "no text key"}',  # 5 missing field
        b'{"text": null}',  # 6 null
        b'{"text": 42}',  # 7 number
        b'{"text": ["x"]}',  # 8 list
        b'{"text": "caf\xe9 latin-1"}',  # 9 undecodable
        b'{"text": "good two"}',  # 10
    ]
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    good, bad = read(path, display_name="src/mixed.jsonl")
    assert [(r.text, r.position) for r in good] == [("good one", 0), ("good two", 8)]
    found = [(b.line, b.reason) for b in bad]
    assert found[0][0] == 2 and found[0][1].startswith("malformed JSON: ")
    assert found[1:] == [
        (4, "not a JSON object (got list)"),
        (5, "missing field 'text'"),
        (6, "field 'text' is null, expected string"),
        (7, "field 'text' is int, expected string"),
        (8, "field 'text' is list, expected string"),
        (9, UNDECODABLE),
    ]
    assert {b.file for b in bad} == {"src/mixed.jsonl"}
    assert bad[0].raw == '{"text": "broken", '
    assert "caf\ufffd latin-1" in bad[-1].raw


def test_jsonl_text_field_option(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_bytes(
        jsonl_bytes({"content": "the body", "text": "a summary"}, {"text": "no content"})
    )
    good, bad = read(path, text_field="content")
    assert [r.text for r in good] == ["the body"]
    assert good[0].meta == {"text": "a summary"}
    assert [(b.line, b.reason) for b in bad] == [(2, "missing field 'content'")]


def test_jsonl_lone_surrogate_escape_is_quarantined(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text('{"text": "broken \\ud83d emoji"}\n{"text": "fine \\ud83d\\ude00"}\n')
    good, bad = read(path)
    assert [r.text for r in good] == ["fine \U0001f600"]
    assert len(bad) == 1 and bad[0].line == 1 and bad[0].reason.startswith("invalid Unicode")


def test_jsonl_with_bom_and_crlf(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"text": "a"}\r\n{"text": "b"}\r\n')
    good, bad = read(path)
    assert bad == [] and [r.text for r in good] == ["a", "b"]


# --------------------------------------------------------------------------- JSON


def test_json_array_positions_and_bad_elements(tmp_path):
    path = tmp_path / "docs.json"
    path.write_text(
        json.dumps([{"text": "a", "id": 7}, {"text": 3}, "oops", {"text": "d"}], indent=2)
    )
    good, bad = read(path)
    assert [(r.text, r.position, r.meta) for r in good] == [
        ("a", 0, {"source_id": 7}),
        ("d", 3, {}),
    ]
    assert [(b.line, b.reason) for b in bad] == [
        (2, "field 'text' is int, expected string"),
        (3, "not a JSON object (got str)"),
    ]


def test_json_gz_holding_json_lines_like_c4(tmp_path):
    path = tmp_path / "c4-train.00000-of-01024.json.gz"
    path.write_bytes(
        gzip.compress(jsonl_bytes({"text": "one", "url": "u1"}, {"text": "two", "url": "u2"}))
    )
    good, bad = read(path)
    assert bad == []
    assert [(r.text, r.position, r.meta) for r in good] == [
        ("one", 0, {"url": "u1"}),
        ("two", 1, {"url": "u2"}),
    ]


def test_broken_json_array_is_one_bad_record(tmp_path):
    path = tmp_path / "docs.json"
    path.write_text('[\n  {"text": "a"},\n  {"text": "b"\n]\n')
    good, bad = read(path)
    assert good == []
    assert len(bad) == 1
    assert bad[0].reason.startswith("malformed JSON: ") and bad[0].line == 4


# --------------------------------------------------------------------------- Parquet


def test_parquet_rows_meta_and_bad_rows(tmp_path):
    n = 600  # more than one batch
    texts = [f"doc {i}" for i in range(n)]
    texts[5] = None
    table = pa.table(
        {
            "id": [f"id{i}" for i in range(n)],
            "text": texts,
            "when": [dt.datetime(2024, 1, 1) + dt.timedelta(days=i % 30) for i in range(n)],
            "score": [i / 2 for i in range(n)],
        }
    )
    path = tmp_path / "part-0.parquet"
    pq.write_table(table, path, row_group_size=100)
    good, bad = read(path)
    assert len(good) == n - 1
    assert [(b.line, b.reason) for b in bad] == [(6, "field 'text' is null, expected string")]
    assert [r.position for r in good] == [i for i in range(n) if i != 5]
    assert good[0].meta == {"source_id": "id0", "when": "2024-01-01T00:00:00", "score": 0.0}
    json.dumps([r.meta for r in good])


def test_parquet_non_string_text_column_gives_bad_records(tmp_path):
    path = tmp_path / "nums.parquet"
    pq.write_table(pa.table({"text": [1, 2]}), path)
    good, bad = read(path)
    assert good == []
    assert [(b.line, b.reason) for b in bad] == [(1, "field 'text' is int, expected string")] + [
        (2, "field 'text' is int, expected string")
    ]


def test_parquet_missing_column_names_the_columns(tmp_path):
    path = tmp_path / "part.parquet"
    pq.write_table(pa.table({"content": ["x"], "url": ["u"]}), path)
    with pytest.raises(SourceError, match=r"part\.parquet.*'text'.*content, url"):
        read(path)
    good, _ = read(path, text_field="content")
    assert [(r.text, r.meta) for r in good] == [("x", {"url": "u"})]


# --------------------------------------------------------------------------- JSON-valid meta


def test_non_finite_numbers_in_jsonl_meta_become_null(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text(
        '{"text": "a", "score": NaN, "hi": Infinity, "lo": -Infinity, "big": 1e999, "ok": 1.5,'
        ' "nested": {"xs": [1, NaN, {"y": -1e400}]}, "id": 7}\n'
        '{"text": NaN, "score": 1}\n'
        '{"text": "b", "note": "NaN and Infinity in a string stay"}\n'
    )
    good, bad = read(path)
    assert good[0].meta == {
        "score": None,
        "hi": None,
        "lo": None,
        "big": None,
        "ok": 1.5,
        "nested": {"xs": [1, None, {"y": None}]},
        "source_id": 7,
    }
    assert good[1].meta == {"note": "NaN and Infinity in a string stay"}
    for record in good:
        json.dumps(record.meta, allow_nan=False)
    # the text field itself being NaN is still a bad record that says so
    assert [(b.line, b.reason) for b in bad] == [(2, "field 'text' is float, expected string")]


def test_non_finite_numbers_in_json_array_meta_become_null(tmp_path):
    path = tmp_path / "docs.json"
    path.write_text('[{"text": "a", "w": [NaN, 2.0]}, {"text": "b", "w": -Infinity}]')
    good, bad = read(path)
    assert bad == [] and [r.meta for r in good] == [{"w": [None, 2.0]}, {"w": None}]
    json.dumps([r.meta for r in good], allow_nan=False)


def test_non_finite_floats_in_parquet_meta_become_null(tmp_path):
    path = tmp_path / "part.parquet"
    table = pa.table(
        {
            "text": ["a", "b", "c"],
            "score": [math.nan, math.inf, 0.5],
            "scores": [[1.0, -math.inf], [], None],
            "f32": pa.array([math.nan, 1.0, -math.inf], type=pa.float32()),
        }
    )
    pq.write_table(table, path)
    good, bad = read(path)
    assert bad == []
    assert [r.meta for r in good] == [
        {"score": None, "scores": [1.0, None], "f32": None},
        {"score": None, "scores": [], "f32": 1.0},
        {"score": 0.5, "scores": None, "f32": None},
    ]
    json.dumps([r.meta for r in good], allow_nan=False)


# --------------------------------------------------------------------------- CSV


def test_csv_records_multiline_fields_and_line_numbers(tmp_path):
    big = "word " * 40_000  # 200,000 characters: over csv's default field size limit
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["id", "text", "lang"])
    writer.writerow(["1", "line one\nline two", "en"])  # physical lines 2-3
    writer.writerow(["2", big, "en"])  # line 4
    buffer.write('3,"too\nmany",fields,x\n')  # lines 5-6
    buffer.write("\n")  # line 7 blank
    writer.writerow(["4", "last", "fr"])  # line 8
    path = tmp_path / "docs.csv"
    path.write_text(buffer.getvalue())
    good, bad = read(path)
    assert [(r.text, r.position) for r in good] == [
        ("line one\nline two", 0),
        (big, 1),
        ("last", 3),
    ]
    assert good[0].meta == {"source_id": "1", "lang": "en"}
    assert [(b.line, b.reason) for b in bad] == [(5, "wrong number of fields: 4, the header has 3")]
    assert good[2].meta == {"source_id": "4", "lang": "fr"}


def test_csv_undecodable_row_and_gz(tmp_path):
    payload = b"text,n\nfine,1\ncaf\xe9,2\nalso fine,3\n"
    path = tmp_path / "docs.csv.gz"
    path.write_bytes(gzip.compress(payload))
    good, bad = read(path)
    assert [r.text for r in good] == ["fine", "also fine"]
    assert [(b.line, b.reason) for b in bad] == [(3, UNDECODABLE)]
    assert "caf\ufffd" in bad[0].raw


def test_csv_missing_column_lists_the_header(tmp_path):
    path = tmp_path / "docs.csv"
    path.write_text("title,body\nx,y\n")
    with pytest.raises(SourceError, match=r"docs\.csv.*'text'.*title, body"):
        read(path)


# --------------------------------------------------------------------------- plain text


def test_txt_default_is_one_document_per_file(tmp_path):
    path = tmp_path / "book.txt"
    path.write_text("\n\nChapter 1\n\nIt was a dark night.\n\n")
    good, bad = read(path)
    assert bad == []
    assert [(r.text, r.position, r.meta) for r in good] == [
        ("Chapter 1\n\nIt was a dark night.", 0, {})
    ]
    empty = tmp_path / "empty.txt"
    empty.write_text(" \n\n")
    assert read(empty) == ([], [])


def test_txt_blank_line_split(tmp_path):
    path = tmp_path / "stories.txt.gz"
    text = "Story one,\nline two.\n\n\n  \nStory two.\r\n\r\nStory three.\n"
    path.write_bytes(gzip.compress(text.encode()))
    good, bad = read(path, split_on="blank-line")
    assert bad == []
    assert [(r.text, r.position) for r in good] == [
        ("Story one,\nline two.", 0),
        ("Story two.", 1),
        ("Story three.", 2),
    ]


def test_txt_regex_split_skips_empty_pieces(tmp_path):
    path = tmp_path / "tiny.txt"
    path.write_text(
        "<|endoftext|>\nOnce upon a time.\n<|endoftext|>\n \n<|endoftext|>The end.<|endoftext|>\n"
    )
    good, bad = read(path, split_on=r"<\|endoftext\|>")
    assert bad == []
    assert [(r.text, r.position) for r in good] == [("Once upon a time.", 0), ("The end.", 1)]


@pytest.mark.parametrize("bad_option", ["(unclosed", "a**"])
def test_txt_invalid_regex_names_the_option(tmp_path, bad_option):
    path = tmp_path / "a.txt"
    path.write_text("x")
    with pytest.raises(SourceError, match="--split-on"):
        iter_file(path, split_on=bad_option)


def test_txt_regex_matching_empty_string_is_refused(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("x")
    with pytest.raises(SourceError, match="--split-on.*empty string"):
        iter_file(path, split_on=r"\n*")


def test_txt_undecodable_bytes_quarantine_only_their_document(tmp_path):
    path = tmp_path / "stories.txt"
    path.write_bytes(b"Good story.\n\nBad story\nwith caf\xe9.\n\nAnother good one.\n")
    good, bad = read(path, split_on="blank-line")
    assert [(r.text, r.position) for r in good] == [("Good story.", 0), ("Another good one.", 2)]
    assert [(b.line, b.reason) for b in bad] == [(4, UNDECODABLE)]
    assert bad[0].raw == "with caf\ufffd."

    good, bad = read(path, split_on=r"\n\n")
    assert [r.text for r in good] == ["Good story.", "Another good one."]
    assert [(b.line, b.reason) for b in bad] == [(4, UNDECODABLE)]

    good, bad = read(path)  # the whole file is the document
    assert good == [] and [(b.line, b.reason) for b in bad] == [(4, UNDECODABLE)]


@pytest.mark.parametrize(
    "pattern",
    [r"<\|endoftext\|>", r"\n\s*\n", r"(?<=\.)\n", r"(?m)^=+ ", r"(?=== )", r"x{3,}", r"\n"],
)
def test_regex_pieces_match_re_split_across_buffer_boundaries(monkeypatch, pattern):
    # Tiny buffers so that separators fall across every kind of boundary.
    monkeypatch.setattr(readers, "_REGEX_CHUNK", 64)
    monkeypatch.setattr(readers, "_REGEX_MARGIN", 16)
    monkeypatch.setattr(readers, "_REGEX_CONTEXT", 8)
    rng = random.Random(pattern)
    # "x" * 40 makes separator runs longer than the margin
    alphabet = ["a", "b", " ", ".", "\n", "\n\n", "= ", "== ", "xxx", "x" * 40, "<|endoftext|>"]
    compiled = re.compile(pattern)
    for _ in range(150):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 400)))
        lines = text.splitlines(keepends=True)
        pieces = list(readers._regex_pieces(iter(lines), compiled))
        expected, start = [], 0
        for match in compiled.finditer(text):
            expected.append(text[start : match.start()])
            start = match.end()
        expected.append(text[start:])
        assert [p for _, p in pieces] == expected
        assert all(text[offset : offset + len(p)] == p for offset, p in pieces)


def test_regex_pieces_handle_a_long_stretch_without_separator(monkeypatch):
    monkeypatch.setattr(readers, "_REGEX_CHUNK", 64)
    monkeypatch.setattr(readers, "_REGEX_MARGIN", 16)
    long_piece = "y" * 5000
    chunks = ["a", "SEP"] + [long_piece[i : i + 10] for i in range(0, 5000, 10)] + ["SEP", "b"]
    pieces = [p for _, p in readers._regex_pieces(iter(chunks), re.compile("SEP"))]
    assert pieces == ["a", long_piece, "b"]


# --------------------------------------------------------------------------- Wikipedia

WIKI_NS = "http://www.mediawiki.org/xml/export-0.10/"


def wiki_page(title: str, ns: int, page_id: int, text: str, redirect: str | None = None) -> str:
    from xml.sax.saxutils import escape

    redirect_tag = f'<redirect title="{escape(redirect)}" />' if redirect else ""
    return (
        f"<page><title>{escape(title)}</title><ns>{ns}</ns><id>{page_id}</id>{redirect_tag}"
        f"<revision><id>{page_id * 100}</id><contributor><id>5</id></contributor>"
        f'<text xml:space="preserve">{escape(text)}</text></revision></page>'
    )


ARTICLE = """{{Infobox person|name=Ada|birth_date={{birth date|1815|12|10}}}}
'''Ada Lovelace''' (10 December 1815 – 27 November 1852) was an [[England|English]] [[mathematician]].<ref>{{cite book|title=Ada}}</ref> She wrote notes, in {{lang|fr|français}} too.<ref name="n1" />
<!-- hidden editor note -->
[[File:Ada Lovelace portrait.jpg|thumb|Portrait of [[Ada Lovelace|Ada]] in 1840]]

== Early life ==
Her father was [[Lord Byron]].

{| class="wikitable sortable" font-size:80%;"
|+ style="font-size:100%" | Events
|-
! Year !! Event
|-
| 1815 || born
|}


Her mother was ''Anne''.

[[Category:Mathematicians]]
[[de:Ada Lovelace]]
"""


def write_wiki_dump(
    path: Path, pages: list[str], file_ns: str = "File", category_ns: str = "Category"
) -> None:
    xml = (
        f'<mediawiki xmlns="{WIKI_NS}" version="0.10"><siteinfo><sitename>Wikipedia</sitename>'
        f'<namespaces><namespace key="6">{file_ns}</namespace>'
        f'<namespace key="14">{category_ns}</namespace>'
        "</namespaces></siteinfo>" + "".join(pages) + "</mediawiki>"
    )
    path.write_bytes(bz2.compress(xml.encode()))


def test_wiki_dump_articles_only_as_plain_text(tmp_path):
    path = tmp_path / "tinywiki-pages-articles.xml.bz2"
    write_wiki_dump(
        path,
        [
            wiki_page(
                "AccessibleComputing",
                0,
                10,
                "#REDIRECT [[Computer accessibility]]",
                "Computer accessibility",
            ),
            wiki_page("Ada Lovelace", 0, 12, ARTICLE),
            wiki_page("Wikipedia:About", 4, 13, "Project page text."),
            wiki_page("Old redirect", 0, 14, "#redirect [[Ada Lovelace]]"),
            wiki_page("Stub", 0, 15, "{{stub}}"),
        ],
    )
    good, bad = read(path)
    assert bad == []
    assert [(r.meta["title"], r.meta["page_id"], r.position) for r in good] == [
        ("Ada Lovelace", 12, 1),
        ("Stub", 15, 4),
    ]
    text = good[0].text
    assert text == (
        "Ada Lovelace (10 December 1815 – 27 November 1852) was an English mathematician."
        " She wrote notes, in français too.\n\nEarly life\nHer father was Lord Byron.\n\nHer mother was Anne."
    )
    assert good[1].text == ""  # kept, with its position; normalize drops empty documents


def test_wiki_dump_local_namespace_names_come_from_siteinfo(tmp_path):
    path = tmp_path / "dewiki-pages-articles.xml.bz2"
    text = "[[Datei:Ada.jpg|mini|Ada im Jahr [[1840]]]]\nAda war eine [[Mathematik|Mathematikerin]].\n[[Kategorie:Frau]]"
    write_wiki_dump(path, [wiki_page("Ada", 0, 1, text)], file_ns="Datei", category_ns="Kategorie")
    good, bad = read(path)
    assert bad == [] and [r.text for r in good] == ["Ada war eine Mathematikerin."]


def test_wiki_dump_part_names_are_recognised(tmp_path):
    path = tmp_path / "enwiki-latest-pages-articles1.xml-p1p41242.bz2"
    write_wiki_dump(path, [wiki_page("A", 0, 1, "Alpha is a [[letter]].")])
    assert expand_local(str(path)) == [(path, path.name)]
    good, bad = read(path)
    assert [r.text for r in good] == ["Alpha is a letter."]


def test_truncated_wiki_dump_yields_pages_then_one_bad_record(tmp_path):
    path = tmp_path / "dump.xml.bz2"
    write_wiki_dump(
        path, [wiki_page(f"Page {i}", 0, i, "word " * 2000 + str(i)) for i in range(1, 30)]
    )
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    good, bad = read(path)
    assert len(bad) == 1 and bad[0].line is None
    assert bad[0].reason.startswith("unreadable file: ")
    assert [r.meta["page_id"] for r in good] == list(range(1, len(good) + 1))


# --------------------------------------------------------------------------- broken containers


def test_not_really_gzip_is_one_bad_record(tmp_path):
    path = tmp_path / "docs.jsonl.gz"
    path.write_bytes(b'{"text": "plain, not gzip"}\n')
    good, bad = read(path, display_name="shown-name")
    assert good == []
    assert len(bad) == 1 and bad[0].file == "shown-name"
    assert bad[0].reason.startswith("unreadable file: BadGzipFile")


def test_truncated_gzip_keeps_what_was_read(tmp_path):
    payload = jsonl_bytes(*({"text": f"document number {i} " * 20} for i in range(2000)))
    path = tmp_path / "docs.jsonl.gz"
    data = gzip.compress(payload)
    path.write_bytes(data[: len(data) // 2])
    good, bad = read(path)
    assert 0 < len(good) < 2000
    assert len(bad) == 1 and bad[0].reason.startswith("unreadable file: EOFError")
    assert f"after {len(good)} records" in bad[0].reason


def test_corrupt_parquet_and_missing_file_are_bad_records(tmp_path):
    path = tmp_path / "broken.parquet"
    path.write_bytes(b"PAR1 this is not parquet")
    good, bad = read(path)
    assert good == [] and len(bad) == 1 and bad[0].reason.startswith("unreadable file: ")

    good, bad = read(tmp_path / "gone.jsonl")
    assert good == [] and len(bad) == 1 and "FileNotFoundError" in bad[0].reason


# --------------------------------------------------------------------------- expand_local


def make_tree(root: Path) -> None:
    for rel in [
        "b.jsonl",
        "a/x.jsonl",
        "a/y.txt.gz",
        "c/deep/z.parquet",
        "README.md",
        ".hidden.jsonl",
        ".git/h.jsonl",
    ]:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")


def test_expand_directory_recursive_sorted_hidden_skipped(tmp_path):
    make_tree(tmp_path / "data")
    found = expand_local(str(tmp_path / "data"))
    assert [key for _, key in found] == ["a/x.jsonl", "a/y.txt.gz", "b.jsonl", "c/deep/z.parquet"]
    assert all(path == tmp_path / "data" / key for path, key in found)


def test_expand_glob_keys_and_errors(tmp_path):
    make_tree(tmp_path / "data")
    found = expand_local(str(tmp_path / "data" / "*.jsonl"))
    assert found == [(tmp_path / "data" / "b.jsonl", "b.jsonl")]
    # a wildcard folder keeps the folder in the key, so same-named files do not collide
    (tmp_path / "data" / "c" / "x.jsonl").write_bytes(b"")
    found = expand_local(str(tmp_path / "data" / "*" / "x.jsonl"))
    assert [key for _, key in found] == ["a/x.jsonl", "c/x.jsonl"]
    with pytest.raises(SourceError, match=r"\*\.csv: the pattern matches no files"):
        expand_local(str(tmp_path / "data" / "*.csv"))
    with pytest.raises(SourceError, match=r"README\.md.*unsupported suffix"):
        expand_local(str(tmp_path / "data" / "*"))


def test_expand_single_file_missing_and_unsupported(tmp_path):
    make_tree(tmp_path)
    assert expand_local(str(tmp_path / "a" / "x.jsonl")) == [
        (tmp_path / "a" / "x.jsonl", "x.jsonl")
    ]
    missing = str(tmp_path / "nope.jsonl")
    with pytest.raises(SourceError, match=re.escape(missing) + ": no such file"):
        expand_local(missing)
    with pytest.raises(SourceError, match=r"README\.md: unsupported file type.*\.jsonl.*\.parquet"):
        expand_local(str(tmp_path / "README.md"))
    only_docs = tmp_path / "docs"
    only_docs.mkdir()
    (only_docs / "notes.md").write_text("x")
    with pytest.raises(SourceError, match=r"docs: no files with a supported suffix"):
        expand_local(str(only_docs))


@pytest.mark.parametrize("spec", ["", "   ", "\t\n"])
def test_expand_empty_source_is_refused(tmp_path, monkeypatch, spec):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "here.jsonl").write_text('{"text": "x"}\n')  # today's directory is not read
    with pytest.raises(SourceError, match="empty SOURCE"):
        expand_local(spec)


def symlinked_tree(root: Path) -> Path:
    """data/ with a real file, a link to it, a link loop, a dangling link, a folder link
    elsewhere and a folder link back up (a loop for anything that follows folder links)."""
    data = root / "data"
    (data / "a").mkdir(parents=True)
    (data / "a" / "x.jsonl").write_text('{"text": "x"}\n')
    (data / "b").mkdir()
    (data / "b" / "x.jsonl").symlink_to(Path("..", "a", "x.jsonl"))
    (data / "loop.jsonl").symlink_to("loop.jsonl")  # points to itself: ELOOP
    (data / "ping.jsonl").symlink_to("pong.jsonl")
    (data / "pong.jsonl").symlink_to("ping.jsonl")
    (data / "gone.jsonl").symlink_to("nowhere.jsonl")
    (data / "a" / "up").symlink_to("..")  # a folder loop
    elsewhere = root / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "e.jsonl").write_text('{"text": "e"}\n')
    (data / "outside").symlink_to(elsewhere)
    (elsewhere / "single.jsonl").symlink_to(data / "a" / "x.jsonl")
    return data


def test_expand_directory_skips_loops_links_and_duplicates_with_a_note(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    symlinked_tree(tmp_path)
    skipped: list[str] = []
    found = expand_local("data", skipped=skipped)
    assert found == [(Path("data/a/x.jsonl"), "a/x.jsonl")]
    assert skipped == [  # folders as the walk meets them, then files by key
        "data/outside: directory symlink (not followed)",
        "data/a/up: symlink loop",
        "data/b/x.jsonl: same file as data/a/x.jsonl",
        "data/gone.jsonl: dangling symlink",
        "data/loop.jsonl: symlink loop",
        "data/ping.jsonl: symlink loop",
        "data/pong.jsonl: symlink loop",
    ]
    # without `skipped` the same files, and no error
    assert expand_local("data") == found
    # a file symlink to a regular file elsewhere is read (once)
    assert expand_local("elsewhere") == [
        (Path("elsewhere/e.jsonl"), "e.jsonl"),
        (Path("elsewhere/single.jsonl"), "single.jsonl"),
    ]


def test_expand_recursive_glob_does_not_follow_a_folder_loop(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = symlinked_tree(tmp_path)
    (data / "b" / "down").symlink_to("..")  # two loops: glob.glob would take ~2**40 paths
    skipped: list[str] = []
    found = expand_local("data/**/*.jsonl", skipped=skipped)
    assert found == [(Path("data/a/x.jsonl"), "a/x.jsonl")]
    assert "data/a/up: symlink loop" in skipped and "data/b/down: symlink loop" in skipped
    assert "data/b/x.jsonl: same file as data/a/x.jsonl" in skipped
    # a wildcard over folder names still follows a link that is no loop, once
    skipped = []
    found = expand_local("data/*/e.jsonl", skipped=skipped)
    assert found == [(Path("data/outside/e.jsonl"), "outside/e.jsonl")]
    assert skipped == []
    skipped = []
    found = expand_local("data/*/x.jsonl", skipped=skipped)
    assert found == [(Path("data/a/x.jsonl"), "a/x.jsonl")]
    assert skipped == ["data/b/x.jsonl: same file as data/a/x.jsonl"]


def test_expand_same_file_by_two_names_keeps_the_first_key(tmp_path):
    data = tmp_path / "data"
    (data / "z").mkdir(parents=True)
    (data / "z" / "real.jsonl").write_text('{"text": "x"}\n')
    os.link(data / "z" / "real.jsonl", data / "hard.jsonl")  # a hard link is the same file too
    (data / "y.jsonl").symlink_to(Path("z", "real.jsonl"))
    for spec in (str(data), str(data / "**" / "*.jsonl")):
        skipped: list[str] = []
        assert expand_local(spec, skipped=skipped) == [(data / "hard.jsonl", "hard.jsonl")]
        assert skipped == [
            f"{data / 'y.jsonl'}: same file as {data / 'hard.jsonl'}",
            f"{data / 'z' / 'real.jsonl'}: same file as {data / 'hard.jsonl'}",
        ]


def test_expand_only_broken_links_and_broken_link_specs(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "gone.jsonl").symlink_to("nowhere.jsonl")
    skipped: list[str] = []
    message = r"no files with a supported suffix.*\(1 skipped: .*gone\.jsonl: dangling symlink\)"
    with pytest.raises(SourceError, match=message):
        expand_local(str(data), skipped=skipped)
    assert skipped == [f"{data / 'gone.jsonl'}: dangling symlink"]
    with pytest.raises(SourceError, match=r"matches no files \(1 skipped"):
        expand_local(str(data / "*.jsonl"))
    with pytest.raises(SourceError, match=r"gone\.jsonl: dangling symlink$"):
        expand_local(str(data / "gone.jsonl"))
    (data / "self.jsonl").symlink_to("self.jsonl")
    with pytest.raises(SourceError, match=r"self\.jsonl: symlink loop$"):
        expand_local(str(data / "self.jsonl"))


def test_expand_skips_a_fifo_instead_of_blocking_on_it(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.jsonl").write_text('{"text": "x"}\n')
    os.mkfifo(data / "pipe.jsonl")  # opening it to read would wait for a writer for ever
    for spec in (str(data), str(data / "*.jsonl")):
        skipped: list[str] = []
        assert expand_local(spec, skipped=skipped) == [(data / "a.jsonl", "a.jsonl")]
        assert skipped == [f"{data / 'pipe.jsonl'}: not a regular file"]


def test_expand_glob_keeps_globs_rules(tmp_path, monkeypatch):
    # what glob.glob matched before: hidden names only for a dotted pattern, `**` for zero
    # or more folders, character classes, keys relative to the fixed leading folder
    make_tree(tmp_path / "data")
    (tmp_path / "data" / "a" / ".h.jsonl").write_bytes(b"")
    monkeypatch.chdir(tmp_path)
    keys = lambda spec: [key for _, key in expand_local(spec)]  # noqa: E731
    assert keys("data/**/*.jsonl") == ["a/x.jsonl", "b.jsonl"]
    assert keys("data/**/x.jsonl") == ["a/x.jsonl"]
    assert keys("data/[ab]/*") == ["a/x.jsonl", "a/y.txt.gz"]
    assert keys("data/a/.*.jsonl") == [".h.jsonl"]
    assert keys("data/c/**") == ["deep/z.parquet"]
    assert keys("*/?.jsonl") == ["data/b.jsonl"]
    with pytest.raises(SourceError, match=r"README\.md.*unsupported suffix"):
        expand_local("data/**")


# --------------------------------------------------------------------------- real corpora


def test_real_jsonl_and_c4_corpora_read_cleanly(corpora):
    good, bad = read(corpora / "zhwiki_cmrc2018" / "cmrc2018_contexts.jsonl")
    assert bad == [] and len(good) == 1104
    assert good[0].meta["source_id"] == "DEV_0" and good[0].meta["title"] == "战国无双3"
    for path in sorted((corpora / "webcrawl").glob("*.jsonl")) + sorted(
        (corpora / "webcrawl").glob("*.json.gz")
    ):
        good, bad = read(path)
        assert bad == [], path
        assert len(good) == 10 and all(r.text.strip() for r in good), path
    dolma, _ = read(corpora / "webcrawl" / "dolma_cc_en_head-0091.jsonl")
    assert dolma[0].meta["source_id"].startswith("http") and isinstance(
        dolma[0].meta["metadata"], dict
    )


def test_real_tinystories_split_both_ways(corpora):
    folder = corpora / "tinystories_en"
    stories, bad = read(folder / "cs336_tinystories_sample.txt", split_on=r"<\|endoftext\|>")
    assert bad == [] and len(stories) == 5
    assert all(
        s.text.startswith(("Once", "One")) and "<|endoftext|>" not in s.text for s in stories
    )
    for path in sorted(folder.glob("*.txt")):
        good, bad = read(path, split_on="blank-line")
        assert bad == [] and good, path


def test_real_wikipedia_dump(corpora):
    [(path, key)] = expand_local(str(corpora / "enwiki_dump"))
    good, bad = read(path)
    assert bad == []
    assert len(good) == 106
    assert len({r.position for r in good}) == 106
    for record in good:
        assert not record.text.lower().startswith("#redirect"), record.meta
        assert "\n\n\n" not in record.text, record.meta
        for junk in ("[[", "]]", "{{", "}}", "<ref", "{|", "|}", "thumb|", "<!--"):
            assert junk not in record.text, (record.meta["title"], junk)
    anarchism = next(r for r in good if r.meta["title"] == "Anarchism")
    assert anarchism.meta["page_id"] == 12
    assert anarchism.text.startswith(
        "Anarchism is a political philosophy that advocates self-governed societies"
    )


# --------------------------------------------------------------------------- WARC


def write_warc(path: Path, responses: list[tuple[str, str, str, bytes]]) -> None:
    """A gzipped WARC with a request and a response record per (url, status, content type, body)."""
    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter

    with open(path, "wb") as f:
        writer = WARCWriter(f, gzip=True)
        for url, status, content_type, body in responses:
            writer.write_record(writer.create_warc_record(url, "request", payload=io.BytesIO(b"GET / HTTP/1.1\r\n\r\n")))
            headers = StatusAndHeaders(status, [("Content-Type", content_type)], protocol="HTTP/1.1")
            writer.write_record(writer.create_warc_record(url, "response", payload=io.BytesIO(body),
                                                          http_headers=headers))


PAGE = (b"<html><head><title>A page</title><style>p{}</style><script>var x = 1;</script></head><body>"
        b"<nav><a href=/>Home</a><a href=/news>News</a></nav><h1>Big news</h1>"
        b"<p>The first paragraph, with <b>bold</b> text.</p><p>Second&nbsp;one &amp; more.</p>"
        b"<footer>Cookie policy</footer></body></html>")


def test_warc_html_responses_become_plain_text_with_their_url(tmp_path):
    path = tmp_path / "crawl.warc.gz"
    write_warc(path, [
        ("https://example.com/a", "200 OK", "text/html; charset=utf-8", PAGE),
        ("https://example.com/logo.png", "200 OK", "image/png", b"\x89PNG"),
        ("https://example.com/gone", "404 Not Found", "text/html", b"<p>missing</p>"),
        ("https://example.com/zh", "200 OK", "text/html; charset=gbk", "<p>中文网页</p>".encode("gbk")),
    ])
    records = list(iter_file(path))
    assert [type(r) for r in records] == [Record, Record]
    page, chinese = records
    # the main text only (menu, footer, head, script and style gone), a blank line between
    # blocks, entities decoded (nbsp stays a no-break space, for normalize to judge)
    assert page.text == "Big news\n\nThe first paragraph, with bold text.\n\nSecond\u00a0one & more."
    assert page.meta["url"] == "https://example.com/a" and page.meta["title"] == "A page"
    assert chinese.text == "中文网页" and chinese.position == 3  # the ordinal among responses


def test_a_broken_warc_is_reported_not_raised(tmp_path):
    path = tmp_path / "broken.warc.gz"
    path.write_bytes(gzip.compress(b"this is not a WARC record\r\n\r\n"))
    records = list(iter_file(path))
    assert len(records) == 1 and isinstance(records[0], BadRecord) and "WARC" in records[0].reason


def test_real_crawl_pages(corpora):
    pages = [r for f in sorted((corpora / "webcrawl").glob("*.warc.gz")) for r in iter_file(f)]
    assert len(pages) > 30 and all(isinstance(r, Record) for r in pages)
    assert all(r.meta["url"].startswith("http") and not re.search(r"<[a-zA-Z/!]", r.text) for r in pages)
