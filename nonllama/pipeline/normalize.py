"""Text rules of the `normalize` stage: the clean-up pretraining pipelines apply before filtering.

`normalize_texts(batch, config)` takes a batch of documents (a polars Utf8 Series) and returns the
normalized batch, same length and order; a document that comes out as '' is dropped by the stage
wrapper (counted as `empty_after_normalize`). Everything is vectorized: polars string expressions
(Rust `regex` crate: Unicode classes work, lookaround does not) over the whole batch. Python runs
per string only for ftfy, and only on the documents a vectorized pre-check flags as possible
mojibake.

Rules, in the order they run (each one switchable in `NormalizeConfig`)
---------------------------------------------------------------------------

| # | config field        | what it does |
|---|---------------------|--------------|
| 1 | `fix_mojibake`      | ftfy `fix_text` with only the *encoding* fixers on (`fix_encoding`, `restore_byte_a0`, `replace_lossy_sequences`, `decode_inconsistent_utf8`, `fix_c1_controls`); no HTML unescaping, no NFC/NFKC, no quote uncurling, no width or ligature fixes, no line-break or control-char handling (the rules below own those). Applied only to documents containing a mojibake marker: a C1 control (U+0080-U+009F) or a UTF-8 lead byte read as Latin-1/cp1252 (`Â`..`ô`) followed by a continuation byte read the same way (U+0080-U+00BF or a cp1252 symbol such as `€ ’ “ – ‡`): catches `donâ€™t`, `Ã©`, and Chinese such as `ä¸\\xadæ–‡` (`中文` read as cp1252). ftfy decides whether a flagged text really is mojibake, so correct French/German/Chinese stays as it is. |
| 2 | `whitespace` (part 1) | line breaks and space characters are unified first, so every later rule sees `\\n` and ' ': `\\r\\n`, `\\r`, VT, FF, NEL, U+2028, U+2029 -> `\\n`; tab, NBSP, U+1680, U+2000-U+200A, U+202F, U+205F and the ideographic space U+3000 -> ' '. |
| 3 | `remove_invisible`  | removes ANSI terminal escapes, C0/C1 control characters except `\\t \\n \\r`, all format characters (`\\p{Cf}`: ZWSP, ZWNJ, ZWJ, WJ, soft hyphen, LRM/RLM and bidi embeddings, BOM, invisible operators, tag characters...), private-use characters (`\\p{Co}`) and the noncharacters U+FDD0-U+FDEF, U+FFFE, U+FFFF. Exception: a ZWJ inside an emoji ZWJ sequence (`👨\\u200d👩\\u200d👧`) is kept, so emoji are not broken apart. |
| 4 | `nfkc`              | NFKC for *width and presentation forms only*, then NFC for everything. Mapped with their NFKC form: full-width ASCII letters, digits and symbols (`ＡＢＣ１２３＋％．` -> `ABC123+%.`), halfwidth katakana and halfwidth CJK punctuation (`ｶﾀｶﾅ｡` -> `カタカナ。`), full-width ¥ £ ¢ ¬ ¦ ₩, Latin ligatures (`ﬁ` -> `fi`), Kangxi radicals (`⼀` -> `一`, a PDF-extraction artefact), mathematical alphanumerics (`𝐁𝐨𝐥𝐝` -> `Bold`), vertical and small presentation forms (`︐ ﹐ ︵`). Deliberately NOT mapped, because full NFKC changes their meaning or is another rule's job: the full-width Chinese punctuation `，！？：；（）` (the punctuation rule decides them by context), the ideographic space (whitespace rule), `…` (quotes/dashes rule), circled/parenthesized numbers `①⑴`, superscripts and subscripts (`10²` must not become `102`), fractions `½`, Roman numerals `Ⅱ`, letterlike symbols `™ ℃ №`, CJK squared/enclosed forms `㎡ ㈱`, `µ`, halfwidth Hangul. NFC also unifies CJK compatibility ideographs (U+F900..) with the unified ones. |
| 5 | `quotes_dashes`     | Lines without CJK (see "context" below): curly quotes `“ ” „ ‟` -> `"`, `‘ ’ ‚ ‛` -> `'`, ellipsis `…` -> `...`. Lines with CJK: Chinese keeps `“ ” ‘ ’` and `……`; a quote pair is made ASCII only when it is an English pair (nothing CJK inside it or directly around it), an apostrophe between Latin letters becomes `'` (`don’t`), and `…` directly after a Latin letter/digit becomes `...` unless CJK (or another `…`) follows. Unpaired curly quotes in CJK lines stay (a Chinese quotation running over several paragraphs opens each one with `“`). `„ ‟ ‚ ‛` become ASCII everywhere. Dashes, everywhere: hyphens U+2010/U+2011, figure dash U+2012 and minus U+2212 -> `-`; en dash between two letters/digits (ranges, `1990–1995`, `Paris–London`) -> `-`, any other en dash (spaced ` – `, bullets) -> em dash `—`; horizontal bar `―` -> `—` (so `――` becomes the Chinese dash `——`); `--` next to CJK -> `——`, `--` between two letters/digits or surrounded by spaces -> `—` (`---`, `--help`, `<!--` are left alone); `—`, `——`, `———` themselves are kept. |
| 6 | `punctuation`       | By context, marks `, . ! ? : ; ( )` in ASCII or full-width form. Lines without CJK: full-width `，。！？：；（）` -> ASCII, with a space added after `, . ! ? : ;` when a Latin letter follows directly (`Hello，world！` -> `Hello, world!`). Lines with CJK: full-width marks always stay; an ASCII `, ! ? : ;` directly after a CJK character or a closing CJK mark (`」》）”’…` etc.) becomes full-width unless ASCII punctuation/symbols follow (`中国,美国` -> `中国，美国`, but `网址:http://`, `好!!!`, `中国,"x"` stay); an ASCII `.` there becomes `。` only if no printable ASCII follows (end of line, space, CJK), and not in a leading Chinese-numeral list number (`一.总则` stays); spaces right after a mark converted here are removed (`中国, 美国` -> `中国，美国`). Brackets: a pair `(...)` becomes `（...）` when it contains CJK or a CJK character is directly before/after it; an unpaired `(` before CJK / `)` after CJK becomes full-width. Decimal points (`3.5`), thousands separators (`1,000`), times, URLs, `e.g.` are untouched because they follow a digit or Latin letter. |
| 7 | `drop_long_lines`   | lines longer than `max_line_chars` characters are emptied. |
|   | `drop_symbol_lines` | lines made only of punctuation/symbols/marks/spaces with at least one punctuation or symbol (`*****`, `------`, `|---|---|`, `•••`, `＊＊＊`, emoji-only lines) are emptied. A line with any letter, digit or CJK character is kept. An emptied line stays as an empty line, so a separator between two paragraphs turns into a paragraph break (collapsed by the whitespace rule). |
| 8 | `whitespace` (part 2) | per line: strip leading and trailing spaces (this also removes the `　　` paragraph indent of Chinese text and code indentation: this stage is for prose), collapse runs of spaces to one; per document: collapse 3 or more newlines into one blank line (`\\n\\n`), strip the document. |

Context: a *CJK line* is a line (a paragraph) containing a Han character, kana or bopomofo
(`\\p{Han}\\p{Hiragana}\\p{Katakana}\\p{Bopomofo}`). Hangul is not CJK here: Korean is written
with ASCII punctuation. In a CJK line, marks decide by their direct neighbours; in a line without
CJK there is nothing Chinese to protect, so everything takes the ASCII convention.

The rules are idempotent: normalize(normalize(x)) == normalize(x).

Internally a few rules use noncharacters U+FDE0/U+FDE1 as temporary markers (Unicode reserves
noncharacters for exactly this kind of process-internal use); they never appear in the output, and
input noncharacters are removed (by `remove_invisible`, and always in the U+FDE0-U+FDE1 markers).
"""

from __future__ import annotations

import unicodedata
from dataclasses import asdict, dataclass, fields
from typing import Any

import polars as pl

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
    drop_long_lines: bool = True
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
                    raise ValueError(f"normalize config: 'max_line_chars' must be >= 1, got {value}")


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
_BR_CTX = _HAN + _CJK_CLOSERS + r"\x{3001}\x{3002}\x{FF0C}\x{FF1A}\x{FF1B}\x{FF01}\x{FF1F}"
_LATIN = r"\p{Latin}"
_ASCII_PUNCT = r"!-/:-@\[-`{-~"

_CJK_LINE = f"[{_HAN}]"

# --- 1. mojibake pre-check
_CP1252_SYMBOLS = (
    r"\x{20AC}\x{201A}\x{0192}\x{201E}\x{2026}\x{2020}\x{2021}\x{02C6}\x{2030}\x{0160}\x{2039}"
    r"\x{0152}\x{017D}\x{2018}\x{2019}\x{201C}\x{201D}\x{2022}\x{2013}\x{2014}\x{02DC}\x{2122}"
    r"\x{0161}\x{203A}\x{0153}\x{017E}\x{0178}\x{FFFD}"
)
_MOJIBAKE_HINT = rf"[\x{{80}}-\x{{9F}}]|[\x{{C2}}-\x{{F4}}][\x{{80}}-\x{{BF}}{_CP1252_SYMBOLS}]"


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

# --- 6. punctuation
_ASCII_TO_FW = {_MARK_A + a: fw for fw, a in _FW_PUNCT_TO_ASCII.items() if a in ",.!?:;"}
_FW_SENTENCE = "[\uff0c\u3002\uff01\uff1f\uff1a\uff1b]"

# --- 7. line drops
_SYMBOL_LINE = r"^[\p{P}\p{S}\p{M}\p{Z}\p{Cf}\s]*[\p{P}\p{S}][\p{P}\p{S}\p{M}\p{Z}\p{Cf}\s]*$"


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

        cfg = _ftfy_config()
        return pl.Series(sub.name, [ftfy.fix_text(t, cfg) for t in sub.to_list()], dtype=pl.String)

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
    s = s.str.replace_all("\u2013", "\u2014", literal=True)
    s = _re(s, rf"([{_HAN}])--([^-]|$)", "${1}\u2014\u2014${2}")
    s = _re(s, rf"(^|[^-])--([{_HAN}])", "${1}\u2014\u2014${2}")
    for _ in range(2):
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
    # tentatively mark every ASCII mark after a CJK character, then take back the exceptions
    s = _re(s, rf"([{_PREV_CTX}])([,.!?:;])", "${1}" + _MARK_A + "${2}")
    s = _re(s, rf"{_MARK_A}\.([!-~])", ".${1}")
    s = _re(s, rf"{_MARK_A}([,!?:;])([{_ASCII_PUNCT}])", "${1}${2}")
    s = _re(s, rf"^([ ]*[一二三四五六七八九十]{{1,3}}){_MARK_A}\.", "${1}.")
    s = _re(s, rf"({_MARK_A}[,.!?:;]) +", "${1}")
    s = s.str.replace_many(_ASCII_TO_FW)
    # brackets: Chinese pairs, then unpaired ones next to CJK
    inner = r"[^()\x{FF08}\x{FF09}]"
    op, cl = r"[(\x{FF08}]", r"[)\x{FF09}]"
    # (a space before '(' is English typography: `Beijing (北京) is` keeps ASCII brackets)
    s = _re(s, rf"(^|[^ ]){op}({inner}*[{_HAN}]{inner}*){cl}", "${1}\uff08${2}\uff09")
    s = _re(s, rf"([{_BR_CTX}]){op}({inner}*){cl}", "${1}\uff08${2}\uff09")
    s = _re(s, rf"{op}({inner}*){cl}([{_BR_CTX}])", "\uff08${1}\uff09${2}")
    s = _re(s, rf"\(([{_HAN}])", "\uff08${1}")
    return _re(s, rf"([{_HAN}])\)", "${1}\uff09")


def _by_line_kind(lines: pl.Series, do_quotes: bool, do_punct: bool) -> pl.Series:
    """Quotes and punctuation, with the CJK and the other lines handled separately."""
    is_cjk = lines.str.contains(_CJK_LINE)
    idx_cjk = is_cjk.arg_true()
    idx_plain = (~is_cjk).arg_true()
    cjk = lines.gather(idx_cjk)
    plain = lines.gather(idx_plain)
    if do_quotes:
        cjk = _quotes_cjk(cjk)
        plain = _quotes_plain(plain)
    if do_punct:
        cjk = _punct_cjk(cjk)
        plain = _punct_plain(plain)
    out = lines.clone()
    if len(idx_cjk):
        out.scatter(idx_cjk, cjk)
    if len(idx_plain):
        out.scatter(idx_plain, plain)
    return out


# --------------------------------------------------------------------------------------------


def normalize_texts(texts: pl.Series, config: NormalizeConfig) -> pl.Series:
    """Normalize a batch of documents (a Utf8 Series, nulls allowed -> '').

    Vectorized: polars string expressions over the batch; Python per-string work only for ftfy,
    and then only on the strings a vectorized pre-check flags as possible mojibake. Returns a
    String Series of the same length, order and name; documents may come out as ''.
    """
    name = texts.name
    s = texts.cast(pl.String).fill_null("")
    if len(s) == 0:
        return s
    if config.fix_mojibake:
        s = _fix_mojibake(s)
    # our temporary markers must not come from the input
    s = s.str.replace_all(r"[\x{FDE0}\x{FDE1}]", "")
    if config.whitespace:
        s = _unify_breaks_and_spaces(s)
    if config.remove_invisible:
        s = _remove_invisible(s)
    if config.nfkc:
        s = _nfkc(s)

    line_rules = (
        config.quotes_dashes
        or config.punctuation
        or config.drop_long_lines
        or config.drop_symbol_lines
        or config.whitespace
    )
    if line_rules:
        df = (
            pl.DataFrame({"doc": pl.int_range(len(s), eager=True), "line": s.str.split("\n")})
            .explode("line")
        )
        lines = df["line"]
        if config.quotes_dashes:
            lines = _dashes(lines)
        if config.quotes_dashes or config.punctuation:
            lines = _by_line_kind(lines, config.quotes_dashes, config.punctuation)
        if config.drop_long_lines:
            too_long = lines.str.len_chars() > config.max_line_chars
            lines = _on_rows(lines, too_long, lambda x: pl.Series(x.name, [""] * len(x)))
        if config.drop_symbol_lines:
            lines = _re(lines, _SYMBOL_LINE, "")
        if config.whitespace:
            lines = _re(lines, " {2,}", " ").str.strip_chars(" ")
        s = (
            df.with_columns(line=lines)
            .group_by("doc", maintain_order=True)
            .agg(pl.col("line").str.join("\n"))["line"]
        )
    if config.whitespace:
        s = _re(s, r"\n{3,}", "\n\n").str.strip_chars()
    return s.alias(name)
