"""`pack`: every document encoded into flat token shards that training memory-maps.

`run_pack(input_dir, tokenizer_dir, output_dir, config)` is the stage. For input part NNNNN
it writes one shard:

- ``train-NNNNN.bin``, ``val-NNNNN.bin``: each document of that part as BOS (id 1), its
  tokens, EOS (id 2), back to back, uint16 when the vocabulary fits in 65,536 ids, else uint32
  (llama2.c's BOS before each document, nanoGPT's EOS after it). A sequence the model later
  continues starts with BOS, as every document it was trained on does; EOS teaches it where a
  document ends. A split is its shards read in order as one stream of tokens: ``train-00000.bin``,
  then ``train-00001.bin``, ... (training reads it so: see `nonllama.train.data`);
- ``index-NNNNN.parquet``: one row per document occurrence in that shard: ``id``, ``source``,
  ``split``, ``shard`` (NNNNN), ``offset`` (its first text token in ``{split}-NNNNN.bin``: BOS
  sits at offset - 1), ``length`` (its text tokens: EOS sits at offset + length) and ``copy``
  (0, 1, ... when mixing repeats a document). Val rows come first, then train rows by copy;
- ``_manifest.json`` (last): dtype, vocab size, the tokenizer (its directory relative to the
  packed directory, and its sha256), the shards of each split in order with their token and
  document counts and sha256, the index files, tokens per split and per source (BOS and EOS
  included: what is on disk), the mix asked for and the shares that resulted, `output_digest`.

Passes. The driver never reads or writes a token: tasks do, each on its own part.

1. encode (one task per input part): SentencePiece (C++, one thread per task, ids handed back
   as numpy buffers) encodes the part in batches. Without --mix the task writes its final
   ``train-``/``val-``/``index-`` files as it goes, each document's split decided by its id
   hash; the sha256 of each file is computed as its bytes go out. With --mix it writes the
   part's tokens and a small index (id, source, length, two hashes) to the run's scratch
   instead. Either way it returns per-source token and document counts and its document with
   the smallest val hash: a few numbers per shard.
2. plan (the driver, from those counts): the "at least one val document" rule and each
   source's repeat factor.
3. only when the plan needs it, a second pass of tasks:
   - a forced val document (no id hashed below `val_fraction`: tiny corpora), without --mix:
     the one task whose part holds it encodes that part again, that document in val. It reads
     the input part, never its own output, so a rerun writes the same bytes;
   - --mix: every part's task writes its final shard from its scratch tokens: val documents,
     then copy 0 of the train documents, copy 1 of those repeated, ... (the forced val
     document, if any, in val).

Every file is written under a temporary name and renamed, and a task's files depend on its
task alone, so the output is the same bytes with 1 or N workers, on Ray, and after an
interrupted run is resumed (the driver skips the tasks that finished).

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
import os
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc  # noqa: F401 - pa.ipc
import pyarrow.parquet as pq
from rich.console import Console

from nonllama.pipeline.dirs import StageInput, open_input
from nonllama.pipeline.driver import StageContext, StageJob, drive
from nonllama.pipeline.executors import Executor
from nonllama.pipeline.io import (
    Reporter,
    StageError,
    StageRun,
    atomic_path,
    file_sha256,
    json_digest,
    read_manifest,
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
VAL_SALT, MIX_SALT = 0x5EED, 0x3A1C
BATCH_ROWS = 1_000
DOC_FRAME = 2  # tokens around each document's text on disk: BOS before it, EOS after it
INDEX_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("source", pa.string()),
        ("split", pa.string()),
        ("shard", pa.int32()),
        ("offset", pa.int64()),
        ("length", pa.int32()),
        ("copy", pa.int32()),
    ]
)
SPLIT_COUNTS = ("train_docs", "train_tokens", "val_docs", "val_tokens")
MIXED_COUNTS = ("mixed_train_docs", "mixed_train_tokens")


def shard_name(split: str, shard: int) -> str:
    """`train-00003.bin`: the tokens of `split` from input part 3."""
    return f"{split}-{shard:05d}.bin"


def index_name(shard: int) -> str:
    return f"index-{shard:05d}.parquet"


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


# --------------------------------------------------------------------------- tasks


@dataclass
class PackTask:
    """Encode one input part: into its final shard, or (--mix) into the run's scratch."""

    index: int
    part: Path
    output_dir: Path
    model: Path
    dtype: str
    val_fraction: float
    seed: int
    model_sha256: str = ""  # keys the per-process processor cache: a retrained model is reloaded
    scratch_dir: Path | None = None  # --mix: the tokens go here; the mix pass writes the shard
    forced_val_row: int = -1  # this row of the part is in val whatever its hash (-1: none)


@dataclass
class MixTask:
    """Write one shard from its scratch tokens, each training document repeated as planned."""

    index: int
    scratch_dir: Path
    output_dir: Path
    dtype: str
    val_fraction: float
    factors: dict[str, float]  # source -> repeat factor
    forced_val_row: int = -1


@dataclass
class ShardFiles:
    """The final files of one shard, as the manifest lists them, and what they hold per source."""

    index: int
    train: dict  # name, tokens, docs, sha256
    val: dict
    index_file: dict  # name, rows, sha256
    per_source: dict[str, dict[str, int]]  # SPLIT_COUNTS (each document once) and MIXED_COUNTS


@dataclass
class Encoded:
    """What the encode pass tells the driver about one part."""

    index: int
    docs: int
    per_source: dict[str, dict[str, int]]  # SPLIT_COUNTS, the split decided by the hash alone
    min_val: tuple[float, int, str, int]  # the part's document with the smallest val hash: hash, row, source, tokens
    files: ShardFiles | None  # its final shard (without --mix)


_PROCESSORS: dict[tuple[Path, str], Any] = {}


def _processor(model: Path, sha256: str) -> Any:
    """One SentencePiece processor per process and model (tasks, and the driver, reuse it)."""
    if (model, sha256) not in _PROCESSORS:
        _PROCESSORS.clear()  # one model at a time: a stale one is never used again
        _PROCESSORS[model, sha256] = load_processor(model)
    return _PROCESSORS[model, sha256]


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


def _encoded_batches(task: PackTask, report: Reporter) -> Iterator[tuple[int, np.ndarray, np.ndarray, pa.Array, pa.Array]]:
    """(first row, flat tokens, tokens per document with BOS and EOS, ids, sources) per batch.

    This loop runs beside SentencePiece and its overhead is what separates pack from the bare
    encode rate, so it stays lean: pyarrow batches of three columns, the texts handed to
    SentencePiece as UTF-8 bytes straight from Arrow (a Python str would be decoded from UTF-8
    only for SentencePiece to encode it back), ids and sources kept as Arrow arrays.
    """
    processor = _processor(task.model, task.model_sha256)
    dtype = np.dtype(task.dtype)
    parquet = pq.ParquetFile(task.part, pre_buffer=False)  # one small part, read in one thread: cheapest
    row = 0
    for batch in parquet.iter_batches(batch_size=BATCH_ROWS, columns=["id", "source", "text"], use_threads=False):
        texts = batch.column("text").cast(pa.binary()).to_pylist()
        if batch.column("text").null_count:
            texts = [t or b"" for t in texts]
        flat, n = encode_documents(processor, texts, dtype)
        ids = batch.column("id").cast(pa.string())
        sources = pc.fill_null(batch.column("source").cast(pa.string()), "")
        yield row, flat, n + DOC_FRAME, ids, sources
        report(batch.num_rows, sum(map(len, texts)))
        row += batch.num_rows


class _MinVal:
    """The document with the smallest val hash seen so far (the first of equals)."""

    def __init__(self) -> None:
        self.value: tuple[float, int, str, int] = (2.0, -1, "", 0)

    def update(self, first_row: int, val_hash: np.ndarray, sources: pa.Array, spans: np.ndarray) -> None:
        if len(val_hash):
            i = int(np.argmin(val_hash))
            if val_hash[i] < self.value[0]:
                self.value = (float(val_hash[i]), first_row + i, sources[i].as_py(), int(spans[i]))


def _source_counts(sources: pa.Array, is_val: np.ndarray, spans: np.ndarray,
                   copies: np.ndarray | None = None) -> dict[str, dict[str, int]]:
    """Per source: documents and tokens of each split, each document once (SPLIT_COUNTS), and
    with `copies` (each document's occurrences in train) the MIXED_COUNTS."""
    columns: dict[str, Any] = {"source": sources, "val": pa.array(is_val), "tokens": spans.astype(np.int64)}
    aggregations = [("tokens", "count"), ("tokens", "sum")]
    if copies is not None:
        columns["copies"] = copies.astype(np.int64)
        columns["copy_tokens"] = copies.astype(np.int64) * spans
        aggregations += [("copies", "sum"), ("copy_tokens", "sum")]
    grouped = pa.table(columns).group_by(["source", "val"], use_threads=False).aggregate(aggregations)
    out: dict[str, dict[str, int]] = {}
    names = ["source", "val"] + [f"{c}_{a}" for c, a in aggregations]
    for source, val, docs, tokens, *mixed in zip(*(grouped.column(n).to_pylist() for n in names), strict=True):
        entry = out.setdefault(source, dict.fromkeys(SPLIT_COUNTS + (MIXED_COUNTS if copies is not None else ()), 0))
        split = "val" if val else "train"
        entry[f"{split}_docs"] += docs
        entry[f"{split}_tokens"] += tokens or 0
        if mixed and not val:
            entry["mixed_train_docs"] += mixed[0] or 0
            entry["mixed_train_tokens"] += mixed[1] or 0
    return dict(sorted(out.items()))


class _HashingFile:
    """Appends arrays to a binary file and keeps its sha256 (the manifest's checksum, no second read)."""

    def __init__(self, f: BinaryIO):
        self.f = f
        self.sha = hashlib.sha256()
        self.tokens = 0
        self.docs = 0

    def write(self, array: np.ndarray) -> None:
        if array.size:
            data = memoryview(np.ascontiguousarray(array)).cast("B")
            self.f.write(data)
            self.sha.update(data)
            self.tokens += array.size


class _ShardWriter:
    """``train-NNNNN.bin``, ``val-NNNNN.bin`` and ``index-NNNNN.parquet`` of one shard.

    Each is written under a temporary name and renamed when the ``with`` block ends without an
    error (a task killed half way leaves only temporaries, which the driver removes, and no
    completion marker, so a rerun writes the shard again).
    """

    def __init__(self, output_dir: Path, shard: int, dtype: np.dtype):
        self.shard, self.dtype = shard, dtype
        self.names = {split: shard_name(split, shard) for split in SPLITS}
        self.rows: dict[str, list[pa.Table]] = {split: [] for split in SPLITS}
        with ExitStack() as stack:  # handed over to self.stack once every file is open
            tmp = {split: stack.enter_context(atomic_path(Path(output_dir) / name)) for split, name in self.names.items()}
            self.index_tmp = stack.enter_context(atomic_path(Path(output_dir) / index_name(shard)))
            self.files = {split: _HashingFile(stack.enter_context(open(tmp[split], "wb"))) for split in SPLITS}
            self.stack = stack.pop_all()

    def __enter__(self) -> _ShardWriter:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stack.__exit__(*exc)

    def add(self, split: str, tokens: np.ndarray, ids: pa.Array, sources: pa.Array, spans: np.ndarray,
            copy: int = 0) -> None:
        """Append documents: `tokens` their BOS + text + EOS back to back, `spans` each one's count."""
        if not len(spans):
            return
        out = self.files[split]
        offsets = out.tokens + np.cumsum(spans) - spans + 1  # the first text token, after BOS
        out.write(tokens)
        out.docs += len(spans)
        self.rows[split].append(pa.table({
            "id": ids, "source": sources, "split": pa.array([split] * len(spans), pa.string()),
            "shard": pa.array(np.full(len(spans), self.shard, np.int32)),
            "offset": pa.array(offsets.astype(np.int64)), "length": pa.array((spans - DOC_FRAME).astype(np.int32)),
            "copy": pa.array(np.full(len(spans), copy, np.int32)),
        }, schema=INDEX_SCHEMA))

    def close(self, per_source: dict[str, dict[str, int]]) -> ShardFiles:
        """Write the index; the files are renamed onto their names when the block ends."""
        tables = self.rows["val"] + self.rows["train"]
        index = pa.concat_tables(tables) if tables else INDEX_SCHEMA.empty_table()
        pq.write_table(index, self.index_tmp, compression="zstd")
        entries = {split: {"name": self.names[split], "tokens": f.tokens, "docs": f.docs, "sha256": f.sha.hexdigest()}
                   for split, f in self.files.items()}
        index_file = {"name": index_name(self.shard), "rows": index.num_rows, "sha256": file_sha256(self.index_tmp)}
        return ShardFiles(self.shard, entries["train"], entries["val"], index_file, per_source)


def _scratch_paths(scratch_dir: Path, shard: int) -> tuple[Path, Path]:
    return scratch_dir / f"encoded-{shard:05d}.tokens", scratch_dir / f"encoded-{shard:05d}.arrow"


def pack_shard(task: PackTask, report: Reporter) -> Encoded:
    """The encode pass: one input part into its final shard (or, with --mix, into scratch)."""
    if task.scratch_dir is not None:
        return _encode_to_scratch(task, report)
    minimum = _MinVal()
    sources_seen: list[pa.Array] = []
    vals_seen: list[np.ndarray] = []
    spans_seen: list[np.ndarray] = []
    with _ShardWriter(task.output_dir, task.index, np.dtype(task.dtype)) as writer:
        for row, flat, spans, ids, sources in _encoded_batches(task, report):
            val_hash = doc_unit_hash(ids, VAL_SALT + task.seed)
            is_val = val_hash < task.val_fraction
            if row <= task.forced_val_row < row + len(spans):
                is_val[task.forced_val_row - row] = True
            minimum.update(row, val_hash, sources, spans)
            if is_val.any():
                in_val = np.repeat(is_val, spans)
                val, train = pa.array(is_val), pa.array(~is_val)
                writer.add("val", flat[in_val], ids.filter(val), sources.filter(val), spans[is_val])
                writer.add("train", flat[~in_val], ids.filter(train), sources.filter(train), spans[~is_val])
            else:
                writer.add("train", flat, ids, sources, spans)
            sources_seen.append(sources)
            vals_seen.append(is_val)
            spans_seen.append(spans)
        sources_all = pa.chunked_array(sources_seen, pa.string()).combine_chunks()
        is_val_all = np.concatenate(vals_seen) if vals_seen else np.zeros(0, bool)
        spans_all = np.concatenate(spans_seen) if spans_seen else np.zeros(0, np.int64)
        per_source = _source_counts(sources_all, is_val_all, spans_all, (~is_val_all).astype(np.int64))
        files = writer.close(per_source)
    split_counts = {s: {k: v[k] for k in SPLIT_COUNTS} for s, v in per_source.items()}
    return Encoded(task.index, len(spans_all), split_counts, minimum.value, files)


def _encode_to_scratch(task: PackTask, report: Reporter) -> Encoded:
    """--mix's encode pass: the part's tokens and index into scratch, for the mix pass to read."""
    tokens_path, index_path = _scratch_paths(task.scratch_dir, task.index)  # type: ignore[arg-type]
    id_chunks: list[pa.Array] = []
    source_chunks: list[pa.Array] = []
    span_chunks: list[np.ndarray] = []
    with atomic_path(tokens_path) as tokens_tmp, atomic_path(index_path) as index_tmp:
        with open(tokens_tmp, "wb") as f:
            for _, flat, spans, ids, sources in _encoded_batches(task, report):
                f.write(memoryview(flat).cast("B"))
                id_chunks.append(ids)
                source_chunks.append(sources)
                span_chunks.append(spans)
        ids = pa.chunked_array(id_chunks, pa.string()).combine_chunks()
        sources = pa.chunked_array(source_chunks, pa.string()).combine_chunks()
        spans = np.concatenate(span_chunks) if span_chunks else np.zeros(0, np.int64)
        val_hash = doc_unit_hash(ids, VAL_SALT + task.seed)
        index = pa.table({"id": ids, "source": sources, "span": pa.array(spans, pa.int64()), "val_hash": val_hash,
                          "mix_hash": doc_unit_hash(ids, MIX_SALT + task.seed)})
        with pa.OSFile(str(index_tmp), "wb") as sink, pa.ipc.new_file(sink, index.schema) as writer:
            writer.write_table(index)
    minimum = _MinVal()
    minimum.update(0, val_hash, sources, spans)
    return Encoded(task.index, len(spans), _source_counts(sources, val_hash < task.val_fraction, spans),
                   minimum.value, None)


def mix_shard(task: MixTask, report: Reporter) -> ShardFiles:
    """The mix pass: one shard's final files from its scratch tokens, with the planned repeats."""
    tokens_path, index_path = _scratch_paths(task.scratch_dir, task.index)
    with pa.memory_map(str(index_path)) as source:
        index = pa.ipc.open_file(source).read_all()
    dtype = np.dtype(task.dtype)
    tokens = np.memmap(tokens_path, dtype=dtype, mode="r") if tokens_path.stat().st_size else np.zeros(0, dtype)
    ids, sources = index["id"].combine_chunks(), index["source"].combine_chunks()
    spans = index["span"].to_numpy()
    is_val = index["val_hash"].to_numpy() < task.val_fraction
    if 0 <= task.forced_val_row < len(is_val):
        is_val[task.forced_val_row] = True
    names = pc.unique(sources)
    factors = np.array([task.factors.get(s, 0.0) for s in names.to_pylist()], np.float64)
    factor = factors[pc.index_in(sources, names).to_numpy()] if len(spans) else np.zeros(0)
    extra = index["mix_hash"].to_numpy() < factor - np.floor(factor)
    copies = np.where(is_val, 0, np.floor(factor).astype(np.int64) + extra)

    with _ShardWriter(task.output_dir, task.index, dtype) as writer:
        def add(split: str, selected: np.ndarray, copy: int) -> None:
            if selected.all():
                writer.add(split, tokens, ids, sources, spans, copy)
            elif selected.any():
                keep = pa.array(selected)
                writer.add(split, tokens[np.repeat(selected, spans)], ids.filter(keep), sources.filter(keep),
                           spans[selected], copy)

        add("val", is_val, 0)
        for copy in range(int(copies.max(initial=0))):
            add("train", copies > copy, copy)
        files = writer.close(_source_counts(sources, is_val, spans, copies))
    report(len(spans), int(tokens.nbytes))
    return files


# --------------------------------------------------------------------------- the driver


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


def packed_digest(shards: dict[str, list[dict]], index: list[dict]) -> str:
    """What a packed directory holds: the checksums of its files, in order."""
    return json_digest({**{split: [(s["name"], s["sha256"]) for s in shards[split]] for split in SPLITS},
                        "index": [(i["name"], i["sha256"]) for i in index]})


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
                   lambda ctx: _pack(inp, tokenizer_dir, model, tokenizer_sha, output_dir, config, ctx),
                   complete=lambda: _has_shards(output_dir))
    return drive(job, executor=executor, workers=workers, force=force, console=console)


def _has_shards(output_dir: Path) -> bool:
    """An up-to-date output must be in the shard layout with every listed file there: a
    directory packed before shards (one train.bin) is packed again."""
    manifest = read_manifest(output_dir) or {}
    shards, index = manifest.get("shards"), manifest.get("index")
    if not isinstance(shards, dict) or not isinstance(index, list) or manifest.get("dtype") not in ("uint16", "uint32"):
        return False
    itemsize = np.dtype(manifest["dtype"]).itemsize
    try:
        return all((output_dir / s["name"]).stat().st_size == s["tokens"] * itemsize
                   for split in SPLITS for s in shards[split]) and all((output_dir / i["name"]).is_file() for i in index)
    except (OSError, KeyError, TypeError):
        return False


@dataclass
class _Plan:
    per_source: dict[str, dict[str, int]]  # SPLIT_COUNTS, the forced val document moved
    docs: int
    forced_val: tuple[int, int] | None  # (shard, row) of the document moved to val
    factors: dict[str, float]


def _pack(inp: StageInput, tokenizer_dir: Path, model: Path, tokenizer_sha: str, output_dir: Path,
          config: PackConfig, ctx: StageContext) -> dict:
    """The passes, in a claimed `output_dir`; returns the manifest section."""
    vocab_size = _processor(model.resolve(), tokenizer_sha).vocab_size()  # one worker: pack_shard reuses it
    dtype = token_dtype(vocab_size)
    scratch = ctx.work_dir / "encoded" if config.mix else None
    if scratch is not None:
        scratch.mkdir(exist_ok=True)

    def encode_task(i: int, forced_row: int = -1) -> PackTask:
        return PackTask(i, inp.paths[i], output_dir, model.resolve(), dtype.name, config.val_fraction, config.seed,
                        tokenizer_sha, scratch, forced_row)

    encoded: list[Encoded] = ctx.map(pack_shard, [encode_task(i) for i in range(len(inp.paths))], label=STAGE,
                                     total_docs=inp.rows)
    plan = _plan(encoded, config, inp.dir)
    forced_shard, forced_row = plan.forced_val or (-1, -1)
    if scratch is None:
        shards = [e.files for e in encoded]
        if plan.forced_val is not None:  # that part again, the document in val
            again = ctx.map(pack_shard, [encode_task(forced_shard, forced_row)],
                            label=f"{STAGE}-val", total_docs=encoded[forced_shard].docs)
            shards[forced_shard] = again[0].files
    else:
        tasks = [MixTask(e.index, scratch, output_dir, dtype.name, config.val_fraction, plan.factors,
                         forced_row if e.index == forced_shard else -1) for e in encoded]
        shards = ctx.map(mix_shard, tasks, label=f"{STAGE}-mix", total_docs=plan.docs)
    return _manifest_section(shards, plan, config, tokenizer_dir, tokenizer_sha, output_dir, dtype, vocab_size)


def _plan(encoded: list[Encoded], config: PackConfig, input_dir: Path) -> _Plan:
    """Counts per source, documents, the document forced into val (when no hash put one
    there) and each source's repeat factor, from the encode pass's counts."""
    per_source = _merge_sources(e.per_source for e in encoded)
    docs = sum(e.docs for e in encoded)
    if docs == 0:
        raise StageError(f"{input_dir}: no documents to pack")
    forced_val = None
    if sum(v["val_docs"] for v in per_source.values()) == 0:
        first = min((e for e in encoded if e.docs), key=lambda e: (e.min_val[0], e.index))
        _, row, source, tokens = first.min_val
        forced_val = (first.index, row)
        entry = per_source[source]
        entry["train_docs"] -= 1
        entry["train_tokens"] -= tokens
        entry["val_docs"] += 1
        entry["val_tokens"] += tokens
    train_tokens = {s: v["train_tokens"] for s, v in per_source.items()}
    if sum(train_tokens.values()) == 0:
        raise StageError(
            f"the train split is empty ({docs} document(s), all in val): lower --val-fraction "
            f"(now {config.val_fraction}) or pack more documents"
        )
    return _Plan(per_source, docs, forced_val, repeat_factors(train_tokens, config.mix))


def _merge_sources(per_shard: Iterator[dict[str, dict[str, int]]] | list[dict[str, dict[str, int]]]) -> dict[str, dict[str, int]]:
    merged: dict[str, dict[str, int]] = {}
    for counts in per_shard:
        for source, values in counts.items():
            entry = merged.setdefault(source, dict.fromkeys(values, 0))
            for k, v in values.items():
                entry[k] += v
    return dict(sorted(merged.items()))


def _manifest_section(shards: list[ShardFiles], plan: _Plan, config: PackConfig, tokenizer_dir: Path,
                      tokenizer_sha: str, output_dir: Path, dtype: np.dtype, vocab_size: int) -> dict:
    listing = {"train": [s.train for s in shards], "val": [s.val for s in shards]}
    index = [s.index_file for s in shards]
    split_tokens = {split: sum(s["tokens"] for s in listing[split]) for split in SPLITS}
    if split_tokens["train"] == 0:
        raise StageError("the train split is empty after mixing: give a source a weight > 0 in --mix")
    per_source = _merge_sources([s.per_source for s in shards])
    if {s: {k: v[k] for k in SPLIT_COUNTS} for s, v in per_source.items()} != plan.per_source:
        raise StageError(f"pack -> {output_dir}: internal error: the shards' counts differ from the plan's")
    for source, v in per_source.items():
        v["repeat_factor"] = round(plan.factors[source], 6)
        v["train_share"] = round(v["mixed_train_tokens"] / split_tokens["train"], 6)
        if config.mix:
            v["mix_share_asked"] = round(config.mix[source] / sum(config.mix.values()), 6)
    return {
        # the tokenizer's directory relative to this one: it survives moving the work directory
        "tokenizer": {"dir": os.path.relpath(Path(tokenizer_dir).resolve(), Path(output_dir).resolve()),
                      "model": MODEL_NAME, "sha256": tokenizer_sha},
        "dtype": dtype.name,
        "vocab_size": vocab_size,
        "bos_id": BOS_ID,
        "eos_id": EOS_ID,
        "rows_in": plan.docs,
        "tokens": split_tokens,  # BOS and EOS included
        "docs": {split: sum(s["docs"] for s in listing[split]) for split in SPLITS},  # occurrences: copies count
        "per_source": per_source,
        "shards": listing,  # each split: its shards in order, one stream of tokens
        "index": index,
        "output_digest": packed_digest(listing, index),
    }


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
    offset: int  # in the split's stream of tokens
    tokens: np.ndarray
    text: str
    where: str  # the shard(s) it lies in, and the offset there


def inspect_packed(
    packed_dir: Path,
    tokenizer_dir: Path | None = None,
    *,
    windows: int = 3,
    window_tokens: int = 64,
    seed: int | None = None,
) -> tuple[dict, list[Window]]:
    """The manifest of a pack output and a few random windows of its token shards, decoded."""
    from nonllama.train.data import PackedData

    packed_dir = Path(packed_dir)
    require_finished(packed_dir, STAGE)
    data = PackedData(packed_dir)  # refuses a directory packed before shards
    manifest = data.manifest
    tokenizer_dir = Path(tokenizer_dir) if tokenizer_dir is not None else data.tokenizer_dir
    if tokenizer_dir is None:
        raise StageError(f"{packed_dir}: its manifest names no tokenizer; pass one with --tokenizer")
    model, tokenizer_manifest = require_tokenizer(tokenizer_dir)
    if tokenizer_manifest["tokenizer_sha256"] != manifest["tokenizer"]["sha256"]:
        raise StageError(
            f"{packed_dir} was packed with another tokenizer than {model}: rerun `nonllama pack --force` "
            "or pass the right one with --tokenizer"
        )
    processor = load_processor(model)
    rng = np.random.default_rng(seed)
    out: list[Window] = []
    for split, stream in (("train", data.train), ("val", data.val)):
        if not len(stream):
            continue
        for _ in range(windows if split == "train" else max(1, windows // 3)):
            start = int(rng.integers(0, max(len(stream) - window_tokens, 0) + 1))
            tokens = np.array(stream[start : start + window_tokens])
            shard, local = stream.locate(start)
            last, _ = stream.locate(start + len(tokens) - 1)
            where = stream.paths[shard].name + (f"..{stream.paths[last].name}" if last != shard else "")
            out.append(Window(split, start, tokens, decode_window(processor, tokens), f"{where} from {local:,}"))
    return manifest, out


def decode_window(processor: Any, tokens: np.ndarray) -> str:
    """Text of a token window, document ends (EOS) shown as ⟨/s⟩."""
    ends = np.flatnonzero(tokens == EOS_ID)
    pieces = np.split(tokens, ends)
    texts = [processor.decode([int(t) for t in piece if t not in (BOS_ID, EOS_ID)]) for piece in pieces]
    return "⟨/s⟩".join(texts)
