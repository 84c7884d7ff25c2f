"""dedup: nonllama against rensa on real short documents, and the driver's memory at scale.

Two measurements, each printing ratios against baselines measured in the same run:

1. speed and recall (the default): ~56k real short documents built from ../shared/corpora
   (People's Daily lines, TinyStories paragraphs, zhwiki sentences, wikitext sentences; made
   distinct, so that the truth is only what we plant) plus one edited copy of 10% of them
   (insert / delete / substitute 0-12% of the words or characters), shuffled into 8 parts.
   Truth: a copy whose exact 3-gram Jaccard with its original (nonllama's tokens, compared as
   tuples: no hashing) is >= 0.8.
   - nonllama: the whole `nonllama dedup` command in a subprocess (start-up, Parquet in and
     out, candidates verified with the true Jaccard), `--workers 1` and `--workers 2`.
   - rensa (Rust, the fastest MinHash on PyPI), fed the same shingles made in Python (tokens
     by nonllama's rule, `" ".join` of each 3-gram): `RMinHash.digest_matrix_from_token_sets`
     and `RMinHashLSH.insert_matrix_and_query_duplicate_flags` (its batch path: candidates
     flagged, no decision which copy to keep), and `RMinHashDeduplicator` (its dedup: keep
     the first, drop later documents whose estimate reaches the threshold).
   Also in-process with a pool of 1 and of 2 worker processes started before the timing (what
   `--workers` would give if its processes lived across passes), and the time a helper process
   takes to start. Rounds alternate between the methods (this machine is shared: timings move
   by 2x from one minute to the next); each method's best round counts.
2. the driver's memory (`--scale N [N ...]`; by default 1M and 5M, ~3 minutes): N synthetic
   short documents (20-60 words; 10% near copies, 2% exact copies) in parts of 100k,
   deduplicated with the tasks in a pool of 2 worker processes, so that this process is the
   driver alone. Printed: the driver's peak resident memory beyond its baseline after imports
   (VmHWM, measured in a fresh process), per document, and the largest worker's peak, with
   the wall time. It fails (exit 1) if the driver needs 100 bytes per document or more.

`--with-peers` adds datasketch (one MinHash per document, MinHashLSH query-then-insert) and
datatrove's four MinHash steps to the speed table (slow: minutes).
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import contextlib
import gzip
import io
import json
import multiprocessing
import os
import random
import re
import resource
import subprocess
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
    read_manifest,
    read_parts,
    write_manifest,
)
from nonllama.pipeline.sample import sample_corpus  # noqa: E402

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "corpora"
THRESHOLD, NUM_PERM, NGRAM = 0.8, 128, 3
PARTS = 8
TOKEN = re.compile(r"[\u3040-\u30ff\u3400-\u9fff]|[^\W_]+")  # Python `re` has no \p{Han}
RENSA_BANDS = 16  # rensa needs bands dividing num_perm: 16 x 8 (nonllama's default is 14 x 9)


def tokens(text: str) -> list[str]:
    return TOKEN.findall(re.sub(r"\d", "0", text.lower()))


def python_shingles(text: str) -> list[str]:
    t = tokens(text)
    return [" ".join(t[i : i + NGRAM]) for i in range(max(1, len(t) - NGRAM + 1))] if t else []


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


def true_shingles(text: str) -> set[tuple[str, ...]]:
    """The shingles nonllama hashes, exactly (token tuples, no hashing): the truth."""
    return shingle_sets([text])[0]


def shingle_sets(texts: list[str]) -> list[set[tuple[str, ...]]]:
    """true_shingles of many texts (one tokenize call)."""
    return [{tuple(t[i : i + NGRAM]) for i in range(max(1, len(t) - NGRAM + 1))}
            for t in minhash.tokenize(pl.Series(texts, dtype=pl.String)).to_list()]


# ----------------------------------------------------------------------------- the corpus


def real_short_documents() -> list[tuple[str, str]]:
    """(lang, text): People's Daily lines, TinyStories paragraphs, zhwiki and wikitext sentences."""
    if not SHARED.is_dir():
        clean = [d for d in sample_corpus() if d.kind == "clean"]
        return [(d.lang, d.text) for d in clean]
    docs: list[tuple[str, str]] = []
    with gzip.open(SHARED / "peoples_daily_1998" / "199801.txt.gz", "rt", encoding="utf-8") as f:
        docs += [("zh", line.strip()) for line in f if len(line.strip()) >= 20]
    for name in ("smallGPT_tiny_stories.txt", "moe-routing-bench_tinystories_val.txt"):
        text = (SHARED / "tinystories_en" / name).read_text(encoding="utf-8")
        docs += [("en", p.strip()) for p in text.split("\n") if len(p.split()) >= 8]
    with open(SHARED / "zhwiki_cmrc2018" / "cmrc2018_contexts.jsonl", encoding="utf-8") as f:
        for line in f:
            docs += [("zh", s + "。") for s in json.loads(line)["text"].split("。") if len(s) >= 20]
    for name in ("test.txt", "valid.txt"):
        for line in (SHARED / "wikitext2_en" / name).read_text(encoding="utf-8").split("\n"):
            line = line.strip()
            if line and not line.startswith("="):
                docs += [("en", s.strip() + " .") for s in line.split(" . ") if len(s.split()) >= 8]
    return docs


def distinct_documents(docs: list[tuple[str, str]]) -> tuple[list[tuple[str, str]], list[set]]:
    """The documents with no Jaccard >= 0.5 to an earlier one (real corpora repeat themselves),
    found through the rare shingles (in at most 20 documents) they share, and their shingle sets."""
    sets = shingle_sets([text for _, text in docs])
    frequency = collections.Counter(s for shingles in sets for s in shingles)
    chosen, chosen_sets, index = [], [], collections.defaultdict(list)
    seen_texts = set()
    for (lang, text), shingles in zip(docs, sets, strict=True):
        if text in seen_texts:
            continue
        rare = [s for s in shingles if frequency[s] <= 20]
        # a document with J >= 0.5 shares most of these; check those that share a quarter
        shared = collections.Counter(j for s in rare for j in index[s])
        least = max(1, len(rare) // 4)
        if any(n >= least and jaccard(shingles, chosen_sets[j]) >= 0.5 for j, n in shared.items()):
            continue
        for s in rare:
            index[s].append(len(chosen))
        seen_texts.add(text)
        chosen.append((lang, text))
        chosen_sets.append(shingles)
    return chosen, chosen_sets


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
    """A finished `filter` output holding these parts (what `nonllama dedup` reads)."""
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


def build_corpus(work: Path, seed: int = 0) -> tuple[Path, list[str], list[str], set[str]]:
    """(input directory, ids, texts, ids of the copies with J >= THRESHOLD to their original)."""
    rng = random.Random(seed)
    docs, sets = distinct_documents(real_short_documents())
    ids = [f"{lang}#{i}" for i, (lang, _) in enumerate(docs)]
    texts = [t for _, t in docs]
    copies = []
    for i in rng.sample(range(len(docs)), len(docs) // 10):
        lang, text = docs[i]
        copies.append((f"{lang}#copy-of-{i}", edit(rng, text, lang, rng.uniform(0.0, 0.12)), i))
    copy_sets = shingle_sets([c[1] for c in copies])
    copies = [(cid, copy, jaccard(s, sets[i])) for (cid, copy, i), s in zip(copies, copy_sets, strict=True)]
    rng.shuffle(copies)
    truth = {cid for cid, _, j in copies if j >= THRESHOLD}
    ids += [c[0] for c in copies]
    texts += [c[1] for c in copies]
    frame = pl.DataFrame({"id": ids, "text": texts, "source": [i.split("#")[0] for i in ids], "meta": ["{}"] * len(ids)})
    step = -(-frame.height // PARTS)
    source = write_stage(work / "filtered", [frame.slice(k, step) for k in range(0, frame.height, step)])
    return source, ids, texts, truth


# ----------------------------------------------------------------------------- the methods


def run_nonllama_cli(source: Path, out: Path, workers: int) -> set[str]:
    """`nonllama dedup` as a person runs it: a new process, Parquet in and out."""
    command = [sys.executable, "-m", "nonllama", "dedup", "-i", str(source), "-o", str(out),
               "--threshold", str(THRESHOLD), "--workers", str(workers), "--force"]
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "NONLLAMA_NO_PROGRESS": "1"})
    if done.returncode:
        raise RuntimeError(done.stdout[-500:] + done.stderr[-2000:])
    return set(read_parts(out / "removed")["id"])


def rensa_shingles(texts: list[str]) -> list[list[str]]:
    return [python_shingles(t) for t in texts]


def run_rensa_matrix(ids: list[str], texts: list[str]) -> set[str]:
    """rensa's batch path: digest matrix + LSH duplicate flags (a flag: shares a band with another row)."""
    from rensa import RMinHash, RMinHashLSH

    matrix = RMinHash.digest_matrix_from_token_sets(rensa_shingles(texts), num_perm=NUM_PERM, seed=1)
    lsh = RMinHashLSH(threshold=THRESHOLD, num_perm=NUM_PERM, num_bands=RENSA_BANDS)
    flags = lsh.insert_matrix_and_query_duplicate_flags(matrix)
    return {doc_id for doc_id, flag in zip(ids, flags, strict=True) if flag}


def run_rensa_dedup(ids: list[str], texts: list[str]) -> set[str]:
    """rensa's deduplicator: keeps the first, drops a later document whose estimate reaches the threshold."""
    from rensa import RMinHashDeduplicator

    dedup = RMinHashDeduplicator(threshold=THRESHOLD, num_perm=NUM_PERM, use_lsh=True, num_bands=RENSA_BANDS, seed=1)
    keep = dedup.add_pairs(zip(ids, rensa_shingles(texts), strict=True))
    return {doc_id for doc_id, kept in zip(ids, keep, strict=True) if not kept}


def run_datasketch(ids: list[str], texts: list[str], bands: int, rows: int) -> set[str]:
    from datasketch import MinHash, MinHashLSH

    lsh = MinHashLSH(num_perm=NUM_PERM, params=(bands, rows))
    removed = set()
    for doc_id, text in zip(ids, texts, strict=True):
        m = MinHash(num_perm=NUM_PERM)
        for s in set(python_shingles(text)):
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
    with contextlib.redirect_stderr(io.StringIO()):
        for step, n_tasks in zip(steps, [1, bands, 1, 1], strict=True):
            LocalPipelineExecutor(pipeline=step, tasks=n_tasks, workers=1,
                                  logging_dir=str(base / "logs" / str(id(step))), skip_completed=False).run()
    files = list((base / "removed").glob("*.parquet"))
    return set(pl.concat([pl.read_parquet(f, columns=["id"]) for f in files])["id"]) if files else set()


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def bench(work: Path, rounds: int, with_peers: bool) -> int:
    t0 = time.perf_counter()
    source, ids, texts, truth = build_corpus(work)
    bands, rows = DedupConfig(threshold=THRESHOLD, num_perm=NUM_PERM).lsh
    print(f"corpus: {len(ids):,} real short documents ({sum(len(t) for t in texts) / len(texts):.0f} characters on "
          f"average), {len(truth):,} planted copies with J >= {THRESHOLD}, {PARTS} parts (built in "
          f"{time.perf_counter() - t0:.0f}s); threshold {THRESHOLD}, {NUM_PERM} permutations, {NGRAM}-grams; "
          f"nonllama {bands} bands x {rows} rows, rensa {RENSA_BANDS} x {NUM_PERM // RENSA_BANDS}")
    pools = {n: PoolExecutor(n) for n in (1, 2)}

    def in_pool(n: int) -> set[str]:
        out = work / f"pool-{n}"
        run_dedup(source, out, DedupConfig(threshold=THRESHOLD), executor=pools[n], force=True)
        return set(read_parts(out / "removed")["id"])

    methods = {
        "nonllama --workers 1": lambda: run_nonllama_cli(source, work / "one", 1),
        "nonllama --workers 2": lambda: run_nonllama_cli(source, work / "two", 2),
        "rensa matrix + LSH": lambda: run_rensa_matrix(ids, texts),
        "rensa deduplicator": lambda: run_rensa_dedup(ids, texts),
        "nonllama, warm pool 1": lambda: in_pool(1),
        "nonllama, warm pool 2": lambda: in_pool(2),
    }
    slow = {}
    if with_peers:
        slow = {"datasketch (plain)": lambda: run_datasketch(ids, texts, bands, rows),
                "datatrove": lambda: run_datatrove(source, work, bands, rows)}
    try:
        import rensa  # noqa: F401
    except ImportError:
        print("rensa is not installed (pip install -e '.[bench]'): no baseline to compare with")
        return 1
    best: dict[str, float] = {}
    removed: dict[str, set[str]] = {}
    for _ in range(rounds):
        for name, fn in methods.items():
            removed[name], seconds = timed(fn)
            best[name] = min(best.get(name, float("inf")), seconds)
    for pool in pools.values():
        pool.close()
    startup = min(timed(helper_startup)[1] for _ in range(3))
    for name, fn in slow.items():
        try:
            removed[name], best[name] = timed(fn)
        except Exception as e:  # a peer that cannot run here is reported, not fatal
            print(f"{name}: failed: {e!r:.200}")
    # in-process: what the command's start-up costs, and the passes' own time
    run = run_dedup(source, work / "in-process", DedupConfig(threshold=THRESHOLD), force=True)
    in_process = run.manifest["wall_time_s"]
    stats = run.manifest["dedup"]

    print(f"{'method':<24}{'seconds':>9}{'docs/s':>10}{'removed':>9}{'precision':>11}{'recall':>8}")
    for name in best:
        hit = len(removed[name] & truth)
        print(f"{name:<24}{best[name]:>9.2f}{len(ids) / best[name]:>10,.0f}{len(removed[name]):>9,}"
              f"{hit / max(1, len(removed[name])):>11.3f}{hit / len(truth):>8.3f}")
    print(f"(rensa matrix + LSH flags both members of a candidate pair: its precision is not a dedup's; best of "
          f"{rounds} rounds each; `nonllama dedup` in-process, without the command's start-up: {in_process:.2f}s; "
          f"{stats['candidate_pairs']:,} candidate pairs, {stats['near_duplicates']:,} near and "
          f"{stats['exact_duplicates']:,} exact duplicates)")
    one, two = best["nonllama --workers 1"], best["nonllama --workers 2"]
    for peer in ("rensa matrix + LSH", "rensa deduplicator", *slow):
        if peer in best:
            print(f"ratio nonllama / {peer}: {best[peer] / one:.2f}x with 1 worker, {best[peer] / two:.2f}x with 2 "
                  "(goal vs rensa: 1.5x)")
    print(f"ratio nonllama 2 workers / 1 worker: {one / two:.2f}x (goal: 1.6x)")
    warm1, warm2 = best["nonllama, warm pool 1"], best["nonllama, warm pool 2"]
    print(f"ratio with worker processes kept across passes (a pool started before the timing, in-process: no "
          f"command start-up): 2 / 1: {warm1 / warm2:.2f}x; vs rensa matrix + LSH: {best['rensa matrix + LSH'] / warm2:.2f}x")
    print(f"a --workers helper process starting (spawn, imports): {startup:.2f}s, once per stage (the helpers "
          "are kept for every pass), on the critical path of a corpus this small")
    false_merges = merges_below(work / "one", 0.5)
    print(f"nonllama: removed documents whose Jaccard with the one they name is < 0.5: {false_merges:.1%} (goal: <= 3%)")
    return 0


def _imported() -> int:
    import nonllama.pipeline.dedup  # noqa: F401

    return 0


def helper_startup() -> None:
    """What LocalExecutor's helper does before its first task: a spawned interpreter importing the stage."""
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=context) as pool:
        pool.submit(_imported).result()


def merges_below(out: Path, floor: float) -> float:
    """Share of removed documents whose true Jaccard with the document they name is below `floor`."""
    removed = read_parts(out / "removed")
    everything = pl.concat([read_parts(out).select("id", "text"), removed.select("id", "text")])
    text_of = dict(zip(everything["id"].to_list(), everything["text"].to_list(), strict=True))
    named = removed.filter(pl.col("duplicate_of").is_not_null())
    ours = shingle_sets(named["text"].to_list())
    theirs = shingle_sets([text_of[d] for d in named["duplicate_of"].to_list()])
    low = sum(jaccard(a, b) < floor for a, b in zip(ours, theirs, strict=True))
    return low / max(1, named.height)


# ----------------------------------------------------------------------------- memory at scale


def synthetic_parts(work: Path, n: int, part_rows: int = 100_000, seed: int = 0) -> Path:
    """`n` short documents (20-60 words of a 20,000-word vocabulary): 10% near copies (the last
    word replaced) and 2% exact copies of an earlier document of the same part."""
    rng = np.random.default_rng(seed)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    vocab = pl.Series(["".join(rng.choice(letters, rng.integers(3, 9))) for _ in range(20_000)])
    parts = []
    for start in range(0, n, part_rows):
        size = min(part_rows, n - start)
        lengths = rng.integers(20, 60, size)
        words = vocab.gather(rng.integers(0, len(vocab), int(lengths.sum())))
        frame = pl.DataFrame({"doc": np.repeat(np.arange(size), lengths), "word": words})
        texts = frame.group_by("doc", maintain_order=True).agg(pl.col("word").str.join(" "))["word"]
        origin = np.minimum(rng.integers(0, size, size), np.arange(size))
        kind = rng.random(size)
        near, exact = (kind < 0.10) & (origin < np.arange(size)), (kind >= 0.10) & (kind < 0.12)
        copied = texts.gather(origin)
        replaced = copied.str.replace(r" \w+$", "") + " " + vocab.gather(rng.integers(0, len(vocab), size))
        texts = pl.select(pl.when(pl.Series(near)).then(replaced).when(pl.Series(exact)).then(copied)
                          .otherwise(texts)).to_series()
        ids = pl.Series([f"syn#{start + i}" for i in range(size)])
        parts.append(pl.DataFrame({"id": ids, "text": texts, "source": "synthetic", "meta": "{}"}))
    return write_stage(work / "filtered", parts)


def _no_report(docs: int, nbytes: int) -> None:
    return None


def memory_kib(field: str) -> int:
    """VmRSS (now) or VmHWM (the peak since start, or since reset_peak) of this process, in KiB.

    Not ru_maxrss: Linux carries that over from the process that started this one."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def reset_peak() -> None:
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS


def _call(fn, task):
    result = fn(task, _no_report)
    peaks = os.environ.get("NONLLAMA_BENCH_PEAKS")
    if peaks:  # each worker's peak so far, in a file of its own
        Path(peaks, str(os.getpid())).write_text(str(memory_kib("VmHWM")))
    return result


class PoolExecutor:
    """Every task in a pool of worker processes, none in this one: the driver's memory alone."""

    kind = "local"

    def __init__(self, workers: int, peaks: Path | None = None):
        self.workers = workers
        os.environ["POLARS_MAX_THREADS"] = "1"  # read by the workers' polars (this one has started)
        if peaks is not None:
            os.environ["NONLLAMA_BENCH_PEAKS"] = str(peaks)
        self.pool = concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
        list(self.pool.map(abs, range(workers)))  # started before the measurement

    def map(self, fn, tasks, *, label, total_docs, on_result=None):
        futures = {self.pool.submit(_call, fn, task): i for i, task in enumerate(tasks)}
        results = [None] * len(tasks)
        for future in concurrent.futures.as_completed(futures):
            i = futures[future]
            results[i] = future.result()
            if on_result is not None:
                on_result(i, results[i])
        return results

    def start(self) -> None:
        return None  # started in __init__, before the measurement

    def close(self) -> None:
        self.pool.shutdown(wait=True)


def measure_driver(source: Path, out: Path, workers: int) -> None:
    """In a fresh process: dedup with the tasks in a pool; print the driver's and workers' peaks."""
    peaks = out.parent / "worker-peaks"
    peaks.mkdir(parents=True, exist_ok=True)
    executor = PoolExecutor(workers, peaks)
    baseline = memory_kib("VmRSS")
    reset_peak()
    start = time.perf_counter()
    run = run_dedup(source, out, DedupConfig(), executor=executor, force=True)
    seconds = time.perf_counter() - start
    peak = memory_kib("VmHWM")
    executor.close()
    children = max((int(p.read_text()) for p in peaks.iterdir()), default=0)
    m = run.manifest
    print(json.dumps({"rows": m["rows_in"], "kept": m["rows_out"], "drop_reasons": m["drop_reasons"],
                      "dedup": m["dedup"], "seconds": seconds, "baseline_kib": baseline, "peak_kib": peak,
                      "worker_peak_kib": children}))


def scale(work: Path, sizes: list[int], workers: int) -> int:
    failed = 0
    for n in sizes:
        directory = work / f"scale-{n}"
        t0 = time.perf_counter()
        source = synthetic_parts(directory, n)
        built = time.perf_counter() - t0
        command = [sys.executable, "-m", "bench.dedup", "--measure-driver", str(source), str(directory / "deduped"),
                   "--workers", str(workers)]
        done = subprocess.run(command, capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
        if done.returncode:
            print(f"--scale {n}: failed\n{done.stderr[-3000:]}")
            failed = 1
            continue
        r = json.loads(done.stdout.strip().splitlines()[-1])
        driver = (r["peak_kib"] - r["baseline_kib"]) * 1024
        worker = r["worker_peak_kib"] * 1024
        print(f"--scale {n:,}: built in {built:.0f}s; dedup {r['seconds']:.0f}s ({n / r['seconds']:,.0f} docs/s, "
              f"{workers} worker processes), {r['kept']:,} kept, {r['drop_reasons']}")
        print(f"  driver: {driver / 2**20:,.1f} MiB beyond its baseline of {r['baseline_kib'] / 2**10:,.0f} MiB = "
              f"{driver / n:.1f} bytes per document (budget: 100)")
        print(f"  largest worker: {worker / 2**20:,.0f} MiB peak = {worker / n:.1f} bytes per document "
              f"(bounded by its task, not the corpus)")
        if driver / n >= 100:
            failed = 1
        print(f"  ({read_manifest(directory / 'deduped')['dedup']})")
        import shutil

        shutil.rmtree(directory, ignore_errors=True)
    return failed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the speed comparison (best counts)")
    parser.add_argument("--with-peers", action="store_true", help="also datasketch and datatrove (minutes)")
    parser.add_argument("--scale", type=int, nargs="+", default=None,
                        help="only the driver's memory, on these many synthetic documents")
    parser.add_argument("--speed-only", action="store_true", help="only the speed comparison")
    parser.add_argument("--workers", type=int, default=2, help="worker processes for --scale")
    parser.add_argument("--measure-driver", nargs=2, metavar=("INPUT", "OUTPUT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure_driver:
        measure_driver(Path(args.measure_driver[0]), Path(args.measure_driver[1]), args.workers)
        return 0
    failed = 0
    with tempfile.TemporaryDirectory(prefix="nonllama-bench-") as tmp:
        if args.scale is None:
            failed |= bench(Path(tmp), args.rounds, args.with_peers)
        if not args.speed_only:  # `make bench`: both, the driver's memory at 1M and 5M documents (~3 minutes)
            failed |= scale(Path(tmp), args.scale or [1_000_000, 5_000_000], args.workers)
    return failed


if __name__ == "__main__":
    sys.exit(main())
