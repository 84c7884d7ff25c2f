"""Properties of normalize over generated text (hypothesis): what a user relies on for any input.

- A document with a letter in it is never emptied.
- Lines between code fences come out byte for byte as they went in. Code is exempt from every
  rule, NFC and the width folding (NFKC) included: no normal form is applied to it. The only
  change is the one that defines lines: `\\r\\n` and `\\r` become `\\n` (so code lines here
  have neither).
- An overlong line is split, never dropped: no letter or digit is lost, and no line of the
  output is longer than the limit unless it is an input line left as it was (code).
"""

from __future__ import annotations

import os
import re
import unicodedata

import polars as pl
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from nonllama.pipeline.normalize import NormalizeConfig, normalize_texts

FENCE = re.compile(r"^ {0,3}(```|~~~)")

# any character but surrogates (polars strings are UTF-8)
any_char = st.characters(blacklist_categories=("Cs",))
# text of the kinds this stage sees: English, Chinese, full-width forms, punctuation, spaces,
# tabs, invisible characters, line breaks of every kind
text_char = st.one_of(
    any_char,
    st.sampled_from(list("abcXYZ019 .,!?;:()\"'-—…“”‘’\t\n\n\n\r\u3000\u200b\ufeff中文北京，。！？：；（）ＡＢ１２")),
)
documents = st.text(alphabet=text_char, max_size=300)
code_line = st.text(
    alphabet=st.one_of(any_char, st.sampled_from(list(" \t{}()[];=*#|-ＡＢ，。中文\u200b\u3000"))),
    max_size=40,
).filter(lambda line: "\n" not in line and "\r" not in line and not FENCE.match(line))
prose = documents.filter(lambda t: not any(FENCE.match(x) for x in re.split(r"\r\n?|\n", t)))

# no example database: the tests write nothing into the checkout. Derandomized: the suite gives
# the same verdict on every run (CI included); explore with more examples and a random seed by
# hand (`HYPOTHESIS_EXPLORE=1`), and add what it finds below as explicit examples
EXPLORE = bool(os.environ.get("HYPOTHESIS_EXPLORE"))
SETTINGS = settings(
    max_examples=1500 if EXPLORE else 60, deadline=None, database=None, derandomize=not EXPLORE,
    suppress_health_check=[HealthCheck.too_slow],
)


def norm(text: str, config: NormalizeConfig | None = None) -> str:
    return normalize_texts(pl.Series([text]), config or NormalizeConfig())[0]


# terminal escape sequences (ECMA-48: CSI, OSC, two-character escapes): the letters in them
# (`\x1b[31m`, `\x1bA`) are commands to a terminal, not text
TERMINAL_ESCAPE = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b\n]*(?:\x07|\x1b\\)|\x1b[@-Z\\-_]")


def has_letter(text: str) -> bool:
    return any(unicodedata.category(c).startswith("L") for c in TERMINAL_ESCAPE.sub("", text))


@SETTINGS
@given(documents)
@example("À\x80")  # found by hypothesis: ftfy read it as a NUL in Java's modified UTF-8
def test_a_document_with_a_letter_is_never_emptied(text):
    assume(has_letter(text))
    assert norm(text) != ""


@SETTINGS
@given(prose, st.sampled_from(["```", "```python", "~~~", "  ```js"]), st.lists(code_line, max_size=8), prose)
def test_code_between_fences_is_byte_identical(before, opening, code, after):
    closing = opening.strip()[:3]
    doc = "\n".join([before, opening, *code, closing, after])
    lines = norm(doc).split("\n")
    block = [opening, *code, closing]
    starts = [i for i in range(len(lines)) if lines[i : i + len(block)] == block]
    assert starts, (block, lines)


@SETTINGS
@given(documents, st.integers(min_value=1, max_value=40))
def test_overlong_lines_are_split_without_losing_letters(text, max_line_chars):
    limited = norm(text, NormalizeConfig(max_line_chars=max_line_chars))
    unlimited = norm(text, NormalizeConfig(split_long_lines=False))
    assert [c for c in limited if c.isalnum()] == [c for c in unlimited if c.isalnum()]
    input_lines = set(re.split(r"\r\n?|\n", text))
    assert all(len(line) <= max_line_chars or line in input_lines for line in limited.split("\n"))
