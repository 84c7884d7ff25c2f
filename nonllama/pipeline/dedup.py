"""`nonllama dedup`: exact, near-duplicate (MinHash-LSH) and repeated-paragraph removal.

Dedup is global (a copy in part 9 of a document in part 0 must be found), so it runs as
passes of small tasks (spread by the executor: local processes or Ray) with small reduces in
the driver between them. Documents are numbered globally in (part, row) order. Tasks write
their files under ``<output>/.work/scratch`` (kept across an interruption, removed at the end):

1. ``sketch`` (a task per part): tokens, shingles and MinHash signatures of every document
   (:mod:`nonllama.pipeline.minhash`). Writes ``lsh-P.npy``: (band key, row) entries sorted by
   LSH shard (a shard is a range of bands, or of band keys within a band, so that one shard
   holds a bounded number of entries whatever the corpus size); ``exact-P.npy``: (exact key,
   row) entries sorted by exact shard (a range of keys); and for the checks ``shingles-P.npy``
   + ``shoff-P.npy`` (each document's shingle hashes, for the true Jaccard: ``--verify``) or
   ``sig-P.npy`` (signatures, for the estimate: ``--no-verify``).
2. ``exact`` (a task per exact shard): its key range from every part; each group of equal keys
   gives pairs (document, its first document): ``exactpairs-E.npy``, sorted by document.
   The driver marks those documents in one bit per document (``nonrep.npy``): they are not banded.
3. ``lsh`` (a task per LSH shard): its entries from every part (only those bytes are read),
   documents marked in ``nonrep.npy`` left out; every pair of documents sharing a bucket is a
   candidate (a bucket over 64 documents gives its star and its chain): ``pairs-S.npy``,
   sorted. The task returns a histogram of the pairs' first documents.
4. ``verify`` (a task per block of candidate pairs, a range of first documents planned from
   the histograms): the block's pairs from every shard's file, made distinct; the true Jaccard
   of each from the shingles of the block's documents only (or the signatures' estimate):
   ``similar-V.npy``, the pairs at or above the threshold.
5. the driver: connected components over the exact pairs and the similar pairs, streamed from
   the files a block at a time (:class:`nonllama.pipeline.minhash.UnionFind`: one int32 per
   document); per part, the removed rows with why and the global number of the document they
   duplicate (``decisions-P.npy``).
   With ``--semantic`` (SemDeDup: :mod:`nonllama.pipeline.semantic`, which holds the code and
   its account of memory), on the documents still kept: ``embed`` (a task per part: the embeddings
   go to ``<output>/embeddings/part-P.parquet``, kept and listed in the manifest, and to a cache
   that a rerun with another threshold reuses), k-means in the driver on a seeded sample,
   ``assign`` (a task per part: nearest centroid, entries and vectors sorted by cluster shard) and
   ``semantic`` (a task per range of clusters: in each cluster, greedy in (part, row) order, a
   document whose cosine to an earlier kept one is above the threshold is removed); the driver
   merges those removals into the decisions (``semantic_duplicate``, with ``cosine-P.npy``)
   before the ids are resolved. Then, per part, the rows the decisions name (``want-P.npy``).
6. ``ids`` (a task per group of parts): each part's ``id`` column, for the rows other parts
   name: ``ids-P.arrow``. With ``--paragraphs`` the same tasks count, per line key, in how many
   kept documents of the part it occurs (``lines-P.npy``, sorted by key range), and
   ``frequent`` tasks (a key range each) sum those counts over all parts: ``frequent-K.npy``.
   Counting after document dedup matters: a document's own copies would otherwise make all
   its lines "frequent".
7. ``write`` (a task per few parts): part i of the output holds the kept rows of input part i (with
   frequent lines cut); part i of ``removed/`` the others, with ``drop_reason``,
   ``duplicate_of`` and ``jaccard`` (and with --semantic ``cosine``: set for the semantic
   duplicates, whose ``jaccard`` is null); a document the cuts leave empty is removed as
   ``empty_after_paragraph_dedup``.

The driver holds one int32 label per document (and for a moment one byte), the removed
documents' numbers, per-part x per-shard tables and block-sized arrays; never text, ids or a
per-document frame (the budget: under 100 bytes per document; ``bench/dedup.py --scale``
measures it). Every task writes its files through a temporary name and a rename, and rewrites
the same bytes when run again; the tasks and shards are planned from the input's size and the
config only (:class:`Plan`), so an interrupted run resumes task by task.

Keep rule: in every cluster the document that comes first in (part, row) order is kept, so
the same input gives the same output whatever the executor and number of workers. An exact
duplicate names in ``duplicate_of`` the first document with its exact text (``jaccard`` 1.0),
which is the kept one unless that first copy is itself a near duplicate of an earlier
document; a near duplicate names the kept document of its cluster, with ``jaccard`` the true
Jaccard of their shingle sets (the MinHash estimate with ``--no-verify``). A semantic duplicate
names the kept document of its k-means cluster it is most similar to, with their cosine.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
from rich.console import Console

from nonllama.pipeline import minhash
from nonllama.pipeline import semantic as semdedup
from nonllama.pipeline.dirs import StageInput, open_input
from nonllama.pipeline.driver import (
    ShardResult,
    ShardTask,
    StageContext,
    StageJob,
    drive,
    merge_counts,
    process_shard,
)
from nonllama.pipeline.executors import Executor, task_threads
from nonllama.pipeline.io import (
    DEFAULT_BATCH_ROWS,
    Reporter,
    StageError,
    StageRun,
    atomic_path,
    describe_part,
    document_section,
    list_parts,
    require_finished,
)

STAGE = "dedup"
PREVIOUS = "filter"
SIDE_DIR = "removed"
EXACT = "exact_duplicate"
NEAR = "near_duplicate"
EMPTY = "empty_after_paragraph_dedup"
MAX_CHECKED_BUCKET = 64  # a larger LSH bucket is checked as a star + chain, not all its pairs

# How much one task holds (worker memory is bounded by these, not by the corpus):
LSH_ENTRIES_PER_TASK = 4_000_000  # (band key, document) entries of one LSH shard (~40 bytes each at work)
EXACT_ENTRIES_PER_TASK = 8_000_000  # (exact key, document) entries of one exact shard
PAIRS_PER_BLOCK = 1_000_000  # candidate pairs of one verify task
CHECK_CELLS = 8_000_000  # shingles (or signature values) of the pairs checked at once within a task
ID_ROWS_PER_TASK = 4_000_000  # input rows whose id columns one `ids` task reads (without --paragraphs)
# Input rows one `write` task copies (whole parts; tiny parts are grouped). Small, so that even a
# small corpus's pass spreads over the workers: they live across passes, and a task costs a message
WRITE_ROWS_PER_TASK = 10_000
# LSH shards at least (ranges of bands): the pass spreads over workers even on a small corpus, and
# a shard's sort is faster on fewer entries; a pair found in two shards is checked once (verify)
MIN_LSH_SHARDS = 4
LINE_KEYS_PER_TASK = 2_000_000  # documents per line-key range of --paragraphs (a shard of `frequent`)
UNION_PAIRS = 1 << 20  # pairs the driver adds to the clusters at once
HISTOGRAM_BINS = 16384  # ranges of first documents that the verify blocks are planned from

ENTRY = np.dtype([("key", "<u8"), ("row", "<u4")])  # 12 bytes
DECISION = np.dtype([("row", "<u4"), ("reason", "u1"), ("target", "<i8")])
REASONS = {1: EXACT, 2: NEAR, 3: semdedup.SEMANTIC}


@dataclass(frozen=True)
class DedupConfig:
    """What `nonllama dedup` does; every field is a command option of the same name."""

    threshold: float = 0.8
    num_perm: int = 128
    ngram: int = 3
    bands: int | None = None  # None: the (bands, rows) minimizing weighted false positives + negatives
    rows: int | None = None
    # weight of false positives in that choice (false negatives: 1 - it). Low, since candidates are
    # checked (--verify): on short real documents 0.02 (17 x 7) finds 99.9% of the pairs at J >= 0.8
    # for the same time, where 0.1 (14 x 9) found 96.5%
    fp_weight: float = 0.02
    seed: int = 1
    exact: bool = True
    near: bool = True
    # candidates are checked with the true Jaccard by default: the 128-permutation estimate
    # has a standard error of ~0.035 at J=0.8, which costs ~10% precision and recall on pairs
    # near the threshold, for ~3% more time
    verify: bool = True
    paragraphs: bool = False
    paragraph_max_docs: int = 5  # a line in more documents than this is cut
    # semantic dedup (SemDeDup: nonllama.pipeline.semantic), after exact and near dedup
    semantic: bool = False
    embedder: str = semdedup.DEFAULT_EMBEDDER  # a model directory or a Hub id
    # cosine above which a document is a duplicate of an earlier kept one. Measured with all-MiniLM-L6-v2:
    # rewrites that keep the sentences but swap many words (3-gram Jaccard 0.2-0.35, missed by MinHash)
    # score 0.936-0.985 (tests/test_semantic.py); on TinyStories + WikiText paragraphs (../shared/corpora)
    # the pairs at 0.90-0.92 were different stories sharing an opening sentence, those from 0.95 up true
    # repeats; different documents on one topic score <= 0.55. 0.95 keeps a document when unsure (a
    # duplicate left costs less than a unique document lost). SemDeDup (eps = 1 - threshold) picked
    # eps for a share of data to drop; its smallest values (0.01-0.05) are this range.
    semantic_threshold: float = 0.95
    semantic_clusters: int = 0  # k-means clusters; 0: one per ~1,000 documents, at most semantic_sample / 39
    semantic_sample: int = 100_000  # vectors the k-means is trained on
    embed_batch: int = 64  # texts the embedder takes at once

    # (class constants, not fields: no annotation)
    # Tokens per shingle, at most. Published pipelines use 5 (datatrove) to 13 (SlimPajama,
    # GPT-3's overlap test) words. A document shorter than n tokens is one single shingle, so
    # below n tokens (a tweet, a Chinese paragraph counted in characters) near-duplicate
    # degenerates into exact-duplicate, and a copy with one edit every n tokens shares no
    # shingle with its original: past 32, near duplicates of ordinary text go unfound.
    MAX_NGRAM = 32
    # MinHash permutations. The Jaccard estimate's standard error is sqrt(J(1 - J) / num_perm),
    # 0.0125 at 1024 and J = 0.8: more buys nothing measurable, while the signatures cost 4 bytes
    # per permutation and document, and choosing (bands, rows) evaluates every pair with
    # bands x rows <= num_perm (0.3 GB and 2 s at 1024, growing faster than num_perm).
    MAX_NUM_PERM = 1024
    MAX_SEMANTIC_SAMPLE = 10_000_000  # the driver holds it: 15 GB at 384 dimensions
    MAX_EMBED_BATCH = 4096

    def __post_init__(self) -> None:
        self.validate()  # a DedupConfig is never out of range, however it was built

    def validate(self) -> None:
        """Raise ValueError naming the option and its allowed range for any value out of range."""
        if not 0.0 < self.threshold <= 1.0:  # NaN fails too
            raise ValueError(f"--threshold {self.threshold:g}: must be in (0, 1] (a Jaccard similarity)")
        if not 0.0 <= self.fp_weight <= 1.0:
            raise ValueError(f"--fp-weight {self.fp_weight:g}: must be in [0, 1]")
        if not 2 <= self.num_perm <= self.MAX_NUM_PERM:
            raise ValueError(f"--num-perm {self.num_perm}: must be in [2, {self.MAX_NUM_PERM}] (MinHash permutations)")
        if not 1 <= self.ngram <= self.MAX_NGRAM:
            raise ValueError(f"--ngram {self.ngram}: must be in [1, {self.MAX_NGRAM}] (tokens per shingle: words, or "
                             "characters of Chinese); a document shorter than that is a single shingle")
        if not 0 <= self.seed < 2**64:
            raise ValueError(f"--seed {self.seed}: must be in [0, 2**64)")
        if self.paragraph_max_docs < 1:
            raise ValueError(f"--paragraph-max-docs {self.paragraph_max_docs}: must be at least 1")
        for name in ("bands", "rows"):
            value = getattr(self, name)
            if value is not None and not 1 <= value <= self.num_perm:
                raise ValueError(f"--{name} {value}: must be in [1, --num-perm {self.num_perm}]")
        if not 0.0 < self.semantic_threshold < 1.0:
            raise ValueError(f"--semantic-threshold {self.semantic_threshold:g}: must be in (0, 1) (a cosine similarity)")
        if not semdedup.MIN_POINTS_PER_CENTROID <= self.semantic_sample <= self.MAX_SEMANTIC_SAMPLE:
            raise ValueError(f"--semantic-sample {self.semantic_sample}: must be in "
                             f"[{semdedup.MIN_POINTS_PER_CENTROID}, {self.MAX_SEMANTIC_SAMPLE:,}] (vectors k-means learns from)")
        most = self.semantic_sample // semdedup.MIN_POINTS_PER_CENTROID
        if not 0 <= self.semantic_clusters <= most:
            raise ValueError(f"--semantic-clusters {self.semantic_clusters}: must be 0 (automatic) or in [1, {most}]: "
                             f"faiss k-means wants {semdedup.MIN_POINTS_PER_CENTROID} sample vectors per cluster "
                             f"(--semantic-sample {self.semantic_sample})")
        if not 1 <= self.embed_batch <= self.MAX_EMBED_BATCH:
            raise ValueError(f"--embed-batch {self.embed_batch}: must be in [1, {self.MAX_EMBED_BATCH}]")
        if not self.embedder.strip():
            raise ValueError("--embedder: must name a model directory or a Hugging Face Hub id")
        bands, rows = self.lsh
        if bands * rows > self.num_perm:
            raise ValueError(
                f"--bands {bands} x --rows {rows} = {bands * rows} exceeds --num-perm {self.num_perm}"
            )

    @property
    def lsh(self) -> tuple[int, int]:
        """(bands, rows): as given, one derived from the other, or the optimal pair."""
        if self.bands is not None and self.rows is not None:
            return self.bands, self.rows
        if self.bands is not None:
            return self.bands, max(1, self.num_perm // self.bands)
        if self.rows is not None:
            return max(1, self.num_perm // self.rows), self.rows
        return minhash.optimal_bands(self.threshold, self.num_perm, self.fp_weight)

    def to_dict(self) -> dict[str, Any]:
        """The effective config (bands and rows resolved), as recorded in the manifest."""
        values = asdict(self)
        values["bands"], values["rows"] = self.lsh
        return values


# ----------------------------------------------------------------------------- lines (--paragraphs)


def line_table(texts: pl.Series) -> pl.DataFrame:
    """One row per line: (doc, line, key); key is null for a blank line.

    Lines are compared lower-cased, with runs of whitespace as one space and digits as 0,
    so "Copyright 2023" and "copyright  2024" are the same footer.
    """
    table = pl.DataFrame(
        {"doc": pl.int_range(len(texts), eager=True, dtype=pl.UInt32), "line": texts.fill_null("").str.split("\n")}
    ).explode("line")
    simplified = (
        table["line"].str.to_lowercase().str.replace_all(r"\s+", " ").str.replace_all(r"\d", "0").str.strip_chars()
    )
    key = simplified.hash(seed=0).alias("key")
    return table.with_columns(pl.when(simplified.str.len_bytes() > 0).then(key).alias("key"))


def cut_lines(texts: pl.Series, frequent: pl.Series | None) -> tuple[pl.Series, np.ndarray]:
    """(texts without their frequent lines, lines cut per document); others untouched."""
    if frequent is None or frequent.len() == 0 or texts.len() == 0:
        return texts, np.zeros(texts.len(), np.int64)
    table = line_table(texts).with_columns(cut=pl.col("key").is_in(frequent.implode()).fill_null(False))
    per_doc = table.group_by("doc", maintain_order=True).agg(
        pl.col("cut").sum().alias("cut"),
        pl.col("line").filter(~pl.col("cut")).str.join("\n").alias("text"),
    )
    cut = per_doc["cut"].to_numpy().astype(np.int64)
    joined = per_doc["text"].str.replace_all(r"\n{3,}", "\n\n").str.strip_chars()
    return pl.Series(texts.name, np.where(cut > 0, joined.to_numpy(), texts.to_numpy())).cast(pl.String), cut


# ----------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class Plan:
    """What every task needs to know of the run: where, what, and how the work is sharded.

    Decided from the input's size and the config only (never from the number of workers),
    so the same input gives the same tasks and files everywhere.
    """

    scratch: Path
    config: DedupConfig
    offsets: tuple[int, ...]  # global number of each part's first document; the last: the total
    exact_shards: int
    lsh_shards: int
    key_parts: int  # LSH shards per band (1: a shard is a range of whole bands)
    line_shards: int
    histogram_bins: int  # ranges of first documents the lsh tasks count their pairs in
    batch_rows: int = DEFAULT_BATCH_ROWS

    @classmethod
    def make(cls, scratch: Path, config: DedupConfig, part_rows: list[int], batch_rows: int) -> Plan:
        n = sum(part_rows)
        bands, _ = config.lsh
        wanted = max(min(bands, MIN_LSH_SHARDS), math.ceil(n * bands / LSH_ENTRIES_PER_TASK))
        key_parts = 1 if wanted <= bands else math.ceil(wanted / bands)
        lsh_shards = wanted if key_parts == 1 else bands * key_parts
        offsets = tuple(int(x) for x in np.concatenate([[0], np.cumsum(part_rows, dtype=np.int64)]))
        return cls(scratch, config, offsets, max(1, math.ceil(n / EXACT_ENTRIES_PER_TASK)), lsh_shards,
                   key_parts, max(1, math.ceil(n / LINE_KEYS_PER_TASK)), max(1, min(HISTOGRAM_BINS, n)), batch_rows)

    @property
    def documents(self) -> int:
        return self.offsets[-1]

    @property
    def exact_files(self) -> int:
        """How many exact shards wrote files (none without --exact or documents)."""
        return self.exact_shards if self.config.exact and self.documents else 0

    @property
    def parts(self) -> int:
        return len(self.offsets) - 1

    def file(self, what: str, index: int, suffix: str = ".npy") -> Path:
        return self.scratch / f"{what}-{index:05d}{suffix}"

    def part_of(self, docs: np.ndarray) -> np.ndarray:
        return np.searchsorted(np.asarray(self.offsets), docs, side="right") - 1

    def lsh_shard(self, band: np.ndarray, key: np.ndarray) -> np.ndarray:
        if self.key_parts == 1:
            return band * self.lsh_shards // self.config.lsh[0]
        return band * self.key_parts + _key_range(key, self.key_parts)


def _key_range(key: np.ndarray, shards: int) -> np.ndarray:
    """Which of `shards` equal ranges of 64-bit keys each key falls in (from its top 32 bits)."""
    return (((key >> np.uint64(32)) * np.uint64(shards)) >> np.uint64(32)).astype(np.int64)


def _save(path: Path, array: np.ndarray) -> None:
    """np.save under `path` through a temporary name: a task's file is whole or absent."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, array)


def _load(path: Path) -> np.ndarray:
    return np.load(path, mmap_mode="r")


def _entries(keys: np.ndarray, rows: np.ndarray, shard: np.ndarray, shards: int) -> tuple[np.ndarray, np.ndarray]:
    """(key, row) entries sorted by shard (stable), and where each shard starts (shards + 1)."""
    out = np.empty(len(keys), ENTRY)
    if shards == 1:
        out["key"], out["row"] = keys, rows
        return out, np.array([0, len(keys)], np.int64)
    order = np.argsort(shard, kind="stable")
    out["key"], out["row"] = keys[order], rows[order]
    return out, np.searchsorted(shard[order], np.arange(shards + 1)).astype(np.int64)


def _save_bounds(plan: Plan, what: str, bounds: list[np.ndarray]) -> Path:
    """Where each part's file of `what` holds each shard: one (parts x shards + 1) array, which
    the shard tasks read a column of (a task carries the path, not parts x shards numbers)."""
    path = plan.scratch / f"{what}-bounds.npy"
    _save(path, np.stack(bounds) if bounds else np.zeros((0, 2), np.int64))
    return path


def _slices(plan: Plan, what: str, bounds_path: Path, shard: int) -> tuple[np.ndarray, np.ndarray]:
    """(keys, global documents) of one shard, from every part's file of `what` (only its bytes)."""
    keys, docs = [], []
    bounds = np.asarray(_load(bounds_path)[:, shard : shard + 2])
    for p in range(plan.parts):
        lo, hi = bounds[p]
        if hi > lo:
            entries = _load(plan.file(what, p))[lo:hi]
            keys.append(np.asarray(entries["key"]))
            docs.append(entries["row"].astype(np.int64) + plan.offsets[p])
    if not keys:
        return np.zeros(0, np.uint64), np.zeros(0, np.int64)
    return np.concatenate(keys), np.concatenate(docs)


# ----------------------------------------------------------------------------- pass 1: sketch


@dataclass(frozen=True)
class SketchTask:
    plan: Plan
    index: int
    part: Path


@dataclass(frozen=True)
class Sketched:
    rows: int
    exact_bounds: np.ndarray  # where each exact shard starts in exact-P.npy
    lsh_bounds: np.ndarray  # where each LSH shard starts in lsh-P.npy


def sketch_part(task: SketchTask, report: Reporter) -> Sketched:
    """Exact keys, band keys and (for the checks) shingles or signatures of one part."""
    plan, config = task.plan, task.plan.config
    bands, rows_per_band = config.lsh
    a, b = minhash.permutations(config.num_perm, config.seed)
    if config.verify:  # no estimates: only the permutations the bands use (the same values)
        a, b = a[: bands * rows_per_band], b[: bands * rows_per_band]
    exact_keys, exact_rows, band_keys, band_rows = [], [], [], []
    shingles, shingle_counts, sigs = [], [], []
    offset = 0
    for batch in pq.ParquetFile(task.part).iter_batches(batch_size=plan.batch_rows, columns=["text"]):
        texts = pl.Series("text", batch.column(0))
        token_hash, lengths, keys, content = minhash.text_features(texts, config.seed, exact=config.exact)
        if config.exact:
            exact_keys.append(keys[content])
            exact_rows.append(np.flatnonzero(content) + offset)
        if config.near:
            shingle_hash, counts = minhash.shingle_hashes(token_hash, lengths, config.ngram)
            banded = np.flatnonzero(counts > 0)
            sig = minhash.signatures(shingle_hash, counts, a, b)
            band_keys.append(minhash.band_keys(sig[banded], bands, rows_per_band))
            band_rows.append(banded + offset)
            if config.verify:
                shingles.append(shingle_hash)
                shingle_counts.append(counts)
            else:
                sigs.append(sig)
        offset += len(texts)
        report(len(texts), int(texts.str.len_bytes().sum() or 0))

    exact_bounds = np.zeros(plan.exact_shards + 1, np.int64)
    if config.exact:
        keys = np.concatenate(exact_keys) if exact_keys else np.zeros(0, np.uint64)
        rows = np.concatenate(exact_rows) if exact_rows else np.zeros(0, np.int64)
        entries, exact_bounds = _entries(keys, rows, _key_range(keys, plan.exact_shards), plan.exact_shards)
        _save(plan.file("exact", task.index), entries)
    lsh_bounds = np.zeros(plan.lsh_shards + 1, np.int64)
    if config.near:
        keys2d = np.concatenate(band_keys) if band_keys else np.zeros((0, bands), np.uint64)
        rows = np.concatenate(band_rows) if band_rows else np.zeros(0, np.int64)
        # band-major: within a shard, entries of one key come in row order
        band = np.repeat(np.arange(bands), len(rows))
        keys, rows = keys2d.T.ravel(), np.tile(rows, bands)
        entries, lsh_bounds = _entries(keys, rows, plan.lsh_shard(band, keys), plan.lsh_shards)
        _save(plan.file("lsh", task.index), entries)
        if config.verify:
            counts = np.concatenate(shingle_counts) if shingle_counts else np.zeros(0, np.int64)
            _save(plan.file("shingles", task.index), np.concatenate(shingles) if shingles else np.zeros(0, np.uint32))
            _save(plan.file("shoff", task.index), np.concatenate([[0], np.cumsum(counts, dtype=np.int64)]))
        else:
            _save(plan.file("sig", task.index),
                  np.concatenate(sigs) if sigs else np.zeros((0, config.num_perm), np.uint32))
    return Sketched(offset, exact_bounds, lsh_bounds)


# ----------------------------------------------------------------------------- pass 2: exact


@dataclass(frozen=True)
class ShardJob:
    plan: Plan
    shard: int
    bounds: Path  # (parts x shards + 1): where each part's file holds each shard (_save_bounds)


def exact_shard(task: ShardJob, report: Reporter) -> int:
    """Groups of equal exact keys in one key range: (document, first of its group) pairs."""
    keys, docs = _slices(task.plan, "exact", task.bounds, task.shard)
    order = np.argsort(keys, kind="stable")  # parts and rows come in order: equal keys stay in document order
    keys, docs = keys[order], docs[order]
    first = np.ones(len(keys), bool)
    first[1:] = keys[1:] != keys[:-1]
    rep = docs[np.flatnonzero(first)][np.cumsum(first) - 1]
    dup = ~first
    doc, rep = docs[dup], rep[dup]
    order = np.argsort(doc)
    _save(task.plan.file("exactpairs", task.shard), np.stack([doc[order], rep[order]]).astype(np.int64))
    return int(dup.sum())


# ----------------------------------------------------------------------------- pass 3: lsh


def lsh_shard(task: ShardJob, report: Reporter) -> np.ndarray:
    """Candidate pairs of one LSH shard (its bands / key range, from every part); returns the
    histogram of their first documents over HISTOGRAM_BINS ranges."""
    plan = task.plan
    keys, docs = _slices(plan, "lsh", task.bounds, task.shard)
    nonrep = plan.scratch / "nonrep.npy"
    if plan.config.exact and nonrep.exists() and len(docs):
        bits = _load(nonrep)
        marked = (bits[docs >> 3] >> (7 - (docs & 7)).astype(np.uint8)) & 1
        keys, docs = keys[marked == 0], docs[marked == 0]
    a, b = minhash.candidate_pairs(keys, docs, MAX_CHECKED_BUCKET)
    _save(plan.file("pairs", task.shard), np.stack([a, b]))
    bins = plan.histogram_bins
    return np.bincount(a * bins // max(1, plan.documents), minlength=bins).astype(np.int32)


# ----------------------------------------------------------------------------- pass 4: verify


@dataclass(frozen=True)
class VerifyTask:
    plan: Plan
    index: int
    lo: int  # first documents in [lo, hi)
    hi: int


def verify_block(task: VerifyTask, report: Reporter) -> tuple[int, int]:
    """The distinct candidate pairs whose first document is in [lo, hi), checked against the
    threshold; writes those that pass. Returns (candidates, similar)."""
    plan = task.plan
    a_parts, b_parts = [], []
    for s in range(plan.lsh_shards):
        pairs = _load(plan.file("pairs", s))
        lo, hi = np.searchsorted(pairs[0], [task.lo, task.hi])
        if hi > lo:
            a_parts.append(np.asarray(pairs[0, lo:hi]))
            b_parts.append(np.asarray(pairs[1, lo:hi]))
    a = np.concatenate(a_parts) if a_parts else np.zeros(0, np.int64)
    b = np.concatenate(b_parts) if b_parts else np.zeros(0, np.int64)
    a, b = minhash.unique_pairs(a, b)
    similarity = pair_similarity(plan, a, b)
    keep = similarity >= plan.config.threshold
    _save(plan.file("similar", task.index), np.stack([a[keep], b[keep]]))
    report(0, 0)
    return len(a), int(keep.sum())


def pair_similarity(plan: Plan, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Jaccard of each pair of global documents: true (their shingle sets) with --verify, else the
    MinHash estimate. Reads only these documents' rows, a bounded number of values at a time."""
    out = np.zeros(len(a))
    if len(a) == 0:
        return out
    if plan.config.verify:
        cost = _shingle_counts(plan, a) + _shingle_counts(plan, b)
    else:
        cost = np.full(len(a), 2 * plan.config.num_perm, np.int64)
    chunk_of = np.cumsum(cost) // CHECK_CELLS
    bounds = np.concatenate([[0], np.flatnonzero(np.diff(chunk_of)) + 1, [len(a)]])
    for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
        pa_, pb_ = a[lo:hi], b[lo:hi]
        if plan.config.verify:
            out[lo:hi] = _true_jaccard(plan, pa_, pb_)
        else:
            out[lo:hi] = minhash.estimated_jaccard(_signatures_of(plan, pa_), _signatures_of(plan, pb_))
    return out


def _by_part(plan: Plan, docs: np.ndarray):
    """(part, positions in `docs`, rows in that part) for each part the documents fall in."""
    part = plan.part_of(docs)
    order = np.argsort(part, kind="stable")
    bounds = np.searchsorted(part[order], np.arange(plan.parts + 1))
    for p in np.flatnonzero(np.diff(bounds)):
        at = order[bounds[p] : bounds[p + 1]]
        yield int(p), at, docs[at] - plan.offsets[p]


def _shingle_counts(plan: Plan, docs: np.ndarray) -> np.ndarray:
    counts = np.zeros(len(docs), np.int64)
    for p, at, rows in _by_part(plan, docs):
        off = _load(plan.file("shoff", p))
        counts[at] = off[rows + 1] - off[rows]
    return counts


def _signatures_of(plan: Plan, docs: np.ndarray) -> np.ndarray:
    out = np.zeros((len(docs), plan.config.num_perm), np.uint32)
    for p, at, rows in _by_part(plan, docs):
        out[at] = _load(plan.file("sig", p))[rows]
    return out


def _true_jaccard(plan: Plan, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """|A & B| / |A | B| of the pairs' distinct shingle hashes, all in numpy."""
    docs = minhash.distinct(np.concatenate([a, b]))
    ia, ib = np.searchsorted(docs, a), np.searchsorted(docs, b)
    chunks = []
    for p, at, rows in _by_part(plan, docs):
        off = _load(plan.file("shoff", p))
        lo, hi = off[rows], off[rows + 1]
        n = hi - lo
        index = np.repeat(lo - (np.cumsum(n) - n), n) + np.arange(int(n.sum()))
        chunks.append((at, n, np.asarray(_load(plan.file("shingles", p))[index])))
    owner = np.concatenate([np.repeat(at, n) for at, n, _ in chunks])
    values = np.concatenate([v for _, _, v in chunks])
    # one sorted array of distinct (document, shingle) keys; a set's members are contiguous
    keys = minhash.distinct((owner.astype(np.uint64) << np.uint64(32)) | values.astype(np.uint64))
    sizes = np.bincount((keys >> np.uint64(32)).astype(np.int64), minlength=len(docs))
    starts = np.cumsum(sizes) - sizes
    # look up each member of the smaller set in the other set
    swap = sizes[ia] > sizes[ib]
    small, large = np.where(swap, ib, ia), np.where(swap, ia, ib)
    n = sizes[small]
    pair = np.repeat(np.arange(len(a)), n)
    position = np.repeat(starts[small], n) + (np.arange(int(n.sum())) - np.repeat(np.cumsum(n) - n, n))
    probe = (large[pair].astype(np.uint64) << np.uint64(32)) | (keys[position] & np.uint64(0xFFFFFFFF))
    found = np.searchsorted(keys, probe)
    hit = keys[np.minimum(found, len(keys) - 1)] == probe
    common = np.bincount(pair[hit], minlength=len(a))
    union = sizes[ia] + sizes[ib] - common
    return np.where(union > 0, common / np.maximum(union, 1), 1.0)


# ----------------------------------------------------------------------------- pass 5: clusters (driver)


def _exact_links(plan: Plan, uf: minhash.UnionFind) -> np.ndarray:
    """Link every exact duplicate to its group's first document; the bit per document it sets."""
    marked = np.zeros(plan.documents, bool)
    for e in range(plan.exact_files):
        pairs = _load(plan.file("exactpairs", e))
        for lo in range(0, pairs.shape[1], UNION_PAIRS):
            doc, rep = np.asarray(pairs[0, lo : lo + UNION_PAIRS]), np.asarray(pairs[1, lo : lo + UNION_PAIRS])
            uf.parent[doc] = rep  # the first of a group is a root: nothing else links before this
            marked[doc] = True
    return marked


def _decide(plan: Plan, uf: minhash.UnionFind, verify_blocks: int, parts: list[Path]) -> dict[str, int]:
    """Clusters from the similar pairs (streamed), then per part the removed rows, why, and the
    document each duplicates (``decisions-P.npy``). Returns the counts."""
    for v in range(verify_blocks):
        pairs = _load(plan.file("similar", v))
        for lo in range(0, pairs.shape[1], UNION_PAIRS):
            uf.union(np.asarray(pairs[0, lo : lo + UNION_PAIRS]), np.asarray(pairs[1, lo : lo + UNION_PAIRS]))
    labels = uf.flatten()
    exact_pairs = [_load(plan.file("exactpairs", e)) for e in range(plan.exact_files)]
    roots = []
    exact_total = 0
    for p in range(plan.parts):
        lo, hi = plan.offsets[p], plan.offsets[p + 1]
        removed = np.flatnonzero(labels[lo:hi] != np.arange(lo, hi, dtype=labels.dtype))
        target = labels[lo:hi][removed].astype(np.int64)
        reason = np.full(len(removed), 2, np.uint8)
        for pairs in exact_pairs:  # an exact duplicate names the first of its exact group
            a, z = np.searchsorted(pairs[0], [lo, hi])
            if z > a:
                at = np.searchsorted(removed, np.asarray(pairs[0, a:z]) - lo)
                target[at] = pairs[1, a:z]
                reason[at] = 1
        decisions = np.empty(len(removed), DECISION)
        decisions["row"], decisions["reason"], decisions["target"] = removed, reason, target
        _save(plan.file("decisions", p), decisions)
        roots.append(labels[lo:hi][removed])
        exact_total += int((reason == 1).sum())
    roots_all = np.sort(np.concatenate(roots)) if roots else np.zeros(0, np.int64)
    first = np.flatnonzero(np.concatenate([[True], roots_all[1:] != roots_all[:-1]])) if len(roots_all) else roots_all
    sizes = np.diff(np.append(first, len(roots_all)))
    removed_total = len(roots_all)
    return {
        "exact_duplicates": exact_total,
        "near_duplicates": removed_total - exact_total,
        "clusters": len(sizes),
        "largest_cluster": int(sizes.max()) + 1 if len(sizes) else (1 if plan.documents else 0),
    }


def _save_wanted(plan: Plan) -> None:
    """Per part, the rows the decisions of any part name (``want-P.npy``): their ids are resolved."""
    targets = [np.load(plan.file("decisions", p))["target"] for p in range(plan.parts)]
    wanted = minhash.distinct(np.concatenate(targets)) if targets else np.zeros(0, np.int64)
    bounds = np.searchsorted(wanted, np.asarray(plan.offsets))
    for q in range(plan.parts):
        _save(plan.file("want", q), (wanted[bounds[q] : bounds[q + 1]] - plan.offsets[q]).astype(np.uint32))


# ----------------------------------------------------------------------------- pass 6: ids, lines


@dataclass(frozen=True)
class IdsTask:
    plan: Plan
    parts: list[tuple[int, Path]]


def resolve_ids(task: IdsTask, report: Reporter) -> list[np.ndarray]:
    """For each of its parts: the ids of the rows other parts name (``ids-P.arrow``), and with
    --paragraphs the line counts of its kept documents. Returns each part's line-shard bounds."""
    plan = task.plan
    bounds: list[np.ndarray] = []
    for p, path in task.parts:
        want = np.load(plan.file("want", p))
        ids = pq.read_table(path, columns=["id"]).column("id").take(pa.array(want, pa.uint32()))
        table = pa.table({"id": ids.cast(pa.large_string())})
        with atomic_path(plan.file("ids", p, ".arrow")) as tmp:
            with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
                writer.write_table(table)
        if plan.config.paragraphs:
            bounds.append(_count_lines(plan, p, path, report))
        else:
            report(plan.offsets[p + 1] - plan.offsets[p], 0)
    return bounds


def _count_lines(plan: Plan, p: int, path: Path, report: Reporter) -> np.ndarray:
    """In how many kept documents of part p each line key occurs: ``lines-P.npy`` by key range."""
    removed = pl.Series("row", np.load(plan.file("decisions", p))["row"], dtype=pl.UInt32)
    counts: list[pl.DataFrame] = []
    offset = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=plan.batch_rows, columns=["text"]):
        texts = pl.Series("text", batch.column(0))
        rows = pl.int_range(offset, offset + len(texts), eager=True, dtype=pl.UInt32)
        kept = texts.filter(~rows.is_in(removed.implode()))
        lines = line_table(kept).drop_nulls("key").select("doc", "key").unique()
        counts.append(lines.group_by("key").len("docs"))
        offset += len(texts)
        report(len(texts), int(texts.str.len_bytes().sum() or 0))
    table = pl.concat(counts) if counts else pl.DataFrame(schema={"key": pl.UInt64, "docs": pl.UInt32})
    table = table.group_by("key").agg(pl.col("docs").sum()).sort("key")
    keys = table["key"].to_numpy().astype(np.uint64)
    entries, bounds = _entries(keys, table["docs"].to_numpy().astype(np.uint32),
                               _key_range(keys, plan.line_shards), plan.line_shards)
    _save(plan.file("lines", p), entries)
    return bounds


def frequent_lines(task: ShardJob, report: Reporter) -> tuple[int, int]:
    """Line keys of one key range found in more than paragraph_max_docs kept documents (summed
    over every part): ``frequent-K.npy``. Returns (frequent lines, documents they occur in)."""
    keys, docs = [], []
    bounds = np.asarray(_load(task.bounds)[:, task.shard : task.shard + 2])
    for p in range(task.plan.parts):
        lo, hi = bounds[p]
        if hi > lo:
            entries = _load(task.plan.file("lines", p))[lo:hi]
            keys.append(np.asarray(entries["key"]))
            docs.append(entries["row"].astype(np.int64))  # the count, stored in the row field
    key = np.concatenate(keys) if keys else np.zeros(0, np.uint64)
    count = np.concatenate(docs) if docs else np.zeros(0, np.int64)
    order = np.argsort(key, kind="stable")
    key, count = key[order], count[order]
    first = np.flatnonzero(np.concatenate([[True], key[1:] != key[:-1]])) if len(key) else np.zeros(0, np.int64)
    total = np.add.reduceat(count, first) if len(key) else count
    frequent = total > task.plan.config.paragraph_max_docs
    _save(task.plan.file("frequent", task.shard), key[first][frequent])
    return int(frequent.sum()), int(total[frequent].sum())


# ----------------------------------------------------------------------------- pass 7: write


class ApplyDecisions:
    """The write pass's transform: split a part's batches into kept (cut) rows and removed rows.

    Stateful (the row number within the part) and picklable: one instance per part, fed its
    batches in order by :func:`nonllama.pipeline.driver.process_shard`. At its first batch it
    builds the part's removal table: the ids of the documents named (from the ``ids`` files of
    the parts they are in, memory-mapped: only those rows are read) and the similarities.
    """

    def __init__(self, plan: Plan, index: int):
        self.plan, self.index, self.next_row = plan, index, 0
        self._table: pl.DataFrame | None = None
        self._frequent: pl.Series | None = None

    def _load(self) -> None:
        plan = self.plan
        decisions = np.load(plan.file("decisions", self.index))
        target = decisions["target"]
        names = np.empty(len(target), object)
        for q, at, rows in _by_part(plan, target):
            want = _load(plan.file("want", q))
            column = pa.ipc.open_file(pa.memory_map(str(plan.file("ids", q, ".arrow")))).read_all().column("id")
            names[at] = column.take(pa.array(np.searchsorted(want, rows), pa.int64())).to_pylist()
        similarity = np.ones(len(target))
        near = np.flatnonzero(decisions["reason"] == 2)
        if len(near) and plan.config.near:
            own = decisions["row"][near].astype(np.int64) + plan.offsets[self.index]
            similarity[near] = pair_similarity(plan, own, target[near])
        self._table = pl.DataFrame({
            "_row": pl.Series(decisions["row"], dtype=pl.UInt32),
            "drop_reason": pl.Series([REASONS[r] for r in decisions["reason"].tolist()], dtype=pl.String),
            "duplicate_of": pl.Series(names.tolist(), dtype=pl.String),
            "jaccard": np.round(similarity, 4),
        })
        if plan.config.semantic:  # a cosine for the semantic duplicates, null for the others (and no Jaccard)
            cosine = pl.Series("cosine", np.round(np.load(plan.file("cosine", self.index)).astype(np.float64), 4))
            semantic_rows = pl.Series(decisions["reason"] == 3)
            self._table = self._table.with_columns(
                jaccard=pl.when(semantic_rows).then(None).otherwise(pl.col("jaccard")), cosine=cosine.fill_nan(None))
        if plan.config.paragraphs:
            keys = [np.load(plan.file("frequent", k)) for k in range(plan.line_shards)]
            self._frequent = pl.Series("key", np.concatenate(keys), dtype=pl.UInt64)

    def __call__(self, batch: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
        if self._table is None:
            self._load()
        assert self._table is not None
        first, self.next_row = self.next_row, self.next_row + batch.height
        marked = batch.with_row_index("_row", offset=first).join(
            self._table, on="_row", how="left", maintain_order="left"
        )
        removed = marked.filter(pl.col("drop_reason").is_not_null()).drop("_row")
        kept = batch.filter(marked["drop_reason"].is_null())
        texts, cut = cut_lines(kept["text"], self._frequent)
        emptied = pl.Series((cut > 0) & (texts.str.len_bytes() == 0).to_numpy())
        if emptied.any():  # removed with their original text, like every removed row
            nulls = {"cosine": pl.lit(None, pl.Float64)} if self.plan.config.semantic else {}
            removed = pl.concat(
                [removed, kept.filter(emptied).with_columns(
                    drop_reason=pl.lit(EMPTY), duplicate_of=pl.lit(None, pl.String), jaccard=pl.lit(None, pl.Float64),
                    **nulls,
                )]
            )
        return kept.with_columns(texts.alias("text")).filter(~emptied), removed


def write_parts(tasks: list[ShardTask], report: Reporter) -> list[ShardResult]:
    """The write pass's task: input part i -> output part i and removed part i, for a few parts."""
    return [process_shard(task, report) for task in tasks]


# ----------------------------------------------------------------------------- the stage


def run_dedup(
    input_dir: Path,
    output_dir: Path,
    config: DedupConfig,
    *,
    workers: int = 1,
    executor: Executor | None = None,
    force: bool = False,
    verify_input: bool = False,
    console: Console | None = None,
    batch_rows: int = DEFAULT_BATCH_ROWS,
) -> StageRun:
    """Deduplicate every part of `input_dir` (a filter output) into `output_dir`."""
    config.validate()
    input_dir, output_dir = Path(input_dir), Path(output_dir)
    embedder, dependencies = None, {}
    if config.semantic:  # the libraries and the model checked before any data is read
        semdedup.require_libraries()
        embedder = semdedup.resolve_embedder(config.embedder, ray=executor is not None and executor.kind == "ray")
        dependencies["embedder"] = embedder.identity
    inp = open_input(input_dir, stage=STAGE, verify=verify_input)
    job = StageJob(STAGE, config.to_dict(), output_dir, [input_dir],
                   {"dir": str(input_dir), "stage": inp.stage, "digest": inp.digest},
                   lambda ctx: _deduplicate(inp, output_dir, config, ctx, batch_rows, embedder), dependencies)
    return drive(job, executor=executor, workers=workers, force=force, console=console)


def _deduplicate(inp: StageInput, output_dir: Path, config: DedupConfig, ctx: StageContext, batch_rows: int,
                 embedder: semdedup.Embedder | None = None) -> dict:
    """The passes of dedup over a claimed `output_dir`; returns the manifest section."""
    parts = inp.paths
    plan = Plan.make(ctx.work_dir, config, [p.rows for p in inp.parts], batch_rows)
    total = inp.rows

    def run(fn, tasks: list, what: str, docs: int | None = None) -> list:
        return ctx.map(fn, tasks, label=f"{STAGE}: {what}", total_docs=docs)

    sketched: list[Sketched] = run(sketch_part, [SketchTask(plan, i, p) for i, p in enumerate(parts)], "sketch", total)
    stats: dict[str, int] = {}
    uf = minhash.UnionFind(plan.documents)
    if plan.exact_files:
        bounds = _save_bounds(plan, "exact", [s.exact_bounds for s in sketched])
        run(exact_shard, [ShardJob(plan, e, bounds) for e in range(plan.exact_shards)], "exact")
    marked = _exact_links(plan, uf)
    verify_blocks = 0
    if config.near and plan.documents:
        _save(plan.scratch / "nonrep.npy", np.packbits(marked))
        del marked
        bounds = _save_bounds(plan, "lsh", [s.lsh_bounds for s in sketched])
        histograms = run(lsh_shard, [ShardJob(plan, s, bounds) for s in range(plan.lsh_shards)], "lsh")
        blocks = _plan_blocks(plan, np.sum(histograms, axis=0, dtype=np.int64))
        checked = run(verify_block, [VerifyTask(plan, v, lo, hi) for v, (lo, hi) in enumerate(blocks)],
                      "verify" if config.verify else "check")
        verify_blocks = len(blocks)
        stats["candidate_pairs"] = sum(c for c, _ in checked)
        stats["candidates_below_threshold"] = sum(c - s for c, s in checked)
    else:
        del marked
    stats.update(_decide(plan, uf, verify_blocks, parts))
    del uf
    extra: dict[str, Any] = {}
    if config.semantic:
        assert embedder is not None
        semantic_stats, extra["embeddings"] = _semantic(plan, inp, output_dir, embedder, ctx, run)
        stats.update(semantic_stats)
    _save_wanted(plan)

    # the ids pass: with --paragraphs one part a task (the line counts read the text), else as
    # many parts as hold ID_ROWS_PER_TASK rows (id columns are small)
    groups = _groups(plan, ID_ROWS_PER_TASK, lambda p: config.paragraphs, parts)
    line_bounds = [b for bounds in run(resolve_ids, [IdsTask(plan, g) for g in groups], "ids") for b in bounds]
    stats["frequent_lines"] = stats["paragraphs_cut"] = 0
    if config.paragraphs:
        path = _save_bounds(plan, "lines", line_bounds)
        found = run(frequent_lines, [ShardJob(plan, k, path) for k in range(plan.line_shards)], "frequent lines")
        stats["frequent_lines"] = sum(f for f, _ in found)
        stats["paragraphs_cut"] = sum(d for _, d in found)  # (document, line) pairs

    shard_tasks = [ShardTask(i, p, output_dir, output_dir / SIDE_DIR, ApplyDecisions(plan, i), batch_rows)
                   for i, p in enumerate(parts)]
    groups = _groups(plan, WRITE_ROWS_PER_TASK, lambda p: False)
    results: list[ShardResult] = [
        r for done in run(write_parts, [[shard_tasks[p] for p, _ in g] for g in groups], "write", total) for r in done
    ]
    counts = merge_counts(results, f"{STAGE} {inp.dir} -> {output_dir}")
    stats[EMPTY] = counts.drop_reasons.get(EMPTY, 0)
    stats["bands"], stats["rows"] = config.lsh
    return document_section(counts, [r.part for r in results], SIDE_DIR,
                            [r.side_part for r in results if r.side_part], extra={"dedup": stats, **extra})


def _semantic(plan: Plan, inp: StageInput, output_dir: Path, embedder: semdedup.Embedder, ctx: StageContext,
              run: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """The semantic passes (:mod:`nonllama.pipeline.semantic`): embed, k-means (here), assign,
    in-cluster dedup, then the removals merged into the decisions. Returns (the counts, the
    manifest's `embeddings` section)."""
    config = plan.config
    threads = task_threads(ctx.executor)
    tasks = [semdedup.EmbedTask(plan, i, part.path, part.sha256, output_dir, embedder, threads)
             for i, part in enumerate(inp.parts)]
    embedded: list[semdedup.Embedded] = run(semdedup.embed_part, tasks, "embed", inp.rows)
    semdedup.prune_cache(output_dir, {e.key for e in embedded})
    documents = sum(e.rows for e in embedded)
    dims = {e.dim for e in embedded}
    if len(dims) > 1:
        raise StageError(f"--embedder {embedder.name}: the parts were embedded with different dimensions {sorted(dims)}")
    dim = dims.pop() if dims else 0
    section = {"dir": semdedup.EMBEDDINGS_DIR, "embedder": embedder.name, "identity": embedder.identity,
               "dimension": dim, "documents": documents,
               "parts": [describe_part(semdedup.embeddings_file(output_dir, i), e.rows, 0) for i, e in enumerate(embedded)]}
    for entry in section["parts"]:
        entry.pop("chars")
    k = semdedup.cluster_count(config, documents) if documents else 0
    stats: dict[str, Any] = semdedup.cluster_stats(np.zeros(0, np.int64), 0)
    if documents:
        sample = semdedup.draw_sample(output_dir, [e.rows for e in embedded], config.semantic_sample, config.seed)
        _save(plan.scratch / "centroids.npy", semdedup.kmeans(sample, k, config.seed))
        del sample
        sp = semdedup.SemanticPlan.make(k, documents, dim)
        bounds = run(semdedup.assign_part, [semdedup.AssignTask(plan, sp, i, output_dir) for i in range(plan.parts)],
                     "assign", documents)
        path = _save_bounds(plan, "semassign", bounds)
        shards = run(semdedup.semantic_shard, [semdedup.SemanticTask(plan, sp, s, path) for s in range(sp.shards)],
                     "semantic", documents)
        added = semdedup.merge_removals(plan, sp.shards, 3)
        stats = semdedup.cluster_stats(np.concatenate([s.sizes for s in shards]), added)
    else:
        for p in range(plan.parts):  # nothing to embed: no semantic removals, no cosines
            _save(plan.file("cosine", p), np.full(len(np.load(plan.file("decisions", p))), np.nan, np.float32))
    return stats, section


def _plan_blocks(plan: Plan, histogram: np.ndarray) -> list[tuple[int, int]]:
    """Ranges of first documents, each with at most PAIRS_PER_BLOCK candidate pairs (a bin that
    alone holds more is a block by itself), from the summed histograms of the lsh tasks."""
    n, bins = plan.documents, plan.histogram_bins

    def first_document(b: int) -> int:  # of bin b, where bin = doc * bins // n
        return -(-b * n // bins)

    blocks, start, held = [], 0, 0
    for b, count in enumerate(histogram.tolist()):
        if held and held + count > PAIRS_PER_BLOCK:
            blocks.append((first_document(start), first_document(b)))
            start, held = b, 0
        held += count
    blocks.append((first_document(start), n))
    return blocks


def _groups(plan: Plan, rows_per_task: int, alone: Any, parts: list[Path] | None = None) -> list[list[tuple[int, Any]]]:
    """Consecutive parts grouped into tasks of at most `rows_per_task` input rows (a larger part
    alone; every part alone when `alone(p)`): (part number, path) per part."""
    groups: list[list[tuple[int, Any]]] = []
    held = 0
    for p in range(plan.parts):
        rows = plan.offsets[p + 1] - plan.offsets[p]
        if not groups or alone(p) or held + rows > rows_per_task:
            groups.append([])
            held = 0
        groups[-1].append((p, parts[p] if parts is not None else None))
        held += rows
    return groups


# ----------------------------------------------------------------------------- for people


@dataclass
class Cluster:
    kept_id: str
    kept_text: str
    removed: pl.DataFrame  # id, text, drop_reason, jaccard (and cosine with --semantic)


def largest_clusters(output_dir: Path, n: int) -> list[Cluster]:
    """The `n` largest clusters of a finished dedup output (kept document + its duplicates).

    Reads nothing when n is 0. Otherwise the `id` and `duplicate_of` columns of the removed
    parts, then only the rows of the n clusters (Parquet filters, part by part). An exact copy
    of a near duplicate names that near duplicate: it is counted in its cluster's kept document.
    """
    if n <= 0:
        return []
    output_dir = Path(output_dir)
    require_finished(output_dir, STAGE)
    removed_parts = list_parts(output_dir / SIDE_DIR)
    if not removed_parts:
        return []
    links = (
        pl.scan_parquet(removed_parts).select("id", "duplicate_of")
        .filter(pl.col("duplicate_of").is_not_null()).collect()
    )
    # one step up: the document an exact copy names may itself be a removed near duplicate
    links = links.join(links.rename({"id": "duplicate_of", "duplicate_of": "root"}), on="duplicate_of",
                       how="left", maintain_order="left").with_columns(root=pl.coalesce("root", "duplicate_of"))
    top = links.group_by("root", maintain_order=True).len().sort("len", descending=True, maintain_order=True).head(n)
    roots = top["root"].implode()
    members = links.filter(pl.col("root").is_in(roots)).select("id", "root")
    cosine = ["cosine"] if "cosine" in pq.read_schema(removed_parts[0]).names else []  # with --semantic
    rows = (
        pl.scan_parquet(removed_parts).filter(pl.col("id").is_in(members["id"].implode()))
        .select("id", "text", "drop_reason", "jaccard", *cosine).collect()
        .join(members, on="id", how="left")
    )
    kept = pl.scan_parquet(list_parts(output_dir)).filter(pl.col("id").is_in(roots)).select("id", "text").collect()
    kept_text = dict(zip(kept["id"].to_list(), kept["text"].to_list(), strict=True))
    emptied = pl.scan_parquet(removed_parts).filter(pl.col("id").is_in(roots)).select("id", "text").collect()
    for doc_id, text in zip(emptied["id"].to_list(), emptied["text"].to_list(), strict=True):
        kept_text.setdefault(doc_id, text)  # a kept document that --paragraphs emptied
    return [
        Cluster(root, kept_text.get(root, ""), rows.filter(pl.col("root") == root).drop("root"))
        for root in top["root"].to_list()
    ]
