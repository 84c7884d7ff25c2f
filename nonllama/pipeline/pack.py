"""`pack`: every document encoded into flat token files that training memory-maps.

`run_pack(input_dir, tokenizer_dir, output_dir, config)` is the stage. It writes

- ``train.bin``, ``val.bin``: each document as BOS (id 1), its tokens, EOS (id 2), back to
  back, uint16 when the vocabulary fits in 65,536 ids, else uint32 (llama2.c's BOS before each
  document, nanoGPT's EOS after it). A sequence the model later continues starts with BOS, as
  every document it was trained on does; EOS teaches it where a document ends;
- ``index.parquet``: one row per document occurrence: ``id``, ``source``, ``split``,
  ``offset`` (its first text token in that split's file: BOS sits at offset - 1), ``length``
  (its text tokens: EOS sits at offset + length) and ``copy`` (0, 1, ... when mixing repeats a
  document);
- ``_manifest.json``: dtype, vocab size, the tokenizer's sha256, token counts per split and per
  source (BOS and EOS included: what is on disk), the mix asked for and the shares that resulted.

How. Workers (one task per input part, the `nonllama` process among them) encode batches with
SentencePiece (C++, one thread per worker, the ids handed back as numpy buffers) and write each
part's tokens, BOS and EOS around each document, to a temporary shard file, plus a small index
(id, source, length, two hash numbers). The driver decides splits and mixing from the indexes
and concatenates the shards in part order, so the output is the same bytes whatever the number
of workers. Without mixing it does so while the encoding goes on, each shard as soon as it and
those before it are encoded (see `_Assembly`).

Splits. A document is in val when a hash of its id (xxh64, seed 0x5EED + `seed`) is below
`val_fraction`; when no document is, the one with the smallest hash is. Stable across reruns
and independent of the mix, so a document in val is never in train.

Mixing. `mix` maps every source to a weight; weights are normalized to shares of the training
tokens. With T the training tokens without mixing and T_s a source's, the source is repeated
r_s = share_s * T / T_s times: floor(r_s) copies of every document plus one more copy of the
documents whose second hash is below frac(r_s). The training set keeps about T tokens, a
source's share lands near what was asked (document granularity), and the manifest records the
shares that resulted. The val split is never mixed: its loss stays comparable across mixes.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc  # noqa: F401 - pa.ipc
import pyarrow.parquet as pq
from rich.console import Console

from nonllama.pipeline.dirs import StageInput, open_input
from nonllama.pipeline.driver import StageContext, StageJob, drive
from nonllama.pipeline.executors import Executor, LocalExecutor
from nonllama.pipeline.io import (
    Reporter,
    StageError,
    StageRun,
    atomic_path,
    json_digest,
    require_finished,
)
from nonllama.pipeline.tokenizer import (
    BOS_ID,
    EOS_ID,
    MODEL_NAME,
    doc_unit_hash,
    encode_texts,
    load_processor,
    require_tokenizer,
)

STAGE = "pack"
SPLITS = ("train", "val")
INDEX_NAME = "index.parquet"
SHARD_DIR = ".shards"
VAL_SALT, MIX_SALT = 0x5EED, 0x3A1C
BATCH_ROWS = 1_000
INDEX_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("source", pa.string()),
        ("split", pa.string()),
        ("offset", pa.int64()),
        ("length", pa.int32()),
        ("copy", pa.int32()),
    ]
)


@dataclass
class PackConfig:
    val_fraction: float = 0.005
    mix: dict[str, float] = field(default_factory=dict)  # source -> weight; empty: no mixing
    seed: int = 0

    def validate(self) -> None:
        if not 0 < self.val_fraction < 1:
            raise StageError(f"--val-fraction {self.val_fraction}: must be between 0 and 1 (exclusive)")
        for source, weight in self.mix.items():
            if not math.isfinite(weight) or weight < 0:
                raise StageError(f"--mix {source}={weight}: a weight must be a number >= 0")
        if self.mix and sum(self.mix.values()) <= 0:
            raise StageError("--mix: every weight is 0, nothing would be trained on")


def parse_mix(items: list[str]) -> dict[str, float]:
    """['en=0.7', 'zh=0.3'] (or 'en=0.7,zh=0.3') -> {'en': 0.7, 'zh': 0.3}."""
    mix: dict[str, float] = {}
    for item in (i for value in items for i in value.split(",") if i.strip()):
        source, sep, weight = item.rpartition("=")
        try:
            value = float(weight)
        except ValueError:
            value = math.nan
        if not sep or not source.strip() or math.isnan(value):
            raise StageError(f"--mix {item!r}: expected SOURCE=WEIGHT, e.g. --mix wiki=0.3")
        if source.strip() in mix:
            raise StageError(f"--mix: source {source.strip()!r} is given twice")
        mix[source.strip()] = value
    return mix


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)


# --------------------------------------------------------------------------- workers


@dataclass
class PackTask:
    index: int
    part: Path
    shard_dir: Path
    model: Path
    dtype: str
    val_fraction: float
    seed: int
    model_sha256: str = ""  # keys the per-process processor cache: a retrained model is reloaded


@dataclass
class ShardSummary:
    index: int
    docs: int
    tokens: int
    per_source: dict[str, dict[str, int]]  # source -> {train_docs, train_tokens, val_docs, val_tokens}
    min_val_hash: float  # for "at least one val document"
    min_val_row: int


_PROCESSORS: dict[tuple[Path, str], Any] = {}


def _processor(model: Path, sha256: str) -> Any:
    """One SentencePiece processor per process and model (tasks, and the driver, reuse it)."""
    if (model, sha256) not in _PROCESSORS:
        _PROCESSORS.clear()  # one model at a time: a stale one is never used again
        _PROCESSORS[model, sha256] = load_processor(model)
    return _PROCESSORS[model, sha256]


def shard_paths(shard_dir: Path, index: int) -> tuple[Path, Path]:
    return shard_dir / f"shard-{index:05d}.tokens", shard_dir / f"shard-{index:05d}.arrow"


DOC_FRAME = 2  # tokens around each document's text on disk: BOS before it, EOS after it


def encode_documents(processor: Any, texts: Sequence[str] | Sequence[bytes],
                     dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """Flat tokens of `texts`, each as BOS + text + EOS, and the text token count of each.

    SentencePiece hands back each document's ids as a numpy buffer: no Python int is made for
    any token, which would cost pack about 7% beside the encoding itself.
    """
    if not texts:
        return np.zeros(0, dtype), np.zeros(0, np.int64)
    frame = processor.bos_id() == BOS_ID and processor.eos_id() == EOS_ID  # SentencePiece adds both
    ids = encode_texts(processor, texts, add_bos=frame, add_eos=frame, as_arrays=True)
    spans = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
    flat = np.concatenate(ids, dtype=dtype, casting="unsafe")  # ids < vocab size: dtype holds them
    if frame:
        return flat, spans - DOC_FRAME
    ends = np.cumsum(spans)
    flat = np.insert(flat, ends, dtype.type(EOS_ID))
    return np.insert(flat, ends - spans + np.arange(len(ends)), dtype.type(BOS_ID)), spans


def pack_shard(task: PackTask, report: Reporter) -> ShardSummary:
    """Encode one input part into a shard token file and its index.

    This loop runs beside SentencePiece and its overhead is what separates pack from the bare
    encode rate, so it stays lean: pyarrow batches of three columns, the texts handed to
    SentencePiece as UTF-8 bytes straight from Arrow (a Python str would be decoded from
    UTF-8 only for SentencePiece to encode it back), ids and sources kept as Arrow arrays, the
    index written as uncompressed Arrow IPC (a temporary file the driver reads back once).
    """
    processor = _processor(task.model, task.model_sha256)
    dtype = np.dtype(task.dtype)
    tokens_path, index_path = shard_paths(task.shard_dir, task.index)
    parquet = pq.ParquetFile(task.part, pre_buffer=False)  # one small part, read in one thread: cheapest
    id_chunks: list[pa.Array] = []
    source_chunks: list[pa.Array] = []
    lengths: list[np.ndarray] = []
    tokens = 0
    with open(tokens_path, "wb") as f:
        for batch in parquet.iter_batches(batch_size=BATCH_ROWS, columns=["id", "source", "text"], use_threads=False):
            texts = batch.column("text").cast(pa.binary()).to_pylist()
            if batch.column("text").null_count:
                texts = [t or b"" for t in texts]
            flat, n = encode_documents(processor, texts, dtype)
            f.write(flat)
            tokens += flat.size
            id_chunks.append(batch.column("id").cast(pa.string()))
            source_chunks.append(pc.fill_null(batch.column("source").cast(pa.string()), ""))
            lengths.append(n)
            report(batch.num_rows, sum(map(len, texts)))
    ids = pa.chunked_array(id_chunks, pa.string()).combine_chunks()
    sources = pa.chunked_array(source_chunks, pa.string()).combine_chunks()
    length = np.concatenate(lengths).astype(np.int32) if lengths else np.zeros(0, np.int32)
    val_hash = doc_unit_hash(ids, VAL_SALT + task.seed)
    index = pa.table(
        {"id": ids, "source": sources, "length": length, "val_hash": val_hash,
         "mix_hash": doc_unit_hash(ids, MIX_SALT + task.seed)}
    )
    with pa.OSFile(str(index_path), "wb") as sink, pa.ipc.new_file(sink, index.schema) as writer:
        writer.write_table(index)
    summary = (
        pa.table({"source": sources, "val": val_hash < task.val_fraction, "tokens": length.astype(np.int64) + DOC_FRAME})
        .group_by(["source", "val"], use_threads=False)
        .aggregate([("tokens", "count"), ("tokens", "sum")])
    )
    per_source: dict[str, dict[str, int]] = {}
    columns = (summary.column(c).to_pylist() for c in ("source", "val", "tokens_count", "tokens_sum"))
    for source, val, docs, n in zip(*columns, strict=True):
        split = "val" if val else "train"
        entry = per_source.setdefault(source, {"train_docs": 0, "train_tokens": 0, "val_docs": 0, "val_tokens": 0})
        entry[f"{split}_docs"] += docs
        entry[f"{split}_tokens"] += n
    min_row = int(np.argmin(val_hash)) if len(val_hash) else -1
    return ShardSummary(task.index, len(length), tokens, per_source,
                        float(val_hash[min_row]) if len(val_hash) else 2.0, min_row)


# --------------------------------------------------------------------------- the driver


class _HashingWriter:
    """Appends to a binary file and keeps its sha256 (the manifest's checksum, no second read)."""

    def __init__(self, f: BinaryIO):
        self.f = f
        self.sha = hashlib.sha256()
        self.tokens = 0

    def write(self, array: np.ndarray) -> None:
        data = memoryview(np.ascontiguousarray(array)).cast("B")
        self.f.write(data)
        self.sha.update(data)
        self.tokens += array.size

    def restart(self) -> None:
        self.f.seek(0)
        self.f.truncate()
        self.sha = hashlib.sha256()
        self.tokens = 0


@contextmanager
def _open_outputs(output_dir: Path) -> Iterator[dict[str, _HashingWriter]]:
    with atomic_path(output_dir / "train.bin") as train_tmp, atomic_path(output_dir / "val.bin") as val_tmp:
        with open(train_tmp, "wb") as train_f, open(val_tmp, "wb") as val_f:
            yield {"train": _HashingWriter(train_f), "val": _HashingWriter(val_f)}


def repeat_factors(train_tokens: dict[str, int], mix: dict[str, float]) -> dict[str, float]:
    """Per source, how many times its training documents are used (see the module docstring)."""
    if not mix:
        return {s: 1.0 for s in train_tokens}
    missing = sorted(set(train_tokens) - set(mix))
    unknown = sorted(set(mix) - set(train_tokens))
    if unknown:
        raise StageError(
            f"--mix names {', '.join(unknown)}, not a source of the input; sources: {', '.join(sorted(train_tokens))}"
        )
    if missing:
        raise StageError(f"--mix has no weight for {', '.join(missing)}: give every source one (0 leaves it out)")
    total_weight = sum(mix.values())
    total_tokens = sum(train_tokens.values())
    factors = {}
    for source, tokens in train_tokens.items():
        share = mix[source] / total_weight
        if share > 0 and tokens == 0:
            raise StageError(f"--mix {source}={mix[source]}: the source has no training documents (all in val)")
        factors[source] = share * total_tokens / tokens if tokens else 0.0
    return factors


class _Assembly:
    """train.bin, val.bin and the index, written shard after shard in shard order.

    Without mixing, and when a hash puts some document in val (every corpus but the
    smallest), nothing about a shard's place in the output depends on the shards after it, so
    `stream` writes each shard as soon as it and those before it are encoded: the copying
    overlaps with the encoding instead of following it. Otherwise, or when the "at least one
    val document" rule has to move a document, the output is `restart`ed and written at the end.
    """

    def __init__(self, shard_dir: Path, dtype: np.dtype, val_fraction: float,
                 writers: dict[str, _HashingWriter], index_path: Path):
        self.shard_dir, self.dtype, self.val_fraction = shard_dir, dtype, val_fraction
        self.writers, self.index_path = writers, index_path
        self.index_writer = self._open_index()
        self.streamed = 0  # shards 0 .. streamed - 1 are written
        self.finished: set[int] = set()

    def _open_index(self) -> pq.ParquetWriter:
        return pq.ParquetWriter(self.index_path, INDEX_SCHEMA, compression="zstd")

    def add(self, shard: int, forced_val: tuple[int, int] | None = None,
            factors: dict[str, float] | None = None) -> None:
        """Copy one shard's documents into train.bin / val.bin (repeats included) and the index.

        `factors`: each source's repeat factor; None: every document once (no mixing)."""
        tokens_path, index_path = shard_paths(self.shard_dir, shard)
        index = read_shard_index(index_path)
        if index.num_rows == 0:
            return
        tokens = np.fromfile(tokens_path, dtype=self.dtype)
        is_val = index["val_hash"].to_numpy() < self.val_fraction
        if forced_val is not None and forced_val[0] == shard:
            is_val[forced_val[1]] = True
        span = index["length"].to_numpy().astype(np.int64) + DOC_FRAME  # BOS and EOS included
        if factors is None:
            whole = np.ones(index.num_rows)
        else:
            whole = np.array([factors.get(s, 0.0) for s in index["source"].to_pylist()])
        extra = index["mix_hash"].to_numpy() < whole - np.floor(whole)
        copies = np.where(is_val, 0, np.floor(whole).astype(np.int64) + extra)
        id_source = index.select(["id", "source"])

        def emit(split: str, selected: np.ndarray, copy: int) -> None:
            if not selected.any():
                return
            writer = self.writers[split]
            lengths = span[selected]
            offsets = writer.tokens + np.cumsum(lengths) - lengths + 1  # the first text token, after BOS
            whole_shard = bool(selected.all())
            writer.write(tokens if whole_shard else tokens[np.repeat(selected, span)])
            chosen = id_source if whole_shard else id_source.filter(pa.array(selected))
            self.index_writer.write_table(
                pa.table(
                    {
                        "id": chosen["id"],
                        "source": chosen["source"],
                        "split": pa.array([split] * len(lengths), pa.string()),
                        "offset": pa.array(offsets, pa.int64()),
                        "length": pa.array(lengths - DOC_FRAME, pa.int32()),
                        "copy": pa.array(np.full(len(lengths), copy), pa.int32()),
                    },
                    schema=INDEX_SCHEMA,
                )
            )

        emit("val", is_val, 0)
        for copy in range(int(copies.max(initial=0))):
            emit("train", copies > copy, copy)

    def stream(self, shard: int, _summary: ShardSummary) -> None:
        """run_tasks' on_result: write every encoded shard whose predecessors are written."""
        self.finished.add(shard)
        while self.streamed in self.finished:
            self.add(self.streamed)
            self.streamed += 1

    def restart(self) -> None:
        for writer in self.writers.values():
            writer.restart()
        self.index_writer.close()
        self.index_writer = self._open_index()
        self.streamed = 0

    def close(self) -> None:
        self.index_writer.close()


def read_shard_index(path: Path) -> pa.Table:
    with pa.memory_map(str(path)) as source:
        return pa.ipc.open_file(source).read_all()


def run_pack(
    input_dir: Path,
    tokenizer_dir: Path,
    output_dir: Path,
    config: PackConfig,
    *,
    workers: int = 1,
    executor: Executor | None = None,
    force: bool = False,
    verify_input: bool = False,
    console: Console | None = None,
) -> StageRun:
    """Encode every document of `input_dir` with the tokenizer of `tokenizer_dir` into `output_dir`."""
    config.validate()
    input_dir, tokenizer_dir, output_dir = Path(input_dir), Path(tokenizer_dir), Path(output_dir)
    inp = open_input(input_dir, stage=STAGE, verify=verify_input)
    model, tokenizer_manifest = require_tokenizer(tokenizer_dir)
    tokenizer_sha = tokenizer_manifest["tokenizer_sha256"]
    digest = json_digest({"documents": inp.digest, "tokenizer": tokenizer_sha})
    _check_mix_against_manifest(config.mix, inp.manifest)
    job = StageJob(STAGE, asdict(config), output_dir, [input_dir, tokenizer_dir],
                   {"dir": str(input_dir), "stage": inp.stage, "digest": digest, "documents_digest": inp.digest},
                   lambda ctx: _pack(inp, tokenizer_dir, model, tokenizer_sha, output_dir, config, ctx))
    return drive(job, executor=executor or LocalExecutor(workers, console), force=force, console=console)


def _pack(inp: StageInput, tokenizer_dir: Path, model: Path, tokenizer_sha: str, output_dir: Path,
          config: PackConfig, ctx: StageContext) -> dict:
    """Encode and assemble in a claimed `output_dir`; returns the manifest section."""
    input_dir = inp.dir
    vocab_size = _processor(model.resolve(), tokenizer_sha).vocab_size()  # one worker: pack_shard reuses it
    dtype = token_dtype(vocab_size)
    shard_dir = ctx.work_dir / "shards"
    shard_dir.mkdir(exist_ok=True)
    tasks = [
        PackTask(i, p, shard_dir, model.resolve(), dtype.name, config.val_fraction, config.seed, tokenizer_sha)
        for i, p in enumerate(inp.paths)
    ]
    streaming = not config.mix  # see _Assembly
    with _open_outputs(output_dir) as writers, atomic_path(output_dir / INDEX_NAME) as index_tmp:
        assembly = _Assembly(shard_dir, dtype, config.val_fraction, writers, index_tmp)
        try:
            summaries: list[ShardSummary] = ctx.map(
                pack_shard, tasks, label=STAGE, total_docs=inp.rows,
                on_result=assembly.stream if streaming else None,
            )
            per_source, docs, forced_val, factors = _plan_splits(summaries, shard_dir, config, input_dir)
            if not streaming or forced_val is not None:
                assembly.restart()
                for s in summaries:
                    assembly.add(s.index, forced_val, factors)
        finally:
            assembly.close()
        checksums = {f"{split}.bin": w.sha.hexdigest() for split, w in writers.items()}
        split_tokens = {split: w.tokens for split, w in writers.items()}
    if split_tokens["train"] == 0:
        raise StageError("the train split is empty after mixing: give a source a weight > 0 in --mix")

    index = pl.read_parquet(output_dir / INDEX_NAME, columns=["source", "split", "length"])
    mixed = (
        index.group_by("source", "split")
        .agg(pl.len().alias("docs"), (pl.col("length").cast(pl.Int64) + DOC_FRAME).sum().alias("tokens"))
        .sort("source", "split")
    )
    for source, split, n_docs, n_tokens in mixed.iter_rows():
        if split == "train":
            per_source[source]["mixed_train_docs"] = n_docs
            per_source[source]["mixed_train_tokens"] = n_tokens
    for source, v in per_source.items():
        v.setdefault("mixed_train_docs", 0)
        v.setdefault("mixed_train_tokens", 0)
        v["repeat_factor"] = round(factors[source], 6)
        v["train_share"] = round(v["mixed_train_tokens"] / split_tokens["train"], 6)
        if config.mix:
            v["mix_share_asked"] = round(config.mix[source] / sum(config.mix.values()), 6)

    checksums[INDEX_NAME] = hashlib.sha256((output_dir / INDEX_NAME).read_bytes()).hexdigest()
    return {
        "tokenizer": {"dir": str(tokenizer_dir), "model": MODEL_NAME, "sha256": tokenizer_sha},
        "dtype": dtype.name,
        "vocab_size": vocab_size,
        "bos_id": BOS_ID,
        "eos_id": EOS_ID,
        "rows_in": docs,
        "tokens": split_tokens,  # BOS and EOS included
        "docs": {split: int(index.filter(pl.col("split") == split).height) for split in SPLITS},
        "per_source": dict(sorted(per_source.items())),
        "files": checksums,
        "output_digest": json_digest(checksums),
    }


def _plan_splits(
    summaries: list[ShardSummary], shard_dir: Path, config: PackConfig, input_dir: Path
) -> tuple[dict[str, dict[str, int]], int, tuple[int, int] | None, dict[str, float]]:
    """Counts per source, documents, the document forced into val (when no hash put one
    there) and each source's repeat factor, from the shards' summaries."""
    per_source = _merge_sources(summaries)
    docs = sum(s.docs for s in summaries)
    if docs == 0:
        raise StageError(f"{input_dir}: no documents to pack")
    forced_val = None
    if sum(v["val_docs"] for v in per_source.values()) == 0:
        first = min(summaries, key=lambda s: (s.min_val_hash, s.index))
        forced_val = (first.index, first.min_val_row)
        _move_forced_to_val(per_source, shard_dir, first.index, first.min_val_row)
    train_tokens = {s: v["train_tokens"] for s, v in per_source.items()}
    if sum(train_tokens.values()) == 0:
        raise StageError(
            f"the train split is empty ({docs} document(s), all in val): lower --val-fraction "
            f"(now {config.val_fraction}) or pack more documents"
        )
    return per_source, docs, forced_val, repeat_factors(train_tokens, config.mix)


def _merge_sources(summaries: list[ShardSummary]) -> dict[str, dict[str, int]]:
    merged: dict[str, dict[str, int]] = {}
    for summary in summaries:
        for source, values in summary.per_source.items():
            entry = merged.setdefault(source, {k: 0 for k in values})
            for k, v in values.items():
                entry[k] += v
    return merged


def _move_forced_to_val(per_source: dict[str, dict[str, int]], shard_dir: Path, shard: int, row: int) -> None:
    doc = read_shard_index(shard_paths(shard_dir, shard)[1]).slice(row, 1).to_pylist()[0]
    entry = per_source[doc["source"]]
    entry["train_docs"] -= 1
    entry["train_tokens"] -= doc["length"] + DOC_FRAME
    entry["val_docs"] += 1
    entry["val_tokens"] += doc["length"] + DOC_FRAME


def _check_mix_against_manifest(mix: dict[str, float], input_manifest: dict) -> None:
    """Catch a misspelt --mix source before encoding anything, when the input says its sources."""
    per_source = input_manifest.get("per_source") or {}
    known = {s for s, v in per_source.items() if not isinstance(v, dict) or v.get("rows_out", 1) > 0}
    if mix and known:
        unknown = sorted(set(mix) - set(known))
        if unknown:
            raise StageError(
                f"--mix names {', '.join(unknown)}, not a source of the input; sources: {', '.join(sorted(known))}"
            )


# --------------------------------------------------------------------------- inspect


@dataclass
class Window:
    split: str
    offset: int
    tokens: np.ndarray
    text: str


def inspect_packed(
    packed_dir: Path,
    tokenizer_dir: Path | None = None,
    *,
    windows: int = 3,
    window_tokens: int = 64,
    seed: int | None = None,
) -> tuple[dict, list[Window]]:
    """The manifest of a pack output and a few random windows of its token files, decoded."""
    packed_dir = Path(packed_dir)
    manifest = require_finished(packed_dir, STAGE)
    tokenizer_dir = Path(tokenizer_dir or manifest["tokenizer"]["dir"])
    model, tokenizer_manifest = require_tokenizer(tokenizer_dir)
    if tokenizer_manifest["tokenizer_sha256"] != manifest["tokenizer"]["sha256"]:
        raise StageError(
            f"{packed_dir} was packed with another tokenizer than {model}: rerun `nonllama pack --force` "
            "or pass the right one with --tokenizer"
        )
    processor = load_processor(model)
    rng = np.random.default_rng(seed)
    out: list[Window] = []
    for split in SPLITS:
        path = packed_dir / f"{split}.bin"
        if not path.exists() or path.stat().st_size == 0:
            continue
        data = np.memmap(path, dtype=np.dtype(manifest["dtype"]), mode="r")
        for _ in range(windows if split == "train" else max(1, windows // 3)):
            start = int(rng.integers(0, max(data.size - window_tokens, 0) + 1))
            tokens = np.array(data[start : start + window_tokens])
            out.append(Window(split, start, tokens, decode_window(processor, tokens)))
    return manifest, out


def decode_window(processor: Any, tokens: np.ndarray) -> str:
    """Text of a token window, document ends (EOS) shown as ⟨/s⟩."""
    ends = np.flatnonzero(tokens == EOS_ID)
    pieces = np.split(tokens, ends)
    texts = [processor.decode([int(t) for t in piece if t not in (BOS_ID, EOS_ID)]) for piece in pieces]
    return "⟨/s⟩".join(texts)
