r"""Text rules of the `normalize` stage: the clean-up pretraining pipelines apply before filtering.

`normalize_texts(batch, config)` takes a batch of documents (a polars Utf8 Series, nulls read as
'') and returns the normalized batch: same length, order and name. A document that comes out as ''
is dropped by the stage wrapper (counted as `empty_after_normalize`); only a document without a
letter, digit or CJK character can come out empty. Everything is vectorized: polars string
expressions (Rust `regex` crate: Unicode classes work, lookaround does not) over a table of the
batch's lines (document, text, what the line is). Python runs per string only for ftfy, and only
on the lines that a vectorized pre-check flags as possible mojibake.

Where a line is (`_classify_lines`, from the raw lines, with cumulative sums and windows per
document):

- Code: the lines of a fenced code block (``` or ~~~, fences included; an unclosed fence runs to
  the end of the document) and of an indented code block (4 spaces or a tab, after a blank line).
  Code is left exactly as it is by every rule below: indentation, runs of spaces, tabs, blank
  lines, symbol-only lines (`}`, the closing fence), invisible and full-width characters. No
  normal form (neither NFC nor NFKC) is applied to it. The one change: with `whitespace` on,
  `\r\n` and `\r` become `\n`, since that is what defines the lines.
- Markdown structure: list items (and the indented lines continuing them), headings, block
  quotes and table rows keep their leading indentation (nesting is content); the rules apply
  to the rest of the line. Table rows also keep the spaces that align their cells, and table
  rows (`|---|:--:|` included) and block quote lines (`>`) are never dropped as symbol lines.
  A table is a run of lines with `|` that has a delimiter row and at least two lines, so a
  lone `|---|` separator in prose is still dropped.
- Everything else is prose, and all the rules apply to it.

Rules, in the order they run
----------------------------

| step | config field          | in one line                                                       |
|------|-----------------------|-------------------------------------------------------------------|
| 1    | `fix_mojibake`        | ftfy encoding repair, on flagged lines only                       |
| 2    | `whitespace` (part 1) | line breaks -> `\n`, tab and Unicode spaces -> ' '                |
| 3    | `remove_invisible`    | control chars, ANSI escapes, format chars (ZW*, BOM...), private use |
| 4    | `nfkc`                | NFKC for width/presentation forms only (ＡＢＣ１２３ -> ABC123), NFC |
| 5    | `quotes_dashes`       | curly quotes / `…` to ASCII except in Chinese; one dash convention |
| 6    | `punctuation`         | `，。！？：；（）` full-width in Chinese context, ASCII otherwise  |
| 7    | `split_long_lines`    | lines over `max_line_chars` characters are split, at sentence ends |
| 7    | `drop_symbol_lines`   | lines of only symbols/punctuation (`*****`, `|---|`) are emptied   |
| 8    | `whitespace` (part 2) | strip lines, collapse spaces, at most one blank line, strip doc    |

(All on prose lines only; code lines skip every step.)

Why this order: the encoding must be repaired before anything looks at characters (mojibake of
`中` contains a soft hyphen that step 3 would delete); line breaks and spaces are unified before
the context rules so that they see only `\n` and ' ' (and so that a second run sees what the
first saw: idempotence); invisible characters go before NFKC and before the context rules so that
a ZWSP does not hide a neighbour; NFKC turns `１２３` into digits before the punctuation rule asks
"is the previous character a digit?"; quotes are decided before the marks next to them; line
drops look at the final line, and whitespace cleanup runs last to tidy what the others left.

Context. A *CJK line* is a line (a paragraph) containing a Han character, kana or bopomofo
(`\p{Han}\p{Hiragana}\p{Katakana}\p{Bopomofo}`). Hangul does not count: Korean is written
with ASCII punctuation. In a line without CJK there is nothing Chinese to protect and everything
takes the ASCII convention. In a CJK line, each mark is decided by its neighbours: the character
directly before it, and the script majority of the two clauses it joins (an English sentence
that names `北京` keeps its ASCII comma); full-width marks are never turned into ASCII there
(`我用的是iPhone。` and `Windows，Linux和Mac` are Chinese sentences).

1. `fix_mojibake`. `ftfy.fix_text` with only the encoding fixers on: `fix_encoding`,
   `restore_byte_a0`, `replace_lossy_sequences`, `decode_inconsistent_utf8`, `fix_c1_controls`.
   Off: HTML unescaping, terminal escapes, `normalization` (None: no NFC/NFKC), quote uncurling,
   width and ligature fixes, line breaks, control characters: the other rules own those. Applied
   line by line (as ftfy itself works), only to lines containing a C1 control (U+0080-U+009F)
   or a UTF-8 lead byte read as Latin-1/cp1252 (`Â`..`ô`) directly followed by a continuation
   byte read the same way
   (U+0080-U+00BF or a cp1252 symbol `€ ‚ ƒ „ … † ‡ ˆ ‰ Š ‹ Œ Ž ‘ ’ “ ” • – — ˜ ™ š › œ ž Ÿ`, or
   U+FFFD). That flags `donâ€™t`, `Ã©tÃ©` and Chinese read as cp1252 or Latin-1 (`ä¸\xadæ–‡`,
   `ä¸\xadæ\x96\x87` for `中文`). ftfy itself decides whether a flagged text is mojibake, so
   correct French, German or Chinese is left as it is. One repair is added before ftfy: `â€`
   followed by something that is not a continuation byte is U+201D `”` whose third byte (0x9D,
   undefined in cp1252) a decoder dropped; ftfy would read `â€ ` as a dagger `†`.

2. `whitespace`, part 1. `\r\n`, `\r`, VT, FF, NEL, U+2028, U+2029 -> `\n`; tab, NBSP, U+1680,
   U+2000-U+200A, U+202F, U+205F and the ideographic space U+3000 -> ' '.

3. `remove_invisible`. Removes ANSI terminal escape sequences, C0/C1 control characters except
   `\t \n \r` (when `whitespace` is on these are already gone), format characters `\p{Cf}`
   (ZWSP, ZWNJ, ZWJ, word joiner, soft hyphen, LRM/RLM and bidi controls, BOM, invisible
   operators, tag characters...), private-use characters `\p{Co}` and the noncharacters
   U+FDD0-U+FDEF, U+FFFE, U+FFFF. Exception: a ZWJ inside an emoji ZWJ sequence
   (`👨\u200d👩\u200d👧`) stays, so that emoji are not broken apart.

4. `nfkc`. NFKC applied to width and presentation forms only, then NFC on everything. Mapped to
   their NFKC form: full-width ASCII letters, digits and symbols (`ＡＢＣ１２３` -> `ABC123`,
   `％＋／－．＝～［］` -> `%+/-.=~[]`), halfwidth katakana and halfwidth CJK punctuation
   (`ｶﾀｶﾅ｡｢｣` -> `カタカナ。「」`), full-width `￥￡￠` -> `¥£¢`, Latin ligatures (`ﬁ` -> `fi`),
   Kangxi radicals (`⼀` -> `一`, a PDF-extraction artefact), mathematical alphanumerics (`𝐁𝐨𝐥𝐝`
   -> `Bold`), vertical and small presentation forms (`︐ ﹐ ︵ ﹑`). Deliberately not mapped,
   because full NFKC would change their meaning or because another rule owns them: the
   full-width Chinese punctuation `，！？：；（）` (step 6 decides them by context), the
   ideographic space (step 2), `…` (step 5), circled and parenthesized numbers `① ⑴`,
   superscripts and subscripts (NFKC turns `10²` into `102`), fractions `½`, Roman numerals `Ⅱ`,
   letterlike symbols `™ ℃ №`, squared and enclosed CJK `㎡ ㈱`, `µ`, halfwidth Hangul, and forms
   whose NFKC starts with a space (`￣`). NFC also maps CJK compatibility ideographs (U+F900...)
   to the unified ones. The full-width full stop `．` is not Chinese punctuation (Chinese uses
   `。`): it becomes `.`, People's Daily's `１２．５％` -> `12.5%`.

5. `quotes_dashes`. Lines without CJK: `“ ” „ ‟` -> `"`, `‘ ’ ‚ ‛` -> `'`, `…` -> `...`. CJK lines
   keep `“ ” ‘ ’` (the Simplified Chinese quotes) and `……`; there only English material becomes
   ASCII: a quote pair with nothing CJK inside it and no CJK character or CJK mark directly
   around it; an apostrophe between two Latin letters (`don’t`); a `…` directly after a Latin
   letter or digit, unless CJK or another `…` follows. Unpaired curly quotes in CJK lines stay (a
   Chinese quotation running over several paragraphs opens each paragraph with `“`). `„ ‟ ‚ ‛`
   (not Chinese) become ASCII everywhere. Dashes, everywhere: hyphen U+2010, non-breaking hyphen
   U+2011, figure dash U+2012 and minus U+2212 -> `-`; en dash between two letters/digits
   (`1990–1995`, `Paris–London`) or between two numbers with spaces (`2000 – 2005`) -> `-`; every
   other en dash (` – ` between words, a bullet) -> em dash `—`; horizontal bar `―` -> `—` (so
   the GBK-era `――` becomes the Chinese dash `——`); `--` next to CJK -> `——`, `--` between two
   digits (TeX page range `1--17`) -> `-`, between two letters or surrounded by spaces -> `—`
   (`---`, `--help`, `<!--` are left alone); `—`, `——`, `———` are kept as they are.

6. `punctuation`. Lines without CJK: `，。！？：；（）` -> `,.!?:;()`, with a space added after
   `, . ! ? : ;` when a Latin letter follows directly (`Hello，world！` -> `Hello, world!`). CJK
   lines, brackets first: a pair `(...)` (either width) becomes `（...）` when its content starts
   with CJK and no space precedes it (`他(中文)`, `iPhone(苹果手机)`; but `Beijing (北京) is`
   keeps ASCII brackets, and `print("你好")` is code), or when a CJK character or closing CJK
   mark is directly before or after it (`他(Tom)说`); an unpaired `(` before CJK (no bracket after
   it on the line) and an unpaired `)` after CJK become full-width. Then marks: an ASCII
   `, ! ? : ;` directly after a CJK character or a closing CJK mark (`」』》）”’…`...) becomes
   full-width (`中国,美国` -> `中国，美国`) unless ASCII punctuation other than an opening bracket
   or quote follows (`好!!!`, `网址:/x`, `中国;-1` stay); an ASCII `.` there becomes `。` only
   when neither printable ASCII nor Han follows (`中国.` at the end, before a space or a quote;
   `中国.com`, `查尔斯.布里奇曼` stay: between Han a dot is as often a name separator), and not
   after a leading Chinese-numeral list number (`一. 总则`). And only when the mark is not in
   English: the two clauses around it (back to the previous clause mark, on to the next) are
   English when they hold Latin words and `2 * words >= CJK characters`; then the mark and its
   spaces stay (`The city of 北京, the capital`, `We stayed in 成都. The pandas`), while
   `我用 iPhone 拍照, 效果很好.` is Chinese (`_take_back_marks_in_english`). Spaces right after a
   mark converted here are removed (`中国, 美国` -> `中国，美国`). Decimal points (`3.5`), thousands separators
   (`1,000`), times (`10:30`), URLs and `e.g.` are never touched: they follow a digit or a Latin
   letter. Nothing else changes: `、「」《》【】·` and ASCII quotes stay as they are.

7. `split_long_lines`: a line longer than `max_line_chars` characters is split into lines of at
   most that many, never dropped: at sentence ends (`。！？；`, or `.!?;` before a space) if it
   can, else at clause marks (`，、：`, or `,:` before a space), else at spaces, and as a last
   resort anywhere (`_split_long_lines`). A one-line Chinese paragraph of 30,000 characters
   becomes two or three lines that end in `。`. (Code lines are not split.)
   `drop_symbol_lines`: lines made only of punctuation, symbols, marks and spaces, with at least
   one punctuation or symbol (`*****`, `------`, `|---|---|`, `•••`, `＊＊＊`, `……`, emoji-only
   lines), are emptied; a line with any letter, digit or CJK character stays. An emptied line
   remains as an empty line, so a separator between two paragraphs becomes a paragraph break.

8. `whitespace`, part 2. Per line: strip leading and trailing spaces (this removes the `　　`
   paragraph indent of Chinese text; the indent of Markdown structure is put back, and code is
   not touched), collapse runs of spaces into one (not in table rows). Per document: at most one
   blank line in a row outside code, no blank line at the start or the end.

The rules together are idempotent: normalize(normalize(x)) == normalize(x).

Downstream note: a SentencePiece tokenizer trained with its default `nmt_nfkc` normalization
would turn the Chinese full-width punctuation kept here back into ASCII; train it with
`normalization_rule_name="identity"` (this stage has done the normalization).

Internally three noncharacters, U+FDE0 to U+FDE2, serve as temporary markers (Unicode reserves
noncharacters for process-internal use); they are removed from prose lines first and never appear
in the output outside code.
"""

from __future__ import annotations

import unicodedata
from dataclasses import asdict, dataclass, fields
from functools import partial
from pathlib import Path

import polars as pl
from rich.console import Console

from nonllama.pipeline.driver import run_shard_stage
from nonllama.pipeline.executors import Executor
from nonllama.pipeline.io import StageRun
from nonllama.pipeline.markdown import fenced_lines

__all__ = ["NormalizeConfig", "config_from_dict", "config_to_dict", "normalize_texts"]


@dataclass(frozen=True)
class NormalizeConfig:
    """Switches of the normalize rules; see the module docstring for what each one does."""

    fix_mojibake: bool = True
    nfkc: bool = True
    remove_invisible: bool = True
    whitespace: bool = True
    punctuation: bool = True
    quotes_dashes: bool = True
    split_long_lines: bool = True
    max_line_chars: int = 20000
    drop_symbol_lines: bool = True

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.type in ("bool", bool):
                if not isinstance(value, bool):
                    raise ValueError(
                        f"normalize config: {f.name!r} must be a bool, got {type(value).__name__} {value!r}"
                    )
            elif f.name == "max_line_chars":
                if isinstance(value, bool) or not isinstance(value, int):
                    raise ValueError(
                        f"normalize config: 'max_line_chars' must be an int, got {type(value).__name__} {value!r}"
                    )
                if value < 1:
                    raise ValueError(
                        f"normalize config: 'max_line_chars' must be >= 1, got {value}"
                    )


def config_from_dict(d: dict) -> NormalizeConfig:
    """Build a config from a dict (e.g. parsed JSON/TOML); missing keys take the defaults.

    Raises ValueError for an unknown key (naming it and the valid ones) or a value of the wrong
    type (naming the key).
    """
    if not isinstance(d, dict):
        raise ValueError(f"normalize config must be a mapping, got {type(d).__name__}")
    valid = [f.name for f in fields(NormalizeConfig)]
    unknown = [k for k in d if k not in valid]
    if unknown:
        raise ValueError(
            f"unknown normalize config key(s): {', '.join(map(repr, unknown))}; "
            f"valid keys: {', '.join(valid)}"
        )
    return NormalizeConfig(**d)


def config_to_dict(c: NormalizeConfig) -> dict:
    """The config as a plain dict (JSON-serialisable); `config_from_dict` reverses it."""
    return asdict(c)


# --------------------------------------------------------------------------------------------
# Character classes (Rust regex syntax, the inside of a [...] class)

_HAN = r"\p{Han}\p{Hiragana}\p{Katakana}\p{Bopomofo}\x{30FC}\x{3005}-\x{3007}"
# CJK punctuation: CJK symbols block, full-width punctuation, vertical/small forms, ellipsis.
_CJK_PUNCT = (
    r"\x{3001}-\x{303F}\x{FF01}-\x{FF0F}\x{FF1A}-\x{FF20}\x{FF3B}-\x{FF40}\x{FF5B}-\x{FF65}"
    r"\x{FE10}-\x{FE19}\x{FE30}-\x{FE6B}\x{2026}"
)
_QCTX = _HAN + _CJK_PUNCT  # "CJK" for quote decisions
# closing CJK marks after which an ASCII mark is Chinese (、。 excluded: a mark after a mark)
_CJK_CLOSERS = (
    r"\x{3009}\x{300B}\x{300D}\x{300F}\x{3011}\x{3015}\x{3017}\x{3019}\x{301B}\x{301E}\x{301F}"
    r"\x{FF09}\x{201D}\x{2019}\x{2026}"
)
_PREV_CTX = _HAN + _CJK_CLOSERS
_BR_CTX = _HAN + _CJK_CLOSERS  # not the marks: they are decided after the brackets
_LATIN = r"\p{Latin}"
# ASCII punctuation after which a mark stays ASCII (runs `!!`, `:/`, `,-1`); not ( [ { " '
_ASCII_PUNCT = r"!#$%&)*+,\-./:;<=>?@\\\]^_`|}~"

_CJK_LINE = f"[{_HAN}]"

# --- 1. mojibake pre-check
_CP1252_SYMBOLS = (
    r"\x{20AC}\x{201A}\x{0192}\x{201E}\x{2026}\x{2020}\x{2021}\x{02C6}\x{2030}\x{0160}\x{2039}"
    r"\x{0152}\x{017D}\x{2018}\x{2019}\x{201C}\x{201D}\x{2022}\x{2013}\x{2014}\x{02DC}\x{2122}"
    r"\x{0161}\x{203A}\x{0153}\x{017E}\x{0178}\x{FFFD}"
)
_MOJIBAKE_HINT = rf"[\x{{80}}-\x{{9F}}]|[\x{{C2}}-\x{{F4}}][\x{{80}}-\x{{BF}}{_CP1252_SYMBOLS}]"
_MOJIBAKE_LOST_RDQUO = rf"\x{{E2}}\x{{20AC}}([^\x{{80}}-\x{{BF}}{_CP1252_SYMBOLS}]|$)"


def _ftfy_config():
    import ftfy

    return ftfy.TextFixerConfig(
        unescape_html=False,
        remove_terminal_escapes=False,
        fix_encoding=True,
        restore_byte_a0=True,
        replace_lossy_sequences=True,
        decode_inconsistent_utf8=True,
        fix_c1_controls=True,
        fix_latin_ligatures=False,
        fix_character_width=False,
        uncurl_quotes=False,
        fix_line_breaks=False,
        fix_surrogates=True,
        remove_control_chars=False,
        normalization=None,
        explain=False,
    )


# --- 2. line breaks and spaces
_LINE_BREAKS = r"\r\n?|[\x0B\x0C\x{85}\x{2028}\x{2029}]"
_SPACES = r"[\t\x{A0}\x{1680}\x{2000}-\x{200A}\x{202F}\x{205F}\x{3000}]"

# --- 3. invisible characters
_EMOJI_ZWJ_SEQ = (
    r"((?:\p{Extended_Pictographic}[\x{FE0F}\x{1F3FB}-\x{1F3FF}]*\x{200D})+"
    r"\p{Extended_Pictographic})"
)
_ANSI = r"\x1B\[[0-?]*[ -/]*[@-~]|\x1B\][^\x07\x1B\n]*(?:\x07|\x1B\\)|\x1B[@-Z\\-_]"
_INVISIBLE = (
    rf"{_EMOJI_ZWJ_SEQ}|{_ANSI}|"
    r"[\x00-\x08\x0B\x0C\x0E-\x1F\x7F-\x{9F}\p{Cf}\p{Co}\x{FDD0}-\x{FDEF}\x{FFFE}\x{FFFF}]"
)

# --- 4. NFKC for width/presentation forms
_NFKC_RANGES = [
    (0xFF01, 0xFF9F),  # full-width ASCII, halfwidth CJK punctuation and katakana
    (0xFFE0, 0xFFEE),  # full-width symbols, halfwidth arrows and shapes
    (0xFB00, 0xFB06),  # Latin ligatures
    (0xFB13, 0xFB17),  # Armenian ligatures
    (0x2E80, 0x2EF3),  # CJK radicals supplement
    (0x2F00, 0x2FD5),  # Kangxi radicals
    (0xFE10, 0xFE18),  # vertical forms (FE19 vertical ellipsis left alone)
    (0xFE31, 0xFE4F),  # CJK compatibility forms
    (0xFE50, 0xFE6B),  # small forms
    (0x1D400, 0x1D7FF),  # mathematical alphanumerics
    (0x1FBF0, 0x1FBF9),  # segmented digits
]
# full-width Chinese punctuation decided by the punctuation rule, not by NFKC
_FW_PUNCT_TO_ASCII = {
    "\uff0c": ",",
    "\u3002": ".",
    "\uff01": "!",
    "\uff1f": "?",
    "\uff1a": ":",
    "\uff1b": ";",
    "\uff08": "(",
    "\uff09": ")",
}


def _build_nfkc_map() -> dict[str, str]:
    out: dict[str, str] = {}
    for lo, hi in _NFKC_RANGES:
        for cp in range(lo, hi + 1):
            ch = chr(cp)
            k = unicodedata.normalize("NFKC", ch)
            if k == ch or ch in _FW_PUNCT_TO_ASCII:
                continue
            if k[0] == " ":  # FULLWIDTH MACRON, overlines: space + combining mark, worse
                continue
            out[ch] = k  # halfwidth (semi-)voiced marks map to combining marks; NFC composes
    return out


_NFKC_MAP = _build_nfkc_map()


def _char_class(chars) -> str:
    cps = sorted(ord(c) for c in chars)
    parts, i = [], 0
    while i < len(cps):
        j = i
        while j + 1 < len(cps) and cps[j + 1] == cps[j] + 1:
            j += 1
        parts.append(rf"\x{{{cps[i]:X}}}" + (rf"-\x{{{cps[j]:X}}}" if j > i else ""))
        i = j + 1
    return "[" + "".join(parts) + "]"


_NFKC_HINT = _char_class(_NFKC_MAP)
_MAY_CHANGE_UNDER_NFC = r"[^\x00-\x{2FF}]"

# --- 5. quotes, ellipsis, dashes
_QUOTES_TO_ASCII = {
    "\u201c": '"',
    "\u201d": '"',
    "\u201e": '"',
    "\u201f": '"',
    "\u2018": "'",
    "\u2019": "'",
    "\u201a": "'",
    "\u201b": "'",
    "\u2026": "...",
}
_NON_CHINESE_QUOTES = {"\u201e": '"', "\u201f": '"', "\u201a": "'", "\u201b": "'"}
_DASH_MAP = {
    "\u2010": "-",
    "\u2011": "-",
    "\u2012": "-",
    "\u2212": "-",
    "\u2015": "\u2014",
}
_MARK_A = "\ufde0"  # temporary: "this ASCII mark becomes full-width"
_MARK_E = "\ufde1"  # temporary: "this ellipsis becomes '...'"
_ALNUM = r"[\p{L}\p{N}]"
_DASH_HINT = r"[\x{2010}-\x{2015}\x{2212}]|--"
_QUOTE_HINT = r"[\x{2018}-\x{201F}\x{2026}]"

# --- 6. punctuation
_ASCII_TO_FW = {_MARK_A + a: fw for fw, a in _FW_PUNCT_TO_ASCII.items() if a in ",.!?:;"}
_ZH_NUMERALS = "〇一二三四五六七八九十"
_FW_PUNCT_HINT = "[\uff0c\u3002\uff01\uff1f\uff1a\uff1b\uff08\uff09]"
_FW_SENTENCE = "[\uff0c\u3002\uff01\uff1f\uff1a\uff1b]"

# --- 7. long lines and symbol lines
_SYMBOL_LINE = r"^[\p{P}\p{S}\p{M}\p{Z}\p{Cf}\s]*[\p{P}\p{S}][\p{P}\p{S}\p{M}\p{Z}\p{Cf}\s]*$"
_CUT = "\ufde2"  # temporary: "an overlong line may be cut here"
# Where an overlong line is cut, best first. The cut goes after the mark and any closing quote or
# bracket that belongs to the sentence; an ASCII mark only counts when a space follows it, so
# that `3.5`, `e.g.x` and URLs are never cut.
_SENTENCE_ENDS = (
    r"[\x{3002}\x{FF01}\x{FF1F}\x{FF1B}]+[\x{201D}\x{2019}\x{300D}\x{300F}\x{FF09}]*"
    r"|[.!?;]+[\"')\]]*\s+"
)
_CLAUSE_ENDS = r"[\x{FF0C}\x{3001}\x{FF1A}]+|[,:]\s+"
_SPACE_RUNS = r"\s+"

# --- structure: which lines are code or Markdown structure (see `_classify_lines`)
_BLANK = r"^\s*$"
_INDENTED = r"^(?: {0,3}\t| {4})"
_LIST_ITEM = r"^[ \t]*(?:[-*+\x{2022}]|[0-9]{1,9}[.)])[ \t]+\S"
_HEADING = r"^ {0,3}#{1,6}(?:[ \t]|$)"
_BLOCK_QUOTE = r"^ {0,3}>"
_TABLE_DELIMITER = r"^[ \t]*\|?[ \t]*:?-+:?[ \t]*(?:\|[ \t]*:?-+:?[ \t]*)*\|?[ \t]*$"
_LEADING_INDENT = r"^[ \t]*"

# --- 6. clause majority (see `_take_back_marks_in_english`)
_CLAUSE_BOUNDARY = ",.!?;:\uff0c\u3002\uff01\uff1f\uff1b\uff1a\u3001"


# --------------------------------------------------------------------------------------------
# Rules (each takes and returns a String Series)


def _re(s: pl.Series, pattern: str, value: str) -> pl.Series:
    return s.str.replace_all(pattern, value)


def _on_rows(s: pl.Series, mask: pl.Series, fn) -> pl.Series:
    """Apply fn to the rows where mask is true only (cheap pre-check, then the real work)."""
    idx = mask.fill_null(False).arg_true()
    if len(idx) == 0:
        return s
    if len(idx) == len(s):
        return fn(s)
    out = s.clone()
    out.scatter(idx, fn(s.gather(idx)))
    return out


def _fix_mojibake(s: pl.Series) -> pl.Series:
    def fix(sub: pl.Series) -> pl.Series:
        import ftfy

        # `â€` + a byte cp1252 does not define (0x81 0x8D 0x8F 0x90 0x9D) that a decoder dropped:
        # ftfy reads `â€ ` as a dagger; it almost always was U+201D, the closing double quote
        sub = _re(sub, _MOJIBAKE_LOST_RDQUO, "\u201d${1}")
        cfg = _ftfy_config()
        fixed = pl.Series(sub.name, [ftfy.fix_text(t, cfg) for t in sub.to_list()], dtype=pl.String)
        # a "repair" that leaves no letter or digit where there were some read the bytes as an
        # encoding they were not in (`À\x80` is Java's two-byte NUL to ftfy): keep the line
        lost = sub.str.contains(r"[\p{L}\p{N}]") & ~fixed.str.contains(r"[\p{L}\p{N}]")
        return pl.select(pl.when(lost).then(sub).otherwise(fixed)).to_series().alias(sub.name)

    return _on_rows(s, s.str.contains(_MOJIBAKE_HINT), fix)


def _unify_breaks_and_spaces(s: pl.Series) -> pl.Series:
    return _re(_re(s, _LINE_BREAKS, "\n"), _SPACES, " ")


def _remove_invisible(s: pl.Series) -> pl.Series:
    return _re(s, _INVISIBLE, "${1}")


def _nfkc(s: pl.Series) -> pl.Series:
    s = _on_rows(s, s.str.contains(_NFKC_HINT), lambda x: x.str.replace_many(_NFKC_MAP))
    return _on_rows(s, s.str.contains(_MAY_CHANGE_UNDER_NFC), lambda x: x.str.normalize("NFC"))


def _dashes(s: pl.Series) -> pl.Series:
    s = s.str.replace_many(_DASH_MAP)
    for _ in range(2):  # twice: a match consumes the right neighbour (1–2–3)
        s = _re(s, rf"({_ALNUM})\x{{2013}}({_ALNUM})", "${1}-${2}")
        s = _re(s, r"([0-9] ?)\x{2013}( ?[0-9])", "${1}-${2}")  # spaced number range
    s = s.str.replace_all("\u2013", "\u2014", literal=True)
    s = _re(s, rf"([{_HAN}])--([^-]|$)", "${1}\u2014\u2014${2}")
    s = _re(s, rf"(^|[^-])--([{_HAN}])", "${1}\u2014\u2014${2}")
    for _ in range(2):
        s = _re(s, r"([0-9])--([0-9])", "${1}-${2}")  # TeX-style range: pages 1--17
        s = _re(s, rf"({_ALNUM})--({_ALNUM})", "${1}\u2014${2}")
    return _re(s, r"(^| )--( |$)", "${1}\u2014${2}")


def _quotes_plain(s: pl.Series) -> pl.Series:
    """Lines without CJK: every curly quote and ellipsis to ASCII."""
    return s.str.replace_many(_QUOTES_TO_ASCII)


def _quotes_cjk(s: pl.Series) -> pl.Series:
    """Lines with CJK: only English quote pairs, apostrophes and ellipses become ASCII."""
    s = s.str.replace_many(_NON_CHINESE_QUOTES)
    # ellipsis after a Latin letter/digit -> '...', unless CJK or another ellipsis follows
    s = _re(s, r"([\p{Latin}0-9])\x{2026}", "${1}" + _MARK_E)
    s = _re(s, rf"{_MARK_E}([{_QCTX}])", "\u2026${1}")
    s = s.str.replace_all(_MARK_E, "...", literal=True)
    # apostrophes inside Latin words (before the pairs: ‘I don’t know’)
    for _ in range(2):
        s = _re(s, rf"({_LATIN})\x{{2019}}({_LATIN})", "${1}'${2}")
    # English pairs: nothing CJK inside nor directly around; twice because the right
    # neighbour of one pair can be the left neighbour of the next
    for _ in range(2):
        s = _re(
            s,
            rf"(^|[^{_QCTX}])\x{{201C}}([^\x{{201C}}\x{{201D}}{_QCTX}]*)\x{{201D}}([^{_QCTX}]|$)",
            '${1}"${2}"${3}',
        )
        s = _re(
            s,
            rf"(^|[^{_QCTX}])\x{{2018}}([^\x{{2018}}\x{{2019}}{_QCTX}]*)\x{{2019}}([^{_QCTX}]|$)",
            "${1}'${2}'${3}",
        )
    return s


def _punct_plain(s: pl.Series) -> pl.Series:
    """Lines without CJK: full-width marks to ASCII (space after , . ! ? : ; before a letter)."""
    s = _re(s, rf"({_FW_SENTENCE})({_LATIN})", "${1} ${2}")
    return s.str.replace_many(_FW_PUNCT_TO_ASCII)


def _punct_cjk(s: pl.Series) -> pl.Series:
    """Lines with CJK: ASCII marks in Chinese context to full-width; full-width marks stay."""
    # brackets: Chinese pairs, then unpaired ones next to CJK
    inner = r"[^()\x{FF08}\x{FF09}]"
    op, cl = r"[(\x{FF08}]", r"[)\x{FF09}]"
    # a pair whose content starts with CJK, unless a space precedes it (English typography:
    # `Beijing (北京) is`); not just "contains CJK": `print("你好")` is code
    s = _re(s, rf"(^|[^ ]){op}([{_QCTX}\x{{201C}}\x{{2018}}]{inner}*){cl}", "${1}\uff08${2}\uff09")
    s = _re(s, rf"([{_BR_CTX}]){op}({inner}*){cl}", "${1}\uff08${2}\uff09")
    s = _re(s, rf"{op}({inner}*){cl}([{_BR_CTX}])", "\uff08${1}\uff09${2}")
    # unpaired: a '(' before CJK with no closing bracket after it, a ')' after CJK with no
    # opening bracket before it
    s = _re(s, rf"\(([{_HAN}][^()\x{{FF08}}\x{{FF09}}]*)$", "\uff08${1}")
    s = _re(s, rf"^([^()\x{{FF08}}\x{{FF09}}]*[{_HAN}])\)", "${1}\uff09")
    # tentatively mark every ASCII mark after a CJK character, then take back the exceptions
    s = _re(s, rf"([{_PREV_CTX}])([,.!?:;])", "${1}" + _MARK_A + "${2}")
    # '.' only at a sentence end: not before ASCII (3.5, e.g., .com) nor between Han, where it
    # is as often a name separator (查尔斯.布里奇曼) as a sloppy full stop
    s = _re(s, rf"{_MARK_A}\.([!-~{_HAN}])", ".${1}")
    s = _re(s, rf"{_MARK_A}([,!?:;])([{_ASCII_PUNCT}])", "${1}${2}")
    s = _re(s, rf"^([ ]*[{_ZH_NUMERALS}]{{1,3}}){_MARK_A}\.", "${1}.")  # 一.总则
    s = _on_rows(s, s.str.contains(_MARK_A, literal=True), _take_back_marks_in_english)
    s = _re(s, rf"({_MARK_A}[,.!?:;]) +", "${1}")
    return s.str.replace_many(_ASCII_TO_FW)


def _take_back_marks_in_english(s: pl.Series) -> pl.Series:
    """Unmark the tentatively marked ASCII marks that sit in English, not Chinese, text.

    The direct left neighbour of a marked mark is CJK, but that alone does not make the mark
    Chinese: in `The city of 北京, the capital` the comma belongs to an English sentence that
    contains a Chinese name, and must keep its ASCII form and its space. So each mark is decided
    by the script majority of the two clauses it joins (the text back to the previous clause mark
    and on to the next one): English when the clauses hold Latin words and at least half as many
    Latin words as CJK characters (a Chinese word is one or two characters, so `2 * words >=
    cjk` is "about as many English words as Chinese words"). `我用 iPhone 拍照` (1 word, 4 CJK)
    stays Chinese; `Welcome to 北京大学` (2 words, 4 CJK) is English. Vectorized: the lines are
    cut at the markers and exploded, so each piece's tail and the next piece's head are the
    clauses around one mark.
    """
    df = pl.DataFrame(
        {"row": pl.int_range(len(s), eager=True), "piece": s.str.split(_MARK_A)}
    ).explode("piece")
    not_boundary = f"[^{_CLAUSE_BOUNDARY}]*"
    left = pl.col("piece").str.extract(f"({not_boundary})$", 1)
    # the next piece starts with the mark itself (the marker stands right before it)
    right = pl.col("piece").shift(-1).over("row").str.slice(1).str.extract(f"^({not_boundary})", 1)

    def count(pattern: str) -> pl.Expr:
        return (
            left.str.count_matches(pattern).fill_null(0)
            + right.str.count_matches(pattern).fill_null(0)
        )

    words, cjk = count(r"\p{Latin}+"), count(f"[{_HAN}]")
    english = (words > 0) & (2 * words >= cjk)
    has_marker_after = pl.int_range(pl.len()).over("row") < pl.len().over("row") - 1
    return (
        df.with_columns(
            piece=pl.when(has_marker_after & ~english)
            .then(pl.col("piece") + _MARK_A)
            .otherwise(pl.col("piece"))
        )
        .group_by("row", maintain_order=True)
        .agg(pl.col("piece").str.join(""))["piece"]
        .alias(s.name)
    )


def _by_line_kind(lines: pl.Series, do_quotes: bool, do_punct: bool) -> pl.Series:
    """Quotes and punctuation, with the CJK and the other lines handled separately."""
    is_cjk = lines.str.contains(_CJK_LINE)
    idx_cjk = is_cjk.arg_true()
    idx_plain = (~is_cjk).arg_true()
    cjk = lines.gather(idx_cjk)
    plain = lines.gather(idx_plain)
    if do_quotes:
        cjk = _on_rows(cjk, cjk.str.contains(_QUOTE_HINT), _quotes_cjk)
        plain = _quotes_plain(plain)
    if do_punct:
        cjk = _on_rows(cjk, cjk.str.contains(r"[,.!?:;()]"), _punct_cjk)
        plain = _on_rows(plain, plain.str.contains(_FW_PUNCT_HINT), _punct_plain)
    out = lines.clone()
    if len(idx_cjk):
        out.scatter(idx_cjk, cjk)
    if len(idx_plain):
        out.scatter(idx_plain, plain)
    return out


def _split_long_lines(s: pl.Series, max_chars: int) -> pl.Series:
    """Lines longer than `max_chars` get line breaks: the same text, in lines of at most
    `max_chars` characters, cut at sentence ends if it can, else at clause marks, else at
    spaces, and only as a last resort anywhere.

    Vectorized: each line is cut into pieces, a boundary level at a time (only the pieces longer
    than `half` go on to the next level; half, so that pieces pack well), exploded into a piece
    table; pieces still longer than `max_chars` are cut every `max_chars` characters. Then the
    pieces are packed into lines by their start offset: the pieces starting in the same window
    of `max_chars + 1 - longest piece` characters form one line, so a line so made is at most
    `max_chars` long. Packing by offset is not the greedy packing (which is sequential): lines
    may come out shorter than they could be, never longer, and no text is lost.
    """
    half = (max_chars + 1) // 2
    df = pl.DataFrame({"row": pl.int_range(len(s), eager=True), "piece": s})
    for boundary in (_SENTENCE_ENDS, _CLAUSE_ENDS, _SPACE_RUNS):
        too_long = pl.col("piece").str.len_chars() > half
        df = (
            df.with_columns(
                piece=pl.when(too_long)
                .then(pl.col("piece").str.replace_all(f"(?:{boundary})", "${0}" + _CUT))
                .otherwise(pl.col("piece"))
                .str.split(_CUT)
            )
            .explode("piece")
            .filter(pl.col("piece") != "")
        )
    # the last resort: pieces longer than a line are cut every `max_chars` characters
    length = pl.col("piece").str.len_chars()
    df = (
        df.with_columns(offset=pl.int_ranges(0, length, max_chars))
        .explode("offset")
        .with_columns(piece=pl.col("piece").str.slice(pl.col("offset"), max_chars))
    )
    length = pl.col("piece").str.len_chars()
    start = length.cum_sum().over("row") - length
    # the longest piece of the line sets its window: usually a sentence, far below `half`
    window = max_chars + 1 - length.max().over("row")
    lines = (
        df.with_columns(chunk=start // window)
        .group_by("row", "chunk", maintain_order=True)
        .agg(pl.col("piece").str.join(""))
        .group_by("row", maintain_order=True)
        .agg(pl.col("piece").str.join("\n"))
    )
    return lines["piece"].alias(s.name)


def _line_table(docs: pl.Series) -> pl.DataFrame:
    """One row per line: `doc` (index in the batch) and `text`, in document and line order."""
    return pl.DataFrame({"doc": pl.int_range(len(docs), eager=True), "text": docs.str.split("\n")}).explode("text")


def _classify_lines(lines: pl.DataFrame) -> pl.DataFrame:
    """Add what each line is, from the raw lines of the documents, with polars window expressions.

    - `code`: a line of a fenced code block (``` or ~~~ fence lines and every line between an
      opening and a closing fence: :func:`nonllama.pipeline.markdown.fenced_lines`, which
      filter asks too) or of an indented code block (a line indented by a tab or 4 spaces after a
      blank line or at the start of the document, as in CommonMark, where an indented line
      right after a paragraph line continues the paragraph). Code lines are left exactly as
      they are by every rule: indentation, spaces, tabs, symbol-only lines (`}`, a closing
      fence) and full-width characters are content there.
    - `indent`: the leading spaces and tabs of a Markdown structure line (list item, heading,
      block quote, table row, and an indented line continuing a list item), kept as they are;
      '' for other lines (a paragraph's indent, e.g. the `　　` of Chinese text, is removed).
    - `table`: a table row (`|---|:---:|` included). A table is a run of consecutive lines with
      `|` that has a delimiter row and at least two lines. Its rows keep the runs of spaces that
      align their cells.
    - `keep_symbols`: a table row or a block quote line: not dropped as a symbol line.
    """
    text = pl.col("text")
    # the window computations run only where a batch has lines of that kind: most prose has none
    lines = lines.with_columns(fenced=fenced_lines(lines, "text"))
    lines = lines.with_columns(list_item=text.str.contains(_LIST_ITEM))
    indented = lines["text"].str.contains(_INDENTED) & ~lines["text"].str.contains(_BLANK) & ~lines["fenced"]
    if indented.any():
        lines = lines.with_columns(blank=text.str.contains(_BLANK), indented=indented)
        # a segment: a non-blank line that is not indented (or is fenced), and the blank and
        # indented lines after it
        starts_segment = ~pl.col("blank") & ~pl.col("indented")
        lines = lines.with_columns(segment=starts_segment.cast(pl.Int32).cum_sum().over("doc"))
        after_blank = pl.col("blank").cast(pl.Int32).cum_sum().over("doc", "segment") > 0
        in_list = pl.col("list_item").first().over("doc", "segment") & (pl.col("segment") > 0)
        lines = lines.with_columns(
            code=pl.col("fenced")
            | (pl.col("indented") & (after_blank | (pl.col("segment") == 0)) & ~in_list),
            list_continuation=pl.col("indented") & in_list,
        )
    else:
        lines = lines.with_columns(code=pl.col("fenced"), list_continuation=pl.lit(False))
    pipe = lines["text"].str.contains("|", literal=True) & ~lines["code"]
    if pipe.any():
        lines = lines.with_columns(pipe=pipe).with_columns(
            run=(~pl.col("pipe")).cast(pl.Int32).cum_sum().over("doc")
        )
        table = (
            pl.col("pipe")
            & (pl.col("pipe") & text.str.contains(_TABLE_DELIMITER)).any().over("doc", "run")
            & (pl.col("pipe").sum().over("doc", "run") >= 2)
        )
    else:
        table = pl.lit(False)
    quote = text.str.contains(_BLOCK_QUOTE) & ~pl.col("code")
    structure = ~pl.col("code") & (
        pl.col("list_item") | pl.col("list_continuation") | text.str.contains(_HEADING) | quote | table
    )
    return lines.select(
        "doc",
        "text",
        "code",
        indent=pl.when(structure).then(text.str.extract(f"({_LEADING_INDENT})", 1)).otherwise(pl.lit("")),
        table=table,
        keep_symbols=table | quote,
    )


def _explode_new_lines(lines: pl.DataFrame) -> pl.DataFrame:
    """Rows whose text now holds '\n' become several rows. The lines after the first are
    wrapped text, not structure: no indent, and symbol-only ones are dropped."""
    lines = lines.with_row_index("_row").with_columns(pl.col("text").str.split("\n")).explode("text")
    first = pl.col("_row").is_first_distinct()
    return lines.with_columns(
        indent=pl.when(first).then(pl.col("indent")).otherwise(pl.lit("")),
        table=pl.col("table") & first,
        keep_symbols=pl.col("keep_symbols") & first,
    ).drop("_row")


def _prose_rules(t: pl.Series, config: NormalizeConfig) -> pl.Series:
    """Steps 3 to 6 on prose lines (no line breaks inside them)."""
    if config.whitespace:
        t = _re(t, _SPACES, " ")
    if config.remove_invisible:
        t = _remove_invisible(t)
    if config.nfkc:
        t = _nfkc(t)
    if config.quotes_dashes:
        t = _on_rows(t, t.str.contains(_DASH_HINT), _dashes)
    if config.quotes_dashes or config.punctuation:
        t = _by_line_kind(t, config.quotes_dashes, config.punctuation)
    return t


def normalize_texts(texts: pl.Series, config: NormalizeConfig) -> pl.Series:
    """Normalize a batch of documents (a Utf8 Series, nulls allowed -> '').

    Vectorized: polars string expressions over a table of the batch's lines; Python per-string
    work only for ftfy, and then only on the lines a vectorized pre-check flags as possible
    mojibake. Code lines (see `_classify_lines`) come out byte for byte as they went in (their
    line breaks unified to `\n` when `whitespace` is on). Returns a String Series of the same
    length, order and name; documents may come out as '' (only when no letter, digit or
    CJK character was in them).
    """
    name = texts.name
    s = texts.cast(pl.String).fill_null("")
    if len(s) == 0:
        return s
    if config.whitespace:
        s = _re(s, r"\r\n?", "\n")
    if config.remove_invisible:  # a BOM before a fence would hide it
        s = s.str.replace(r"^\x{FEFF}+", "")
    lines = _classify_lines(_line_table(s))
    text, prose = pl.col("text"), ~pl.col("code")

    def on_prose(fn) -> None:
        nonlocal lines
        lines = lines.with_columns(text=_on_rows(lines["text"], ~lines["code"], fn))

    if not lines["code"].all():
        # structure lines: the indent is kept aside, the rules see the line's content
        if (lines["indent"] != "").any():
            lines = lines.with_columns(text=pl.col("text").str.slice(pl.col("indent").str.len_chars()))
        on_prose(lambda t: t.str.replace_all(r"[\x{FDE0}-\x{FDE2}]", ""))  # our markers
        if config.fix_mojibake:
            on_prose(_fix_mojibake)
        if config.whitespace:
            on_prose(lambda t: _re(t, _LINE_BREAKS, "\n"))
            if lines["text"].str.contains("\n", literal=True).any():
                lines = _explode_new_lines(lines)
        on_prose(partial(_prose_rules, config=config))
        if config.split_long_lines:
            length = lines["indent"].str.len_chars() + lines["text"].str.len_chars()
            too_long = (~lines["code"]) & (length > config.max_line_chars)
            if too_long.any():
                # the limit counts the whole line: a structure line's indent goes with its first
                # piece (and is stripped there: an overlong list item loses its nesting)
                overlong = pl.lit(too_long)
                lines = lines.with_columns(
                    text=pl.when(overlong).then(pl.col("indent") + pl.col("text")).otherwise(pl.col("text")),
                    indent=pl.when(overlong).then(pl.lit("")).otherwise(pl.col("indent")),
                )
                lines = lines.with_columns(
                    text=_on_rows(lines["text"], too_long, partial(_split_long_lines, max_chars=config.max_line_chars))
                )
                lines = _explode_new_lines(lines)
        if config.drop_symbol_lines:
            dropped = prose & ~pl.col("keep_symbols") & text.str.contains(_SYMBOL_LINE)
            lines = lines.with_columns(text=pl.when(dropped).then(pl.lit("")).otherwise(text))
        if config.whitespace:
            # table rows keep the spaces that align their columns; elsewhere runs collapse
            collapsed = pl.when(pl.col("table")).then(text).otherwise(text.str.replace_all(" {2,}", " "))
            lines = lines.with_columns(text=pl.when(prose).then(collapsed.str.strip_chars(" ")).otherwise(text))
        lines = lines.with_columns(
            text=pl.when(prose & (text != "")).then(pl.col("indent") + text).otherwise(text)
        )
    if config.whitespace:
        # at most one blank line in a row, none at the start or end; blank lines inside code
        # blocks are code
        blank = text.str.contains(_BLANK)
        lines = lines.with_columns(blank=blank & ~pl.col("code"), content=~blank)
        first = pl.col("content").arg_true().first().over("doc")
        last = pl.col("content").arg_true().last().over("doc")
        position = pl.int_range(pl.len()).over("doc")
        repeated_blank = pl.col("blank") & pl.col("blank").shift(1).over("doc").fill_null(False)
        keep = ~repeated_blank & (position >= first) & (position <= last)
        lines = lines.with_columns(text=pl.when(keep).then(text))  # null: left out of the join
    out = lines.group_by("doc", maintain_order=True).agg(pl.col("text").str.join("\n"))["text"]
    return out.alias(name)


# -------------------------------------------------------------------------------------- the stage

STAGE = "normalize"
EMPTY_REASON = "empty_after_normalize"


def normalize_batch(batch: pl.DataFrame, config: NormalizeConfig) -> tuple[pl.DataFrame, pl.DataFrame]:
    """One batch of documents -> (normalized documents kept, documents left empty).

    Removed rows keep their original text, so a person can see what was dropped.
    """
    normalized = normalize_texts(batch["text"], config)
    empty = normalized.str.len_chars() == 0
    kept = batch.with_columns(normalized.alias("text")).filter(~empty)
    removed = batch.filter(empty).with_columns(pl.lit(EMPTY_REASON).alias("drop_reason"))
    return kept, removed


def run_normalize(
    input_dir: Path,
    output_dir: Path,
    config: NormalizeConfig,
    *,
    workers: int = 1,
    executor: Executor | None = None,
    force: bool = False,
    verify_input: bool = False,
    console: Console | None = None,
) -> StageRun:
    """Normalize every part of `input_dir` (a download output) into `output_dir`."""
    return run_shard_stage(
        stage=STAGE,
        input_dir=input_dir,
        output_dir=output_dir,
        side_dir_name="removed",
        config=config_to_dict(config),
        transform=partial(normalize_batch, config=config),
        workers=workers,
        executor=executor,
        force=force,
        verify_input=verify_input,
        console=console,
    )
