"""dedup throughput and recall: nonllama against datasketch (the plain way) and datatrove.

The corpus: real documents (../shared/corpora when present: TinyStories paragraphs and People's
Daily lines; else the clean documents of the built-in sample), made distinct, plus one edited
copy of a third of them (insert / delete / substitute 0-12% of the words or characters),
shuffled into later parts. Truth: a copy whose exact word-3-gram / char-3-gram Jaccard with
its original is >= 0.8. Every method runs in one process with the same threshold, 128
permutations, 3-grams and the same (bands, rows); docs/s counts the whole corpus.

- nonllama: `run_dedup` on Parquet parts (reads and writes Parquet, like a real stage run);
  by default (candidates verified with the true Jaccard) and with --no-verify.
- datasketch, the plain way: one `MinHash` per document, `update` per shingle, then
  `MinHashLSH`: query, and insert the document when it has no earlier match.
- datatrove: its four MinHash steps (signatures, buckets, clusters, filter) on the same
  Parquet parts, LocalPipelineExecutor with one task. spaCy (datatrove's word tokenizer) is
  not installed here, so datatrove gets a regex tokenizer with the same rule as nonllama's
  (words; one token per Han character), and its xxhash call gets its text encoded first
  (datatrove 0.10 passes str, xxhash 4 wants bytes).

`--scale N` instead dedups N synthetic short documents (10% near copies) and reports wall time
and peak RSS (ru_maxrss of this process and its children): the memory figure of the issue.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import io
import os
import random
import re
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

os.environ.setdefault("NONLLAMA_NO_PROGRESS", "1")

from nonllama.pipeline import minhash  # noqa: E402
from nonllama.pipeline.dedup import DedupConfig, run_dedup  # noqa: E402
from nonllama.pipeline.io import (  # noqa: E402
    Counts,
    PartWriter,
    describe_part,
    part_name,
    read_parts,
    write_manifest,
)
from nonllama.pipeline.sample import sample_corpus  # noqa: E402

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "corpora"
THRESHOLD, NUM_PERM, NGRAM = 0.8, 128, 3
TOKEN = re.compile(r"[\u3040-\u30ff\u3400-\u9fff]|[^\W_]+")  # Python `re` has no \p{Han}


def tokens(text: str) -> list[str]:
    return TOKEN.findall(re.sub(r"\d", "0", text.lower()))


def shingles(text: str) -> set[str]:
    t = tokens(text)
    return {" ".join(t[i : i + NGRAM]) for i in range(max(1, len(t) - NGRAM + 1))}


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


# ----------------------------------------------------------------------------- the corpus


def originals(n: int) -> list[tuple[str, str]]:
    if SHARED.is_dir():
        en = [p.strip() for p in (SHARED / "tinystories_en" / "smallGPT_tiny_stories.txt").read_text().split("\n\n")]
        en += [p.strip() for p in (SHARED / "tinystories_en" / "moe-routing-bench_tinystories_val.txt").read_text().split("\n\n")]
        with gzip.open(SHARED / "peoples_daily_1998" / "199801.txt.gz", "rt", encoding="utf-8") as f:
            zh = [line.strip() for line in f]
        en = [p for p in en if len(p.split()) >= 60]
        zh = [p for p in zh if len(p) >= 120]
    else:
        clean = [d for d in sample_corpus() if d.kind == "clean"]
        en = [d.text for d in clean if d.lang == "en"]
        zh = [d.text for d in clean if d.lang == "zh"]
    # drop texts already near-duplicate of another (exact-ish check through their 3-gram sets
    # indexed by a few of their shingles), so the truth is only the planted copies
    chosen: list[tuple[str, str]] = []
    seen: dict[tuple, list[int]] = {}
    sets: list[set] = []
    for lang, pool in (("en", en), ("zh", zh)):
        taken = 0
        for text in pool:
            if taken >= n // 2:
                break
            s = true_shingles(text)
            hits = {h for x in s for h in seen.get(x, ())}
            if any(jaccard(s, sets[h]) >= 0.5 for h in hits):
                continue
            for x in s:
                seen.setdefault(x, []).append(len(sets))
            sets.append(s)
            chosen.append((lang, text))
            taken += 1
    return chosen


def true_shingles(text: str) -> set[tuple[str, ...]]:
    """The shingles nonllama hashes, exactly (token tuples, no hashing): the truth."""
    t = minhash.tokenize(pl.Series([text]))[0].to_list()
    return {tuple(t[i : i + NGRAM]) for i in range(max(1, len(t) - NGRAM + 1))}


def edit(rng: random.Random, text: str, lang: str, rate: float) -> str:
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


def write_stage(directory: Path, parts: list[pl.DataFrame]) -> Path:
    described, counts = [], Counts()
    for i, frame in enumerate(parts):
        with PartWriter(directory / part_name(i)) as writer:
            writer.write(frame)
        described.append(describe_part(writer.path, writer.rows, writer.chars))
        counts.rows_in += writer.rows
        counts.rows_out += writer.rows
    write_manifest(directory, stage="filter", config={}, input_info={}, counts=counts, parts=described,
                   side_dir=None, started=time.time())
    return directory


def build_corpus(work: Path, n: int, seed: int = 0) -> tuple[Path, list[str], list[str], set[str]]:
    rng = random.Random(seed)
    docs = originals(n)
    ids = [f"{lang}#{i}" for i, (lang, _) in enumerate(docs)]
    texts = [t for _, t in docs]
    copies = []
    for i in rng.sample(range(len(docs)), len(docs) // 3):
        lang, text = docs[i]
        copies.append((f"{lang}#copy-of-{i}", edit(rng, text, lang, rng.uniform(0.0, 0.12)), text))
    rng.shuffle(copies)
    truth = {cid for cid, copy, text in copies if jaccard(true_shingles(copy), true_shingles(text)) >= THRESHOLD}
    ids += [c[0] for c in copies]
    texts += [c[1] for c in copies]
    frame = pl.DataFrame({"id": ids, "text": texts, "source": [i.split("#")[0] for i in ids], "meta": ["{}"] * len(ids)})
    step = -(-frame.height // 4)
    source = write_stage(work / "filtered", [frame.slice(k, step) for k in range(0, frame.height, step)])
    return source, ids, texts, truth


# ----------------------------------------------------------------------------- the three methods


def run_nonllama(source: Path, work: Path, verify: bool) -> set[str]:
    out = work / ("nonllama-verify" if verify else "nonllama")
    run_dedup(source, out, DedupConfig(threshold=THRESHOLD, num_perm=NUM_PERM, ngram=NGRAM, verify=verify), force=True)
    return set(read_parts(out / "removed")["id"])


def run_datasketch(ids: list[str], texts: list[str], bands: int, rows: int) -> set[str]:
    from datasketch import MinHash, MinHashLSH

    lsh = MinHashLSH(num_perm=NUM_PERM, params=(bands, rows))
    removed = set()
    for doc_id, text in zip(ids, texts, strict=True):
        m = MinHash(num_perm=NUM_PERM)
        for s in shingles(text):
            m.update(s.encode())
        if lsh.query(m):
            removed.add(doc_id)
        else:
            lsh.insert(doc_id, m)
    return removed


class RegexWordTokenizer:
    """Stands in for datatrove's spaCy tokenizer (not installed): nonllama's token rule."""

    def word_tokenize(self, text: str) -> list[str]:
        return TOKEN.findall(text)

    def sent_tokenize(self, text: str) -> list[str]:
        return [text]

    def span_tokenize(self, text: str) -> list[tuple[int, int]]:
        return [m.span() for m in TOKEN.finditer(text)]


def run_datatrove(source: Path, work: Path, bands: int, rows: int) -> set[str]:
    import datatrove.pipeline.dedup.minhash as dt_minhash
    import datatrove.utils.hashes.xxhash as dt_xxhash
    import xxhash
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.readers import ParquetReader
    from datatrove.pipeline.writers import ParquetWriter

    dt_minhash.load_word_tokenizer = lambda language: RegexWordTokenizer()
    # datatrove 0.10 hands str to xxhash, which (xxhash >= 4) wants bytes: encode first
    dt_xxhash.xxhash = type("encoding_xxhash", (), {
        "xxh64_intdigest": staticmethod(lambda d: xxhash.xxh64_intdigest(d.encode())),
        "xxh32_intdigest": staticmethod(lambda d: xxhash.xxh32_intdigest(d.encode())),
    })
    config = dt_minhash.MinhashConfig(n_grams=NGRAM, num_buckets=bands, hashes_per_bucket=rows)
    base = work / "datatrove"
    read = lambda: ParquetReader(str(source), glob_pattern="part-*.parquet", id_key="id")  # noqa: E731
    steps = [
        [read(), dt_minhash.MinhashDedupSignature(output_folder=str(base / "sigs"), config=config)],
        [dt_minhash.MinhashDedupBuckets(input_folder=str(base / "sigs"), output_folder=str(base / "buckets"), config=config)],
        [dt_minhash.MinhashDedupCluster(input_folder=str(base / "buckets"), output_folder=str(base / "remove"), config=config)],
        [read(), dt_minhash.MinhashDedupFilter(input_folder=str(base / "remove"),
                                               exclusion_writer=ParquetWriter(str(base / "removed"))),
         ParquetWriter(str(base / "kept"))],
    ]
    tasks = [1, bands, 1, 1]
    # every task re-adds a stderr log sink (and tqdm bars): send them to its log files only
    with contextlib.redirect_stderr(io.StringIO()):
        for step, n_tasks in zip(steps, tasks, strict=True):
            LocalPipelineExecutor(pipeline=step, tasks=n_tasks, workers=1,
                                  logging_dir=str(base / "logs" / str(id(step))), skip_completed=False).run()
    files = list((base / "removed").glob("*.parquet"))
    return set(pl.concat([pl.read_parquet(f, columns=["id"]) for f in files])["id"]) if files else set()


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def bench(work: Path, n: int) -> None:
    source, ids, texts, truth = build_corpus(work, n)
    bands, rows = DedupConfig(threshold=THRESHOLD, num_perm=NUM_PERM).lsh
    print(f"corpus: {len(ids):,} documents ({len(truth)} planted copies with J >= {THRESHOLD}), "
          f"threshold {THRESHOLD}, {NUM_PERM} permutations, {NGRAM}-grams, {bands} bands x {rows} rows")
    methods = {
        "nonllama (default)": lambda: run_nonllama(source, work, verify=True),
        "nonllama --no-verify": lambda: run_nonllama(source, work, verify=False),
        "datasketch (plain)": lambda: run_datasketch(ids, texts, bands, rows),
        "datatrove": lambda: run_datatrove(source, work, bands, rows),
    }
    # untimed: imports, and one nonllama run so first-call costs (regex compilation) are not counted
    import datasketch  # noqa: F401
    import datatrove.pipeline.dedup.minhash  # noqa: F401
    from loguru import logger

    logger.remove()  # datatrove's per-step log tables would drown the results
    run_nonllama(source, work, verify=False)
    rates = {}
    print(f"{'method':<22}{'seconds':>9}{'docs/s':>10}{'precision':>11}{'recall':>8}")
    for name, fn in methods.items():
        try:
            removed, seconds = timed(fn)
        except Exception as e:  # a peer that cannot run here is reported, not fatal
            print(f"{name:<22} failed: {e!r:.120}")
            continue
        hit = len(removed & truth)
        rates[name] = len(ids) / seconds
        print(f"{name:<22}{seconds:>9.2f}{rates[name]:>10,.0f}{hit / max(1, len(removed)):>11.3f}{hit / len(truth):>8.3f}")
    for peer in ("datasketch (plain)", "datatrove"):
        if peer in rates:
            print(f"ratio nonllama (default) / {peer}: {rates['nonllama (default)'] / rates[peer]:.1f}x "
                  f"(--no-verify: {rates['nonllama --no-verify'] / rates[peer]:.1f}x)")


# ----------------------------------------------------------------------------- memory at scale


def synthetic_parts(work: Path, n: int, part_rows: int = 100_000, seed: int = 0) -> Path:
    """`n` short documents (20-60 words of a 20,000-word vocabulary), 10% near copies."""
    rng = np.random.default_rng(seed)
    vocab = np.array(["".join(rng.choice(list("abcdefghijklmnopqrstuvwxyz"), rng.integers(3, 9))) for _ in range(20_000)])
    parts = []
    for start in range(0, n, part_rows):
        size = min(part_rows, n - start)
        lengths = rng.integers(20, 60, size)
        words = vocab[rng.integers(0, len(vocab), int(lengths.sum()))]
        texts = pl.Series(np.split(words, np.cumsum(lengths)[:-1])).list.join(" ")
        copies = rng.random(size) < 0.1
        source_rows = rng.integers(0, size, size)
        texts = pl.Series(np.where(copies, texts.gather(source_rows).to_numpy(), texts.to_numpy()))
        # a copy loses its last word and gains one: a near duplicate, not an exact one
        texts = pl.Series(np.where(copies, (texts.str.replace(r" \w+$", "") + " " + vocab[rng.integers(0, len(vocab), size)]).to_numpy(), texts.to_numpy()))
        ids = pl.Series([f"syn#{start + i}" for i in range(size)])
        parts.append(pl.DataFrame({"id": ids, "text": texts, "source": "synthetic", "meta": "{}"}))
    return write_stage(work / "filtered", parts)


def scale(work: Path, n: int, workers: int) -> None:
    t0 = time.perf_counter()
    source = synthetic_parts(work, n)
    print(f"built {n:,} synthetic documents in {time.perf_counter() - t0:.1f}s")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    run = run_dedup(source, work / "deduped", DedupConfig(), workers=workers, force=True)
    seconds = time.perf_counter() - start
    peak_self = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
    peak_children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
    m = run.manifest
    print(f"dedup of {m['rows_in']:,} documents, {workers} worker(s): {seconds:.1f}s ({m['rows_in'] / seconds:,.0f} docs/s), "
          f"{m['rows_out']:,} kept, {m['drop_reasons']}")
    print(f"peak RSS: this process {peak_self:.2f} GiB (before the run {before / 2**20:.2f} GiB), "
          f"largest child {peak_children:.2f} GiB")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=6000, help="original documents in the corpus (copies: a third more)")
    parser.add_argument("--scale", type=int, default=0, help="instead: dedup this many synthetic documents, report memory")
    parser.add_argument("--workers", type=int, default=1, help="workers for --scale")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="nonllama-bench-") as tmp:
        if args.scale:
            scale(Path(tmp), args.scale, args.workers)
        else:
            bench(Path(tmp), args.docs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
