"""The filter's rules on small hand-made documents: values, decisions, Chinese, bad input."""

from __future__ import annotations

import re

import polars as pl
import pytest

from nonllama.pipeline.filter import FilterConfig, config_from_dict, filter_batch
from nonllama.pipeline.filter_rules import clean_lines, rule_values

EN = (
    "The little fox lived at the edge of a quiet forest. Every morning she walked to the river "
    "to drink, and every evening she told her cubs a story about the stars.\n\n"
    "One day a storm broke the old bridge. The fox and her friends carried branches for hours, "
    "and by night the animals could cross the water again. They were tired but very proud."
)
ZH = (
    "清晨，村子里的老人们早早来到广场上打太极拳。孩子们背着书包，一路说说笑笑地去上学。\n\n"
    "到了下午，天空忽然下起了小雨。街边的小店里飘出饭菜的香味，人们撑着伞匆匆回家。"
    "晚上雨停了，月亮从云里钻了出来，照得整条小河亮晶晶的。"
)


def batch(*texts: str) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "id": [f"d{i}" for i in range(len(texts))],
            "text": list(texts),
            "source": ["test"] * len(texts),
            "meta": ["{}"] * len(texts),
        }
    )


def decide(*texts: str, **config) -> list[str | None]:
    """The drop reason of each text (None: kept), in order."""
    kept, removed = filter_batch(batch(*texts), config_from_dict(config))
    reasons = dict(zip(removed["id"], removed["drop_reason"], strict=True))
    return [reasons.get(f"d{i}") for i in range(len(texts))]


def test_good_english_and_chinese_prose_pass_every_rule():
    assert decide(EN, ZH) == [None, None]
    values = rule_values(pl.Series([EN, ZH]))
    assert values["lang"].to_list() == ["en", "zh"]
    # Chinese counts one word per character; mixed text counts both
    assert values["words"][1] == pl.Series([ZH]).str.count_matches(r"\p{Han}")[0]
    assert rule_values(pl.Series(["iPhone手机很好用"]))["words"][0] == 6


def test_each_problem_gets_its_rule():
    spam = " ".join(["Buy cheap watches online now."] * 30)
    menu = "\n".join(["Home", "News", "Sport", "Weather", "Contact", "About us", "Shop"]) + "\n" + EN
    assert decide(
        "ok",
        "Le petit renard vivait au bord d'une forêt tranquille. Chaque matin, elle allait à la rivière.",
        spam,
        "porn xxx porn nude " + EN,
        c4_line_cleaning=False,
    ) == ["language", "language", "char_repetition", "flagged_words"]
    symbols = "★ ☆ ✪ ✿ ❀ ❁ ✾ ✽ ✼ ✻ ✺ ✹ ✸ ✷ ✶ ✵ ✴ ✳ ✲ ✱ ✰ the end"
    assert decide(symbols, language=False) == ["special_chars"]
    assert decide(menu, c4_line_cleaning=False, short_lines_max_ratio=0.5)[0] in {
        "short_lines",
        "fineweb_short_lines",
    }


def test_rules_switch_off_one_by_one_and_priority_picks_the_first():
    spam = " ".join(["Buy cheap watches online now."] * 30)
    assert decide(spam) == ["char_repetition"]
    assert decide(spam, char_repetition=False) == ["word_repetition"]
    assert decide(spam, char_repetition=False, word_repetition=False)[0].startswith("gopher_")
    everything_off = {k: False for k, v in vars(FilterConfig()).items() if isinstance(v, bool)}
    assert decide(spam, "", **everything_off) == [None, None]


def test_values_recorded_for_kept_and_rejected():
    kept, removed = filter_batch(batch(EN, "ok"), FilterConfig())
    for frame in (kept, removed):
        values = frame["filter_values"].struct.unnest()
        assert {"words", "lang_score", "char_repetition_ratio", "dup_5gram_char_frac"} <= set(values.columns)
    assert removed["text"].to_list() == ["ok"]


def test_stats_only_drops_nothing_but_says_what_it_would():
    kept, removed = filter_batch(batch(EN, "ok"), FilterConfig(stats_only=True))
    assert kept.height == 2 and removed.height == 0
    assert kept["would_drop"].to_list() == [None, "language"]


def test_chinese_without_spaces_is_not_short_or_repetitive():
    # one long line of Chinese news, no spaces, names repeated as news does
    news = "新华社北京1月2日电据国家体委综合司的最新统计，在1997年内，中国运动员共夺得92个世界冠军。" * 1 + (
        "中华人民共和国驻南非共和国大使馆正式开馆，中华人民共和国与南非共和国正式建立了外交关系。"
    )
    assert decide(news, ZH.replace("\n\n", "")) == [None, None]


def test_c4_line_cleaning_cuts_boilerplate_lines_and_counts_them():
    page = "\n".join(
        [
            "Home | News | Stories | About Us | Contact",
            "Skip to main content",
            EN,
            "We use cookies to improve your experience. Accept all cookies",
            "Copyright © 2024 Example Inc. All rights reserved.",
            "首页 | 新闻 | 关于我们 | 联系我们",
            "版权所有 © 2024 示例网络科技有限公司 保留所有权利",
        ]
    )
    kept, _ = filter_batch(batch(page), FilterConfig())
    assert kept["text"][0] == EN
    values = kept["filter_values"].struct.unnest()
    assert values["c4_lines_removed"][0] == 6
    assert values["c4_chars_removed"][0] == len(page) - len(EN)
    # a page of nothing but boilerplate has its own reason; lorem ipsum drops the page
    assert decide("Skip to main content\nPrivacy Policy | Terms of Use", "Lorem ipsum dolor sit amet.\n" + EN) == [
        "empty_after_line_cleaning",
        "c4_lorem_ipsum",
    ]
    # C4's terminal-punctuation rule is off by default: dialogue and Chinese lines survive
    dialogue = 'Tom looked at the box.\n"Can I open it?"\n"Yes"\n那天晚上我们一起看星星'
    cleaned = clean_lines(
        pl.Series([dialogue]), remove_citations=True, javascript=True, policy=True, boilerplate=True,
        terminal_punct=False, min_words_per_line=0, max_word_length=1000, lorem_ipsum=True,
        curly_bracket=False, min_sentences=0,
    )  # fmt: skip
    assert cleaned["text"][0] == dialogue


@pytest.mark.parametrize(
    "text, reason",
    [
        ("😀😃😄😁😆😅🤣😂🙂🙃😉😊😇🥰😍🤩😘😗☺😚😙", "word_count"),  # no word at all
        ("😀 Happy birthday 🎂🎉🎈🎁🥳🎊✨💖🌟🍰🎶", "special_chars"),
        ("\n\n\n\n\n\n", "word_count"),
        ("", "word_count"),
        ("\ufffd\ufffd\ufffd\ufffd", "word_count"),
        ("broken \ufffd\ufffd\ufffd\ufffd\ufffd\ufffd text \ufffd\ufffd\ufffd\ufffd\ufffd", "special_chars"),
    ],
)
def test_bad_input_gets_a_decision(text, reason):
    assert decide(text, language=False) == [reason]


def test_a_ten_megabyte_document_gets_a_decision():
    huge = ("The same sentence again and again. " * 300_000)[:10_000_000]
    kept, removed = filter_batch(batch(huge, EN), FilterConfig())
    assert removed["drop_reason"].to_list() == ["word_count"]  # 1.7 million words
    values = removed["filter_values"].struct.unnest()
    assert values["char_repetition_ratio"][0] > 0.106 and values["dup_10gram_char_frac"][0] > 0.5
    assert kept["id"].to_list() == ["d1"]


def test_bad_config_names_the_key():
    with pytest.raises(ValueError, match="short_lines_max_ratoi"):
        config_from_dict({"short_lines_max_ratoi": 0.4})
    with pytest.raises(ValueError, match="'word_count_min'"):
        config_from_dict({"word_count_min": "ten"})
    with pytest.raises(ValueError, match="gopher_max_dup_ngram_char_frac"):
        config_from_dict({"gopher_max_dup_ngram_char_frac": [0.1]})
    assert config_from_dict({"languages": ["zh"], "special_chars_max_ratio": 1}).special_chars_max_ratio == 1.0


def test_every_number_of_the_config_has_a_range_and_built_configs_are_checked_too():
    from dataclasses import fields

    from nonllama.pipeline.filter import _RANGES

    defaults = FilterConfig()
    numbers = {f.name for f in fields(FilterConfig) if not isinstance(getattr(defaults, f.name), (bool, list, str))}
    assert numbers == set(_RANGES)  # a new threshold cannot slip past validate()
    defaults.validate()
    for bad, message in [
        ({"flagged_words_max_ratio": 1.01}, "'flagged_words_max_ratio' = 1.01: must be a number in [0, 1]"),
        ({"word_repetition_max_ratio": float("nan")}, "'word_repetition_max_ratio' = nan"),
        ({"c4_max_word_length": -5}, "'c4_max_word_length' = -5: must be an integer >= 0"),
        ({"word_count_max": 2.5}, "'word_count_max' = 2.5: must be an integer >= 1"),
        ({"stop_words": "yes"}, "'stop_words' = 'yes': must be true or false"),
        ({"gopher_max_top_ngram_char_frac": [0.2]}, "needs 3 values"),
        ({"languages": ["en", "klingon"]}, "'klingon' is not a language code"),
    ]:
        with pytest.raises(ValueError, match=re.escape(message)):
            FilterConfig(**bad).validate()
        with pytest.raises(ValueError, match=re.escape(message)):  # the heart checks it too
            filter_batch(batch(EN), FilterConfig(**bad))
    # rates per word may exceed 1; a switched-off language rule still wants real codes
    FilterConfig(gopher_max_symbol_word_ratio=2.0, fineweb_max_newline_ratio=3.0).validate()
    with pytest.raises(ValueError, match="'xx'"):
        FilterConfig(language=False, languages=["xx"]).validate()


def test_language_codes_are_the_labels_of_the_model():
    from nonllama.pipeline.filter_rules import LID_LANGUAGES, language_model

    # k=-1 with a threshold below 0: every label of the model, whatever the text
    predicted = language_model().f.predict("hello\n", -1, -1.0, "replace")
    assert {label.removeprefix("__label__") for _, label in predicted} == LID_LANGUAGES
    assert len(LID_LANGUAGES) == 176


# Texts that exercise every branch of the token grammar: numbers with separators, apostrophes
# inside and at the ends of words, CJK next to Latin, kana, marks, emoji, runs of punctuation,
# repeated phrases (the n-gram rules), blank and empty documents.
TOKEN_EDGE_CASES = [
    EN,
    ZH,
    "",
    "\n\n\n",
    "Pi is 3.14, not 3,14159 or 1:2/3; it's rock'n'roll ' quoted' 'twice'' and ’curly’ don’t.",
    "iPhone手机很好用，价格是2,999.00元！Version 1.2.3 发布于2024/01/02。",
    "カタカナとひらがな、漢字が混ざった文章です。 Ünïcödé café naïve résumé e\u0301e\u0301.",
    "Emoji 🎉🎉 and ★★★ symbols --- ... !!! ?? <html> {code} [1] #tag @user",
    " ".join(["the same five words again"] * 12) + " and then something else entirely",
    "重复的句子重复的句子重复的句子。" * 8,
    "a\nb\n\nc d e f g h i j k l m n o p q r s t u v w x y z " * 5,
    "x" * 300 + " " + "ab" * 100,
]


def test_fast_word_table_gives_the_values_of_the_regex_tokenizer():
    """rule_values finds words without the TOKEN regex when it can (no stop-word list needed):
    every value must be what the regex path gives."""
    from nonllama.pipeline.filter_rules import VALUE_GROUPS

    texts = pl.Series(TOKEN_EDGE_CASES * 3)  # repeats across documents must not leak between them
    regex_path = rule_values(texts, identify_language=False)
    needed = {name for group, names in VALUE_GROUPS.items() if group not in ("word_lists", "language") for name in names}
    fast_path = rule_values(texts, identify_language=False, needed=needed)
    skipped = set(VALUE_GROUPS["word_lists"]) | set(VALUE_GROUPS["language"])
    compared = [c for c in regex_path.columns if c not in skipped]
    assert len(compared) > 15
    for column in compared:
        assert fast_path[column].to_list() == pytest.approx(regex_path[column].to_list(), nan_ok=True), column
