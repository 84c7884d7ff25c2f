"""Tests for nonllama.pipeline.html (the main text of a page) and for WARC pages through download."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from nonllama.pipeline import readers
from nonllama.pipeline.html import extract_main_text
from nonllama.pipeline.io import read_manifest, read_parts
from nonllama.pipeline.readers import iter_file
from nonllama.pipeline.records import BadRecord, Record

# A news page: a header with a skip link and the site menu, a hidden cookie banner, the
# article, related posts beside it and a footer.
NEWS_PAGE = """<!doctype html><html lang=en><head><title>Local council approves new bike lanes</title>
<script>var tracker = 1;</script></head><body>
<header class=site-header><a class=skip-link href=#main>Skip to content</a>
<nav class=main-navigation><ul><li><a href=/>Home</a></li><li><a href=/news>News</a></li>
<li><a href=/sport>Sport</a></li></ul></nav></header>
<div class=cookie-banner hidden>We use cookies to improve your experience.</div>
<main id=main><article><h1>Council approves new bike lanes</h1>
<p>The city council voted on Tuesday to build twelve kilometres of <a href=/map>protected bike
lanes</a> along the river.</p>
<p>Construction starts in the spring and should take about eighteen months, the transport
office said.</p></article></main>
<aside><h2>Related posts</h2><ul><li><a href=/a>Bus fares rise again</a></li></ul></aside>
<footer><p>Copyright 2024 Riverside Gazette. All rights reserved.</p>
<a href=/privacy>Privacy policy</a></footer>
</body></html>"""

MENU_ONLY_PAGE = (
    "<html><head><title>Site map</title></head><body><nav><ul><li><a href=/>Home</a></li>"
    "<li><a href=/about>About us</a></li></ul></nav><footer>Copyright 2024 Example Inc.</footer>"
    "</body></html>"
)


def test_a_page_without_closing_head_keeps_its_body():
    # HTML5 lets </head> and <body> go unwritten: the parser opens the body at the first <p>
    page = "<!doctype html><head><meta charset=utf-8><title>No end of head</title><p>The whole body is here.</p>"
    assert extract_main_text(page) == ("The whole body is here.", "No end of head")


@pytest.mark.parametrize(
    ("page", "expected"),
    [
        ("<p>北<a href='/bj'>京</a>市</p>", "北京市"),
        ("<p>首都是北<span>京</span>市，<b>也是</b>全国的政治中心。</p>", "首都是北京市，也是全国的政治中心。"),
        # single characters and CJK punctuation alone between links, which resiliparse by
        # itself drops as icon glyphs
        (
            "<p>大城市有<a href=/bj>北京</a>、<a href=/sh>上海</a>和<a href=/gz>广州</a>。</p>",
            "大城市有北京、上海和广州。",
        ),
        ("<p>北<a href=/x>&#20140;</a>市 <b>&mdash;</b> 首都</p>", "北京市 — 首都"),
    ],
)
def test_inline_tags_inside_chinese_words_add_nothing_and_lose_nothing(page, expected):
    text, _ = extract_main_text(f"<html><body><article>{page}</article></body></html>")
    assert text == expected


def test_pre_keeps_its_line_breaks_blank_lines_and_indentation():
    code = "def f(x):\n    return x + 1\n\nprint(f(2))"
    page = f"<html><body><p>Here is the code:</p><pre>{code}</pre><p>That was it.</p></body></html>"
    assert extract_main_text(page)[0] == f"Here is the code:\n\n{code}\n\nThat was it."


def test_navigation_cookie_banner_related_posts_and_footer_are_dropped():
    text, title = extract_main_text(NEWS_PAGE)
    assert text == (
        "Council approves new bike lanes\n\n"
        "The city council voted on Tuesday to build twelve kilometres of protected bike lanes "
        "along the river.\n\n"
        "Construction starts in the spring and should take about eighteen months, the transport "
        "office said."
    )
    assert title == "Local council approves new bike lanes"


@pytest.mark.parametrize(
    "page", [MENU_ONLY_PAGE, "<html><head><script>run()</script></head><body></body></html>", ""]
)
def test_a_page_without_main_text_gives_empty_text(page):
    assert extract_main_text(page)[0] == ""


# --------------------------------------------------------------------------- WARC


def write_warc(path: Path, responses: list[tuple[str, str, bytes]]) -> None:
    """A gzipped WARC: a request and a 200 response record per (url, content type, body)."""
    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter

    with open(path, "wb") as f:
        writer = WARCWriter(f, gzip=True)
        for url, content_type, body in responses:
            request = io.BytesIO(b"GET / HTTP/1.1\r\n\r\n")
            writer.write_record(writer.create_warc_record(url, "request", payload=request))
            headers = StatusAndHeaders("200 OK", [("Content-Type", content_type)], protocol="HTTP/1.1")
            writer.write_record(
                writer.create_warc_record(url, "response", payload=io.BytesIO(body), http_headers=headers)
            )


ZH_PAGE = (
    "<html><head><meta charset=gbk><title>新闻</title></head><body><nav><ul><li><a href=/>首页</a></li>"
    "<li><a href=/n>新闻</a></li></ul></nav><article><p>首都是北<a href=/bj>京</a>市，"
    "<span>也是</span>全国的政治中心。</p></article></body></html>"
)
CRAWL = [
    ("https://news.example/bike-lanes", "text/html; charset=utf-8", NEWS_PAGE.encode()),
    ("https://example.com/logo.png", "image/png", b"\x89PNG\r\n"),
    ("https://example.com/sitemap", "text/html", MENU_ONLY_PAGE.encode()),
    ("https://zh.example/news", "text/html; charset=gbk", ZH_PAGE.encode("gbk")),
]


def test_warc_pages_go_through_the_download_stage_with_their_metadata(tmp_path, cli):
    src = tmp_path / "crawl.warc.gz"
    write_warc(src, CRAWL)
    out = tmp_path / "raw"
    cli("download", src, "-o", out)
    docs = read_parts(out).sort("id")
    assert docs["id"].to_list() == ["crawl/crawl.warc.gz#0", "crawl/crawl.warc.gz#3"]
    news, chinese = docs.to_dicts()
    assert news["text"].startswith("Council approves new bike lanes\n\nThe city council voted")
    assert "Skip to content" not in news["text"] and "Copyright" not in news["text"]
    assert chinese["text"] == "首都是北京市，也是全国的政治中心。"
    meta = json.loads(news["meta"])
    assert meta["url"] == "https://news.example/bike-lanes"
    assert meta["title"] == "Local council approves new bike lanes"
    assert meta["warc_date"]
    assert json.loads(chinese["meta"])["title"] == "新闻"

    # the page without main text is quarantined and counted, under its URL; the image is
    # not a page at all and is neither
    manifest = read_manifest(out)
    assert (manifest["rows_in"], manifest["rows_out"]) == (3, 2)
    assert manifest["drop_reasons"] == {"bad_record: no main text in the page": 1}
    (entry,) = [json.loads(line) for line in (out / "quarantine.jsonl").read_text().splitlines()]
    assert entry["reason"] == "no main text in the page: https://example.com/sitemap"
    assert entry["file"].endswith("crawl.warc.gz") and entry["raw"].startswith("<html>")


def test_a_page_the_extractor_fails_on_costs_that_page_only(tmp_path, monkeypatch):
    src = tmp_path / "crawl.warc.gz"
    write_warc(src, CRAWL)

    def fail_on_chinese(html: str) -> tuple[str, str]:
        if "首都" in html:
            raise ValueError("parser gave up")
        return extract_main_text(html)

    monkeypatch.setattr(readers, "extract_main_text", fail_on_chinese)
    records = list(iter_file(src))
    assert [type(r) for r in records] == [Record, BadRecord, BadRecord]
    assert records[0].meta["url"] == "https://news.example/bike-lanes"
    assert records[1].reason == "no main text in the page: https://example.com/sitemap"
    assert records[2].reason == "HTML extraction failed: https://zh.example/news: ValueError: parser gave up"
