"""The normalize stage's text rules: each rule on English and Chinese, its switch, real corpora."""

from __future__ import annotations

import gzip
import json
import unicodedata
from pathlib import Path

import polars as pl
import pytest

from nonllama.pipeline.normalize import (
    NormalizeConfig,
    config_from_dict,
    config_to_dict,
    normalize_texts,
)

CORPORA = Path(__file__).resolve().parents[1].parent / "shared" / "corpora"

ALL_OFF = {
    "fix_mojibake": False,
    "nfkc": False,
    "remove_invisible": False,
    "whitespace": False,
    "punctuation": False,
    "quotes_dashes": False,
    "split_long_lines": False,
    "drop_symbol_lines": False,
}


def norm(text: str, **overrides) -> str:
    """The full pipeline (defaults), with `overrides` applied to the config."""
    return normalize_texts(pl.Series([text]), NormalizeConfig(**overrides))[0]


def only(rule: str, text: str, **extra) -> str:
    """Just one rule on (plus `extra` settings), every other rule off."""
    return norm(text, **{**ALL_OFF, rule: True, **extra})


@pytest.fixture
def corpora() -> Path:
    if not CORPORA.is_dir():
        pytest.skip(f"shared corpora not found at {CORPORA} (a fresh clone has none)")
    return CORPORA


def people_daily_lines(corpora: Path, n: int) -> list[str]:
    with gzip.open(corpora / "peoples_daily_1998" / "199801.txt.gz", "rt", encoding="utf-8") as f:
        return [next(f).rstrip("\n") for _ in range(n)]


def webcrawl_docs(corpora: Path) -> list[str]:
    path = corpora / "webcrawl" / "dolma_cc_en_head-0091.jsonl"
    return [json.loads(line)["text"] for line in path.open(encoding="utf-8")]


# --------------------------------------------------------------------------- batch contract


def test_batch_keeps_length_order_name_and_reads_nulls_as_empty():
    s = pl.Series("text", [None, "", "  \n\t ", " b ", "ａ"])
    out = normalize_texts(s, NormalizeConfig())
    assert out.name == "text"
    assert out.dtype == pl.String
    assert out.to_list() == ["", "", "", "b", "a"]


def test_empty_batch():
    out = normalize_texts(pl.Series("text", [], dtype=pl.String), NormalizeConfig())
    assert out.len() == 0 and out.dtype == pl.String


def test_everything_off_changes_nothing():
    messy = "Ｈｉ，“x” – a\u200bb\r\n\u3000中国,美国.\n*****\n  end  \x1b[0m"
    assert norm(messy, **ALL_OFF) == messy


def test_input_series_is_not_modified():
    s = pl.Series(["donâ€™t ＡＢＣ", "中国,美国."])
    before = s.to_list()
    normalize_texts(s, NormalizeConfig())
    assert s.to_list() == before


# --------------------------------------------------------------------------- mojibake


def test_mojibake_english():
    assert only("fix_mojibake", "donâ€™t stop") == "don\u2019t stop"
    assert only("fix_mojibake", "cafÃ© rÃ©sumÃ©") == "café résumé"
    assert norm("donâ€™t stop") == "don't stop"  # and then quotes make it ASCII


@pytest.mark.parametrize("text", ["中文", "人民日报", "今天的天气很好，我们去公园。"])
@pytest.mark.parametrize("encoding", ["cp1252", "latin-1"])
def test_mojibake_chinese(text, encoding):
    broken = text.encode("utf-8").decode(encoding)
    assert broken != text
    assert only("fix_mojibake", broken) == text
    assert norm(broken) == text  # the soft hyphen inside is fixed before invisible removes it


def test_mojibake_lost_closing_quote_byte():
    # TinyStories: `”` is E2 80 9D, 0x9D is undefined in cp1252 and was dropped
    broken = "He asked, â€œCan you help me?â€ Daisy nodded.\nShe said â€œyesâ€"
    fixed = "He asked, \u201cCan you help me?\u201d Daisy nodded.\nShe said \u201cyes\u201d"
    assert only("fix_mojibake", broken) == fixed


@pytest.mark.parametrize(
    "text",
    [
        "C\u2019est l\u2019été à Paris\u00a0: très «\u00a0naïf\u00a0» — déjà vu, façade, cœur",
        "Größe, Übung, Straße – „Anführungszeichen“ £5 © 10°C ±2",
        "中文文本，“引号”、《书名》……——完。東京の天気",
        "Ångström, Ærøskøbing, señor, Dvořák, Ελληνικά, Русский",
    ],
)
def test_mojibake_leaves_correct_text_alone(text):
    assert only("fix_mojibake", text) == text


def test_mojibake_off():
    assert "â€™" in norm("donâ€™t", fix_mojibake=False)


def test_mojibake_precheck_limits_ftfy_to_flagged_documents(monkeypatch):
    import ftfy

    calls = []
    real = ftfy.fix_text

    def counting(text, *args, **kwargs):
        calls.append(text)
        return real(text, *args, **kwargs)

    monkeypatch.setattr(ftfy, "fix_text", counting)
    clean = ["plain English text, 1,000 words.", "中文文本，没有问题。", "Größe café"] * 30
    batch = [*clean, "donâ€™t", "ä¸\xadæ–‡"]
    out = normalize_texts(pl.Series(batch), NormalizeConfig())
    assert out[-2:].to_list() == ["don't", "中文"]
    assert sorted(calls) == sorted(["donâ€™t", "ä¸\xadæ–‡"])


# --------------------------------------------------------------------------- whitespace


def test_whitespace_english():
    text = "  Hello\u00a0\u00a0world \r\nline\ttwo\rthree   \n\n\n\n\nlast\u2028line  "
    assert only("whitespace", text) == "Hello world\nline two\nthree\n\nlast\nline"


def test_whitespace_chinese():
    text = "\u3000\u3000中国人民。\u3000\r\n\r\n\r\n\u3000\u3000第二段。"
    assert only("whitespace", text) == "中国人民。\n\n第二段。"


def test_whitespace_off():
    text = "a  b\r\nc\u3000d \n\n\n\ne"
    assert norm(text, whitespace=False) == text


# --------------------------------------------------------------------------- invisible


def test_invisible_english():
    text = "\ufeffzero\u200bwidth\u200c \u00adsoft\u2060join\u200e \x1b[31mred\x1b[0m \x00\x07bell\ue000"
    assert only("remove_invisible", text) == "zerowidth softjoin red bell"


def test_invisible_chinese_and_emoji():
    assert only("remove_invisible", "中\u200b文\u200d字\ufeff") == "中文字"
    family = "\U0001f468\u200d\U0001f469\u200d\U0001f467"
    assert only("remove_invisible", f"a {family} b") == f"a {family} b"


def test_invisible_off():
    text = "zero\u200bwidth\u00ad \x07"
    assert norm(text, remove_invisible=False, whitespace=False) == text


# --------------------------------------------------------------------------- nfkc


def test_nfkc_letters_digits_ligatures():
    assert only("nfkc", "ＡＢＣ１２３ｘｙｚ ﬁnd ﬂow") == "ABC123xyz find flow"
    assert only("nfkc", "１９９８年增长１２．５％") == "1998年增长12.5%"
    assert only("nfkc", "⼀⼆ ｶﾞｷﾞ 𝐁𝐨𝐥𝐝") == "一二 ガギ Bold"
    assert only("nfkc", "cafe\u0301 \uf900") == "café \u8c48"  # NFC


def test_nfkc_keeps_meaningful_compatibility_characters():
    text = "① ⑴ x² H₂O ½ ™ ℃ № Ⅱ ㎡ µ …"
    assert only("nfkc", text) == text


def test_nfkc_leaves_chinese_punctuation_to_the_punctuation_rule():
    text = "中国，美国。（注）：好！吗？是；Hello，world！"
    assert only("nfkc", text) == text
    assert only("nfkc", "\u3000") == "\u3000"  # the whitespace rule's


def test_nfkc_off():
    assert norm("ＡＢＣ１２３", nfkc=False) == "ＡＢＣ１２３"


# --------------------------------------------------------------------------- quotes and dashes


def test_quotes_english():
    text = "\u201cHello,\u201d she said. \u2018Hi\u2019 \u2014 don\u2019t\u2026 \u201eja\u201c"
    assert only("quotes_dashes", text) == '"Hello," she said. \'Hi\' \u2014 don\'t... "ja"'


@pytest.mark.parametrize(
    "text",
    [
        "他说：“你好。”‘扫黄’千万不要……",
        "他说“OK”。",
        "“1998年是关键的一年”",
        "“他们走了……”",
        "迈向新世纪——一九九八年新年讲话",
        "两个传统佳节———春节和肉孜节",
    ],
)
def test_quotes_chinese_are_kept(text):
    assert only("quotes_dashes", text) == text
    assert norm(text) == text


def test_quotes_english_inside_a_chinese_line():
    assert only("quotes_dashes", "He said \u201chi\u201d, 他说。") == 'He said "hi", 他说。'
    assert only("quotes_dashes", "It\u2019s 中文 Wait\u2026") == "It's 中文 Wait..."


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1990\u20131995, pp. 10\u201320", "1990-1995, pp. 10-20"),
        ("2000 \u2013 2005", "2000 - 2005"),
        ("so happy \u2013 now", "so happy \u2014 now"),
        ("before--be patient", "before\u2014be patient"),
        ("nothing -- like", "nothing \u2014 like"),
        ("pages 1--17", "pages 1-17"),
        ("run --help <!-- c --> a --- b", "run --help <!-- c --> a --- b"),
        ("\u22125 non\u2011breaking co\u2010op", "-5 non-breaking co-op"),
        ("中国――美国", "中国——美国"),
        ("中国--美国", "中国——美国"),
        ("OK--中文", "OK——中文"),
        ("北京\u2013上海", "北京-上海"),
    ],
)
def test_dashes(text, expected):
    assert only("quotes_dashes", text) == expected


def test_quotes_dashes_off():
    text = "\u201cHi\u201d \u2013 don\u2019t\u2026 a--b"
    assert norm(text, quotes_dashes=False) == text


# --------------------------------------------------------------------------- punctuation


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("中国，美国。", "中国，美国。"),
        ("中国,美国.", "中国，美国。"),
        ("中国, 美国!", "中国，美国！"),
        ("你好?我很好;谢谢:", "你好？我很好；谢谢："),
        ("Hello，world！", "Hello, world!"),
        ("Note：this （really） matters。", "Note: this (really) matters."),
        ("价格是3.5元", "价格是3.5元"),
        ("共1,000元，时间是10:30", "共1,000元，时间是10:30"),
        ("e.g. 中文", "e.g. 中文"),
        ("访问 http://example.com/a?b=1,000 即可", "访问 http://example.com/a?b=1,000 即可"),
        ("我用的是iPhone。Windows，Linux和Mac", "我用的是iPhone。Windows，Linux和Mac"),
        ("他(Tom)说(中文)", "他（Tom）说（中文）"),
        ("Beijing (北京) is big", "Beijing (北京) is big"),
        ('print("你好")', 'print("你好")'),
        ("查尔斯.布里奇曼", "查尔斯.布里奇曼"),
        ("好!!!", "好!!!"),
        ("一. 总则", "一. 总则"),
        ("これは、テスト.", "これは、テスト。"),
        ("안녕하세요，세계！", "안녕하세요,세계!"),
    ],
)
def test_punctuation_by_context(text, expected):
    assert only("punctuation", text) == expected


def test_people_daily_style_fullwidth_digits_and_punctuation():
    text = "１９９８年１月１日，增长１２．５％。（附图片１张）"
    assert norm(text) == "1998年1月1日，增长12.5%。（附图片1张）"


def test_punctuation_off():
    assert norm("中国,美国.", punctuation=False) == "中国,美国."
    assert norm("Hello，world！", punctuation=False) == "Hello，world！"


# --------------------------------------------------------------------------- line drops


def test_symbol_lines_dropped():
    text = (
        "para one\n*****\npara two\n------\n|---|---|\n•••\n＊＊＊\n……\n# Title\n1.\n© 2020\n- item"
    )
    assert only("drop_symbol_lines", text) == (
        "para one\n\npara two\n\n\n\n\n\n# Title\n1.\n© 2020\n- item"
    )
    assert norm(text) == "para one\n\npara two\n\n# Title\n1.\n© 2020\n- item"
    assert norm("中文段落。\n＊＊＊\n第二段。") == "中文段落。\n\n第二段。"


def test_long_lines_are_split_never_dropped():
    # the issue: a line over the limit used to be emptied, and a one-line document with it
    text = "short\n" + "x" * 11 + "\n" + "中" * 10 + "\nok"
    assert norm(text, max_line_chars=10) == "short\nxxxxxxxxxx\nx\n" + "中" * 10 + "\nok"
    out = norm("y" * 30_000)
    assert out.replace("\n", "") == "y" * 30_000
    assert max(map(len, out.split("\n"))) <= 20_000


def test_long_lines_are_split_at_sentence_ends_first():
    text = " ".join(f"Sentence number {i} ends here." for i in range(40))
    out = norm(text, max_line_chars=100)
    assert out.replace("\n", " ") == text
    lines = out.split("\n")
    assert 12 <= len(lines) <= 20 and all(len(line) <= 100 and line.endswith(".") for line in lines)
    # no sentence end in reach: clauses, then spaces
    assert norm("一二三，四五六，七八九", max_line_chars=8) == "一二三，四五六，\n七八九"
    out = norm("alpha beta gamma delta epsilon", max_line_chars=12)
    assert out.split() == ["alpha", "beta", "gamma", "delta", "epsilon"]  # no word cut
    assert out.count("\n") >= 2 and max(map(len, out.split("\n"))) <= 12
    # no space either: a hard cut, as a last resort
    assert norm("abcdefghij", max_line_chars=4).split("\n") == ["abcd", "efgh", "ij"]


def test_line_drops_off():
    text = "a\n*****\n" + "x" * 11
    assert norm(text, drop_symbol_lines=False, split_long_lines=False, max_line_chars=10) == text


# --------------------------------------------------------------------------- idempotence

MIXED = [
    "donâ€™t ＡＢＣ１２３ “quoted” – dash -- x\u200b\r\n\u3000\u3000中国,美国. 他(Tom)说 好!!!",
    "Hello，world！ Note：this （really） matters。\n\n\n\n*****\n“a” “b” ‘c’ “d”“e”",
    "他说：“你好。”‘扫黄’……“OK”,(USA),\u2018it\u2019s\u2019 1\u20132\u20133 a--b--c",
    "中国, 美国. 查尔斯.布里奇曼 一. 总则 (中文 中文) iPhone(苹果手机),好",
    "He said “hi”, 他说。It’s 中文 Wait…… x… 好…, ok…好 “Hello，” he said",
    "  \t  ",
]


def test_idempotent_on_mixed_sample():
    once = normalize_texts(pl.Series(MIXED), NormalizeConfig())
    twice = normalize_texts(once, NormalizeConfig())
    assert once.to_list() == twice.to_list()
    assert once.to_list() != MIXED


def test_idempotent_on_corpora(corpora):
    docs = ["\n".join(people_daily_lines(corpora, 400)[i : i + 8]) for i in range(0, 400, 8)]
    docs += webcrawl_docs(corpora)
    for line in (corpora / "zhwiki_cmrc2018" / "cmrc2018_contexts.jsonl").open(encoding="utf-8"):
        docs.append(json.loads(line)["text"])
        if len(docs) > 400:
            break
    once = normalize_texts(pl.Series(docs), NormalizeConfig())
    assert normalize_texts(once, NormalizeConfig()).to_list() == once.to_list()


# --------------------------------------------------------------------------- real text


def test_people_daily(corpora):
    lines = people_daily_lines(corpora, 3000)
    out = normalize_texts(pl.Series(lines), NormalizeConfig()).to_list()
    assert out[0] == "迈向充满希望的新世纪——一九九八年新年讲话（附图片1张）"
    # digits become ASCII ...
    assert not any("０" <= c <= "９" for line in out for c in line)
    assert sum(line.count("1998") for line in out) > 20
    # ... and the Chinese punctuation stays full-width, every single one of it
    for mark in "，。！？：；“”、《》——":
        assert sum(line.count(mark) for line in out) == sum(line.count(mark) for line in lines)
    assert not any(c in line for line in out for c in ",!?;")
    # nothing else changes: the letters and digits are the same, full-width ones made ASCII
    for before, after in zip(lines, out, strict=True):
        expect = [
            unicodedata.normalize("NFKC", c) if "\uff00" <= c <= "\uffef" else c for c in before
        ]
        assert [c for c in "".join(expect) if c.isalnum()] == [c for c in after if c.isalnum()]


def test_webcrawl(corpora):
    docs = webcrawl_docs(corpora)
    out = normalize_texts(pl.Series(docs), NormalizeConfig()).to_list()
    assert len(out) == len(docs) and all(out)
    joined = "\n".join(out)
    assert not any(c in joined for c in "\u2018\u2019\u201c\u201d\u2026\u200b\ufeff\r")
    assert "doesn't" in joined or "don't" in joined
    changed = sum(a != b for a, b in zip(docs, out, strict=True))
    assert changed > 0
    # only the targets change: the words themselves are untouched
    for before, after in zip(docs, out, strict=True):
        assert [c for c in before if c.isalnum()] == [c for c in after if c.isalnum()]


# --------------------------------------------------------------------------- config


def test_config_round_trip_and_defaults():
    cfg = NormalizeConfig(nfkc=False, max_line_chars=500)
    d = config_to_dict(cfg)
    assert d["nfkc"] is False and d["max_line_chars"] == 500
    assert json.loads(json.dumps(d)) == d
    assert config_from_dict(d) == cfg
    assert config_from_dict({}) == NormalizeConfig()


def test_config_unknown_key_names_it_and_the_valid_ones():
    with pytest.raises(ValueError, match="nfkd") as err:
        config_from_dict({"nfkd": True})
    assert "nfkc" in str(err.value) and "max_line_chars" in str(err.value)


@pytest.mark.parametrize(
    ("d", "key"),
    [
        ({"nfkc": "yes"}, "nfkc"),
        ({"whitespace": 1}, "whitespace"),
        ({"max_line_chars": "100"}, "max_line_chars"),
        ({"max_line_chars": True}, "max_line_chars"),
        ({"max_line_chars": 2.5}, "max_line_chars"),
        ({"max_line_chars": 0}, "max_line_chars"),
    ],
)
def test_config_wrong_type_names_the_key(d, key):
    with pytest.raises(ValueError, match=key):
        config_from_dict(d)


def test_config_not_a_mapping():
    with pytest.raises(ValueError, match="mapping"):
        config_from_dict(["nfkc"])  # type: ignore[arg-type]
