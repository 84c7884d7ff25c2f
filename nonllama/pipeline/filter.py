"""The `filter` stage: quality rules that say why each document was dropped.

`filter_batch(batch, config)` is the heart: it measures every rule's value for every document
(`nonllama.pipeline.filter_rules.rule_values`), records them in a `filter_values` struct column
on kept and rejected rows alike, and drops each document for the first rule it fails, in the
fixed priority order of `CHECKS`. That rule's name is the row's `drop_reason`.

Reads `normalized/`, writes `filtered/` (kept documents; with C4 line cleaning on, their text has
the boilerplate lines removed) and `filtered/rejected/` (dropped documents, original text). Every
row has a `lines_cut` column: the lines line cleaning cut (or, in a rejected row, would have cut),
each with its reason (`filter_rules.LINE_CUT_REASONS`); `nonllama report` lists the most common.

Rules, in priority order (switch = config key that turns the rule off; a threshold's key is
in the third column; defaults in `FilterConfig`):

| # | drop_reason(s)                         | switch             | fails when                              |
|---|----------------------------------------|--------------------|-----------------------------------------|
| 1 | c4_lorem_ipsum, c4_curly_bracket,      | c4_line_cleaning   | C4 document rules; a document whose     |
|   | c4_too_few_sentences,                  |                    | lines were all removed                  |
|   | empty_after_line_cleaning              |                    |                                         |
| 2 | word_count                             | word_count         | words < word_count_min or > _max        |
| 3 | language                               | language           | top fastText label not in `languages`,  |
|   |                                        |                    | or its score < language_min_score       |
| 4 | flagged_words                          | flagged_words      | ratio > flagged_words_max_ratio         |
| 5 | special_chars                          | special_chars      | ratio > special_chars_max_ratio         |
| 6 | char_repetition                        | char_repetition    | ratio > char_repetition_max_ratio       |
| 7 | word_repetition                        | word_repetition    | ratio > word_repetition_max_ratio       |
| 8 | gopher_dup_para_frac ... gopher_dup_10gram | gopher_repetition | Gopher repetition, datatrove's order |
| 9 | gopher_mean_word_length ... gopher_alpha_words | gopher_quality | Gopher quality                      |
| 10| short_lines                            | short_lines        | ratio > short_lines_max_ratio           |
| 11| fineweb_line_punct ... fineweb_newline_ratio | fineweb_quality | FineWeb quality                   |
| 12| stop_words                             | stop_words (off)   | ratio < stop_words_min_ratio            |
| 13| perplexity                             | perplexity_run or  | perplexity > max_perplexity (0: 1400 for|
|   |                                        | perplexity_model   | KenLM, no threshold for a run)          |
|   |                                        | (off: none given)  |                                         |

Why this order: line cleaning runs first because every other rule judges the cleaned text; then
the cheap, unambiguous reasons (nothing there, not a wanted language, adult content) so that a
document that fails several rules is reported under the most telling one; repetition before the
"shape" rules (Gopher quality, short lines, FineWeb) because spam fails both and "repetition"
says more; stop words, off by default, then perplexity: it runs a language model over the text,
the most expensive value by far, so it is measured only on the documents every other rule kept
(null for the others), except with `stats_only`, where every document is scored.

Perplexity (`nonllama.pipeline.perplexity`): a reference model scores each (cleaned) document;
`perplexity` and `bits_per_byte` go into `filter_values`. The model is a nonllama run
(`perplexity_run`, a small model trained on clean text) or a KenLM model with SentencePiece
pre-tokenization as in CCNet (`perplexity_model`). Instead of a threshold, `perplexity_buckets`
(two quantiles, CCNet's [0.33, 0.66]) gives each kept document a `ppl_bucket` column, head /
middle / tail by its source's quantiles, and drops nothing: two more passes after the shard pass
(per-part histograms of log perplexity, summed in the driver into cut points per source, then
each kept part rewritten with the column; `perplexity_bucket_passes`).
"""

from __future__ import annotations

import math
import os
import re
import typing
from dataclasses import asdict, dataclass, field, fields, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow.parquet as pq
from rich.console import Console

from nonllama.pipeline.driver import StageContext, run_shard_stage
from nonllama.pipeline.executors import Executor, task_threads
from nonllama.pipeline.filter_rules import (
    GOPHER_DUP_NS,
    GOPHER_TOP_NS,
    HAN_ONLY_AS_ZH,
    LID_LANGUAGES,
    LINE_CUT_DTYPE,
    LINES_CUT_COLUMN,
    VALUE_FIELDS,
    clean_lines,
    data_dependencies,
    prose_view,
    rule_values,
)
from nonllama.pipeline.io import (
    PartWriter,
    Reporter,
    StageRun,
    describe_part,
    file_digest,
    iter_part_batches,
    list_parts,
    output_digest,
    read_manifest,
)
from nonllama.pipeline.perplexity import (
    BUCKET_NAMES,
    KENLM_MAX_PERPLEXITY,
    LogHistogram,
    ModelFiles,
    bin_edge,
    bucket_of,
    cut_bins,
    merge_histograms,
    require_kenlm,
    resolve_kenlm,
    resolve_run,
    scorer,
)

STAGE = "filter"
SIDE_DIR = "rejected"
VALUES_COLUMN = "filter_values"
WOULD_DROP_COLUMN = "would_drop"
EMPTY_AFTER_CLEANING = "empty_after_line_cleaning"


@dataclass
class FilterConfig:
    """Every rule's switch and thresholds. Defaults: Gopher / C4 / FineWeb as in datatrove,
    BigScience ROOTS (English) for the repetition, special-character and flagged-word ratios."""

    # 1. C4-style line cleaning (changes the text of kept documents)
    c4_line_cleaning: bool = True
    c4_remove_citations: bool = True  # [1], [edit], [citation needed]
    c4_javascript: bool = True  # drop lines mentioning javascript
    c4_policy: bool = True  # drop lines with terms of use / privacy policy / cookies phrases
    c4_boilerplate: bool = True  # drop navigation bars and footer lines (en + zh), see filter_rules
    c4_lorem_ipsum: bool = True  # drop documents with "lorem ipsum"
    c4_terminal_punct: bool = False  # C4: keep only lines ending in . ? ! " ' (wrecks dialogue, zh)
    c4_min_words_per_line: int = 0  # C4: 3
    c4_max_word_length: int = 1000  # drop lines with a longer non-CJK word
    c4_curly_bracket: bool = False  # C4: drop documents with "{" (wrecks code and math)
    c4_min_sentences: int = 0  # C4: 5
    # 2. word count (a CJK character is a word)
    word_count: bool = True
    word_count_min: int = 1
    word_count_max: int = 100_000
    # 3. language identification (fastText lid.176)
    language: bool = True
    languages: list[str] = field(default_factory=lambda: ["en", "zh"])
    language_min_score: float = 0.65
    language_max_chars: int = 2000  # characters of each document fastText reads
    # 4. flagged (adult) words: whole English words + characters of Chinese words (jieba), over words
    flagged_words: bool = True
    flagged_words_max_ratio: float = 0.045
    # 5. special characters (symbols, emoji, control/private-use, markup marks) over non-space chars
    special_chars: bool = True
    special_chars_max_ratio: float = 0.3
    # 6. character repetition (BigScience): top-sqrt repeated character n-grams' share
    char_repetition: bool = True
    char_repetition_n: int = 10
    char_repetition_max_ratio: float = 0.106
    # 7. word repetition (BigScience): share of word n-grams that occur more than once
    word_repetition: bool = True
    word_repetition_n: int = 5
    word_repetition_max_ratio: float = 0.19
    # 8. Gopher repetition (Rae et al. 2021, table A1)
    gopher_repetition: bool = True
    gopher_max_dup_para_frac: float = 0.3
    gopher_max_dup_para_char_frac: float = 0.2
    gopher_max_dup_line_frac: float = 0.3
    gopher_max_dup_line_char_frac: float = 0.2
    gopher_max_top_ngram_char_frac: list[float] = field(default_factory=lambda: [0.2, 0.18, 0.16])
    gopher_max_dup_ngram_char_frac: list[float] = field(
        default_factory=lambda: [0.15, 0.14, 0.13, 0.12, 0.11, 0.10]
    )
    # 9. Gopher quality
    gopher_quality: bool = True
    gopher_min_mean_word_length: float = 3.0
    gopher_max_mean_word_length: float = 10.0
    gopher_max_symbol_word_ratio: float = 0.1  # '#' and '...' per word
    gopher_max_bullet_lines_ratio: float = 0.9
    gopher_max_ellipsis_lines_ratio: float = 0.3
    gopher_min_alpha_words_ratio: float = 0.8
    # 10. short lines
    short_lines: bool = True
    short_lines_chars: int = 20
    short_lines_max_ratio: float = 0.5
    # 11. FineWeb quality
    fineweb_quality: bool = True
    fineweb_min_line_punct_ratio: float = 0.12
    fineweb_short_line_chars: int = 30
    fineweb_max_short_lines_ratio: float = 0.67
    fineweb_max_dup_line_chars_ratio: float = 0.01
    fineweb_max_newline_ratio: float = 0.3
    # 12. stop words (recorded always; a rule only when switched on)
    stop_words: bool = False
    stop_words_min_ratio: float = 0.06
    # 13. perplexity under a reference model (off unless one is given; see the module docstring)
    perplexity_run: str = ""  # a run directory `nonllama train` wrote
    perplexity_model: str = ""  # or a KenLM model (.arpa or .bin)
    perplexity_tokenizer: str = ""  # the KenLM model's SentencePiece model [default: CCNet's <lang>.sp.model beside it]
    max_perplexity: float = 0.0  # 0: 1400 for a KenLM model (CCNet), none for a run
    perplexity_buckets: list[float] = field(default_factory=list)  # e.g. [0.33, 0.66]: head / middle / tail
    perplexity_batch_tokens: int = 4096  # padded tokens per forward pass of a run's model
    # compute and record every value, drop nothing (`--stats-only`)
    stats_only: bool = False

    def validate(self) -> None:
        """Raise ValueError naming the key and its allowed range for any value out of range.

        Every field is checked: a threshold out of range does not fail on its own, it silently
        drops every document (or none), so the stage calls this before reading any data.
        """
        defaults = FilterConfig()
        for f in fields(self):
            if isinstance(getattr(defaults, f.name), bool) and not isinstance(getattr(self, f.name), bool):
                raise ValueError(f"filter config {f.name!r} = {getattr(self, f.name)!r}: must be true or false")
        for key, (lo, hi, why) in _RANGES.items():
            _check_range(key, getattr(self, key), lo, hi, why)
        for key, ns in (("gopher_max_top_ngram_char_frac", GOPHER_TOP_NS),
                        ("gopher_max_dup_ngram_char_frac", GOPHER_DUP_NS)):
            values = getattr(self, key)
            if not isinstance(values, (list, tuple)) or len(values) != len(ns):
                raise ValueError(f"filter config {key!r} = {values!r}: needs {len(ns)} values, "
                                 f"one for each n of {', '.join(map(str, ns))}")
            for n, value in zip(ns, values, strict=True):
                _check_range(key, value, 0.0, 1.0, "a share of characters", within=(values, f"{n}-gram threshold"))
        for low, high in (("word_count_min", "word_count_max"),
                          ("gopher_min_mean_word_length", "gopher_max_mean_word_length")):
            if getattr(self, low) > getattr(self, high):
                raise ValueError(f"filter config {low!r} = {getattr(self, low):g} is above {high!r} = "
                                 f"{getattr(self, high):g}: every document would be dropped")
        if not isinstance(self.languages, (list, tuple)) or not all(isinstance(c, str) for c in self.languages):
            raise ValueError(f"filter config 'languages' = {self.languages!r}: must be a list of language codes")
        if self.language and not self.languages:
            raise ValueError("filter config 'languages': empty list; set `language = false` to keep every language")
        check_language_codes(self.languages, "filter config 'languages'")
        self._validate_perplexity()

    @property
    def perplexity(self) -> bool:
        """Whether the perplexity rule is on (a model is given)."""
        return bool(self.perplexity_run or self.perplexity_model)

    def effective_max_perplexity(self) -> float | None:
        """The threshold the rule drops above, or None (values recorded, nothing dropped by it)."""
        if not self.perplexity:
            return None
        if self.max_perplexity > 0:
            return self.max_perplexity
        return KENLM_MAX_PERPLEXITY if self.perplexity_model and not self.perplexity_buckets else None

    def _validate_perplexity(self) -> None:
        for key in ("perplexity_run", "perplexity_model", "perplexity_tokenizer"):
            if not isinstance(getattr(self, key), str):
                raise ValueError(f"filter config {key!r} = {getattr(self, key)!r}: must be a path (a string)")
        if self.perplexity_run and self.perplexity_model:
            raise ValueError("filter config: --perplexity-run and --perplexity-model both given "
                             "(perplexity_run, perplexity_model): score with one model")
        if self.perplexity_tokenizer and not self.perplexity_model:
            raise ValueError("filter config 'perplexity_tokenizer' (--perplexity-tokenizer) is the SentencePiece "
                             "model of a KenLM model: give --perplexity-model too (a run has its own tokenizer)")
        buckets = self.perplexity_buckets
        if not isinstance(buckets, (list, tuple)) or not all(
                isinstance(q, (int, float)) and not isinstance(q, bool) for q in buckets):
            raise ValueError(f"filter config 'perplexity_buckets' = {buckets!r}: must be a list of two quantiles")
        if buckets and (len(buckets) != len(BUCKET_NAMES) - 1 or not 0 < buckets[0] < buckets[1] < 1):
            raise ValueError(f"filter config 'perplexity_buckets' = {list(buckets)!r}: must be two increasing "
                             "quantiles in (0, 1), the head / middle and middle / tail cuts (CCNet: 0.33, 0.66)")
        if not self.perplexity and (buckets or self.max_perplexity):
            what = "perplexity_buckets" if buckets else "max_perplexity"
            raise ValueError(f"filter config {what!r}: no model to score with; give --perplexity-run "
                             "or --perplexity-model")


# Allowed range of every number of FilterConfig: (lowest, highest, what it is). Shares and
# fractions are in [0, 1]; counts and lengths are >= 0, or >= 1 where 0 would make a rule
# drop everything or nothing without saying so.
_RANGES: dict[str, tuple[float, float, str]] = {
    "c4_min_words_per_line": (0, math.inf, "words; 0 turns the rule off"),
    "c4_max_word_length": (0, math.inf, "characters; 0 turns the rule off"),
    "c4_min_sentences": (0, math.inf, "sentences; 0 turns the rule off"),
    "word_count_min": (0, math.inf, "words"),
    "word_count_max": (1, math.inf, "words"),
    "language_min_score": (0.0, 1.0, "a fastText probability"),
    # fastText reads this many characters of each document; 0 would give every document the
    # empty label and drop it
    "language_max_chars": (1, math.inf, "characters"),
    "flagged_words_max_ratio": (0.0, 1.0, "a share of words"),
    "special_chars_max_ratio": (0.0, 1.0, "a share of non-space characters"),
    # Character n-grams: 10 in BigScience ROOTS. One more character per n is one more pass over
    # the batch, and past 100 characters (a long sentence) an n-gram repeats only where whole
    # sentences do, which the Gopher duplicate-line and n-gram rules already measure.
    "char_repetition_n": (1, 100, "characters per n-gram"),
    "char_repetition_max_ratio": (0.0, 1.0, "a share of character n-grams"),
    # Word n-grams: past 50 words (a paragraph) most documents have no n-gram at all, and the
    # rule passes them all without a value
    "word_repetition_n": (1, 50, "words per n-gram"),
    "word_repetition_max_ratio": (0.0, 1.0, "a share of word n-grams"),
    "gopher_max_dup_para_frac": (0.0, 1.0, "a share of paragraphs"),
    "gopher_max_dup_para_char_frac": (0.0, 1.0, "a share of characters"),
    "gopher_max_dup_line_frac": (0.0, 1.0, "a share of lines"),
    "gopher_max_dup_line_char_frac": (0.0, 1.0, "a share of characters"),
    "gopher_min_mean_word_length": (0.0, math.inf, "characters"),
    "gopher_max_mean_word_length": (0.0, math.inf, "characters"),
    # '#' and '...' per word: a rate, not a share ('####' is one word with four), so above 1 is
    # a possible (lenient) threshold
    "gopher_max_symbol_word_ratio": (0.0, math.inf, "symbols per word"),
    "gopher_max_bullet_lines_ratio": (0.0, 1.0, "a share of lines"),
    "gopher_max_ellipsis_lines_ratio": (0.0, 1.0, "a share of lines"),
    "gopher_min_alpha_words_ratio": (0.0, 1.0, "a share of words"),
    # Line lengths in display columns: beyond 1000 (several sentences) every line of prose is
    # "short" and the rule drops every document
    "short_lines_chars": (1, 1000, "display columns"),
    "short_lines_max_ratio": (0.0, 1.0, "a share of lines"),
    "fineweb_min_line_punct_ratio": (0.0, 1.0, "a share of lines"),
    "fineweb_short_line_chars": (1, 1000, "characters"),
    "fineweb_max_short_lines_ratio": (0.0, 1.0, "a share of lines"),
    "fineweb_max_dup_line_chars_ratio": (0.0, 1.0, "a share of characters"),
    # newlines per word: blank lines make it exceed 1, so a threshold above 1 is possible
    "fineweb_max_newline_ratio": (0.0, math.inf, "newlines per word"),
    "stop_words_min_ratio": (0.0, 1.0, "a share of words"),
    "max_perplexity": (0.0, math.inf, "a perplexity; 0: 1400 for a KenLM model, none for a run"),
    "perplexity_batch_tokens": (1, math.inf, "tokens"),
}


def _check_range(key: str, value: Any, lo: float, hi: float, why: str, within: tuple[Any, str] | None = None) -> None:
    """ValueError unless `value` is a finite number in [lo, hi] (an int where the bounds are).

    `within`: (the list, what this item of it is), for one item of a list of thresholds.
    """
    integer = isinstance(lo, int) and (isinstance(hi, int) or hi == math.inf)
    number = isinstance(value, int if integer else (int, float)) and not isinstance(value, bool)
    if number and math.isfinite(value) and lo <= value <= hi:
        return
    if hi == math.inf:
        allowed = f"must be {'an integer' if integer else 'a number'} >= {lo:g}"
    else:
        allowed = f"must be {'an integer' if integer else 'a number'} in [{lo:g}, {hi:g}]"
    if within is not None:
        raise ValueError(f"filter config {key!r} = {within[0]!r}: its {within[1]} {value!r} {allowed} ({why})")
    raise ValueError(f"filter config {key!r} = {value!r}: {allowed} ({why})")


def check_language_codes(codes: list[str], where: str) -> None:
    """ValueError naming `where` (an option or key) unless every code is one fastText lid.176 outputs."""
    for code in codes:
        if code in HAN_ONLY_AS_ZH:
            raise ValueError(
                f"{where}: {code!r}: the filter reports Chinese written in Han characters as zh, "
                f"whatever lid.176 says about the variety ({', '.join(sorted(HAN_ONLY_AS_ZH))}): use zh")
        if code not in LID_LANGUAGES:
            hint = f" (did you mean {code.strip().lower()!r}?)" if code.strip().lower() in LID_LANGUAGES else ""
            raise ValueError(
                f"{where}: {code!r} is not a language code of fastText lid.176{hint}; codes are ISO 639 "
                "like en, zh, fr, de, es, ja, ru (the 176: https://fasttext.cc/docs/en/language-identification.html)")


def config_from_dict(d: dict) -> FilterConfig:
    """A config from a dict (a TOML `[filter]` table); missing keys take the defaults.

    Raises ValueError naming the key for an unknown key, a value of the wrong type, a list of
    the wrong length, or a value out of its range (`FilterConfig.validate`).
    """
    if not isinstance(d, dict):
        raise ValueError(f"filter config must be a table, got {type(d).__name__}")
    defaults = FilterConfig()
    valid = {f.name: getattr(defaults, f.name) for f in fields(FilterConfig)}
    unknown = [k for k in d if k not in valid]
    if unknown:
        named = ", ".join(f"{k!r}" + _did_you_mean(str(k), d[k], valid) for k in unknown)
        raise ValueError(f"unknown filter config key(s): {named}; `nonllama filter --show-config` lists every key")
    values: dict[str, Any] = {}
    hints = typing.get_type_hints(FilterConfig)
    for key, value in d.items():
        default = valid[key]
        if isinstance(default, str):
            ok = isinstance(value, str)
        elif isinstance(default, bool):
            ok = isinstance(value, bool)
        elif isinstance(default, int):
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif isinstance(default, float):
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            value = float(value) if ok else value
        else:  # a list: of language codes, of thresholds (one per n), of quantiles
            item = typing.get_args(hints[key])[0]
            ok = isinstance(value, list) and all(
                isinstance(v, str) if item is str else isinstance(v, (int, float)) and not isinstance(v, bool)
                for v in value
            )
            if ok and item is float:
                value = [float(v) for v in value]
                if default and len(value) != len(default):  # one per n
                    raise ValueError(f"filter config {key!r}: needs {len(default)} values, got {len(value)}")
        if not ok:
            raise ValueError(
                f"filter config {key!r}: expected {_type_name(default)}, got {value!r}"
            )
        values[key] = value
    config = FilterConfig(**values)
    config.validate()
    return config


def _did_you_mean(key: str, value: Any, valid: dict[str, Any]) -> str:
    """' (did you mean 'x'?)' for the closest valid key holding the same kind of value (so that
    `special_chars_max = 5` points at the ratio, not at the switch `special_chars`), or ''."""
    import difflib

    def kind(v: Any) -> type:
        if isinstance(v, bool | list):
            return type(v)
        return float if isinstance(v, int | float) else str

    same_kind = [name for name, default in valid.items() if kind(default) is kind(value)] or list(valid)
    close = difflib.get_close_matches(key, same_kind, n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _type_name(default: Any) -> str:
    if isinstance(default, bool):
        return "true or false"
    if isinstance(default, list):
        if not default:
            return "a list of numbers"
        return f"a list of {len(default)} numbers" if not isinstance(default[0], str) else "a list of strings"
    return {str: "a string (a path)"}.get(type(default), type(default).__name__)


def config_to_dict(config: FilterConfig) -> dict:
    return asdict(config)


# --------------------------------------------------------------------------------------- checks


@dataclass(frozen=True)
class Check:
    """One threshold test: `reason` when `value` is below `min` or above `max` (nulls pass)."""

    reason: str
    switch: str
    value: str
    bound: str  # "min" or "max"
    threshold: float

    def fails(self) -> pl.Expr:
        v = pl.col(self.value)
        bad = v < self.threshold if self.bound == "min" else v > self.threshold
        return bad.fill_null(False)


def checks(config: FilterConfig) -> list[Check]:
    """The threshold tests of every switched-on rule, in priority order (C4 and language apart)."""
    c = config
    out = [
        Check("word_count", "word_count", "words", "min", c.word_count_min),
        Check("word_count", "word_count", "words", "max", c.word_count_max),
        Check("flagged_words", "flagged_words", "flagged_words_ratio", "max", c.flagged_words_max_ratio),
        Check("special_chars", "special_chars", "special_chars_ratio", "max", c.special_chars_max_ratio),
        Check("char_repetition", "char_repetition", "char_repetition_ratio", "max", c.char_repetition_max_ratio),
        Check("word_repetition", "word_repetition", "word_repetition_ratio", "max", c.word_repetition_max_ratio),
        Check("gopher_dup_para_frac", "gopher_repetition", "dup_para_frac", "max", c.gopher_max_dup_para_frac),
        Check("gopher_dup_para_char_frac", "gopher_repetition", "dup_para_char_frac", "max", c.gopher_max_dup_para_char_frac),
        Check("gopher_dup_line_frac", "gopher_repetition", "dup_line_frac", "max", c.gopher_max_dup_line_frac),
        Check("gopher_dup_line_char_frac", "gopher_repetition", "dup_line_char_frac", "max", c.gopher_max_dup_line_char_frac),
        *(
            Check(f"gopher_top_{n}gram", "gopher_repetition", f"top_{n}gram_char_frac", "max", t)
            for n, t in zip(GOPHER_TOP_NS, c.gopher_max_top_ngram_char_frac, strict=True)
        ),
        *(
            Check(f"gopher_dup_{n}gram", "gopher_repetition", f"dup_{n}gram_char_frac", "max", t)
            for n, t in zip(GOPHER_DUP_NS, c.gopher_max_dup_ngram_char_frac, strict=True)
        ),
        Check("gopher_mean_word_length", "gopher_quality", "mean_word_length", "min", c.gopher_min_mean_word_length),
        Check("gopher_mean_word_length", "gopher_quality", "mean_word_length", "max", c.gopher_max_mean_word_length),
        Check("gopher_hash_ratio", "gopher_quality", "hash_ratio", "max", c.gopher_max_symbol_word_ratio),
        Check("gopher_ellipsis_ratio", "gopher_quality", "ellipsis_ratio", "max", c.gopher_max_symbol_word_ratio),
        Check("gopher_bullet_lines", "gopher_quality", "bullet_lines_ratio", "max", c.gopher_max_bullet_lines_ratio),
        Check("gopher_ellipsis_lines", "gopher_quality", "ellipsis_lines_ratio", "max", c.gopher_max_ellipsis_lines_ratio),
        Check("gopher_alpha_words", "gopher_quality", "alpha_words_ratio", "min", c.gopher_min_alpha_words_ratio),
        Check("short_lines", "short_lines", "short_lines_ratio", "max", c.short_lines_max_ratio),
        Check("fineweb_line_punct", "fineweb_quality", "line_punct_ratio", "min", c.fineweb_min_line_punct_ratio),
        Check("fineweb_short_lines", "fineweb_quality", "fineweb_short_lines_ratio", "max", c.fineweb_max_short_lines_ratio),
        Check("fineweb_dup_line_chars", "fineweb_quality", "dup_line_chars_ratio", "max", c.fineweb_max_dup_line_chars_ratio),
        Check("fineweb_newline_ratio", "fineweb_quality", "newline_ratio", "max", c.fineweb_max_newline_ratio),
        Check("stop_words", "stop_words", "stop_words_ratio", "min", c.stop_words_min_ratio),
    ]
    return [ch for ch in out if getattr(config, ch.switch)]


# The threshold checks that come before the language rule in the priority order (see the table
# of the module docstring): nothing there to identify.
BEFORE_LANGUAGE = frozenset({"word_count"})


def _language_fails(config: FilterConfig) -> pl.Expr:
    ok = pl.col("lang").is_in(config.languages) & (pl.col("lang_score") >= config.language_min_score)
    return ~ok.fill_null(False)


def needed_values(config: FilterConfig) -> set[str] | None:
    """The values the switched-on rules compare (None, all of them, with `stats_only`).

    A switched-off rule's value is not computed and is recorded as null; values computed together
    with a needed one are recorded too (the stop-word ratio comes with the flagged-word ratio).
    """
    if config.stats_only:
        return None
    needed = {ch.value for ch in checks(config)}
    if config.language:
        needed |= {"lang", "lang_score"}
    return needed


def first_failing_rule(values: pl.DataFrame, config: FilterConfig) -> pl.Series:
    """Per document: the drop reason of the first rule it fails, in priority order, or null."""
    tests: list[tuple[str, pl.Expr]] = []
    if config.c4_line_cleaning:
        tests.append(("", pl.col("c4_flag").is_not_null()))  # reason built from the flag
        tests.append((EMPTY_AFTER_CLEANING, pl.col("c4_empty")))
    # the language rule is no threshold check: it goes after the checks named to precede it
    # (by name: which checks a config switches on changes their positions)
    all_checks = checks(config)
    tests += [(ch.reason, ch.fails()) for ch in all_checks if ch.reason in BEFORE_LANGUAGE]
    if config.language:
        tests.append(("language", _language_fails(config)))
    tests += [(ch.reason, ch.fails()) for ch in all_checks if ch.reason not in BEFORE_LANGUAGE]
    if not tests:
        return pl.Series("reason", [None] * values.height, dtype=pl.String)
    expr: Any = pl
    for reason, fails in tests:
        label = pl.lit("c4_") + pl.col("c4_flag") if reason == "" else pl.lit(reason)
        expr = expr.when(fails).then(label)
    return values.select(expr.otherwise(pl.lit(None, dtype=pl.String)).alias("reason"))["reason"]


# --------------------------------------------------------------------------------------- heart


def filter_batch(batch: pl.DataFrame, config: FilterConfig,
                 models: ModelFiles | None = None) -> tuple[pl.DataFrame, pl.DataFrame]:
    """One batch of documents -> (kept, rejected), both with the `filter_values` struct column.

    Kept rows carry the text after C4 line cleaning (when on); rejected rows keep their original
    text and get `drop_reason`. With `stats_only`, nothing is rejected and kept rows get
    `would_drop`: the reason the rules would have given (null when the document passes).
    `models`: the perplexity rule's files as the stage resolved them (`model_files`); resolved
    here from the config when not given.
    """
    config.validate()  # microseconds a batch; a bad threshold would decide every document wrongly
    texts = batch["text"].fill_null("")
    if config.c4_line_cleaning:
        cleaned = clean_lines(
            texts,
            remove_citations=config.c4_remove_citations,
            javascript=config.c4_javascript,
            policy=config.c4_policy,
            boilerplate=config.c4_boilerplate,
            terminal_punct=config.c4_terminal_punct,
            min_words_per_line=config.c4_min_words_per_line,
            max_word_length=config.c4_max_word_length,
            lorem_ipsum=config.c4_lorem_ipsum,
            curly_bracket=config.c4_curly_bracket,
            min_sentences=config.c4_min_sentences,
        )
        new_texts = cleaned["text"]
        lines_cut = cleaned[LINES_CUT_COLUMN]
    else:
        new_texts = texts
        lines_cut = pl.Series(LINES_CUT_COLUMN, [[]] * batch.height, dtype=pl.List(LINE_CUT_DTYPE))
    values = rule_values(
        prose_view(new_texts),  # the rules are for prose: code blocks and tables aside
        short_line_chars=config.short_lines_chars,
        fineweb_short_line_chars=config.fineweb_short_line_chars,
        char_ngram=config.char_repetition_n,
        word_ngram=config.word_repetition_n,
        language_max_chars=config.language_max_chars,
        identify_language=True,
        needed=needed_values(config),
    )
    if config.c4_line_cleaning:
        values = values.with_columns(
            cleaned["c4_lines_removed"],
            cleaned["c4_chars_removed"],
            c4_flag=cleaned["c4_flag"],
            c4_empty=(new_texts.str.len_chars() == 0) & (texts.str.strip_chars().str.len_chars() > 0),
        )
    reason = first_failing_rule(values, config)
    if config.perplexity:
        values, reason = perplexity_rule(values, reason, new_texts, config, models or model_files(config))
    struct = values.select(pl.struct(list(VALUE_FIELDS)).alias(VALUES_COLUMN))[VALUES_COLUMN]
    lines_cut = lines_cut.alias(LINES_CUT_COLUMN)
    if config.stats_only:
        kept = batch.with_columns(new_texts.alias("text"), struct, lines_cut, reason.alias(WOULD_DROP_COLUMN))
        return kept, kept.head(0).drop(WOULD_DROP_COLUMN).with_columns(pl.lit("").alias("drop_reason"))
    dropped = reason.is_not_null()
    kept = batch.with_columns(new_texts.alias("text"), struct, lines_cut).filter(~dropped)
    # rejected rows keep their original text; `lines_cut` says what cleaning would have cut
    # (all of it, for empty_after_line_cleaning)
    rejected = batch.with_columns(struct, lines_cut, reason.alias("drop_reason")).filter(dropped)
    return kept, rejected


def perplexity_rule(values: pl.DataFrame, reason: pl.Series, texts: pl.Series, config: FilterConfig,
                    models: ModelFiles) -> tuple[pl.DataFrame, pl.Series]:
    """Rule 13, last: the reference model scores the (cleaned) documents no other rule dropped
    (every document with `stats_only`); returns the values with `perplexity` and `bits_per_byte`
    filled in, and the reasons with `perplexity` for the documents above the threshold."""
    n = values.height
    todo = np.arange(n) if config.stats_only else np.flatnonzero(reason.is_null().to_numpy())
    perplexity, bits = np.full(n, np.nan), np.full(n, np.nan)
    if len(todo):
        perplexity[todo], bits[todo] = scorer(models).score(texts.gather(todo).to_list())
    values = values.with_columns(pl.Series("perplexity", perplexity).fill_nan(None),
                                 pl.Series("bits_per_byte", bits).fill_nan(None))
    limit = config.effective_max_perplexity()
    if limit is not None:
        fails = (values["perplexity"] > limit).fill_null(False)
        reason = values.select(pl.when(reason.is_null() & fails).then(pl.lit("perplexity"))
                               .otherwise(reason).alias("reason"))["reason"]
    return values, reason


def model_files(config: FilterConfig, *, threads: int = 1) -> ModelFiles:
    """The files the perplexity rule reads, checked (FileNotFoundError or StageError naming the
    option): a run's latest checkpoint and its tokenizer, or a KenLM model and its SentencePiece
    model. `threads`: torch threads per worker."""
    batch = config.perplexity_batch_tokens
    if config.perplexity_run:
        checkpoint, tokenizer = resolve_run(Path(config.perplexity_run))
        return ModelFiles("run", str(checkpoint), str(tokenizer), threads, batch)
    require_kenlm()
    model, sp = resolve_kenlm(Path(config.perplexity_model),
                              Path(config.perplexity_tokenizer) if config.perplexity_tokenizer else None)
    return ModelFiles("kenlm", str(model), str(sp), threads, batch)


def absolute_model_paths(config: FilterConfig) -> FilterConfig:
    """The config with its model paths absolute: tasks run in other processes and, under Ray,
    in other directories of other nodes (the manifest records where the model was)."""
    keys = ("perplexity_run", "perplexity_model", "perplexity_tokenizer")
    return replace(config, **{k: os.path.abspath(getattr(config, k)) for k in keys if getattr(config, k)})


# --------------------------------------------------------------------------------------- stage


LINES_CUT_KEY = "lines_cut_as_{}"  # stage_counts key of the lines cut for one reason


def line_cleaning_counts(batch: pl.DataFrame, kept: pl.DataFrame, removed: pl.DataFrame) -> dict[str, int]:
    """The manifest's `stage_counts` of one batch: what C4 line cleaning cut from kept documents,
    in all and per reason (`lines_cut_as_<reason>`, for the reasons that occur).

    Module-level, so that it pickles into the workers (`run_shard_stage(count_batch=...)`).
    """
    if kept.height and VALUES_COLUMN in kept.columns:
        values = kept[VALUES_COLUMN].struct.unnest()
        lines, chars = values["c4_lines_removed"], values["c4_chars_removed"]
        docs, lines_removed, chars_removed = int((lines > 0).sum()), int(lines.sum() or 0), int(chars.sum() or 0)
    else:
        docs = lines_removed = chars_removed = 0
    counts = {
        "documents_changed_by_line_cleaning": docs,
        "lines_removed_by_line_cleaning": lines_removed,
        "characters_removed_by_line_cleaning": chars_removed,
    }
    if kept.height and LINES_CUT_COLUMN in kept.columns:
        reasons = kept[LINES_CUT_COLUMN].explode().struct.field("reason").drop_nulls()
        for reason, n in reasons.value_counts().iter_rows():
            counts[LINES_CUT_KEY.format(reason)] = int(n)
    return counts


def run_filter(
    input_dir: Path,
    output_dir: Path,
    config: FilterConfig,
    *,
    workers: int = 1,
    executor: Executor | None = None,
    force: bool = False,
    verify_input: bool = False,
    console: Console | None = None,
) -> StageRun:
    """Filter every part of `input_dir` (a normalize output) into `output_dir`.

    The manifest counts drops per reason and per source (io does), and, in `stage_counts`, what
    line cleaning removed from the kept documents (`line_cleaning_counts`).
    """
    config.validate()  # before any data is read
    models = None
    if config.perplexity:  # the model files too: a missing one is said before any data is read
        config = absolute_model_paths(config)
        models = model_files(config, threads=task_threads(executor, workers))
    return run_shard_stage(
        stage=STAGE,
        input_dir=input_dir,
        output_dir=output_dir,
        side_dir_name=SIDE_DIR,
        config=config_to_dict(config),
        transform=partial(filter_batch, config=config, models=models),
        workers=workers,
        executor=executor,
        force=force,
        verify_input=verify_input,
        console=console,
        count_batch=line_cleaning_counts,
        dependencies=dependencies(config, models),
        then=partial(perplexity_bucket_passes, quantiles=config.perplexity_buckets) if config.perplexity_buckets else None,
    )


def dependencies(config: FilterConfig, models: ModelFiles | None = None) -> dict[str, str]:
    """The data files this config's rules read (word lists, the fastText model, the perplexity
    rule's model and tokenizer): their sha256, recorded in the manifest, so that a changed file
    (a retrained reference run) makes the stage rerun, not "up to date"."""
    deps = data_dependencies(needed_values(config))
    if models is not None:
        keys = ("perplexity_run", "perplexity_run") if models.kind == "run" else ("perplexity_model", "perplexity_tokenizer")
        for key, path in zip(keys, (models.model, models.tokenizer), strict=True):
            deps[f"{key}:{Path(path).name}"] = file_digest(Path(path))
    return deps


# --------------------------------------------------------------------------------------- buckets

BUCKET_COLUMN = "ppl_bucket"


def part_log_histogram(part: Path, report: Reporter) -> LogHistogram:
    """Pass 2 of the buckets, one kept part: per source, a histogram of log(perplexity). Only
    two columns are read (the perplexity is one leaf of the `filter_values` struct)."""
    table = pq.read_table(part, columns=["source", f"{VALUES_COLUMN}.perplexity"])
    if not table.num_rows:
        return LogHistogram({})
    frame = pl.from_arrow(table)
    assert isinstance(frame, pl.DataFrame)
    if VALUES_COLUMN in frame.columns:  # pyarrow gives the leaf as a column, or in its struct
        frame = frame.unnest(VALUES_COLUMN)
    report(frame.height, 0)
    return LogHistogram.of(frame["source"].fill_null("").to_numpy(),
                           frame["perplexity"].cast(pl.Float64).fill_null(np.nan).to_numpy())


def bucket_part(task: tuple[Path, dict[str, list[int]]], report: Reporter) -> dict:
    """Pass 3, one kept part: rewritten with `ppl_bucket` (head / middle / tail by its source's
    cut bins; null without a perplexity), through a temporary file and a rename. A column left by
    an earlier, interrupted rewrite is replaced, so a rerun writes the same bytes. Returns the
    part as the manifest lists it."""
    path, cuts = task
    writer = PartWriter(path)
    try:
        for batch in iter_part_batches(path):
            batch = batch.drop(BUCKET_COLUMN, strict=False)
            perplexity = batch[VALUES_COLUMN].struct.field("perplexity").cast(pl.Float64).fill_null(np.nan).to_numpy()
            sources = batch["source"].fill_null("").to_numpy()
            buckets = np.full(batch.height, None, dtype=object)
            for source in np.unique(sources):
                if str(source) in cuts:
                    rows = sources == source
                    buckets[rows] = bucket_of(perplexity[rows], cuts[str(source)])
            writer.write(batch.with_columns(pl.Series(BUCKET_COLUMN, buckets.tolist(), dtype=pl.String)))
            report(batch.height, int(batch["text"].str.len_bytes().sum() or 0))
        written = writer.close()
    except BaseException:
        writer.abort()
        raise
    assert written is not None
    return describe_part(written, writer.rows, writer.chars)


def perplexity_bucket_passes(ctx: StageContext, section: dict, *, quantiles: list[float]) -> dict:
    """CCNet's buckets after the shard pass: histograms of every kept part (a task each), summed
    here into per-source cut points (`perplexity_buckets` in the manifest), then every kept part
    rewritten with `ppl_bucket` (a task each; its new size and checksum in the manifest)."""
    parts = [ctx.output_dir / p["name"] for p in section["parts"] if p["rows"]]
    histograms = ctx.map(part_log_histogram, parts, label="perplexity quantiles", total_docs=section["rows_out"])
    merged = merge_histograms(histograms)
    cuts = {source: cut_bins(h, quantiles) for source, h in merged.items()}
    described = ctx.map(bucket_part, [(p, cuts) for p in parts], label="perplexity buckets",
                        total_docs=section["rows_out"])
    by_name = {d["name"]: d for d in described}
    section["parts"] = [by_name.get(p["name"], p) for p in section["parts"]]
    section["output_digest"] = output_digest(section["parts"])
    buckets = {}
    for source, h in merged.items():
        edges = [0, *(c + 1 for c in cuts[source]), len(h)]
        buckets[source] = {
            "quantiles": list(quantiles),
            "cut_points": [round(bin_edge(c), 4) for c in cuts[source]],
            "documents": {name: int(h[a:b].sum()) for name, a, b in zip(BUCKET_NAMES, edges, edges[1:], strict=False)},
        }
    section["perplexity_buckets"] = buckets
    return section


# --------------------------------------------------------------------------------------- report


def thresholds(config: FilterConfig) -> dict[str, list[float]]:
    """Per recorded value, the thresholds the config compares it with (for the histograms)."""
    marks: dict[str, list[float]] = {}
    for ch in checks(config) + [
        ch for ch in checks(FilterConfig(**{**config_to_dict(config), "stop_words": True})) if ch.switch == "stop_words"
    ]:
        marks.setdefault(ch.value, []).append(float(ch.threshold))
    marks["lang_score"] = [config.language_min_score]
    return marks


COUNT_VALUES = ("words", "c4_chars_removed", "c4_lines_removed")  # drawn on a log scale


def draw_report(filtered_dir: Path, report_dir: Path, config: FilterConfig) -> list[Path]:
    """One PNG histogram per recorded value over kept + rejected documents (stacked, so the
    documents a rule took are visible), its thresholds marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    plain = ticker.FuncFormatter(lambda v, _: f"{v:g}")
    filtered_dir, report_dir = Path(filtered_dir), Path(report_dir)
    manifest = read_manifest(filtered_dir)
    if manifest is None:
        raise FileNotFoundError(f"{filtered_dir}: no finished filter output; run `nonllama filter` first")

    def values_of(parts: list[Path]) -> pl.DataFrame:
        frames = [pl.read_parquet(p, columns=[VALUES_COLUMN, "source"]).unnest(VALUES_COLUMN) for p in parts]
        frames = [f for f in frames if f.height]
        return pl.concat(frames, how="vertical_relaxed") if frames else pl.DataFrame()

    groups = {"kept": values_of(list_parts(filtered_dir)), "rejected": values_of(list_parts(filtered_dir / SIDE_DIR))}
    report_dir.mkdir(parents=True, exist_ok=True)
    marks = thresholds(config)
    written = _draw_perplexity(groups, manifest, config, report_dir)
    for name in VALUE_FIELDS:
        if name in ("lang", "perplexity") or not any(name in g.columns for g in groups.values()):
            continue
        data = {k: (g[name].drop_nulls().cast(pl.Float64).to_numpy() if name in g.columns else np.zeros(0))
                for k, g in groups.items()}
        every = np.concatenate(list(data.values()))
        fig, ax = plt.subplots(figsize=(6, 3.5))
        title = f"{name} ({len(every):,} documents)"
        drawn_marks = list(marks.get(name, []))
        if len(every):
            top = float(every.max())
            # a threshold far beyond every value (the word-count maximum) would squash the data
            far = [t for t in drawn_marks if t > 20 * max(top, 1.0)]
            drawn_marks = [t for t in drawn_marks if t not in far]
            if far:
                title += "; threshold " + ", ".join(f"{t:g}" for t in far) + " off the chart"
            if name in COUNT_VALUES:
                zeros = int((every <= 0).sum())
                if zeros:
                    title += f"; {zeros:,} at 0"
                bins = np.unique(np.geomspace(1, max(top, max(drawn_marks, default=1.0), 2.0) * 1.05, 40))
                ax.set_xscale("log")
                series = [d[d > 0] for d in data.values()]
            else:
                hi = max(top, max(drawn_marks, default=0.0), 1e-9) * 1.05
                lo = min(float(every.min()), min(drawn_marks, default=0.0), 0.0)
                bins = np.linspace(lo, hi, 51)
                series = list(data.values())
            # stepfilled: one polygon per series, not a rectangle per bin
            ax.hist(series, bins=bins, stacked=True, histtype="stepfilled", label=list(data),
                    color=["#4c72b0", "#dd8452"])
            if any(len(d) for d in series):  # (every count at 0: nothing to draw on a log axis)
                ax.set_yscale("log")  # the documents a threshold decides about are the rare ones
                ax.set_ylim(bottom=0.7)  # from one document up, even when every value shares a bin
            # plain tick labels: the default ones on a log axis go through mathtext, which
            # costs most of the drawing time
            for axis in (ax.xaxis, ax.yaxis) if name in COUNT_VALUES else (ax.yaxis,):
                axis.set_major_formatter(plain)
                axis.set_minor_formatter(ticker.NullFormatter())
        for t in drawn_marks:
            ax.axvline(t, color="red", linestyle="--", label=f"threshold {t:g}")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel(name)
        ax.set_ylabel("documents")
        if ax.get_legend_handles_labels()[0]:  # a value no document has: nothing to label
            ax.legend(fontsize=7)
        fig.subplots_adjust(left=0.13, right=0.97, bottom=0.15, top=0.9)  # fixed: tight_layout is slow
        path = report_dir / f"{name}.png"
        fig.savefig(path, dpi=80)
        plt.close(fig)
        written.append(path)
    return written


def _draw_perplexity(groups: dict[str, pl.DataFrame], manifest: dict, config: FilterConfig,
                     report_dir: Path) -> list[Path]:
    """One histogram of perplexity per source (`perplexity-<source>.png`), on a log axis (a
    perplexity is exp of a mean log-loss: its spread is multiplicative), kept and rejected
    stacked, with the threshold or the source's bucket cut points marked. Sources apart: each
    has its own scale (a reference model trained on English finds Chinese absurdly surprising)."""
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    def scored(g: pl.DataFrame) -> pl.DataFrame:
        if "perplexity" not in g.columns:
            return pl.DataFrame({"source": [], "perplexity": []}, schema={"source": pl.String, "perplexity": pl.Float64})
        return g.select("source", pl.col("perplexity").cast(pl.Float64)).filter(pl.col("perplexity") > 0)

    frames = {k: scored(g) for k, g in groups.items()}
    sources = sorted(set().union(*(set(f["source"].drop_nulls()) for f in frames.values())))
    limit = config.effective_max_perplexity()
    buckets = manifest.get("perplexity_buckets", {})
    written = []
    for source in sources:
        data = {k: f.filter(pl.col("source") == source)["perplexity"].to_numpy() for k, f in frames.items()}
        every = np.concatenate(list(data.values()))
        lines = [(limit, f"threshold {limit:g}")] if limit is not None else []
        lines += [(c, f"{name} | {after} {c:,.4g}") for c, name, after in
                  zip(buckets.get(source, {}).get("cut_points", []), BUCKET_NAMES, BUCKET_NAMES[1:], strict=False)]
        lo = min(float(every.min()), *(v for v, _ in lines)) / 1.05
        hi = max(float(every.max()), *(v for v, _ in lines)) * 1.05
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.hist(list(data.values()), bins=np.geomspace(lo, max(hi, lo * 1.1), 50), stacked=True,
                histtype="stepfilled", label=list(data), color=["#4c72b0", "#dd8452"])
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_ylim(bottom=0.7)
        for axis in (ax.xaxis, ax.yaxis):  # plain labels: mathtext is slow
            axis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
            axis.set_minor_formatter(ticker.NullFormatter())
        for value, label in lines:
            ax.axvline(value, color="red", linestyle="--", label=label)
        ax.set_title(f"perplexity of {source} ({len(every):,} documents scored)", fontsize=9)
        ax.set_xlabel("perplexity (log scale)")
        ax.set_ylabel("documents")
        ax.legend(fontsize=7)
        fig.subplots_adjust(left=0.13, right=0.97, bottom=0.15, top=0.9)
        path = report_dir / f"perplexity-{re.sub(r'[^A-Za-z0-9_.-]+', '_', source)}.png"
        fig.savefig(path, dpi=80)
        plt.close(fig)
        written.append(path)
    return written
