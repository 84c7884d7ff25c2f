"""`nonllama dedup` as a stage: planted duplicates, accuracy on edited real text, accounting."""

from __future__ import annotations

import gzip
import json
import random
import time
from pathlib import Path

import polars as pl
import pytest

from nonllama.pipeline import minhash
from nonllama.pipeline.dedup import DedupConfig, run_dedup
from nonllama.pipeline.io import (
    Counts,
    PartWriter,
    describe_part,
    part_name,
    read_manifest,
    read_parts,
    write_manifest,
)
from nonllama.pipeline.sample import sample_corpus

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "corpora"


def write_stage(directory: Path, parts: list[list[dict]], stage: str = "filter") -> Path:
    """A finished stage directory holding the given documents, part by part."""
    described, counts = [], Counts()
    for i, docs in enumerate(parts):
        frame = pl.DataFrame(docs, schema={"id": pl.String, "text": pl.String, "source": pl.String, "meta": pl.String})
        with PartWriter(directory / part_name(i)) as writer:
            writer.write(frame)
        described.append(describe_part(writer.path, writer.rows, writer.chars))
        counts.rows_in += writer.rows
        counts.rows_out += writer.rows
    write_manifest(directory, stage=stage, config={}, input_info={}, counts=counts, parts=described,
                   side_dir=None, started=time.time())
    return directory


def doc(i: int | str, text: str, source: str = "test", **meta) -> dict:
    return {"id": f"{source}#{i}", "text": text, "source": source, "meta": json.dumps(meta)}


# ------------------------------------------------------------------------ edited real documents


def real_documents(n_en: int, n_zh: int) -> list[tuple[str, str]]:
    """(lang, text): ../shared text when present, else the clean documents of the sample."""
    if SHARED.is_dir():
        en = [p.strip() for p in (SHARED / "tinystories_en" / "smallGPT_tiny_stories.txt").read_text().split("\n\n")]
        en = [p for p in en if len(p.split()) >= 60]
        with gzip.open(SHARED / "peoples_daily_1998" / "199801.txt.gz", "rt", encoding="utf-8") as f:
            zh = [line.strip() for line in f if len(line.strip()) >= 120]
    else:
        corpus = [d for d in sample_corpus() if d.kind == "clean"]
        en = [d.text for d in corpus if d.lang == "en"]
        zh = [d.text for d in corpus if d.lang == "zh"]
    # the originals must not already be duplicates of each other, or the truth would be wrong
    return [("en", t) for t in distinct(en, n_en)] + [("zh", t) for t in distinct(zh, n_zh)]


def edit(rng: random.Random, text: str, lang: str, rate: float) -> str:
    """Insert, delete or substitute a `rate` share of the words (en) or characters (zh)."""
    units = text.split(" ") if lang == "en" else list(text)
    for position in sorted(rng.sample(range(len(units)), max(1, round(rate * len(units)))), reverse=True):
        op, other = rng.choice(("insert", "delete", "substitute")), rng.choice(units)
        if op == "delete" and len(units) > 1:
            del units[position]
        elif op == "substitute":
            units[position] = other
        else:
            units.insert(position, other)
    return (" " if lang == "en" else "").join(units)


def shingle_set(text: str, n: int = 3) -> set[tuple[str, ...]]:
    """The exact shingles (token n-grams as tuples: no hashing)."""
    tokens = minhash.tokenize(pl.Series([text]))[0].to_list()
    return {tuple(tokens[i : i + n]) for i in range(max(1, len(tokens) - n + 1))}


def true_jaccard(a: str, b: str) -> float:
    sa, sb = shingle_set(a), shingle_set(b)
    return len(sa & sb) / len(sa | sb)


def distinct(texts: list[str], limit: int) -> list[str]:
    """The first `limit` texts with no Jaccard >= 0.5 to an earlier one (real corpora repeat)."""
    chosen: list[tuple[str, set]] = []
    for text in texts[: 3 * limit]:
        shingles = shingle_set(text)
        if all(len(shingles & s) / len(shingles | s) < 0.5 for _, s in chosen):
            chosen.append((text, shingles))
            if len(chosen) == limit:
                break
    return [t for t, _ in chosen]


def edited_corpus(tmp_path: Path, seed: int = 0) -> tuple[Path, set[str]]:
    """Originals in parts 0-1, one edited copy of half of them shuffled into parts 2-3.

    Edit rates are spread over 0-12% of the units, so true Jaccard spans ~0.5-1.0 around the
    0.8 threshold; a copy is a true duplicate when its exact Jaccard with its original >= 0.8.
    """
    rng = random.Random(seed)
    originals = real_documents(200, 200)
    docs = [doc(i, text, lang) for i, (lang, text) in enumerate(originals)]
    copies, truth = [], set()
    for i in rng.sample(range(len(originals)), len(originals) // 2):
        lang, text = originals[i]
        copy = edit(rng, text, lang, rng.uniform(0.0, 0.12))
        copies.append(doc(f"copy-of-{i}", copy, lang))
        if true_jaccard(text, copy) >= 0.8:
            truth.add(copies[-1]["id"])
    rng.shuffle(copies)
    half, quarter = len(docs) // 2, len(copies) // 2
    parts = [docs[:half], docs[half:], copies[:quarter], copies[quarter:]]
    return write_stage(tmp_path / "filtered", parts), truth


@pytest.mark.parametrize(
    ("verify", "bar"),
    # the MinHash estimate (128 permutations) has a standard error of ~0.035 at J = 0.8, and
    # this corpus puts many copies within that of the threshold: --verify decides exactly
    [(False, 0.85), (True, 0.95)],
    ids=["estimate", "verify"],
)
def test_precision_and_recall_on_edited_real_documents(tmp_path, verify, bar):
    source, truth = edited_corpus(tmp_path)
    run_dedup(source, tmp_path / "deduped", DedupConfig(threshold=0.8, verify=verify))
    removed = read_parts(tmp_path / "deduped" / "removed")
    found = set(removed.filter(pl.col("drop_reason") != "empty_after_paragraph_dedup")["id"])
    precision = len(found & truth) / max(1, len(found))
    recall = len(found & truth) / len(truth)
    assert len(truth) > 60
    assert precision >= bar and recall >= bar, (precision, recall, len(found), len(truth))
    # every removed copy names its original, across parts, with a plausible estimate
    hits = removed.filter(pl.col("id").is_in(list(truth)))
    assert (hits["duplicate_of"] == hits["id"].str.replace("copy-of-", "")).mean() > 0.95
    assert hits["jaccard"].min() > 0.6


# ------------------------------------------------------------------------ the sample, end to end


def test_sample_funnel_removes_planted_duplicates_and_keeps_originals(tmp_path, cli):
    work = tmp_path / "work"
    cli("download", "sample", "--workdir", work, "--part-rows", "150")
    cli("normalize", "--workdir", work)
    result = cli("dedup", "--workdir", work, "-i", work / "normalized", "--show-clusters", "2")
    assert "near duplicates" in result.output and "largest cluster" in result.output
    assert "cluster of" in result.output
    m = read_manifest(work / "deduped")
    kept, removed = read_parts(work / "deduped"), read_parts(work / "deduped" / "removed")
    assert kept.height + removed.height == m["rows_in"] == read_manifest(work / "normalized")["rows_out"]
    assert m["drop_reasons"] == {"exact_duplicate": m["dedup"]["exact_duplicates"],
                                 "near_duplicate": m["dedup"]["near_duplicates"]}
    kind = pl.col("meta").str.json_path_match("$.kind")
    # every exact duplicate goes; near duplicates that are >= 0.8 similar to their original go
    assert kept.filter(kind == "exact_dup").height == 0
    normalized = read_parts(work / "normalized")
    position = normalized["id"].str.extract(r"#(\d+)$").cast(pl.Int64)
    text_at = dict(zip(position.to_list(), normalized["text"].to_list(), strict=True))
    near = normalized.filter(kind == "near_dup")
    similar = [row["id"] for row in near.iter_rows(named=True)
               if true_jaccard(row["text"], text_at[json.loads(row["meta"])["origin"]]) >= 0.8]
    assert len(similar) >= 30
    assert len(set(similar) & set(removed["id"])) >= 0.9 * len(similar)
    # no clean original is removed, and each removed duplicate points at its clean original
    assert removed.filter(kind == "clean").height == 0
    dups = removed.filter(kind.is_in(["exact_dup", "near_dup"]))
    origin_ids = dups["meta"].str.json_path_match("$.origin").cast(pl.Int64)
    expected = [f"{s}/sample#{o}" for s, o in zip(dups["source"], origin_ids, strict=True)]
    assert (dups["duplicate_of"] == pl.Series(expected)).mean() > 0.95
    assert set(removed["duplicate_of"]) <= set(kept["id"])


def test_workers_and_reruns_give_identical_bytes(tmp_path, cli):
    work = tmp_path / "work"
    cli("download", "sample", "--workdir", work, "--part-rows", "150")
    cli("normalize", "--workdir", work)
    one = cli("dedup", "-i", work / "normalized", "-o", tmp_path / "one", "--workers", "1")
    cli("dedup", "-i", work / "normalized", "-o", tmp_path / "two", "--workers", "2")
    m1, m2 = read_manifest(tmp_path / "one"), read_manifest(tmp_path / "two")
    assert m1["parts"] == m2["parts"] and m1["side_parts"] == m2["side_parts"]
    assert len(m1["parts"]) == 5 and not (tmp_path / "one" / ".dedup-work").exists()
    assert "up to date" not in one.output
    assert "up to date" in cli("dedup", "-i", work / "normalized", "-o", tmp_path / "one").output
    rerun = cli("dedup", "-i", work / "normalized", "-o", tmp_path / "one", "--threshold", "0.7")
    assert "up to date" not in rerun.output
    assert read_manifest(tmp_path / "one")["config"]["threshold"] == 0.7
    cli("dedup", "-i", work / "normalized", "-o", tmp_path / "one", "--force")
    assert read_manifest(tmp_path / "one")["parts"] == m1["parts"]


def test_exact_duplicates_ignore_case_whitespace_and_punctuation_across_parts(tmp_path):
    text = "The quick brown fox jumps over the lazy dog while the cat sleeps in the warm sun."
    parts = [
        [doc(0, text), doc(1, "Something else entirely, about trains and stations and timetables.")],
        [doc(2, text.upper().replace(" ", "  ")), doc(3, text.replace(",", "").replace(".", "!"))],
        [doc(4, "A different sentence that shares nothing with the others at all, really.")],
    ]
    source = write_stage(tmp_path / "filtered", parts)
    run = run_dedup(source, tmp_path / "out", DedupConfig())
    removed = read_parts(tmp_path / "out" / "removed")
    assert sorted(removed["id"]) == ["test#2", "test#3"]
    assert set(removed["drop_reason"]) == {"exact_duplicate"} and set(removed["duplicate_of"]) == {"test#0"}
    assert removed["jaccard"].to_list() == [1.0, 1.0]
    assert [p["rows"] for p in run.manifest["parts"]] == [2, 0, 1]  # part i out = kept rows of part i
    assert run.manifest["dedup"]["largest_cluster"] == 3


def test_paragraphs_cut_boilerplate_lines_and_remove_emptied_documents(tmp_path):
    rng = random.Random(1)
    banner = "Home | News | Contact\nWe use cookies. Accept all cookies"
    stories = [t for _, t in real_documents(40, 0)]
    docs = [doc(i, f"{banner}\n\n{story}\n\nCopyright 20{i % 10}{i % 7} Example Inc." if i % 2 else story)
            for i, story in enumerate(stories)]
    docs.append(doc("only-banner", banner))
    rng.shuffle(docs)
    source = write_stage(tmp_path / "filtered", [docs[:20], docs[20:]])
    run = run_dedup(source, tmp_path / "out", DedupConfig(paragraphs=True, paragraph_max_docs=5))
    kept = read_parts(tmp_path / "out")
    removed = read_parts(tmp_path / "out" / "removed")
    assert kept["text"].str.contains("Accept all cookies|Home \\| News|Copyright 20").sum() == 0
    assert set(kept["text"]) == set(stories)  # the stories themselves are untouched
    assert removed.filter(pl.col("drop_reason") == "empty_after_paragraph_dedup")["id"].to_list() == ["test#only-banner"]
    assert removed.filter(pl.col("drop_reason") == "empty_after_paragraph_dedup")["text"][0] == banner
    assert run.manifest["dedup"]["paragraphs_cut"] == 21 * 2 + 20  # banner lines + footers
    assert run.manifest["drop_reasons"] == {"empty_after_paragraph_dedup": 1}


def test_bad_options_name_the_option(tmp_path, cli):
    source = write_stage(tmp_path / "filtered", [[doc(0, "hello there")]])
    out = cli("dedup", "-i", source, "--bands", "20", "--rows", "10", expect=2).output
    assert "--bands 20 x --rows 10" in out and "--num-perm 128" in out
    assert "--threshold" in cli("dedup", "-i", source, "--threshold", "0", expect=2).output
    assert "nonllama filter" in cli("dedup", "--workdir", tmp_path / "nothing", expect=2).output


@pytest.mark.parametrize("args, message", [
    (["--ngram", "0"], "--ngram 0: must be in [1, 32]"),
    (["--ngram", "33"], "--ngram 33: must be in [1, 32]"),
    (["--ngram", "1000"], "--ngram 1000: must be in [1, 32]"),
    (["--num-perm", "1"], "--num-perm 1: must be in [2, 1024]"),
    (["--num-perm", "100000"], "--num-perm 100000: must be in [2, 1024]"),
    (["--threshold", "1.5"], "--threshold 1.5: must be in (0, 1]"),
    (["--threshold", "nan"], "--threshold nan: must be in (0, 1]"),
    (["--fp-weight", "-0.1"], "--fp-weight -0.1: must be in [0, 1]"),
    (["--paragraph-max-docs", "0"], "--paragraph-max-docs 0: must be at least 1"),
    (["--bands", "0"], "--bands 0: must be in [1, --num-perm 128]"),
    (["--rows", "200"], "--rows 200: must be in [1, --num-perm 128]"),
    (["--num-perm", "64", "--bands", "9", "--rows", "8"], "--bands 9 x --rows 8 = 72 exceeds --num-perm 64"),
    (["--seed", "-1"], "--seed -1: must be in [0, 2**64)"),
])
def test_out_of_range_options_are_refused_before_reading(tmp_path, cli, args, message):
    source = write_stage(tmp_path / "filtered", [[doc(0, "hello there")]])
    out = " ".join(cli("dedup", "-i", source, "-o", tmp_path / "out", *args, expect=2).output.split())
    assert message in out and "Traceback" not in out
    assert not (tmp_path / "out").exists()


def test_ngram_at_its_bound_runs_and_the_config_checks_itself(tmp_path, cli):
    source = write_stage(tmp_path / "filtered", [[doc(0, "one two three"), doc(1, "one two three four")]])
    cli("dedup", "-i", source, "-o", tmp_path / "out", "--ngram", "32", "--num-perm", "1024")
    assert read_manifest(tmp_path / "out")["config"]["ngram"] == 32
    with pytest.raises(ValueError, match=r"--ngram 33: must be in \[1, 32\]"):
        DedupConfig(ngram=33)
    config = DedupConfig()
    object.__setattr__(config, "ngram", 40)  # however it got there, validate() says so
    with pytest.raises(ValueError, match="--ngram 40"):
        config.validate()
