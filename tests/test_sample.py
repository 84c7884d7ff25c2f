"""The built-in demo corpus (`nonllama download sample`): deterministic, sized, and every
planted problem really is what its `meta["kind"]` says."""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import subprocess
import sys
import unicodedata
import zlib
from collections import Counter

import ftfy
import pytest

from nonllama.pipeline.records import Record
from nonllama.pipeline.sample import (
    BOILERPLATE_LINES,
    KINDS,
    SampleDoc,
    jaccard,
    sample_corpus,
    sample_documents,
    shingles,
    strip_planted_controls,
)

CJK = re.compile(r"[\u4e00-\u9fff]")
FULL_WIDTH_ASCII = re.compile(r"[\uff01-\uff5e]")
ASCII_PUNCT = re.compile(r"[,.!?;:]")


@pytest.fixture(scope="module")
def records() -> list[Record]:
    return list(sample_documents(0))


@pytest.fixture(scope="module")
def corpus() -> list[SampleDoc]:
    return sample_corpus(0)


def of_kind(
    corpus: list[SampleDoc], kind: str, lang: str | None = None
) -> list[tuple[int, SampleDoc]]:
    return [
        (i, d) for i, d in enumerate(corpus) if d.kind == kind and (lang is None or d.lang == lang)
    ]


def digest(recs: list[Record]) -> str:
    blob = json.dumps(
        [[r.position, r.text, r.meta] for r in recs], ensure_ascii=False, sort_keys=True
    )
    return hashlib.sha256(blob.encode("utf-8", "surrogatepass")).hexdigest()


# ----------------------------------------------------------------------------- shape


def test_records_are_positioned_and_tagged(records: list[Record], corpus: list[SampleDoc]) -> None:
    assert all(isinstance(r, Record) for r in records)
    assert [r.position for r in records] == list(range(len(records)))
    assert [r.text for r in records] == [d.text for d in corpus]
    for r in records:
        assert isinstance(r.text, str)
        assert r.meta["kind"] in KINDS
        assert isinstance(r.meta["lang"], str) and r.meta["lang"]
        json.dumps(r.meta)  # JSON-serialisable, as download stores it


def test_same_seed_same_corpus_other_seed_other_corpus(records: list[Record]) -> None:
    again = list(sample_documents(0))
    assert digest(again) == digest(records)
    other = list(sample_documents(1))
    assert digest(other) != digest(records)
    # not just reordered: most texts differ
    shared = {r.text for r in records} & {r.text for r in other}
    assert len(shared) < len(records) // 10


def test_does_not_use_or_touch_global_random_state(records: list[Record]) -> None:
    random.seed(12345)
    state = random.getstate()
    assert digest(list(sample_documents(0))) == digest(records)
    assert random.getstate() == state
    random.seed(999)
    assert digest(list(sample_documents(0))) == digest(records)


def test_deterministic_across_processes_and_hash_seeds() -> None:
    code = (
        "import hashlib, json\n"
        "from nonllama.pipeline.sample import sample_documents\n"
        "blob = json.dumps([[r.position, r.text, r.meta] for r in sample_documents(7)], ensure_ascii=False, sort_keys=True)\n"
        "print(hashlib.sha256(blob.encode('utf-8', 'surrogatepass')).hexdigest())\n"
    )
    outs = set()
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        res = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
        )
        outs.add(res.stdout.strip())
    assert len(outs) == 1
    assert outs == {digest(list(sample_documents(7)))}


def test_size_within_bounds(records: list[Record]) -> None:
    assert 400 <= len(records) <= 800
    total = sum(len(r.text.encode("utf-8")) for r in records)
    assert 300_000 <= total <= 600_000


def test_generated_lengths(corpus: list[SampleDoc]) -> None:
    for _, d in of_kind(corpus, "clean", "en"):
        assert 80 <= len(d.text.split()) <= 300, d.text
        assert d.text.count("\n\n") >= 2  # several paragraphs
    for _, d in of_kind(corpus, "clean", "zh"):
        assert 100 <= len(re.sub(r"\s", "", d.text)) <= 400, d.text


def test_every_kind_present_with_its_minimum(corpus: list[SampleDoc]) -> None:
    counts = Counter(d.kind for d in corpus)
    assert set(counts) == set(KINDS)
    for kind in KINDS:
        assert counts[kind] >= 10, kind
    assert 0.55 <= counts["clean"] / len(corpus) <= 0.75
    by_lang = Counter((d.kind, d.lang) for d in corpus)
    for kind in (
        "exact_dup",
        "near_dup",
        "boilerplate",
        "spam",
        "control_chars",
        "mojibake",
        "mixed_width",
    ):
        assert by_lang[(kind, "en")] >= 4 and by_lang[(kind, "zh")] >= 4, kind


def test_languages(corpus: list[SampleDoc]) -> None:
    langs = Counter(d.lang for d in corpus)
    assert langs["en"] >= 200 and langs["zh"] >= 150
    foreign = Counter(d.lang for d in corpus if d.kind == "foreign")
    assert set(foreign) == {"fr", "de", "es", "ja", "ru"}
    assert all(n >= 3 for n in foreign.values())
    scripts = {
        "ja": re.compile(r"[\u3040-\u309f]"),  # hiragana
        "ru": re.compile(r"[\u0400-\u04ff]"),  # Cyrillic
        "fr": re.compile(r"\b(le|la|les|une|est|dans)\b"),
        "de": re.compile(r"\b(der|die|das|ein|ist|und)\b"),
        "es": re.compile(r"\b(el|la|una|está|con|los)\b"),
    }
    for _, d in of_kind(corpus, "foreign"):
        assert len(d.text.split()) >= 15 or d.lang == "ja"
        assert scripts[d.lang].search(d.text.lower()), (d.lang, d.text)
        assert not CJK.search(d.text) or d.lang == "ja"


# ----------------------------------------------------------------------------- clean text


def test_clean_english_is_plain_ascii(corpus: list[SampleDoc]) -> None:
    for _, d in of_kind(corpus, "clean", "en"):
        assert d.text.isascii(), d.text
        assert not FULL_WIDTH_ASCII.search(d.text)
        assert not re.search(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]", d.text)
        assert re.match(r"[A-Z\"]", d.text), d.text[:40]
        assert "{" not in d.text and "[" not in d.text  # no unfilled template slots


def test_clean_chinese_uses_full_width_punctuation(corpus: list[SampleDoc]) -> None:
    for _, d in of_kind(corpus, "clean", "zh"):
        assert "。" in d.text and "，" in d.text, d.text
        assert not ASCII_PUNCT.search(d.text), d.text
        assert not re.search(
            r"[\uff10-\uff19\uff21-\uff3a\uff41-\uff5a]", d.text
        )  # full-width digits/letters
        assert "{" not in d.text and "[" not in d.text and "|" not in d.text
        body = re.sub(r"[\s\d，。！？：；“”、]", "", d.text)
        assert len(CJK.findall(body)) / len(body) > 0.97, d.text


def test_clean_documents_are_unique_and_not_near_duplicates(corpus: list[SampleDoc]) -> None:
    texts = [d.text for d in corpus if d.kind == "clean"]
    sources = [
        d.clean_text
        for d in corpus
        if d.clean_text is not None and d.kind not in ("exact_dup", "near_dup")
    ]
    assert len(set(texts + sources)) == len(texts) + len(sources)
    for lang in ("en", "zh"):
        sets = [frozenset(shingles(d.text, lang)) for _, d in of_kind(corpus, "clean", lang)]
        worst = 0.0
        for i, a in enumerate(sets):
            for b in sets[i + 1 :]:
                inter = len(a & b)
                worst = max(worst, inter / (len(a) + len(b) - inter))
        assert worst < 0.6, (lang, worst)


# ----------------------------------------------------------------------------- duplicates


def normalized(text: str) -> str:
    return re.sub(r"[\W_]+", "", text.casefold())


def test_exact_duplicates(corpus: list[SampleDoc]) -> None:
    dups = of_kind(corpus, "exact_dup")
    variants = Counter(d.variant for _, d in dups)
    assert variants["identical"] >= 5
    assert variants["whitespace"] >= 1 and variants["punctuation"] >= 1 and variants["case"] >= 1
    for pos, d in dups:
        assert d.origin is not None and d.origin < pos
        orig = corpus[d.origin]
        assert orig.kind == "clean" and orig.lang == d.lang
        assert d.clean_text == orig.text
        if d.variant == "identical":
            assert d.text == orig.text
        else:
            assert d.text != orig.text
            assert normalized(d.text) == normalized(orig.text)
    identical = Counter(d.text for _, d in dups if d.variant == "identical")
    everything = Counter(d.text for d in corpus)
    assert all(everything[t] >= n + 1 for t, n in identical.items())


def test_near_duplicates_jaccard_band(corpus: list[SampleDoc]) -> None:
    dups = of_kind(corpus, "near_dup")
    assert {d.lang for _, d in dups} == {"en", "zh"}
    for pos, d in dups:
        assert d.origin is not None and d.origin < pos
        orig = corpus[d.origin]
        assert orig.kind == "clean" and orig.lang == d.lang
        assert d.text != orig.text
        j = jaccard(shingles(d.text, d.lang), shingles(orig.text, orig.lang))
        assert 0.75 <= j <= 0.98, (j, d.text)


def test_near_duplicate_clusters(corpus: list[SampleDoc]) -> None:
    clusters = Counter(d.origin for _, d in of_kind(corpus, "near_dup"))
    assert len(clusters) >= 6
    assert all(n >= 2 for n in clusters.values())  # original + 2 copies: clusters of 3+
    assert {corpus[o].lang for o in clusters} == {"en", "zh"}
    # originals of exact and near duplicates are disjoint
    exact = {d.origin for _, d in of_kind(corpus, "exact_dup")}
    assert not exact & set(clusters)


def test_shingles_and_jaccard_helpers() -> None:
    assert shingles("The cat sat on the mat", "en") == {
        ("the", "cat", "sat"),
        ("cat", "sat", "on"),
        ("sat", "on", "the"),
        ("on", "the", "mat"),
    }
    assert shingles("今天 天气好", "zh") == {"今天天", "天天气", "天气好"}
    assert jaccard({1, 2, 3}, {2, 3, 4}) == 0.5
    assert jaccard(set(), set()) == 1.0


# ----------------------------------------------------------------------------- other problems


def test_boilerplate(corpus: list[SampleDoc]) -> None:
    docs = of_kind(corpus, "boilerplate")
    line_count: Counter[str] = Counter()
    for _, d in docs:
        known = BOILERPLATE_LINES[d.lang]
        lines = d.text.split("\n")
        heads = [ln for ln in lines if ln in known["head"]]
        foots = [ln for ln in lines if ln in known["foot"]]
        assert heads and foots, d.text
        line_count.update(heads + foots)
        kept = "\n".join(ln for ln in lines if ln not in heads + foots).strip("\n")
        assert kept == d.clean_text
    # the same lines over and over
    assert line_count.most_common(1)[0][1] >= 6
    for _, d in docs:
        assert any(line_count[ln] >= 3 for ln in d.text.split("\n") if ln in line_count)
    assert any("cookies" in ln for ln in line_count)
    assert any("版权所有" in ln for ln in line_count)


def compress_ratio(text: str) -> float:
    data = text.encode("utf-8")
    return len(zlib.compress(data, 9)) / len(data)


def test_spam_is_repetitive(corpus: list[SampleDoc]) -> None:
    spam = of_kind(corpus, "spam")
    assert {d.variant for _, d in spam} >= {
        "repeat_sentence",
        "keyword_stuffing",
        "link_list",
        "repeat_word",
    }
    for _, d in spam:
        assert compress_ratio(d.text) < 0.3, d.text[:200]
    assert any("click here" in d.text.lower() for _, d in spam)
    for _, d in of_kind(corpus, "clean"):
        assert compress_ratio(d.text) > 0.4


def test_control_characters(corpus: list[SampleDoc]) -> None:
    docs = of_kind(corpus, "control_chars")
    planted = Counter()
    for _, d in docs:
        assert d.clean_text is not None
        assert d.text != d.clean_text
        assert strip_planted_controls(d.text) == d.clean_text
        assert strip_planted_controls(d.clean_text) == d.clean_text
        for name, pattern in {
            "c0": r"[\x00-\x08]",
            "ansi": r"\x1b\[[0-9;]*m",
            "zwsp": "\u200b",
            "bom": "\ufeff",
            "shy": "\u00ad",
        }.items():
            planted[name] += bool(re.search(pattern, d.text))
    assert all(planted[k] >= 2 for k in ("c0", "ansi", "zwsp", "bom", "shy")), planted


def test_mojibake_is_real_and_fixable(corpus: list[SampleDoc]) -> None:
    docs = of_kind(corpus, "mojibake")
    assert {d.lang for _, d in docs} == {"en", "zh"}
    assert {d.variant for _, d in docs} == {"cp1252", "latin-1"}
    for _, d in docs:
        assert d.clean_text is not None
        if d.lang == "en":
            assert re.search(r"[\u2018\u2019\u201c\u201d]", d.clean_text)
            assert "â€" in d.text or "â\x80" in d.text, d.text[:200]
        else:
            assert not CJK.search(d.text)
            assert re.search(r"[äåæçèé]", d.text)
        fixed = ftfy.fix_text(d.text, uncurl_quotes=False, fix_character_width=False)
        assert fixed == d.clean_text
        # with ftfy's defaults it matches the clean text fixed the same way
        assert ftfy.fix_text(d.text) == ftfy.fix_text(d.clean_text)


def test_mixed_width(corpus: list[SampleDoc]) -> None:
    zh_back = {
        ",": "，",
        ".": "。",
        "!": "！",
        "?": "？",
        ":": "：",
        ";": "；",
        "(": "（",
        ")": "）",
    }
    digits_seen = 0
    for _, d in of_kind(corpus, "mixed_width"):
        assert d.clean_text is not None and d.text != d.clean_text
        if d.lang == "en":
            assert FULL_WIDTH_ASCII.search(d.text), d.text
            assert unicodedata.normalize("NFKC", d.text).casefold() == d.clean_text.casefold()
        else:
            assert ASCII_PUNCT.search(d.text), d.text
            digits_seen += bool(re.search(r"[\uff10-\uff19]", d.text))
            back = "".join(zh_back.get(c, c) for c in d.text)
            back = re.sub(
                r"[\uff10-\uff19]", lambda m: unicodedata.normalize("NFKC", m.group()), back
            )
            assert back == d.clean_text
    assert digits_seen >= 3
    assert any(
        re.search(r"[\uff21-\uff3a]{3}", d.text) for _, d in of_kind(corpus, "mixed_width", "en")
    )


def test_near_empty(corpus: list[SampleDoc]) -> None:
    docs = of_kind(corpus, "near_empty")
    texts = {d.text for _, d in docs}
    assert "" in texts and any(t and not t.strip() for t in texts)
    assert {"ok", "*****"} <= texts
    for _, d in docs:
        assert len(d.text.strip()) <= 5


def test_problems_are_interleaved(corpus: list[SampleDoc]) -> None:
    kinds = [d.kind for d in corpus]
    n = len(kinds)
    for part in (kinds[: n // 3], kinds[n // 3 : 2 * n // 3], kinds[2 * n // 3 :]):
        assert part.count("clean") < len(part) * 0.85
        assert len(set(part)) >= 7
    langs = [d.lang for d in corpus[:60]]
    assert "en" in langs and "zh" in langs
