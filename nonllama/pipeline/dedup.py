"""`nonllama dedup`: exact, near-duplicate (MinHash-LSH) and repeated-paragraph removal.

Dedup is global (a copy in part 9 of a document in part 0 must be found), so unlike
normalize it runs in passes over the input parts, each pass spread over the workers:

1. sketch: per part, the 64-bit xxhash of each document's text with case, whitespace and
   punctuation removed (exact duplicates), its MinHash signature and LSH band keys (see
   :mod:`nonllama.pipeline.minhash`), written to ``.npy`` files beside the output.
2. cluster (one process, all parts): exact duplicates are grouped on their hash; the first
   of each group is banded with every other document's; every candidate pair (documents
   sharing a band key) is checked against the threshold, with the signatures' estimate of
   Jaccard, or with the true Jaccard of the shingle sets (``--verify``); connected components
   of the confirmed pairs are the clusters.
3. lines (``--paragraphs`` only): among the documents dedup keeps, count in how many each
   line occurs; lines found in more than ``paragraph_max_docs`` of them (navigation bars,
   cookie banners, footers) are cut. Counting after document dedup matters: a document's
   own copies would otherwise make all its lines "frequent".
4. write: part i of the output holds the kept rows of input part i (with the cuts); part i
   of ``removed/`` the others, with ``drop_reason``, ``duplicate_of`` and ``jaccard``; a
   document the cuts leave empty is removed as ``empty_after_paragraph_dedup``.

Keep rule: in every cluster the document that comes first in (part, row) order is kept, so
the same input gives the same output whatever the number of workers. ``duplicate_of`` always
names the document dedup kept (which ``--paragraphs`` may still empty); ``jaccard`` is the MinHash estimate of the removed document's
similarity to it (1.0 for an exact duplicate).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import xxhash
from rich.console import Console

from nonllama.pipeline import minhash
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
from nonllama.pipeline.executors import Executor, LocalExecutor
from nonllama.pipeline.io import (
    DEFAULT_BATCH_ROWS,
    Reporter,
    StageRun,
    document_section,
    iter_part_batches,
    read_parts,
    require_finished,
)

STAGE = "dedup"
PREVIOUS = "filter"
SIDE_DIR = "removed"
EXACT = "exact_duplicate"
NEAR = "near_duplicate"
EMPTY = "empty_after_paragraph_dedup"
MAX_CHECKED_BUCKET = 64  # a larger LSH bucket is checked as a star + chain, not all its pairs
PAIRS_PER_CHECK = 100_000  # candidate pairs whose signatures are in memory at once


@dataclass(frozen=True)
class DedupConfig:
    """What `nonllama dedup` does; every field is a command option of the same name."""

    threshold: float = 0.8
    num_perm: int = 128
    ngram: int = 3
    bands: int | None = None  # None: the (bands, rows) minimizing weighted false positives + negatives
    rows: int | None = None
    fp_weight: float = 0.1  # weight of false positives in that choice (false negatives: 1 - it)
    seed: int = 1
    exact: bool = True
    near: bool = True
    # candidates are checked with the true Jaccard by default: the 128-permutation estimate
    # has a standard error of ~0.035 at J=0.8, which costs ~10% precision and recall on pairs
    # near the threshold, for ~3% more time
    verify: bool = True
    paragraphs: bool = False
    paragraph_max_docs: int = 5  # a line in more documents than this is cut

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


# ----------------------------------------------------------------------------- per-document steps


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


def exact_keys(texts: pl.Series) -> tuple[np.ndarray, np.ndarray]:
    """(64-bit xxhash of each text without case, whitespace and punctuation, has content)."""
    light = texts.fill_null("").str.to_lowercase().str.replace_all(r"[\s\p{P}]+", "")
    keys = np.fromiter(
        (xxhash.xxh3_64_intdigest(t.encode()) for t in light.to_list()), np.uint64, count=light.len()
    )
    return keys, (light.str.len_bytes() > 0).to_numpy()


def sketch(texts: pl.Series, config: DedupConfig) -> tuple[np.ndarray, np.ndarray]:
    """(MinHash signatures (documents x num_perm) uint32, shingles per document)."""
    tokens = minhash.tokenize(texts)
    token_hash, lengths = minhash.token_hashes(tokens, config.seed)
    shingle_hash, counts = minhash.shingle_hashes(token_hash, lengths, config.ngram)
    a, b = minhash.permutations(config.num_perm, config.seed)
    return minhash.signatures(shingle_hash, counts, a, b), counts


def shingle_sets(texts: pl.Series, config: DedupConfig) -> pl.DataFrame:
    """(doc, h): the distinct shingle hashes of each document (for --verify's true Jaccard)."""
    tokens = minhash.tokenize(texts)
    token_hash, lengths = minhash.token_hashes(tokens, config.seed)
    shingle_hash, counts = minhash.shingle_hashes(token_hash, lengths, config.ngram)
    doc = np.repeat(np.arange(len(counts), dtype=np.int64), counts)
    return pl.DataFrame({"doc": doc, "h": shingle_hash}).unique()


# ----------------------------------------------------------------------------- passes over parts


@dataclass
class PartTask:
    index: int
    part: Path
    scratch: Path
    config: DedupConfig
    rows: np.ndarray | None = None  # --verify: the rows whose shingles are needed
    batch_rows: int = DEFAULT_BATCH_ROWS


def _load_frequent(path: Path | None) -> pl.Series | None:
    return None if path is None else pl.Series("key", np.load(path), dtype=pl.UInt64)


def _scratch(task: PartTask, what: str, suffix: str = ".npy") -> Path:
    return task.scratch / f"{what}-{task.index:05d}{suffix}"


def count_lines(task: PartTask, report: Reporter) -> None:
    """Pass 3: in how many of this part's kept documents each line occurs."""
    removed = pl.read_parquet(_scratch(task, "decisions", ".parquet"), columns=["_row"])["_row"]
    counts: list[pl.DataFrame] = []
    offset = 0
    for batch in iter_part_batches(task.part, task.batch_rows):
        rows = pl.int_range(offset, offset + batch.height, eager=True, dtype=pl.UInt32)
        kept = batch["text"].filter(~rows.is_in(removed.implode()))
        lines = line_table(kept).drop_nulls("key").select("doc", "key").unique()
        counts.append(lines.group_by("key").len("docs"))
        offset += batch.height
        report(batch.height, int(batch["text"].str.len_bytes().sum() or 0))
    table = pl.concat(counts) if counts else pl.DataFrame(schema={"key": pl.UInt64, "docs": pl.UInt32})
    table.group_by("key").agg(pl.col("docs").sum()).write_parquet(_scratch(task, "lines", ".parquet"))


def sketch_part(task: PartTask, report: Reporter) -> int:
    """Pass 1: exact keys, signatures and band keys of one part, saved as .npy; returns its rows."""
    config = task.config
    bands, rows = config.lsh
    keys, content, shingles, sigs = [], [], [], []
    for batch in iter_part_batches(task.part, task.batch_rows):
        k, c = exact_keys(batch["text"])
        sig, counts = sketch(batch["text"], config)
        keys.append(k)
        content.append(c)
        sigs.append(sig)
        shingles.append(counts)
        report(batch.height, int(batch["text"].str.len_bytes().sum() or 0))
    sig = np.concatenate(sigs) if sigs else np.zeros((0, config.num_perm), np.uint32)
    np.save(_scratch(task, "sig"), sig)
    np.save(_scratch(task, "bands"), minhash.band_keys(sig, bands, rows))
    np.save(_scratch(task, "exact"), np.concatenate(keys) if keys else np.zeros(0, np.uint64))
    flags = np.zeros(len(sig), np.uint8)
    if len(sig):
        flags |= np.concatenate(content).astype(np.uint8) * CONTENT
        flags |= (np.concatenate(shingles) > 0).astype(np.uint8) * SHINGLES
    np.save(_scratch(task, "flags"), flags)
    return len(sig)


CONTENT, SHINGLES = np.uint8(1), np.uint8(2)  # bits of the per-document flags


def shingle_part(task: PartTask, report: Reporter) -> None:
    """--verify: the shingle sets of the requested rows of one part (doc = row in the part)."""
    assert task.rows is not None
    wanted = pl.Series("row", task.rows, dtype=pl.Int64)
    sets, offset = [], 0
    for batch in iter_part_batches(task.part, task.batch_rows):
        rows = pl.int_range(offset, offset + batch.height, eager=True, dtype=pl.Int64)
        pick = rows.is_in(wanted.implode())
        if pick.any():
            table = shingle_sets(batch["text"].filter(pick), task.config)
            sets.append(table.with_columns(doc=rows.filter(pick).gather(table["doc"])))
        offset += batch.height
        report(batch.height, 0)
    table = pl.concat(sets) if sets else pl.DataFrame(schema={"doc": pl.Int64, "h": pl.UInt32})
    table.write_parquet(_scratch(task, "shingles", ".parquet"))


class ApplyDecisions:
    """Pass 4's transform: split a part's batches into kept (cut) rows and removed rows.

    Stateful (the row number within the part) and picklable: one instance per part, fed its
    batches in order by :func:`nonllama.pipeline.io.process_shard`.
    """

    def __init__(self, decisions: Path, frequent: Path | None):
        self.decisions, self.frequent, self.next_row = decisions, frequent, 0
        self._table: pl.DataFrame | None = None
        self._frequent: pl.Series | None = None

    def __call__(self, batch: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
        if self._table is None:
            self._table = pl.read_parquet(self.decisions)
            self._frequent = _load_frequent(self.frequent)
        first, self.next_row = self.next_row, self.next_row + batch.height
        marked = batch.with_row_index("_row", offset=first).join(
            self._table, on="_row", how="left", maintain_order="left"
        )
        removed = marked.filter(pl.col("drop_reason").is_not_null()).drop("_row")
        kept = batch.filter(marked["drop_reason"].is_null())
        texts, cut = cut_lines(kept["text"], self._frequent)
        emptied = pl.Series((cut > 0) & (texts.str.len_bytes() == 0).to_numpy())
        if emptied.any():  # removed with their original text, like every removed row
            removed = pl.concat(
                [removed, kept.filter(emptied).with_columns(
                    drop_reason=pl.lit(EMPTY), duplicate_of=pl.lit(None, pl.String), jaccard=pl.lit(None, pl.Float64)
                )]
            )
        return kept.with_columns(texts.alias("text")).filter(~emptied), removed


# ----------------------------------------------------------------------------- clustering


@dataclass
class Decisions:
    """Per document of the corpus (global row number): the cluster root and why it goes."""

    root: np.ndarray  # the kept document of its cluster (itself when kept)
    reason: np.ndarray  # 0 kept, 1 exact duplicate, 2 near duplicate
    stats: dict[str, int] = field(default_factory=dict)


REASONS = np.array([None, EXACT, NEAR], dtype=object)


def cluster(
    scratch: Path,
    offsets: np.ndarray,
    config: DedupConfig,
    verify_pairs: Callable[[pl.DataFrame], pl.DataFrame] | None = None,
) -> Decisions:
    """Exact groups, then LSH buckets over every part's band keys, then components.

    `offsets[i]` is the global number of part i's first row. `verify_pairs`, when given,
    keeps the candidate pairs (a, b) whose true Jaccard reaches the threshold.
    """
    n_parts = len(offsets) - 1

    def load(what: str, dtype: type) -> np.ndarray:
        arrays = [np.load(scratch / f"{what}-{i:05d}.npy") for i in range(n_parts)]
        return np.concatenate(arrays).astype(dtype) if arrays else np.zeros(0, dtype)

    flags = load("flags", np.uint8)
    n = len(flags)
    doc = np.arange(n, dtype=np.int64)
    stats: dict[str, int] = {}

    exact_rep = doc.copy()
    if config.exact and n:
        exact = pl.DataFrame({"doc": doc, "key": load("exact", np.uint64)}).filter(
            pl.Series((flags & CONTENT) > 0)
        )
        groups = exact.with_columns(rep=pl.col("doc").min().over("key"))
        exact_rep[groups["doc"].to_numpy()] = groups["rep"].to_numpy()

    u = v = np.zeros(0, np.int64)
    if config.near and n:
        banded = (exact_rep == doc) & ((flags & SHINGLES) > 0)
        keys = np.concatenate(
            [
                np.load(scratch / f"bands-{i:05d}.npy", mmap_mode="r")[banded[offsets[i] : offsets[i + 1]]]
                for i in range(n_parts)
            ]
        )
        bucketed = minhash.buckets(keys, doc[banded])
        del keys
        pairs = minhash.candidate_pairs(bucketed, MAX_CHECKED_BUCKET)
        del bucketed
        if verify_pairs is None:
            similar = pairs.filter(_estimates(scratch, offsets, pairs) >= config.threshold)
        else:
            similar = verify_pairs(pairs)
        stats["candidate_pairs"] = pairs.height
        stats["candidates_below_threshold"] = pairs.height - similar.height
        u, v = similar["a"].to_numpy(), similar["b"].to_numpy()
    labels = minhash.connected_components(n, u, v)
    root = labels[exact_rep]
    reason = np.zeros(n, np.int8)
    reason[(root != doc) & (exact_rep != doc)] = 1
    reason[(root != doc) & (exact_rep == doc)] = 2
    sizes = np.bincount(root, minlength=n) if n else np.zeros(0, np.int64)
    stats.update(
        exact_duplicates=int((reason == 1).sum()),
        near_duplicates=int((reason == 2).sum()),
        clusters=int((sizes > 1).sum()),
        largest_cluster=int(sizes.max()) if n else 0,
    )
    return Decisions(root, reason, stats)


def _estimates(scratch: Path, offsets: np.ndarray, pairs: pl.DataFrame) -> np.ndarray:
    """MinHash estimate of the Jaccard of every candidate pair, a block of pairs at a time."""
    a, b = pairs["a"].to_numpy(), pairs["b"].to_numpy()
    out = np.zeros(len(a))
    for lo in range(0, len(a), PAIRS_PER_CHECK):
        hi = lo + PAIRS_PER_CHECK
        out[lo:hi] = minhash.estimated_jaccard(
            gather_signatures(scratch, offsets, a[lo:hi]), gather_signatures(scratch, offsets, b[lo:hi])
        )
    return out


def gather_signatures(scratch: Path, offsets: np.ndarray, docs: np.ndarray) -> np.ndarray:
    """Signature rows of the given global documents, reading only those rows (memory-mapped)."""
    out = np.zeros((len(docs), 0), np.uint32)
    parts = np.searchsorted(offsets, docs, side="right") - 1
    chunks = []
    for i in np.unique(parts):
        sig = np.load(scratch / f"sig-{i:05d}.npy", mmap_mode="r")
        at = np.flatnonzero(parts == i)
        chunks.append((at, np.asarray(sig[docs[at] - offsets[i]])))
    if chunks:
        out = np.zeros((len(docs), chunks[0][1].shape[1]), np.uint32)
        for at, rows in chunks:
            out[at] = rows
    return out


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
    inp = open_input(input_dir, stage=STAGE, verify=verify_input)
    job = StageJob(STAGE, config.to_dict(), output_dir, [input_dir],
                   {"dir": str(input_dir), "stage": inp.stage, "digest": inp.digest},
                   lambda ctx: _deduplicate(inp, output_dir, config, ctx, batch_rows))
    return drive(job, executor=executor or LocalExecutor(workers, console), force=force, console=console)


def _deduplicate(inp: StageInput, output_dir: Path, config: DedupConfig, ctx: StageContext, batch_rows: int) -> dict:
    """The passes of dedup over a claimed `output_dir`; returns the manifest section."""
    parts = inp.paths
    scratch = ctx.work_dir
    total = inp.rows

    def tasks(**extra: Any) -> list[PartTask]:
        return [PartTask(i, p, scratch, config, batch_rows=batch_rows, **extra) for i, p in enumerate(parts)]

    def run(fn, todo: list, what: str) -> list:
        return ctx.map(fn, todo, label=f"{STAGE}: {what}", total_docs=total)

    rows_per_part = run(sketch_part, tasks(), "sketch")
    offsets = np.concatenate([[0], np.cumsum(rows_per_part)]).astype(np.int64)
    verify = None
    if config.verify:
        verify = lambda pairs: _verify(pairs, parts, offsets, scratch, config, run)  # noqa: E731
    decisions = cluster(scratch, offsets, config, verify)
    _write_decisions(decisions, parts, offsets, scratch)

    frequent_path: Path | None = None
    stats = dict(decisions.stats, frequent_lines=0, paragraphs_cut=0)
    if config.paragraphs:
        run(count_lines, tasks(), "count lines")
        frequent = (
            pl.scan_parquet([scratch / f"lines-{i:05d}.parquet" for i in range(len(parts))])
            .group_by("key").agg(pl.col("docs").sum())
            .filter(pl.col("docs") > config.paragraph_max_docs)
            .collect()
        )
        frequent_path = scratch / "frequent-lines.npy"
        np.save(frequent_path, np.sort(frequent["key"].to_numpy()))
        stats["frequent_lines"] = frequent.height
        stats["paragraphs_cut"] = int(frequent["docs"].sum() or 0)  # (document, line) pairs

    shard_tasks = [
        ShardTask(i, p, output_dir, output_dir / SIDE_DIR,
                  ApplyDecisions(scratch / f"decisions-{i:05d}.parquet", frequent_path), batch_rows)
        for i, p in enumerate(parts)
    ]
    results: list[ShardResult] = run(process_shard, shard_tasks, "write")
    counts = merge_counts(results, f"{STAGE} {inp.dir} -> {output_dir}")
    stats[EMPTY] = counts.drop_reasons.get(EMPTY, 0)
    stats["bands"], stats["rows"] = config.lsh
    return document_section(counts, [r.part for r in results], SIDE_DIR,
                            [r.side_part for r in results if r.side_part], extra={"dedup": stats})


def _write_decisions(decisions: Decisions, parts: list[Path], offsets: np.ndarray, scratch: Path) -> None:
    """Per part, the removed rows: (_row, drop_reason, duplicate_of id, estimated jaccard)."""
    removed = np.flatnonzero(decisions.reason > 0)
    roots = decisions.root[removed]
    jaccard = np.ones(len(removed))
    for lo in range(0, len(removed), PAIRS_PER_CHECK):
        hi = lo + PAIRS_PER_CHECK
        jaccard[lo:hi] = minhash.estimated_jaccard(
            gather_signatures(scratch, offsets, removed[lo:hi]), gather_signatures(scratch, offsets, roots[lo:hi])
        )
    root_ids = _ids_of(parts, offsets, roots)
    for i in range(len(parts)):
        lo, hi = np.searchsorted(removed, [offsets[i], offsets[i + 1]])
        pl.DataFrame(
            {
                "_row": (removed[lo:hi] - offsets[i]).astype(np.uint32),
                "drop_reason": pl.Series(REASONS[decisions.reason[removed[lo:hi]]].tolist(), dtype=pl.String),
                "duplicate_of": pl.Series(root_ids[lo:hi].tolist(), dtype=pl.String),
                "jaccard": np.round(jaccard[lo:hi], 4),
            }
        ).write_parquet(scratch / f"decisions-{i:05d}.parquet")


def _ids_of(parts: list[Path], offsets: np.ndarray, docs: np.ndarray) -> np.ndarray:
    """The `id` of each global document number (-1: None), reading only the id column."""
    ids = np.full(len(docs), None, dtype=object)
    part_of = np.searchsorted(offsets, docs, side="right") - 1
    for i in np.unique(part_of[docs >= 0]):
        at = np.flatnonzero((part_of == i) & (docs >= 0))
        column = pq.read_table(parts[i], columns=["id"]).column("id")
        ids[at] = column.take(docs[at] - offsets[i]).to_pylist()
    return ids


def _verify(
    pairs: pl.DataFrame, parts: list[Path], offsets: np.ndarray, scratch: Path, config: DedupConfig, run: Callable
) -> pl.DataFrame:
    """Candidate pairs whose true Jaccard (over their shingle sets) reaches the threshold."""
    docs = np.unique(np.concatenate([pairs["a"].to_numpy(), pairs["b"].to_numpy()]))
    part_of = np.searchsorted(offsets, docs, side="right") - 1
    todo = [
        PartTask(i, p, scratch, config, rows=docs[part_of == i] - offsets[i])
        for i, p in enumerate(parts)
    ]
    run(shingle_part, todo, "verify")
    # the shingle files hold part-local row numbers: make them global
    local = pl.concat(
        [
            pl.read_parquet(scratch / f"shingles-{i:05d}.parquet").with_columns(pl.col("doc") + int(offsets[i]))
            for i in range(len(parts))
        ]
    )
    sizes = local.group_by("doc").len("size")
    common = (
        pairs.lazy()
        .join(local.lazy(), left_on="a", right_on="doc")
        .join(local.lazy(), left_on=["b", "h"], right_on=["doc", "h"], how="semi")
        .group_by("a", "b").len("common")
    )
    scored = (
        pairs.lazy()
        .join(common, on=["a", "b"], how="left")
        .join(sizes.lazy().rename({"doc": "a", "size": "size_a"}), on="a")
        .join(sizes.lazy().rename({"doc": "b", "size": "size_b"}), on="b")
        .with_columns(pl.col("common").fill_null(0))
        .with_columns(jaccard=pl.col("common") / (pl.col("size_a") + pl.col("size_b") - pl.col("common")))
        .collect()
    )
    return scored.filter(pl.col("jaccard") >= config.threshold).select("a", "b").sort("a", "b")


# ----------------------------------------------------------------------------- for people


@dataclass
class Cluster:
    kept_id: str
    kept_text: str
    removed: pl.DataFrame  # id, text, drop_reason, jaccard


def largest_clusters(output_dir: Path, n: int) -> list[Cluster]:
    """The `n` largest clusters of a finished dedup output (kept document + its duplicates)."""
    output_dir = Path(output_dir)
    require_finished(output_dir, STAGE)
    removed = read_parts(output_dir / SIDE_DIR)
    if removed.is_empty() or n <= 0:
        return []
    removed = removed.filter(pl.col("duplicate_of").is_not_null())
    top = (
        removed.group_by("duplicate_of", maintain_order=True).len()
        .sort("len", descending=True, maintain_order=True).head(n)
    )
    kept = read_parts(output_dir, columns=["id", "text"]).filter(pl.col("id").is_in(top["duplicate_of"].implode()))
    kept_text = dict(zip(kept["id"].to_list(), kept["text"].to_list(), strict=True))
    return [
        Cluster(
            kept_id,
            kept_text.get(kept_id, ""),
            removed.filter(pl.col("duplicate_of") == kept_id).select("id", "text", "drop_reason", "jaccard"),
        )
        for kept_id in top["duplicate_of"].to_list()
    ]


