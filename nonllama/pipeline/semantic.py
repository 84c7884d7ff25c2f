"""Semantic dedup (SemDeDup, Abbas et al. 2023): documents that say the same thing in other words.

Exact and MinHash dedup find copies that share their words; a paraphrase, a translation-like
rewrite or a template filled with other words shares few 3-word shingles with its original and
passes them. SemDeDup embeds every document with a sentence encoder, clusters the embeddings with
k-means (so that similarities are only computed within a cluster, not between all pairs), and
inside each cluster removes the documents whose cosine similarity to a kept one is above a
threshold. `nonllama dedup --semantic` runs it after exact and near dedup, on the documents they
kept, as passes of tasks (:mod:`nonllama.pipeline.dedup` wires them; the code is here):

1. ``embed`` (a task per part): the part's texts less the rows exact/near dedup removed
   (``decisions-P.npy``), embedded in batches of ``embed_batch`` (unit vectors; CUDA when there
   is a GPU) and written to ``<output>/embeddings/part-NNNNN.parquet`` (``id`` + ``embedding``, a
   fixed-size float32 list), kept in the output for reuse and inspection. A copy stays in
   ``<output>/.cache/embeddings`` under a key of (the input part's checksum, the embedder's
   identity, the rows embedded, the batch sizes, the device), so a rerun with another threshold
   or cluster count embeds nothing again (the cache is pruned to the run's keys).
2. k-means, in the driver: ``semantic_sample`` vectors drawn with the seed from the parts' files
   (read a batch at a time, only the chosen rows kept), spherical k-means (faiss, seeded) into
   ``semantic_clusters`` centroids (0: one cluster per ~1,000 documents, at most sample / 39,
   the fewest points per centroid faiss wants).
3. ``assign`` (a task per part): each embedding's nearest centroid; the part's (cluster, row)
   entries and vectors written sorted by cluster (``semassign-P.npy``, ``semvec-P.npy``), so a
   cluster shard (a range of clusters) is one slice of each part's files.
4. ``semantic`` (a task per cluster shard): its slice of every part's files; in each cluster,
   the documents in global (part, row) order, greedy: a document is removed when its cosine to
   an earlier KEPT document is above ``semantic_threshold`` (the first document of a group is
   kept, as everywhere in dedup), naming the kept document it is most similar to. Candidates (a
   document with any earlier similar one) are found with one matrix product per block of rows;
   the Python loop runs only over them. Writes ``semremoved-S.npy``: (document, kept document,
   cosine), sorted by document.
5. the driver merges the removals into each part's decisions (reason ``semantic_duplicate``, and
   ``cosine-P.npy`` aligned with them) before the ``ids`` pass, which then resolves the kept
   documents' ids, and counts --paragraphs lines over the documents still kept.

Memory. A worker holds one part's embeddings (rows x dim x 4 bytes: 1.5 KB a document with
all-MiniLM-L6-v2's 384 dimensions) or one cluster shard's (``VECTOR_BYTES_PER_TASK``), plus a
block of similarities (``SIMILARITY_CELLS``). The driver holds the k-means sample (``semantic_sample``
x dim x 4 bytes: 154 MB at the default 100,000 x 384), the centroids, per-part x per-shard tables,
and one part's decisions at a time: nothing per document of the corpus. Measured (synthetic
documents from bench/dedup.py, a 64-dimension static embedder, tasks in a pool of 2 processes):
the driver's peak over its baseline was 73 MB at 500k documents and 70 MB at 1M (plain dedup:
21 MB at 1M, 22 bytes a document): a fixed ~50 MB (the 26 MB sample, pyarrow's first Parquet
reads), and no measurable bytes per document beyond plain dedup's.

Embedders and languages: the default, sentence-transformers/all-MiniLM-L6-v2, was trained on
English; it reads the first 256 word pieces of a document (a long document is judged by its
beginning). For other languages give a multilingual model with ``--embedder`` (a local
sentence-transformers directory or a Hub id), e.g. paraphrase-multilingual-MiniLM-L12-v2,
BAAI/bge-m3, or BAAI/bge-small-zh-v1.5 for Chinese; ``--semantic-threshold`` depends on the model.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from nonllama.pipeline.executors import torch_threads
from nonllama.pipeline.io import (
    CACHE_DIR_NAME,
    Reporter,
    StageError,
    atomic_path,
    file_digest,
    list_parts,
    part_name,
    require_finished,
)

if TYPE_CHECKING:  # dedup imports this module: dedup's names are imported here only where used
    from nonllama.pipeline.dedup import Plan

DEFAULT_EMBEDDER = "sentence-transformers/all-MiniLM-L6-v2"
INSTALL_HINT = "pip install -e '.[semantic]'"
EMBEDDINGS_DIR = "embeddings"
SEMANTIC = "semantic_duplicate"
CACHE_FORMAT = 1  # bump when what an embeddings file holds changes: older cached files are not reused

DOCS_PER_CLUSTER = 1_000  # the automatic cluster count: a cluster's similarity matrix stays small
MIN_POINTS_PER_CENTROID = 39  # faiss warns below this: the centroids are poorly estimated
KMEANS_ITERATIONS = 20
# One semantic task's vectors (a range of clusters; a single larger cluster is a task by itself)
VECTOR_BYTES_PER_TASK = 256 << 20
MIN_SEMANTIC_SHARDS = 4  # the pass spreads over workers even on a small corpus
SIMILARITY_CELLS = 16_000_000  # float32 similarities one block of a cluster holds (64 MB)
ASSIGN_ROWS = 65_536  # vectors compared with the centroids at once

ASSIGNED = np.dtype([("cluster", "<u4"), ("row", "<u4")])
REMOVAL = np.dtype([("doc", "<i8"), ("target", "<i8"), ("cosine", "<f4")])


# ----------------------------------------------------------------------------- the embedder


def require_libraries() -> None:
    """sentence-transformers and faiss, or one line saying how to install them (no data read yet)."""
    missing = [name for name, module in (("sentence-transformers", "sentence_transformers"), ("faiss-cpu", "faiss"))
               if importlib.util.find_spec(module) is None]
    if missing:
        raise StageError(f"dedup --semantic needs {' and '.join(missing)}: {INSTALL_HINT}")


@dataclass(frozen=True)
class Embedder:
    """A sentence-transformers model as the tasks load it, and what identifies its weights."""

    name: str  # as given to --embedder
    source: str  # an absolute directory, or a Hub id
    revision: str | None  # the Hub commit (None for a directory)
    identity: str  # recorded in the manifest's dependencies: a changed model reruns dedup

    @property
    def is_local(self) -> bool:
        return self.revision is None


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def resolve_embedder(name: str, *, ray: bool = False) -> Embedder:
    """`--embedder` checked before any data is read: a model directory (identity: a digest of its
    files), else a Hub id (identity: id@commit, from the Hub, or from the local Hugging Face cache
    when the Hub cannot be reached). Anything else is a one-line StageError naming --embedder."""
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "modules.json").is_file() and not (path / "config.json").is_file():
            raise StageError(f"--embedder {name}: not a sentence-transformers model directory "
                             "(it has neither modules.json nor config.json)")
        if ray and not path.is_absolute():
            raise StageError(f"--embedder {name}: a relative path; Ray tasks run on other nodes and in other "
                             f"directories, so give an absolute path every node sees (e.g. {path.absolute()})")
        return Embedder(name, str(path.resolve()), None, f"dir:{directory_digest(path.resolve())}")
    if path.exists():
        raise StageError(f"--embedder {name}: a file, not a model directory")
    if not _HUB_ID.match(name) or name.startswith((".", "~")):
        raise StageError(f"--embedder {name}: no such directory (give a sentence-transformers model directory, "
                         f"or a Hugging Face Hub id such as {DEFAULT_EMBEDDER})")
    revision = _hub_revision(name)
    return Embedder(name, name, revision, f"hub:{name}@{revision}")


def directory_digest(path: Path) -> str:
    """sha256 over the relative names and contents of a directory's files (each file hashed once
    per process while its size and mtime stay the same)."""
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(f"{file.relative_to(path).as_posix()}\0{file_digest(file)}\n".encode())
    return digest.hexdigest()


def _hub_revision(repo_id: str) -> str:
    """The commit a Hub model id stands for now; offline, the one in the local Hugging Face cache."""
    from huggingface_hub import HfApi, try_to_load_from_cache
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    from nonllama.pipeline.remote import _endpoint

    label = f"--embedder {repo_id}"
    reason = "HF_HUB_OFFLINE is set"
    if os.environ.get("HF_HUB_OFFLINE", "").lower() not in ("1", "true", "yes", "on"):
        try:
            sha = HfApi(endpoint=_endpoint()).model_info(repo_id, timeout=15).sha
            if sha:
                return sha
        except GatedRepoError:
            raise StageError(f"{label}: a gated model: accept its conditions on the Hub and set HF_TOKEN") from None
        except RepositoryNotFoundError:
            raise StageError(f"{label}: no such directory, and no such model on {_endpoint()} "
                             "(if it is private, set HF_TOKEN)") from None
        except Exception as e:  # noqa: BLE001 - network errors come in many kinds (httpx, OSError): try the cache
            reason = f"cannot reach {_endpoint()} ({' '.join(str(e).split())[:120] or type(e).__name__})"
    for filename in ("modules.json", "config.json"):
        cached = try_to_load_from_cache(repo_id, filename)
        if isinstance(cached, str):  # .../snapshots/<commit>/modules.json
            return Path(cached).parent.name
    raise StageError(f"{label}: no such directory, and the model cannot be fetched: {reason}, and the Hugging "
                     "Face cache has no copy of it; give a local model directory, or run once with network access")


_MODELS: dict[tuple[str, str | None, str], Any] = {}  # loaded once per worker process


def device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_model(embedder: Embedder, where: str) -> Any:
    """The embedder's SentenceTransformer on `where`, loaded once per process."""
    key = (embedder.source, embedder.revision, where)
    if key not in _MODELS:
        _quiet()
        from sentence_transformers import SentenceTransformer

        try:  # the local copy first: no network round trip per worker
            _MODELS[key] = SentenceTransformer(embedder.source, revision=embedder.revision, device=where,
                                               local_files_only=True)
        except OSError:
            if embedder.is_local:
                raise StageError(f"--embedder {embedder.name}: cannot load it as a sentence-transformers model") from None
            _MODELS[key] = SentenceTransformer(embedder.source, revision=embedder.revision, device=where)
    return _MODELS[key]


def _quiet() -> None:
    """No progress bars or advice from transformers / huggingface_hub on the worker's stderr."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover - sentence-transformers always brings transformers
        pass


# ----------------------------------------------------------------------------- pass: embed


@dataclass(frozen=True)
class EmbedTask:
    plan: Plan
    index: int
    part: Path
    part_sha256: str
    output_dir: Path
    embedder: Embedder
    threads: int  # torch CPU threads in the worker


@dataclass(frozen=True)
class Embedded:
    rows: int  # documents embedded (the part's documents exact/near dedup kept)
    dim: int
    key: str  # the cache entry


def embeddings_file(output_dir: Path, index: int) -> Path:
    return Path(output_dir) / EMBEDDINGS_DIR / part_name(index)


def embed_part(task: EmbedTask, report: Reporter) -> Embedded:
    """Embed the documents of one part that exact/near dedup kept: ``embeddings/part-P.parquet``
    (through the cache: a part embedded by an earlier run with the same key is linked, not redone),
    and the rows they are in the part (``semrows-P.npy``)."""
    plan, config = task.plan, task.plan.config
    removed = np.load(plan.file("decisions", task.index))["row"].astype(np.int64)
    n = plan.offsets[task.index + 1] - plan.offsets[task.index]
    rows = np.setdiff1d(np.arange(n, dtype=np.int64), removed).astype(np.uint32)
    _save(plan.file("semrows", task.index), rows)
    where = device()
    key = hashlib.sha256(json.dumps([CACHE_FORMAT, task.part_sha256, task.embedder.identity, config.embed_batch,
                                     plan.batch_rows, where, hashlib.sha256(rows.tobytes()).hexdigest()])
                         .encode()).hexdigest()[:40]
    cached = cache_dir(task.output_dir) / f"{key}.parquet"
    if not cached.exists():
        _embed(task, removed, where, cached, report)
    else:
        report(n, 0)
    target = embeddings_file(task.output_dir, task.index)
    with atomic_path(target) as tmp:
        try:  # the output's copy shares the cache's blocks where the filesystem allows
            os.link(cached, tmp)
        except OSError:
            shutil.copyfile(cached, tmp)
    schema = pq.read_schema(target)
    return Embedded(pq.ParquetFile(target).metadata.num_rows, schema.field("embedding").type.list_size, key)


def cache_dir(output_dir: Path) -> Path:
    return Path(output_dir) / CACHE_DIR_NAME / EMBEDDINGS_DIR


def _embed(task: EmbedTask, removed: np.ndarray, where: str, path: Path, report: Reporter) -> None:
    model = load_model(task.embedder, where)
    with torch_threads(task.threads):  # a worker's share of the cores (executors.task_threads)
        _write_embeddings(task, model, removed, path, report)


def _write_embeddings(task: EmbedTask, model: Any, removed: np.ndarray, path: Path, report: Reporter) -> None:
    plan, config = task.plan, task.plan.config
    dim = int(model.get_embedding_dimension() if hasattr(model, "get_embedding_dimension")
              else model.get_sentence_embedding_dimension())
    schema = pa.schema([("id", pa.string()), ("embedding", pa.list_(pa.float32(), dim))],
                       metadata={"embedder": task.embedder.identity, "dimension": str(dim)})
    gone = pl.Series("row", removed, dtype=pl.Int64)
    offset = 0
    with atomic_path(path) as tmp:
        with pq.ParquetWriter(tmp, schema, compression="zstd") as writer:
            for batch in pq.ParquetFile(task.part).iter_batches(batch_size=plan.batch_rows, columns=["id", "text"]):
                frame = pl.from_arrow(pa.Table.from_batches([batch]))
                assert isinstance(frame, pl.DataFrame)
                keep = ~pl.int_range(offset, offset + frame.height, eager=True, dtype=pl.Int64).is_in(gone.implode())
                kept = frame.filter(keep)
                # one encode call per batch of the part: sentence-transformers sorts a call's texts by
                # length before batching them, so the same calls give the same floats on every run
                vectors = model.encode(kept["text"].fill_null("").to_list(), batch_size=config.embed_batch,
                                       normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)
                vectors = np.asarray(vectors, np.float32).reshape(kept.height, dim)
                embedding = pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), dim)
                writer.write_table(pa.table({"id": kept["id"].to_arrow().cast(pa.string()), "embedding": embedding},
                                            schema=schema))
                offset += frame.height
                report(frame.height, int(frame["text"].str.len_bytes().sum() or 0))


def prune_cache(output_dir: Path, keys: set[str]) -> None:
    """Drop cached embeddings this run did not use (another input, model or decisions)."""
    for path in cache_dir(output_dir).glob("*.parquet"):
        if path.stem not in keys:
            path.unlink(missing_ok=True)


def read_vectors(path: Path, take: np.ndarray | None = None, batch_rows: int = 4096) -> np.ndarray:
    """An embeddings file's vectors as a (rows, dim) float32 array; only rows `take` (sorted)
    when given, read a batch at a time (small batches, no pre-buffering: what the driver reads for
    its sample passes through a few MB, not through a part's worth of Arrow memory)."""
    file = pq.ParquetFile(path, pre_buffer=False, buffer_size=1 << 20)
    dim = file.schema_arrow.field("embedding").type.list_size
    chunks, offset = [], 0
    for batch in file.iter_batches(batch_size=batch_rows, columns=["embedding"]):
        values = batch.column(0).flatten().to_numpy().reshape(-1, dim)
        if take is None:
            chunks.append(values)
        else:
            lo, hi = np.searchsorted(take, [offset, offset + len(values)])
            chunks.append(values[take[lo:hi] - offset])
        offset += len(values)
    return np.concatenate(chunks) if chunks else np.zeros((0, dim), np.float32)


# ----------------------------------------------------------------------------- k-means (driver)


def cluster_count(config: Any, documents: int) -> int:
    """`semantic_clusters`, or one per DOCS_PER_CLUSTER documents; never more than the sample
    gives MIN_POINTS_PER_CENTROID points each."""
    sample = min(config.semantic_sample, documents)
    wanted = config.semantic_clusters or math.ceil(documents / DOCS_PER_CLUSTER)
    return max(1, min(wanted, sample // MIN_POINTS_PER_CENTROID))


def draw_sample(output_dir: Path, rows: list[int], size: int, seed: int) -> np.ndarray:
    """`size` vectors chosen with `seed` among all the parts' (global order), part by part."""
    total = sum(rows)
    rng = np.random.default_rng(seed)
    chosen = np.arange(total) if size >= total else np.sort(rng.choice(total, size, replace=False))
    starts = np.concatenate([[0], np.cumsum(rows)])
    sample = []
    for p in range(len(rows)):
        lo, hi = np.searchsorted(chosen, starts[p : p + 2])
        if hi > lo:
            sample.append(read_vectors(embeddings_file(output_dir, p), chosen[lo:hi] - starts[p]))
    return np.ascontiguousarray(np.concatenate(sample), np.float32)


def kmeans(sample: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Spherical k-means (unit centroids: the vectors are compared by cosine), seeded."""
    if k == 1:  # nothing to learn: the normalized mean
        centroid = sample.mean(axis=0, keepdims=True, dtype=np.float64)
        return (centroid / max(np.linalg.norm(centroid), 1e-12)).astype(np.float32)
    import faiss

    km = faiss.Kmeans(sample.shape[1], k, niter=KMEANS_ITERATIONS, seed=seed % (2**31), spherical=True,
                      verbose=False, max_points_per_centroid=max(256, len(sample) // k + 1))
    km.train(sample)
    return np.asarray(km.centroids, np.float32)


# ----------------------------------------------------------------------------- pass: assign


@dataclass(frozen=True)
class SemanticPlan:
    """What the assign and semantic tasks know beyond dedup's plan: decided in the driver from
    the embed results and the config (the same everywhere)."""

    clusters: int
    shards: int  # ranges of clusters: cluster c is in shard c * shards // clusters
    dim: int

    @classmethod
    def make(cls, clusters: int, documents: int, dim: int) -> SemanticPlan:
        wanted = math.ceil(documents * dim * 4 / VECTOR_BYTES_PER_TASK)
        return cls(clusters, max(1, min(clusters, max(MIN_SEMANTIC_SHARDS, wanted))), dim)

    def first_cluster(self, shard: int) -> int:
        return -(-shard * self.clusters // self.shards)


@dataclass(frozen=True)
class AssignTask:
    plan: Plan
    semantic: SemanticPlan
    index: int
    output_dir: Path


def assign_part(task: AssignTask, report: Reporter) -> np.ndarray:
    """Each vector of one part to its nearest centroid; the part's entries and vectors sorted by
    cluster. Returns where each cluster shard starts in them (shards + 1)."""
    plan, sp = task.plan, task.semantic
    vectors = read_vectors(embeddings_file(task.output_dir, task.index))
    rows = np.load(plan.file("semrows", task.index))
    centroids = np.load(plan.scratch / "centroids.npy")
    cluster = np.zeros(len(vectors), np.int64)
    for lo in range(0, len(vectors), ASSIGN_ROWS):
        cluster[lo : lo + ASSIGN_ROWS] = np.argmax(vectors[lo : lo + ASSIGN_ROWS] @ centroids.T, axis=1)
    order = np.argsort(cluster, kind="stable")  # rows stay in order within a cluster
    entries = np.empty(len(order), ASSIGNED)
    entries["cluster"], entries["row"] = cluster[order], rows[order]
    _save(plan.file("semassign", task.index), entries)
    _save(plan.file("semvec", task.index), vectors[order])
    report(len(rows), 0)
    shard = cluster[order] * sp.shards // sp.clusters
    return np.searchsorted(shard, np.arange(sp.shards + 1)).astype(np.int64)


# ----------------------------------------------------------------------------- pass: semantic


@dataclass(frozen=True)
class SemanticTask:
    plan: Plan
    semantic: SemanticPlan
    shard: int
    bounds: Path  # (parts x shards + 1): where each part's files hold each shard


@dataclass(frozen=True)
class SemanticShard:
    removed: int
    sizes: np.ndarray  # documents in each cluster of the shard


def semantic_shard(task: SemanticTask, report: Reporter) -> SemanticShard:
    """Greedy dedup inside every cluster of one shard: ``semremoved-S.npy`` (doc, target, cosine)."""
    plan, sp = task.plan, task.semantic
    bounds = np.asarray(np.load(task.bounds, mmap_mode="r")[:, task.shard : task.shard + 2])
    clusters, docs, vectors = [], [], []
    for p in range(plan.parts):
        lo, hi = bounds[p]
        if hi > lo:
            entries = np.load(plan.file("semassign", p), mmap_mode="r")[lo:hi]
            clusters.append(np.asarray(entries["cluster"]))
            docs.append(entries["row"].astype(np.int64) + plan.offsets[p])
            vectors.append(np.asarray(np.load(plan.file("semvec", p), mmap_mode="r")[lo:hi]))
    first, last = sp.first_cluster(task.shard), sp.first_cluster(task.shard + 1)
    out = np.zeros(0, REMOVAL)
    sizes = np.zeros(last - first, np.int64)
    if clusters:
        cluster = np.concatenate(clusters)
        # parts come in order and rows in order within a part's cluster: a stable sort by cluster
        # leaves every cluster's documents in global (part, row) order, the keep rule's order
        order = np.argsort(cluster, kind="stable")
        cluster, doc, x = cluster[order], np.concatenate(docs)[order], np.concatenate(vectors)[order]
        sizes = np.bincount(cluster - first, minlength=last - first)
        starts = np.concatenate([[0], np.cumsum(sizes)])
        found = []
        for c in np.flatnonzero(sizes > 1):
            lo, hi = starts[c], starts[c + 1]
            removed, target, cosine = greedy_dedup(x[lo:hi], plan.config.semantic_threshold)
            if len(removed):
                block = np.empty(len(removed), REMOVAL)
                block["doc"], block["target"], block["cosine"] = doc[lo + removed], doc[lo + target], cosine
                found.append(block)
        if found:
            out = np.concatenate(found)
            out = out[np.argsort(out["doc"])]
        report(len(doc), 0)
    _save(plan.file("semremoved", task.shard), out)
    return SemanticShard(len(out), sizes.astype(np.int32))


def greedy_dedup(x: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Documents of one cluster (unit vectors, in keep order) whose cosine to an earlier kept
    document is above `threshold`: (their positions, the kept one each is most similar to, that
    cosine).

    A block of rows is compared with every earlier row at once (a matrix product, at most
    SIMILARITY_CELLS values); only rows with some earlier similar row (removed or not) can be
    removed, and only they go through the loop, which must run in order: whether a row is kept
    decides the rows after it.
    """
    m = len(x)
    kept = np.ones(m, bool)
    target = np.full(m, -1, np.int64)
    cosine = np.zeros(m, np.float32)
    step = max(1, SIMILARITY_CELLS // max(m, 1))
    for lo in range(0, m, step):
        hi = min(m, lo + step)
        sim = x[lo:hi] @ x[:hi].T  # (rows of the block, every row up to its end)
        # a row is compared with earlier rows only: the block's own columns at or after it are out
        sim[:, lo:hi][~np.tri(hi - lo, k=-1, dtype=bool)] = -np.inf
        for r in np.flatnonzero((sim > threshold).any(axis=1)):
            row = np.where(kept[:hi], sim[r], -np.inf)
            best = int(np.argmax(row))  # the earliest of equals
            if row[best] > threshold:
                kept[lo + r], target[lo + r], cosine[lo + r] = False, best, min(float(row[best]), 1.0)
    removed = np.flatnonzero(~kept)
    return removed, target[removed], cosine[removed]


# ----------------------------------------------------------------------------- merge (driver)


def merge_removals(plan: Plan, shards: int, reason: int) -> int:
    """Add every shard's removals to the per-part decisions (as `reason`), one part at a time, with
    the cosines aligned in ``cosine-P.npy``. Returns how many documents were added."""
    from nonllama.pipeline.dedup import DECISION

    files = [np.load(plan.file("semremoved", s), mmap_mode="r") for s in range(shards)]
    added = 0
    for p in range(plan.parts):
        lo, hi = plan.offsets[p], plan.offsets[p + 1]
        found = []
        for removals in files:
            a, z = np.searchsorted(removals["doc"], [lo, hi])
            if z > a:
                found.append(np.asarray(removals[a:z]))
        semantic = np.concatenate(found) if found else np.zeros(0, REMOVAL)
        old = np.load(plan.file("decisions", p))
        new = np.empty(len(semantic), DECISION)
        new["row"], new["reason"], new["target"] = semantic["doc"] - lo, reason, semantic["target"]
        both = np.concatenate([old, new])
        cos = np.concatenate([np.full(len(old), np.nan, np.float32), semantic["cosine"]])
        order = np.argsort(both["row"], kind="stable")
        _save(plan.file("decisions", p), both[order])
        _save(plan.file("cosine", p), cos[order])
        added += len(semantic)
    return added


def cluster_stats(sizes: np.ndarray, removed: int) -> dict[str, Any]:
    """The manifest's counts: how many clusters, how large, how many documents removed."""
    sizes = sizes[sizes > 0]
    return {
        "semantic_duplicates": removed,
        "semantic_clusters": int(len(sizes)),
        "semantic_cluster_sizes": {
            "min": int(sizes.min()) if len(sizes) else 0,
            "median": float(np.median(sizes)) if len(sizes) else 0.0,
            "max": int(sizes.max()) if len(sizes) else 0,
        },
    }


def _save(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, array)


# ----------------------------------------------------------------------------- for people


@dataclass
class SemanticPair:
    kept_id: str
    kept_text: str
    removed_id: str
    removed_text: str
    cosine: float


def semantic_pairs(output_dir: Path, n: int, *, borderline: bool = False) -> list[SemanticPair]:
    """`n` semantic duplicates of a finished dedup output beside the kept document each names:
    the most similar first, or with `borderline` the least similar first (the pairs nearest the
    threshold: where to look when choosing it). Reads nothing when n is 0; else the removed parts'
    semantic rows (Parquet filters) and the named kept documents."""
    if n <= 0:
        return []
    output_dir = Path(output_dir)
    require_finished(output_dir, "dedup")
    removed_parts = list_parts(output_dir / "removed")
    if not removed_parts or "cosine" not in pq.read_schema(removed_parts[0]).names:
        return []
    removed = (
        pl.scan_parquet(removed_parts).filter(pl.col("drop_reason") == SEMANTIC)
        .select("id", "text", "duplicate_of", "cosine")
        .sort(["cosine", "id"], descending=[not borderline, False]).head(n).collect()
    )
    wanted = removed["duplicate_of"].unique().implode()
    kept = pl.scan_parquet(list_parts(output_dir)).filter(pl.col("id").is_in(wanted)).select("id", "text").collect()
    texts = dict(zip(kept["id"].to_list(), kept["text"].to_list(), strict=True))
    emptied = pl.scan_parquet(removed_parts).filter(pl.col("id").is_in(wanted)).select("id", "text").collect()
    for doc_id, text in zip(emptied["id"].to_list(), emptied["text"].to_list(), strict=True):
        texts.setdefault(doc_id, text)  # a kept document that --paragraphs emptied
    return [SemanticPair(r["duplicate_of"], texts.get(r["duplicate_of"], ""), r["id"], r["text"], r["cosine"])
            for r in removed.iter_rows(named=True)]
