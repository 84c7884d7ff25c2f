"""HTML to text for `download`'s WARC reader: speed and quality of the main-text extractors.

Compared on the same pages, in the same run:
- `old walker`: the html.parser tag walker readers.py used before (all visible text, one line
  per block element), kept below as the baseline; speed ratios are against it;
- `trafilatura` (what FineWeb uses): `trafilatura.extract(html, url=...)`, and its fast mode
  (`fast=True`: no readability/jusText fallbacks), both without comments, tables kept;
- `resiliparse` (what DCLM uses): `extract_plain_text(HTMLTree.parse(html), main_content=True)`;
- `nonllama`: `nonllama.pipeline.html.extract_main_text`, resiliparse with its lone-character
  fix (see that module), what readers.py runs now.

Pages: the 37 successful HTML responses of ../shared/corpora/webcrawl/dolma_sample-000*.warc.gz
(personal sites, blogs, the Creative Commons, Common Crawl and AI2 sites), decoded once as the
reader decodes them. The slice holds no reference extractions of these URLs (its JSONL and C4
files are other pages), so quality is judged by hand-picked snippets on 12 of the pages: text
of the page's main content (article paragraphs, list items of a post, FAQ answers), which an
extractor should keep, and boilerplate (menus, cookie and form messages, footers, "related
posts"), which it should drop. A snippet counts as kept when it appears in the output once
all whitespace is removed from both (so "Act ." and "Act." match). Every snippet is in the
old walker's output, which keeps all visible text: its boilerplate figure is 100% by design.

- pages/s: extraction only (the pages already decoded), best of --repeat rounds, the
  extractors taking turns in each round;
- main kept: main-content snippets found / all of them (recall of the article text);
- boilerplate kept: boilerplate snippets found / all of them (lower is better);
- empty: pages the extractor returns nothing for (the reader quarantines those);
- chars: output characters over the old walker's, on all 37 pages.

Then the probes, small pages for the reader's known failure cases, each checked for the exact
text a reader wants: a page without `</head>` (legal HTML5), inline tags inside a Chinese word
(`北<a>京</a>市`), single Chinese characters and punctuation between links, `<pre>` keeping
its line breaks, a one-line page.

Without ../shared the page figures are skipped (the probes still run).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from collections.abc import Callable
from html.parser import HTMLParser
from pathlib import Path

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "corpora"
WEBCRAWL = SHARED / "webcrawl"

Extractor = Callable[[str, str], "str | None"]

# ---------------------------------------------------------------------- the old walker


_OLD_HIDDEN = frozenset({"script", "style", "noscript", "template", "svg", "head", "iframe", "object"})
_OLD_BLOCKS = frozenset({
    "address", "article", "aside", "blockquote", "br", "dd", "div", "dl", "dt", "fieldset",
    "figcaption", "figure", "footer", "form", "h1", "h2", "h3", "h4", "h5", "h6", "header", "hr",
    "li", "main", "nav", "ol", "p", "pre", "section", "table", "td", "th", "tr", "ul", "option",
    "button", "label", "summary", "details", "caption",
})  # fmt: skip
_OLD_WORD_BREAKS = frozenset({"a", "img", "input", "select", "textarea", "span"})
_OLD_SPACES = re.compile(r"[ \t\r\f\v\u00a0]+")


class OldWalker(HTMLParser):
    """The tag walker readers.py used before resiliparse, as it was: the baseline."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.lines: list[str] = []
        self.current: list[str] = []
        self.hidden = 0

    def _break(self) -> None:
        line = _OLD_SPACES.sub(" ", "".join(self.current)).strip()
        if line:
            self.lines.append(line)
        self.current = []

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag in _OLD_HIDDEN:
            self.hidden += 1
        elif tag in _OLD_BLOCKS:
            self._break()
        elif tag in _OLD_WORD_BREAKS:
            self.current.append(" ")

    def handle_startendtag(self, tag: str, attrs: list) -> None:
        if tag in _OLD_BLOCKS:
            self._break()

    def handle_endtag(self, tag: str) -> None:
        if tag in _OLD_HIDDEN:
            self.hidden = max(0, self.hidden - 1)
        elif tag in _OLD_BLOCKS:
            self._break()
        elif tag in _OLD_WORD_BREAKS:
            self.current.append(" ")

    def handle_data(self, data: str) -> None:
        if not self.hidden:
            self.current.append(data.replace("\n", " "))


def old_walker(html: str, url: str) -> str:
    parser = OldWalker()
    parser.feed(html)
    parser.close()
    parser._break()
    return "\n".join(parser.lines)


# ---------------------------------------------------------------------- the candidates


def extractors() -> dict[str, Extractor]:
    import trafilatura
    from resiliparse.extract.html2text import extract_plain_text
    from resiliparse.parse.html import HTMLTree

    from nonllama.pipeline.html import extract_main_text

    return {
        "old walker": old_walker,
        "trafilatura": lambda html, url: trafilatura.extract(html, url=url, include_comments=False),
        "trafilatura fast": lambda html, url: trafilatura.extract(
            html, url=url, include_comments=False, fast=True
        ),
        "resiliparse": lambda html, url: extract_plain_text(HTMLTree.parse(html), main_content=True),
        "nonllama": lambda html, url: extract_main_text(html)[0],
    }


# ---------------------------------------------------------------------- hand-picked snippets

_CC_MENU = ["Skip to content", "Join a global community working to strengthen the Commons",
            "PO Box 1866, Mountain View, CA 94042", "Our work relies on you! Help us keep the Internet free and open."]
_MARIA_MENU = ["Resources / Code / Blog / CV / Publications /"]
_COMMONCRAWL_MENU = ["Get Started Blog Examples Use Cases CCBot Infra Status FAQ",
                     "Research Papers Mailing List Archive Discord Server Collaborators", "© 2023 Common Crawl"]

# url -> (main-content snippets, boilerplate snippets)
LABELS: dict[str, tuple[list[str], list[str]]] = {
    "https://soldaini.net/": (
        ["Hello, visitor!", "Senior applied research scientist at the Allen Institute for AI",
         "These days, my research focuses on best practices for curation",
         "Hop over the publications page for a complete list of my work."],
        ["Publications / Facts", "This website is licensed under CC BY 4.0"]),
    "https://soldaini.net/facts/": (
        ["In no particular order, here are some facts about me", "My last name is pronounced sol-dah-ee-nee",
         "I love raccoons VERY", "My 10th degree academic ancestor is Siméon Denis Poisson"],
        ["Publications / Facts"]),
    "https://kyleclo.com/": (
        ["I’m a Lead Scientist at the Allen Institute for AI", "I live in Seattle.", "Welcome Summer 2023 interns!"],
        ["Toggle navigation", "Powered by Jekyll with al-folio theme"]),
    "https://maria-antoniak.github.io/2023/07/04/notes-on-mastodon.html": (
        ["This is a list of things I think are important to understand if you’re new to Mastodon",
         "When viewing the replies to a post, you only see the replies known to your server",
         "Yes, your server matters.", "I highly recommend these posts by Erin Kissane"],
        _MARIA_MENU),
    "https://maria-antoniak.github.io/2023/04/11/paperpile-to-zotero.html": (
        ["This is just a quick guide explaining how to move your references from Paperpile to Zotero",
         "Download your Paperpile files.", "That’s it! It will take a little while to import"],
        _MARIA_MENU),
    "https://maria-antoniak.github.io/2018/11/19/data-science-crash-course.html": (
        ["Internship application season is coming up!", "Choosing a Machine Learning Classifier by Edwin Chen",
         "Machine Learning Done Wrong by Cheng-Tao Chu"],
        _MARIA_MENU),
    "https://amyxzhang.wordpress.com/": (
        ["Is Slack eating email?", "In interviews with people who use group chat actively",
         "Finished product: a clean and unambiguous list of top location field entries"],
        ["Privacy & Cookies: This site uses cookies.", "Already have a WordPress.com account? Log in now.",
         "Loading Comments...", "Report this content"]),
    "https://creativecommons.org/": (
        ["Creative Commons is an international nonprofit organization that empowers people",
         "For over 20 years, Creative Commons has supported a global movement"],
        [*_CC_MENU, "Subscribe to our Newsletter"]),
    "https://creativecommons.org/2024/03/28/cc-joins-civil-society-letter-urging-u-s-to-support-openness-and-transparency-in-ai/": (
        ["Over the last year, Creative Commons (CC) worked with other stakeholders",
         "This week, we joined a broad coalition of civil society", "For more information on CC’s works on AI"],
        [*_CC_MENU, "Exploring a Books Data Commons for AI Training"]),
    "https://www.semanticscholar.org/about": (
        ["Semantic Scholar provides free, AI-driven search and discovery tools",
         "We are a Research and Product Development team within the Allen Institute for AI",
         "Collaboration makes us stronger."],
        ["Oops! Something went wrong while submitting the form.", "Research Dashboard",
         "Please visit our FAQ to find helpful information before submitting your question.",
         "Thanks! Your feedback has been submitted."]),
    "https://commoncrawl.org/blog/march-april-2024-newsletter": (
        ["We're excited to share an update on some of our recent projects and initiatives",
         "Our Web Graph releases (which allow visualisation of the crawl metrics)",
         "We’re pleased to announce stable performance on our S3 bucket"],
        _COMMONCRAWL_MENU),
    "https://commoncrawl.org/faq": (
        ["Common Crawl is a 501(c)(3) non-profit organization", "CCBot is a Nutch-based web crawler",
         "We obey the Crawl-delay parameter for robots.txt"],
        _COMMONCRAWL_MENU),
}  # fmt: skip

# ---------------------------------------------------------------------- probes

_ARTICLE_ZH = "<p>" + "这是一段足够长的正文，让页面看起来像一篇真正的新闻报道。" * 6 + "</p>"
_ARTICLE_EN = "<p>" + "This is a paragraph of ordinary article text, long enough to look real. " * 6 + "</p>"

# name -> (page, text the output must contain)
PROBES: dict[str, tuple[str, str]] = {
    "no </head>": (
        "<!doctype html><html><head><meta charset=utf-8><title>T</title><body>"
        f"<p>The body of a page whose head is never closed.</p>{_ARTICLE_EN}</body></html>",
        "The body of a page whose head is never closed."),
    "北<a>京</a>市": (
        f"<html><body><article><p>首都是北<a href='/bj'>京</a>市，<span>也是</span>全国的政治中心。</p>{_ARTICLE_ZH}"
        "</article></body></html>",
        "首都是北京市，也是全国的政治中心。"),
    "、 和 between links": (
        f"<html><body><article><p>大城市有<a href='/bj'>北京</a>、<a href='/sh'>上海</a>和<a href='/gz'>广州</a>。</p>"
        f"{_ARTICLE_ZH}</article></body></html>",
        "大城市有北京、上海和广州。"),
    "<pre> newlines": (
        f"<html><body><article>{_ARTICLE_EN}<pre>def f(x):\n    return x + 1\n\nprint(f(2))</pre></article></body></html>",
        "def f(x):\n    return x + 1\n\nprint(f(2))"),
    "one-line page": ("<p>中文网页</p>", "中文网页"),
}  # fmt: skip


def squeeze(text: str) -> str:
    return "".join(text.split())


# ---------------------------------------------------------------------- measuring


def load_pages() -> list[tuple[str, str]]:
    """(url, html) of the successful HTML responses, decoded as readers.py decodes them."""
    from warcio.archiveiterator import ArchiveIterator

    from nonllama.pipeline.readers import _decode_html

    pages = []
    for path in sorted(WEBCRAWL.glob("dolma_sample-*.warc.gz")):
        with open(path, "rb") as stream:
            for record in ArchiveIterator(stream):
                http = record.http_headers
                if record.rec_type != "response" or http is None:
                    continue
                content_type = http.get_header("Content-Type") or ""
                if not http.get_statuscode().startswith("2") or "html" not in content_type.lower():
                    continue
                html = _decode_html(record.content_stream().read(), content_type)
                if html is not None:
                    pages.append((record.rec_headers.get_header("WARC-Target-URI"), html))
    return pages


def measure(pages: list[tuple[str, str]], funcs: dict[str, Extractor], repeat: int) -> None:
    outputs = {name: [fn(html, url) or "" for url, html in pages] for name, fn in funcs.items()}
    best = dict.fromkeys(funcs, float("inf"))
    for round_ in range(repeat):
        names = list(funcs)
        order = names[round_ % len(names):] + names[: round_ % len(names)]
        for name in order:
            fn = funcs[name]
            start = time.perf_counter()
            for url, html in pages:
                fn(html, url)
            best[name] = min(best[name], time.perf_counter() - start)

    labelled = [(i, LABELS[url]) for i, (url, _) in enumerate(pages) if url in LABELS]
    n_main = sum(len(main) for _, (main, _) in labelled)
    n_boiler = sum(len(boiler) for _, (_, boiler) in labelled)
    print(f"{len(pages)} pages ({sum(len(h) for _, h in pages) / 1e6:.1f} MB of HTML); "
          f"{len(labelled)} labelled, {n_main} main-content and {n_boiler} boilerplate snippets; "
          f"best of {repeat} rounds")
    base_rate = len(pages) / best["old walker"]
    base_chars = sum(map(len, outputs["old walker"]))
    print(f"{'extractor':<18}{'pages/s':>9}{'x walker':>10}{'main kept':>11}{'boiler kept':>13}"
          f"{'empty':>7}{'chars':>8}")
    for name in funcs:
        squeezed = [squeeze(text) for text in outputs[name]]
        main_kept = sum(squeeze(s) in squeezed[i] for i, (main, _) in labelled for s in main)
        boiler_kept = sum(squeeze(s) in squeezed[i] for i, (_, boiler) in labelled for s in boiler)
        rate = len(pages) / best[name]
        empty = sum(not text.strip() for text in outputs[name])
        chars = sum(map(len, outputs[name])) / base_chars
        print(f"{name:<18}{rate:>9.0f}{rate / base_rate:>9.2f}x{main_kept / n_main:>10.0%}"
              f"{boiler_kept / n_boiler:>12.0%}{empty:>7}{chars:>7.2f}x")
    if labelled:
        walker_main = sum(
            squeeze(s) in squeeze(outputs["old walker"][i]) for i, (main, _) in labelled for s in main
        )
        walker_boiler = sum(
            squeeze(s) in squeeze(outputs["old walker"][i]) for i, (_, b) in labelled for s in b
        )
        if walker_main != n_main or walker_boiler != n_boiler:  # a label the page does not hold
            print(f"warning: the old walker keeps {walker_main}/{n_main} main and "
                  f"{walker_boiler}/{n_boiler} boilerplate snippets; a label is wrong")


def probe(funcs: dict[str, Extractor]) -> None:
    print("probes (ok: the output holds the expected text exactly):")
    print(f"{'extractor':<18}" + "".join(f"{name:>22}" for name in PROBES))
    for name, fn in funcs.items():
        cells = []
        for page, expected in PROBES.values():
            try:
                ok = expected in (fn(page, "https://example.com/") or "")
            except Exception as exc:  # an extractor that crashes on a page fails the probe
                ok = False
                print(f"{name}: {type(exc).__name__}: {exc}", file=sys.stderr)
            cells.append("ok" if ok else "FAIL")
        print(f"{name:<18}" + "".join(f"{cell:>22}" for cell in cells))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="timing rounds; the best is reported")
    args = parser.parse_args(argv)
    try:
        funcs = extractors()
    except ImportError as exc:
        print(f"skipped: {exc.name} is not installed (pip install trafilatura resiliparse)")
        return 0
    if WEBCRAWL.is_dir():
        print("load average before: {:.1f} {:.1f} {:.1f}".format(*os.getloadavg()))
        measure(load_pages(), funcs, args.repeat)
    else:
        print(f"pages skipped: {WEBCRAWL} not found")
    probe(funcs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
