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
from nonllama.pipeline.dedup import DedupConfig, largest_clusters, run_dedup
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


# ------------------------------------------------------------------------ passes of tasks, executors


def boilerplate_corpus(tmp_path: Path) -> Path:
    """The edited corpus with a banner and a footer line in a third of the documents, so that
    --paragraphs has lines to count and cut, in 6 parts."""
    source, _ = edited_corpus(tmp_path / "edited")
    frame = read_parts(source)
    banner = "Home | News | Contact\nWe use cookies. Accept all cookies"
    texts = [f"{banner}\n\n{t}\n\nCopyright 20{i % 10} Example Inc." if i % 3 == 0 else t
             for i, t in enumerate(frame["text"].to_list())]
    frame = frame.with_columns(text=pl.Series(texts))
    step = -(-frame.height // 6)
    return write_stage(tmp_path / "filtered", [frame.slice(k, step).to_dicts() for k in range(0, frame.height, step)])


def output_files(directory: Path) -> dict[str, bytes]:
    """Every file of a finished output, by relative path; the manifest without its wall time."""
    files = {}
    for path in sorted(directory.rglob("*")):
        if path.is_file() and path.name != "_lock.json":
            files[str(path.relative_to(directory))] = path.read_bytes()
    manifest = json.loads(files.pop("_manifest.json"))
    manifest.pop("wall_time_s")
    files["_manifest.json"] = json.dumps(manifest, sort_keys=True).encode()
    return files



PARAGRAPHS = DedupConfig(paragraphs=True, paragraph_max_docs=5)


def test_workers_executors_and_sharding_give_identical_bytes(tmp_path, ray_executor, monkeypatch):
    from nonllama.pipeline import dedup
    from nonllama.pipeline.executors import LocalExecutor

    source = boilerplate_corpus(tmp_path)
    run_dedup(source, tmp_path / "one", PARAGRAPHS, workers=1)
    one = output_files(tmp_path / "one")
    m = read_manifest(tmp_path / "one")
    assert m["dedup"]["near_duplicates"] > 30 and m["dedup"]["paragraphs_cut"] > 100
    assert m["drop_reasons"]["near_duplicate"] == m["dedup"]["near_duplicates"]
    with LocalExecutor(2) as two:
        run_dedup(source, tmp_path / "two", PARAGRAPHS, executor=two)
    assert output_files(tmp_path / "two") == one
    run_dedup(source, tmp_path / "ray", PARAGRAPHS, executor=ray_executor)
    assert output_files(tmp_path / "ray") == one
    # many small shards, blocks and groups (the plan of a corpus 10,000 times larger) change
    # nothing; the tasks run in other processes, which see only what the driver's plan says
    for name, value in [("LSH_ENTRIES_PER_TASK", 500), ("EXACT_ENTRIES_PER_TASK", 100), ("PAIRS_PER_BLOCK", 20),
                        ("ID_ROWS_PER_TASK", 100), ("LINE_KEYS_PER_TASK", 100), ("UNION_PAIRS", 7),
                        ("CHECK_CELLS", 300), ("HISTOGRAM_BINS", 64), ("WRITE_ROWS_PER_TASK", 100)]:
        monkeypatch.setattr(dedup, name, value)
    with LocalExecutor(2) as two:
        run = run_dedup(source, tmp_path / "sharded", PARAGRAPHS, executor=two)
    assert output_files(tmp_path / "sharded") == one
    assert run.manifest["dedup"] == m["dedup"]


KILL_AT_WRITE = """
import os, signal, sys
from pathlib import Path
from nonllama.pipeline import dedup

calls = {"n": 0}
real = dedup.ApplyDecisions.__call__

def dying(self, batch):
    if self.index == 3:  # in the middle of writing part 3: its temporary file is there
        calls["n"] += 1
        if calls["n"] == 2:
            os.kill(os.getpid(), signal.SIGKILL)
    return real(self, batch)

dedup.ApplyDecisions.__call__ = dying
dedup.WRITE_ROWS_PER_TASK = 1  # a part a task
dedup.run_dedup(Path(sys.argv[1]), Path(sys.argv[2]), dedup.DedupConfig(paragraphs=True, paragraph_max_docs=5),
                workers=1, batch_rows=40)
"""


def test_a_killed_run_resumes_without_redoing_finished_tasks(tmp_path, monkeypatch):
    import subprocess
    import sys

    from nonllama.pipeline import dedup

    source = boilerplate_corpus(tmp_path)
    out = tmp_path / "out"
    script = tmp_path / "kill.py"
    script.write_text(KILL_AT_WRITE)
    done = subprocess.run([sys.executable, str(script), str(source), str(out)], capture_output=True, text=True)
    assert done.returncode == -9, done.stderr[-2000:]
    markers = sorted(p.relative_to(out / ".work" / "tasks") for p in (out / ".work" / "tasks").rglob("*.done"))
    passes = {str(p.parent) for p in markers}
    assert {"dedup:_sketch", "dedup:_exact", "dedup:_lsh", "dedup:_verify", "dedup:_ids",
            "dedup:_frequent_lines", "dedup:_write"} <= passes
    assert len([p for p in markers if str(p.parent) == "dedup:_write"]) == 3  # parts 0-2 written
    assert list(out.glob(".part-00003.parquet.tmp-*")) and not (out / "_manifest.json").exists()

    def not_again(*args, **kwargs):
        raise AssertionError("a finished sketch task ran again")

    monkeypatch.setattr(dedup, "sketch_part", not_again)
    monkeypatch.setattr(dedup, "WRITE_ROWS_PER_TASK", 1)  # the same tasks as the killed run
    run = run_dedup(source, out, PARAGRAPHS, batch_rows=40)
    assert f"{len(markers)} of {len(markers) + 3} tasks were already done" in " ".join(run.notices)
    monkeypatch.undo()
    run_dedup(source, tmp_path / "fresh", PARAGRAPHS, batch_rows=40)
    assert output_files(out) == output_files(tmp_path / "fresh")
    assert not list(out.rglob("*.tmp-*")) and not (out / ".work").exists()


def test_an_exact_copy_of_a_near_duplicate_names_the_document_it_copies(tmp_path):
    stories = [t for _, t in real_documents(3, 0)]
    original = stories[0]
    words = original.split(" ")
    near = " ".join(words[:-2] + ["suddenly", "it", "rained"])  # J with the original > 0.8, not exact
    assert 0.8 <= true_jaccard(original, near) < 1
    parts = [
        [doc("original", original), doc("other", stories[1])],
        [doc("near", near)],
        [doc("copy-of-near", near.upper().replace(".", "!")), doc("copy-of-original", original.lower())],
        [doc("another", stories[2])],
    ]
    source = write_stage(tmp_path / "filtered", parts)
    run = run_dedup(source, tmp_path / "out", DedupConfig())
    removed = read_parts(tmp_path / "out" / "removed").sort("id")
    assert removed.select("id", "drop_reason", "duplicate_of").rows() == [
        ("test#copy-of-near", "exact_duplicate", "test#near"),
        ("test#copy-of-original", "exact_duplicate", "test#original"),
        ("test#near", "near_duplicate", "test#original"),
    ]
    assert removed["jaccard"][0] == removed["jaccard"][1] == 1.0
    assert removed["jaccard"][2] == pytest.approx(true_jaccard(original, near), abs=1e-4)
    stats = run.manifest["dedup"]
    assert (stats["exact_duplicates"], stats["near_duplicates"], stats["clusters"], stats["largest_cluster"]) == (2, 1, 1, 4)
    # the cluster is shown whole: the near duplicate and its exact copy under the kept document
    clusters = largest_clusters(tmp_path / "out", 5)
    assert [(c.kept_id, sorted(c.removed["id"])) for c in clusters] == [
        ("test#original", ["test#copy-of-near", "test#copy-of-original", "test#near"])
    ]
    assert clusters[0].kept_text == original


def test_show_clusters_zero_reads_nothing(tmp_path, monkeypatch):
    import nonllama.pipeline.dedup as dedup

    def no_reading(*args, **kwargs):
        raise AssertionError("read something")

    for name in ("require_finished", "list_parts"):
        monkeypatch.setattr(dedup, name, no_reading)
    monkeypatch.setattr(pl, "scan_parquet", no_reading)
    assert largest_clusters(tmp_path / "does-not-exist", 0) == []
