"""The filter keeps good text: flagged words match whole words only, C4 line cleaning cuts menus
and share buttons but not prose, the rules' order does not depend on which are on, and every cut
line is recorded with its reason and shown by `nonllama report`."""

from __future__ import annotations

import json
import re

import polars as pl
import pytest
from test_filter import batch, decide

from nonllama.pipeline.filter import FilterConfig, filter_batch
from nonllama.pipeline.filter_rules import (
    JIEBA_BLOCK,
    LINE_CUT_REASONS,
    chinese_flagged_chars,
    clean_lines,
    flagged_chars_in_block,
    rule_values,
    word_list,
)
from nonllama.pipeline.io import read_manifest, read_parts

EN = (
    "The little fox lived at the edge of a quiet forest. Every morning she walked to the river "
    "to drink, and every evening she told her cubs a story about the stars.\n\n"
    "One day a storm broke the old bridge. The fox and her friends carried branches for hours, "
    "and by night the animals could cross the water again. They were tired but very proud."
)
# Ordinary economic and travel news: 出色|情况 holds 色情, 景色|情景 too, 出口|交付 holds 口交.
# Short, as many People's Daily paragraphs are: six flagged characters are 6% of its words.
ZH_NEWS = (
    "本报北京1月5日讯 记者王明报道：今年一季度，全省外贸企业经营出色情况良好，机电产品出口交付"
    "总值超过15亿美元。春节将至，黄山景色情景交融，游客比去年同期增加三成。"
)
ZH_FLAGGED = "警方通报：该网站长期传播色情视频，并以裸聊为名诈骗，已被依法查处。"


def clean(*texts: str, **rules) -> pl.DataFrame:
    options = dict(remove_citations=True, javascript=True, policy=True, boilerplate=True, terminal_punct=False,
                   min_words_per_line=0, max_word_length=1000, lorem_ipsum=True, curly_bracket=False,
                   min_sentences=0)
    return clean_lines(pl.Series(list(texts)), **{**options, **rules})


# --------------------------------------------------------------------------- flagged words


def test_chinese_news_with_flagged_substrings_across_words_is_kept():
    # the substrings are there, and would be 6 of the paragraph's ~85 words
    assert all(w in ZH_NEWS for w in ("色情", "口交"))
    values = rule_values(pl.Series([ZH_NEWS]))
    assert values["flagged_words_ratio"][0] == 0.0
    assert values["lang"][0] == "zh"
    assert decide(ZH_NEWS) == [None]


def test_chinese_flagged_words_that_are_words_are_still_caught():
    values = rule_values(pl.Series([ZH_FLAGGED]))
    # 色情 and 裸聊: 4 of the sentence's 29 characters
    assert values["flagged_words_ratio"][0] == pytest.approx(4 / 29)
    assert decide(ZH_FLAGGED, ZH_NEWS) == ["flagged_words", None]


@pytest.mark.parametrize(
    "block, flagged",
    [
        ("该网站传播色情内容被查处", 2),  # 色情 one token
        ("警方打击色情网站", 2),  # 色情网站: a dictionary word that starts with 色情
        ("这是黄色网站", 4),  # a list entry of two tokens: 黄色|网站
        ("瑞丽市公安局查处卖淫嫖娼案件", 2),  # 卖淫嫖娼: 卖淫 starts it (嫖娼 only ends it)
        ("经营出色情况良好", 0),  # 出色|情况
        ("景色情景交融", 0),  # 景色|情景交融
        ("出口交付总值", 0),  # 出口|交付
        ("男性交友", 0),  # 男性|交友 holds 性交
        ("聊以自慰的是回首往事", 0),  # the idiom "to console oneself" ends with 自慰 (People's Daily)
        ("大家众口交赞", 0),  # 口交 inside an idiom
        ("简化办证手续", 0),  # ordinary words once on the list (People's Daily 1998)
        ("实行优先照顾和特殊服务", 0),
    ],
)
def test_a_chinese_flagged_word_counts_where_jieba_makes_it_a_word(block, flagged):
    assert flagged_chars_in_block(block, sorted(word_list("flagged_words_zh"))) == flagged


def test_only_the_documents_holding_a_flagged_substring_are_segmented(monkeypatch):
    from nonllama.pipeline import filter_rules

    segmented: list[str] = []
    real = filter_rules.flagged_chars_in_block
    monkeypatch.setattr(filter_rules, "flagged_chars_in_block", lambda b, w: segmented.append(b) or real(b, w))
    texts = pl.Series([EN, ZH_NEWS, "今天天气很好，我们去公园散步。", ZH_FLAGGED, ZH_FLAGGED, None, ""])
    counts = chinese_flagged_chars(texts, word_list("flagged_words_zh"))
    assert counts.tolist() == [0, 0, 0, 4, 4, 0, 0]
    # the blocks (text between punctuation) with a flagged substring, each distinct one once
    assert sorted(segmented) == sorted({"全省外贸企业经营出色情况良好", "机电产品出口交付总值超过15亿美元",
                                        "黄山景色情景交融", "该网站长期传播色情视频", "并以裸聊为名诈骗"})


def test_the_blocks_are_the_ones_jieba_segments_on_its_own():
    import jieba

    texts = [ZH_NEWS, ZH_FLAGGED, "iPhone手机, AV女优 C++/C# 3.5% a-b_c 《人民日报》 ＡＢＣ１２３", EN]
    for text in texts:
        ours = pl.Series([text]).str.extract_all(JIEBA_BLOCK).explode().drop_nulls().to_list()
        jiebas = [b for b in jieba.re_han_default.split(text) if b and jieba.re_han_default.fullmatch(b)]
        assert ours == jiebas


def test_english_flagged_words_match_whole_words_in_any_case():
    flagged = word_list("flagged_words_en")
    # each holds a list entry inside it (cunt, cock, anal, cum, rape), but is another word
    for word in ("Scunthorpe", "cocktail", "analysis", "cumulative", "grapes"):
        assert any(entry in word.lower() for entry in flagged), word
    text = ("In Scunthorpe the cocktail analysis showed cumulative gains; grapes, a therapist from Sussex, "
            "an assessment of the class.")
    assert rule_values(pl.Series([text]))["flagged_words_ratio"][0] == 0.0
    shouting = "PORN, Porn. porn; NUDE"  # 4 words, all on the list, in any case and punctuation
    assert rule_values(pl.Series([shouting]))["flagged_words_ratio"][0] == 1.0


def test_every_chinese_flagged_word_is_made_of_characters_jieba_segments():
    # an entry with another character (a space, a mark) could never be found in a block
    for entry in word_list("flagged_words_zh"):
        assert re.fullmatch(r"[\u4e00-\u9fd5a-z0-9+#&._%\-]+", entry), entry


# --------------------------------------------------------------------------- C4 line cleaning

PROSE = (
    "Before the meeting, Maria wanted to share this with the rest of the team, because the numbers "
    "had surprised her as much as anyone.\n"
    "The rule in the handbook is simple:\n"
    "if a > b then\n"
    "keep the larger one, and when either value will do, write x | y in the notes.\n"
    "Share this recipe with anyone who loves a good soup: it takes twenty minutes and uses only what "
    "is already in your cupboard.\n"
    "Tom > Jerry\n"
    "感谢大家一直以来关注我们的节目，我们会继续努力。\n"
    "版权所有人应当依法维护自己的权益。"
)


def test_prose_with_share_this_and_separators_is_not_cut():
    cleaned = clean(PROSE)
    assert cleaned["text"][0] == PROSE
    assert cleaned["lines_cut"][0].to_list() == []
    kept, _ = filter_batch(batch(PROSE), FilterConfig(language=False))
    assert kept["text"][0] == PROSE


NAVIGATION = [
    ("Share this", "boilerplate"),
    ("Share this: Facebook | Twitter", "boilerplate"),
    ("Share this story: Facebook | Twitter | Email", "boilerplate"),
    ("Follow us on Instagram", "boilerplate"),
    ("© 2024 Example Inc. All rights reserved.", "boilerplate"),
    ("扫一扫，关注我们的微信公众号", "boilerplate"),
    ("京ICP备12345678号", "boilerplate"),
    ("本版责任编辑周泓洋", "boilerplate"),  # People's Daily 1998
    ("版权所有 © 2024 示例网络科技有限公司 保留所有权利", "boilerplate"),
    ("Home > Products > Shoes", "navigation"),
    ("Home | About | Contact", "navigation"),
    ("Our Team | Careers | Press", "navigation"),
    ("Sign in | Register", "navigation"),
    ("Home > Shoes", "navigation"),
    ("网站首页 > 新闻中心 > 正文", "navigation"),
    ("登录 | 注册", "navigation"),
    ("Menu", "navigation"),
    ("Privacy Policy | Terms of Use", "policy"),
]


def test_navigation_bars_and_share_buttons_are_still_cut_with_their_reason():
    page = "\n".join([line for line, _ in NAVIGATION[:9]] + [EN] + [line for line, _ in NAVIGATION[9:]])
    cleaned = clean(page)
    assert cleaned["text"][0] == EN
    cut = cleaned["lines_cut"][0].to_list()
    assert cut == [{"line": line, "reason": reason} for line, reason in NAVIGATION]
    assert cleaned["c4_lines_removed"][0] == len(NAVIGATION)
    assert {reason for _, reason in NAVIGATION} <= set(LINE_CUT_REASONS)


def test_each_cut_line_gets_the_first_rule_that_cuts_it():
    long_word = "x" * 1200
    cleaned = clean(f"{long_word}\nRun the javascript below.\nOk\n{EN}", min_words_per_line=3)
    assert [c["reason"] for c in cleaned["lines_cut"][0].to_list()] == ["long_word", "javascript", "too_few_words"]
    # a cut line is recorded with its first 200 characters
    assert cleaned["lines_cut"][0].to_list()[0]["line"] == "x" * 200


def test_kept_and_rejected_rows_say_which_lines_were_cut():
    page = "Home | About | Contact\n" + EN + "\nShare this: Facebook | Twitter"
    only_menu = "Skip to main content\nHome | News | Sport"
    kept, rejected = filter_batch(batch(page, only_menu), FilterConfig())
    assert kept["lines_cut"][0].to_list() == [
        {"line": "Home | About | Contact", "reason": "navigation"},
        {"line": "Share this: Facebook | Twitter", "reason": "boilerplate"},
    ]
    assert rejected["drop_reason"].to_list() == ["empty_after_line_cleaning"]
    assert [c["reason"] for c in rejected["lines_cut"][0].to_list()] == ["boilerplate", "navigation"]
    # line cleaning off: the column is there, empty, with the same type
    off, _ = filter_batch(batch(page), FilterConfig(c4_line_cleaning=False, language=False))
    assert off["lines_cut"].to_list() == [[]] and off.schema["lines_cut"] == kept.schema["lines_cut"]


# --------------------------------------------------------------------------- rule order


def test_language_comes_right_after_word_count_whichever_checks_are_on():
    flagged_english = "porn xxx porn nude " + EN
    # English text full of flagged words, kept only if Chinese: the language rule decides first
    assert decide(flagged_english, languages=["zh"]) == ["language"]
    assert decide(flagged_english, languages=["zh"], word_count=False) == ["language"]
    assert decide(flagged_english, languages=["zh"], word_count=False, language=False) == ["flagged_words"]
    assert decide("", languages=["zh"]) == ["word_count"]
    assert decide("", languages=["zh"], word_count=False) == ["language"]


# --------------------------------------------------------------------------- the stage and the report


def test_the_stage_counts_cut_lines_per_reason_and_the_report_shows_them(tmp_path, cli):
    pages = [
        "Home | About | Contact\n" + EN + "\nShare this: Facebook | Twitter",
        "Home | About | Contact\n" + EN.replace("fox", "cat") + "\n© 2024 Example Inc. All rights reserved.",
        PROSE.replace("Tom > Jerry\n", "") + "\n" + EN,
        ZH_NEWS + "\n网站首页 > 新闻中心 > 正文",
        "Skip to main content\nMenu",
    ]
    path = tmp_path / "pages.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in pages), encoding="utf-8")
    work = tmp_path / "work"
    cli("download", path, "--workdir", work)
    cli("normalize", "--workdir", work)
    out = cli("filter", "--workdir", work).output
    assert "lines cut as navigation: 3" in out
    m = read_manifest(work / "filtered")
    assert m["rows_out"] + m["rows_removed"] == m["rows_in"] == 5
    assert m["drop_reasons"] == {"empty_after_line_cleaning": 1}
    counts = m["stage_counts"]
    assert (counts["lines_cut_as_navigation"], counts["lines_cut_as_boilerplate"]) == (3, 2)
    assert counts["lines_removed_by_line_cleaning"] == 5
    kept = read_parts(work / "filtered")
    assert kept.select(pl.col("lines_cut").list.len().sum()).item() == 5
    # prose is kept whole
    assert any("if a > b then" in t and "write x | y" in t for t in kept["text"])

    cli("report", "--workdir", work, "-o", tmp_path / "report.md")
    report = (tmp_path / "report.md").read_text(encoding="utf-8")
    section = report.split("## Lines cut by line cleaning", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ") and "---" not in line]
    assert rows[1].startswith("| navigation | 3 | 3 | Home \\| About \\| Contact | 2 |")
    assert "|  |  |  | 网站首页 > 新闻中心 > 正文 | 1 |" in section, section
    assert "| boilerplate | 2 | 2 |" in section and "Share this: Facebook \\| Twitter" in section


# ----------------------------------------------------------------------------- code and tables

README = (
    "# Using the parser\n\n"
    "Install it and call it from Python like this:\n\n"
    "```python\n"
    "def parse(text):\n"
    "    for line in text.splitlines():\n"
    "\n"
    "\n"
    "        if line.strip():  # share this | skip that\n"
    "            yield items[1]\n"
    "```\n\n"
    "The function yields every non-empty line of the input, stripped of surrounding whitespace. It "
    "is lazy, so it works on large files without loading them whole."
)
TABLE = (
    "The results of the three runs are below. Each run used the same data and the same seed, so the "
    "differences come from the schedule alone.\n\n"
    "| run | schedule | loss |\n|---|---|---|\n| a | cosine | 2.31 |\n| b | wsd | 2.28 |\n| c | constant | 2.45 |\n\n"
    "The warmup-stable-decay schedule reached the lowest loss of the three."
)


def test_a_readme_with_code_and_a_table_is_kept_whole():
    # before: the code block's short lines failed `short_lines`, the table's cells `gopher_alpha_words`
    assert decide(README, TABLE) == [None, None]
    kept, _ = filter_batch(batch(README, TABLE), FilterConfig())
    assert kept["text"].to_list() == [README, TABLE]  # blank lines and indentation in the code too


def test_line_cleaning_leaves_code_lines_alone():
    cleaned = clean(README)
    assert cleaned["text"][0] == README
    assert cleaned["c4_lines_removed"][0] == 0
    # the same line outside a code block is prose to the rules: the citation goes
    assert clean("It rained twice.[1] Then it stopped.")["text"][0] == "It rained twice. Then it stopped."


def test_the_rules_read_prose_without_code_blocks_and_tables():
    from nonllama.pipeline.filter_rules import prose_view

    texts = pl.Series("text", [README, TABLE, "```\nonly code here\n```", "```\nan unclosed block\nruns on"])
    prose = prose_view(texts).to_list()
    assert prose[0].startswith("# Using the parser") and "def parse" not in prose[0] and "lazy" in prose[0]
    assert "|" not in prose[1] and prose[1].endswith("lowest loss of the three.")
    assert prose[2:] == texts.to_list()[2:]  # nothing but code: the text itself
