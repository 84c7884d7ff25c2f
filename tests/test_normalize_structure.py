"""normalize knows where it is: code blocks, Markdown structure, English around Chinese names,
overlong lines. Each case of the issue, with text of that kind, through the rules and the stage."""

from __future__ import annotations

import json
import re

import polars as pl

from nonllama.pipeline.io import read_manifest, read_parts
from nonllama.pipeline.normalize import NormalizeConfig, normalize_texts

README = """\
# tinyhttp

tinyhttp is a small HTTP client for Python scripts that need to fetch a few pages without pulling in a large dependency tree. It supports timeouts, retries with exponential backoff, and streaming downloads.

The library was written for command-line tools and notebooks, where starting quickly matters more than squeezing out the last request per second. It has no compiled extensions and runs on every platform that Python itself runs on.

## Installation

Install the package from PyPI with pip, preferably inside a virtual environment:

```bash
python -m venv .venv
. .venv/bin/activate
pip install tinyhttp
```

Python 3.9 or newer is required. The only dependency is the standard library.

## Usage

The client keeps one connection pool per host, so reuse a single client for many requests instead of creating a new one every time:

```python
from tinyhttp import Client


def fetch_titles(urls, timeout=10.0):
    \"\"\"Return the HTML title of every page, or None where the request failed.\"\"\"
    titles = {}
    with Client(timeout=timeout, retries=3) as client:
        for url in urls:
            try:
                page = client.get(url)
            except client.Error as err:
                print(f"skipping {url}: {err}")
                titles[url] = None
                continue
            titles[url] = page.html.title
    return titles
```

The function above never raises for a single bad address. It prints a short message and moves on to the next one, which is usually what you want in a batch job.

## Options

Every option can be passed to the constructor or set later as an attribute of the client:

| Option | Default | Meaning |
|---|---|---|
| `timeout` | `10.0` | Seconds to wait for the server before giving up. |
| `retries` | `3` | How many times a failed request is tried again. |
| `backoff` | `0.5` | Base delay in seconds between two retries. |

Retries only happen for connection errors and for the status codes 502, 503 and 504. Any other error is raised at once, so that your code can decide what to do with it.

## License

tinyhttp is released under the MIT license. Contributions are welcome: please open an issue first if you plan a larger change, so that we can discuss the design before you write the code.
"""

# English sentences that name Chinese places and people: ASCII punctuation and its spaces stay
BILINGUAL = [
    "The city of 北京, the capital of China, has more than twenty million inhabitants.",
    "Our guide in 上海, Ms. 王芳, showed us the Bund; then we took the train to 杭州.",
    "The poet 李白: a wanderer, a drinker, and the most quoted name in Chinese verse.",
    "We stayed two nights in 成都. The pandas were asleep both mornings!",
    "Did you ever visit 西安? Its city wall is almost fourteen kilometres long.",
]

# a Chinese paragraph of about 30,000 characters on one line, sentences of different lengths
ZH_SENTENCES = [
    "长江是中国第一大河，全长约六千三百公里，流经青海、西藏、四川、云南、重庆、湖北、湖南、江西、安徽、江苏和上海。",
    "它的流域面积约占全国陆地面积的五分之一，养育了数亿人口。",
    "自古以来，人们沿江而居，在两岸开垦农田、修筑城镇，形成了繁荣的经济带。",
    "三峡工程建成以后，防洪、发电和航运的能力都有了明显的提高！",
    "然而，生态保护同样不能忽视：江豚的数量曾经急剧下降，许多鱼类的产卵场也受到了影响。",
    "近年来实施的十年禁渔，正是为了让长江休养生息。",
    "科研人员在宜昌、岳阳和九江等地设立了监测站，定期记录水质和鱼类种群的变化；",
    "这些数据表明，禁渔的效果已经开始显现。",
    "当地的渔民大多转了行，有的开起了农家乐，有的成为了巡护员？",
    "他们说，看到江里的鱼多起来了，心里比什么都高兴。",
]


def zh_paragraph(chars: int) -> str:
    out: list[str] = []
    i = 0
    while sum(map(len, out)) < chars:
        sentence = ZH_SENTENCES[i % len(ZH_SENTENCES)]
        out.append(f"第{i + 1}段记录：{sentence}" if i % 7 == 3 else sentence)
        i += 1
    return "".join(out)


def norm(text: str, **overrides) -> str:
    return normalize_texts(pl.Series([text]), NormalizeConfig(**overrides))[0]


def code_block(text: str, opening: str) -> list[str]:
    """The lines of the first fenced block whose opening fence is `opening`, fences included."""
    lines = text.split("\n")
    start = lines.index(opening)
    end = next(i for i in range(start + 1, len(lines)) if lines[i].strip() in ("```", "~~~"))
    return lines[start : end + 1]


def run_stages(tmp_path, cli, texts: list[str], *stages: str) -> None:
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts), encoding="utf-8")
    work = tmp_path / "work"
    cli("download", path, "--workdir", work)
    for stage in stages:
        cli(stage, "--workdir", work)


# --------------------------------------------------------------------------- code and Markdown


def test_readme_with_code_and_table_survives_normalize_and_filter(tmp_path, cli):
    run_stages(tmp_path, cli, [README], "normalize", "filter")
    work = tmp_path / "work"
    normalized = read_parts(work / "normalized")["text"].to_list()
    # the README is clean text: normalize leaves every line of it, code and table included
    assert normalized == [README.strip()]
    filtered = read_parts(work / "filtered")
    assert filtered.height == 1, read_parts(work / "filtered" / "rejected")["drop_reason"].to_list()
    kept = filtered["text"][0]
    python = code_block(README, "```python")
    assert python[-1] == "```" and "                page = client.get(url)" in python
    # filter's line cleaning folds the two blank lines after the import into one (filter's
    # business); every other line of the code, indentation included, comes through
    assert [x for x in code_block(kept, "```python") if x] == [x for x in python if x]
    assert code_block(kept, "```bash") == code_block(README, "```bash")
    assert "| Option | Default | Meaning |\n|---|---|---|\n| `timeout` |" in kept


def test_code_keeps_indentation_tabs_spaces_and_symbol_lines():
    doc = (
        "Here is  the “main” loop，in C:\n\n"
        "```c\n"
        "int main(void) {\n"
        "\tfor (int i = 0;  i < 10;  i++) {\n"
        "\t\tputs(\"ＦＵＬＬ－ＷＩＤＴＨ，stays\");\n"
        "\t}\n"
        "\n\n\n"
        "    return 0;   \n"
        "}\n"
        "```\n\n"
        "~~~\n"
        "*****\n"
        "  --  \n"
        "~~~\n"
        "That is all."
    )
    out = norm(doc)
    # prose around the code is normalized as before ...
    assert out.startswith('Here is the "main" loop, in C:\n\n```c\n')
    # ... the code is not: tabs, runs of spaces, blank lines, full-width text, `}` and the fences
    assert code_block(out, "```c") == code_block(doc, "```c")
    assert code_block(out, "~~~") == ["~~~", "*****", "  --  ", "~~~"]
    assert out.endswith("~~~\nThat is all.")


def test_unclosed_fence_runs_to_the_end_of_the_document():
    doc = "Output of the tool:\n\n```\n  total   12\n  ok      12\n"
    assert norm(doc) == doc.rstrip("\n")


def test_indented_code_block_keeps_its_whitespace():
    doc = (
        "Run this in a shell:\n\n"
        "    for f in *.txt; do\n"
        "        wc  -l \"$f\"\n"
        "    done\n\n"
        "A paragraph line\n"
        "    right after a paragraph continues it: not code."
    )
    out = norm(doc)
    assert out == (
        "Run this in a shell:\n\n"
        "    for f in *.txt; do\n"
        "        wc  -l \"$f\"\n"
        "    done\n\n"
        "A paragraph line\n"
        "right after a paragraph continues it: not code."
    )


def test_markdown_lists_quotes_and_tables_keep_their_whitespace():
    doc = (
        "Shopping list:\n\n"
        "- fruit\n"
        "  - apples,  pears\n"
        "    - the  green ones\n"
        "1. first\n"
        "   2. nested  number\n\n"
        "> A quoted  paragraph,\n"
        ">\n"
        "> and its second part.\n\n"
        "| Name   | Count |\n"
        "|:-------|------:|\n"
        "| apples |    12 |\n"
    )
    out = norm(doc)
    assert out.split("\n") == [
        "Shopping list:",
        "",
        "- fruit",
        "  - apples, pears",  # the nesting stays; a run of spaces in the text still collapses
        "    - the green ones",
        "1. first",
        "   2. nested number",
        "",
        "> A quoted paragraph,",
        ">",  # an empty line of the quote is not a stray symbol
        "> and its second part.",
        "",
        "| Name   | Count |",  # a table row keeps its alignment
        "|:-------|------:|",
        "| apples |    12 |",
    ]
    # a separator line of symbols that is not part of a table is still dropped
    assert norm("para one\n|---|---|\npara two") == "para one\n\npara two"


# --------------------------------------------------------------------------- English and Chinese


def test_english_sentences_with_chinese_names_keep_ascii_punctuation():
    for sentence in BILINGUAL:
        assert norm(sentence) == sentence


def test_chinese_sentences_still_get_full_width_punctuation():
    assert norm("我们去了北京,上海和广州.") == "我们去了北京，上海和广州。"
    assert norm("他说: 明天见! 你呢?") == "他说：明天见！你呢？"
    # Latin words inside a Chinese clause do not make it English
    assert norm("我用 iPhone 拍了这张照片, 效果很好.") == "我用 iPhone 拍了这张照片，效果很好。"
    assert norm("中国,USA和日本") == "中国，USA和日本"
    # one line, both languages: each mark is decided by its own clauses
    mixed = "The capital is 北京, a city of palaces. 我们明天去北京,然后去天津."
    assert norm(mixed) == "The capital is 北京, a city of palaces. 我们明天去北京，然后去天津。"


def test_bilingual_text_through_the_stage(tmp_path, cli):
    chinese = "北京是中国的首都,也是全国的政治和文化中心. 故宫位于北京市中心."
    run_stages(tmp_path, cli, ["\n".join(BILINGUAL), chinese], "normalize")
    kept = read_parts(tmp_path / "work" / "normalized")["text"].to_list()
    assert kept == ["\n".join(BILINGUAL), "北京是中国的首都，也是全国的政治和文化中心。故宫位于北京市中心。"]


# --------------------------------------------------------------------------- overlong lines


def test_overlong_chinese_paragraph_is_split_at_sentence_ends_not_lost(tmp_path, cli):
    paragraph = zh_paragraph(30_000)
    assert len(paragraph) >= 30_000 and "\n" not in paragraph
    english = "A short English document that must come through untouched, next to the long one."
    run_stages(tmp_path, cli, [paragraph, english], "normalize")
    work = tmp_path / "work"
    m = read_manifest(work / "normalized")
    assert m["rows_in"] == m["rows_out"] == 2 and m["rows_removed"] == 0
    text = read_parts(work / "normalized")["text"][0]
    lines = text.split("\n")
    assert "".join(lines) == paragraph  # every character, in order
    assert len(lines) >= 2 and all(len(line) <= 20_000 for line in lines)
    assert all(line.endswith(("。", "！", "？", "；")) for line in lines)  # cut after sentences


def test_overlong_line_without_any_boundary_is_cut_hard_and_kept():
    dna = "ACGT" * 6_000  # 24,000 letters, no space or punctuation
    out = norm(dna)
    assert out.replace("\n", "") == dna
    assert [len(line) for line in out.split("\n")] == [20_000, 4_000]


def test_overlong_english_line_is_cut_at_sentence_ends():
    sentences = [f"Record {i} was checked by the night shift and found to be in order." for i in range(600)]
    line = " ".join(sentences)
    out = norm(line, max_line_chars=5_000)
    assert out.replace("\n", " ") == line
    assert all(len(x) <= 5_000 and x.endswith("in order.") for x in out.split("\n"))


# --------------------------------------------------------------------------- accounting


def test_every_document_is_accounted_for(tmp_path, cli):
    docs = [README, "\n\n\n", "*****\n-----", zh_paragraph(25_000), BILINGUAL[0]]
    run_stages(tmp_path, cli, docs, "normalize")
    work = tmp_path / "work"
    m = read_manifest(work / "normalized")
    kept, removed = read_parts(work / "normalized"), read_parts(work / "normalized" / "removed")
    assert m["rows_in"] == kept.height + removed.height == len(docs)
    assert m["drop_reasons"] == {"empty_after_normalize": removed.height}
    # only the documents without a letter are emptied
    assert all(not re.search(r"\w", t) for t in removed["text"])
    assert kept.height == 3
