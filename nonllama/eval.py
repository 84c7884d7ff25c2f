"""`nonllama eval`: how well a trained run predicts text, in bits per byte, per source.

    runs + data (packed val split | document stage | files | hf:) -> per source and in total:
        loss, perplexity, bits per byte, top-1 / top-5 accuracy, documents, tokens, bytes
        -> a table on the terminal and <run>/eval/<data>.json

Data. A DATA argument is
- a packed/ directory (`nonllama pack`): its val split, document by document (pack's index
  gives each document's place and source; a packed directory without an index, as tests write
  them, is cut at BOS tokens and its source is the directory's name). With no DATA at all, the
  run's own packed data (the `data` of its config.toml) is evaluated;
- a document stage's directory (raw, normalized, filtered, deduped: Parquet parts listed by a
  manifest), read through the manifest exactly as the next stage reads it; the `source` column
  names each document's source;
- anything `download` reads (files of any format, directories, globs, `hf:OWNER/NAME`, URLs,
  `sample`), read by download's own code (plan_tasks, local_copy, readers.iter_file) with its
  options (--text-field, --split-on, --split, --name) and its source labels.

What is scored. A document is laid out as pack lays it out: BOS, its text tokens (the run's
tokenizer), EOS. BOS is the given start and is never predicted; every text token and the EOS
are predicted and counted (with `eos=False` the EOS is left out: the document is then scored
as lm-eval's loglikelihood_rolling and the filter's perplexity rule score it). A document
longer than the model's context is read in sliding windows of `max_seq_len` inputs, `stride`
apart: each target is scored exactly once, in the first window that reaches it, so every
target after the first window sees at least `max_seq_len - stride + 1` tokens of context;
`stride = max_seq_len` cuts the document into independent chunks (each window then starts
from the last token of the one before, as training's windows do). Windows are batched
(`batch_size` per forward pass, right-padded; padding never counts) and the output head is
applied to the scored positions only, a slice at a time, so memory stays bounded whatever the
vocabulary and the length of the documents.

Bytes. Bits per byte = the summed negative log-likelihood in bits (nats / ln 2) of every
counted target / the UTF-8 bytes of the documents' text. Only the text's bytes count (BOS and
EOS have none, nothing is added per document), so the number depends on the text, not on the
tokenizer: two tokenizers of one text share the denominator. For text inputs the bytes are
those of the text as read; a packed split holds no text, so its documents' token ids are
decoded with the tokenizer and the decoded text's bytes counted (the tokenizer is lossless,
so that is the text that was packed).

Several runs are evaluated one after the other on the same DATA (each with its own
tokenizer), each writing its own JSON; `compare_table` shows their bits per byte side by side.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nonllama import __version__
from nonllama.pipeline.io import (
    MANIFEST_NAME,
    StageError,
    atomic_write_text,
    file_sha256,
    json_digest,
    read_manifest,
)
from nonllama.pipeline.records import BadRecord, SourceError
from nonllama.pipeline.tokenizer import BOS_ID, EOS_ID, PAD_ID

EVAL_DIR = "eval"  # under a run: <run>/eval/<data>.json
QUANTIZE = ("int8",)
DTYPES = ("auto", "fp32", "bf16", "fp16")
LOGITS_BYTES = 1 << 28  # float32 logits of one slice of scored positions, at most (256 MB)
ENCODE_DOCS = 256  # documents tokenized (or decoded) at once
ENCODE_BYTES = 8 << 20  # ... or this many bytes of text
POOL_BATCHES = 8  # windows are gathered for this many batches, then sorted by length: less padding
SCAN_TOKENS = 1 << 20  # a packed split without an index is searched for BOS this many tokens at a time
LOG2 = math.log(2)


# ------------------------------------------------------------------------------ settings


@dataclass
class EvalSettings:
    stride: int | None = None  # None: half the context
    batch_size: int = 16  # windows per forward pass
    max_docs: int | None = None  # per source
    max_bytes: int | None = None  # per source: documents are taken whole until a source has this many bytes
    eos: bool = True  # score each document's EOS (pack puts one after every document)
    quantize: str | None = None  # "int8": the model's matrices replaced by their int8 round trip
    dtype: str = "auto"  # of the forward pass (the head is always float32): bf16 on a GPU that has it, else fp32
    device: str = "auto"
    threads: int | None = None  # CPU threads [default: torch's]
    # how file and hf: inputs are read: download's options
    text_field: str = "text"
    split_on: str | None = None
    split: str | None = None
    names: list[str] = field(default_factory=list)

    def check(self) -> None:
        """ValueError naming the option for a value eval cannot use."""
        if self.stride is not None and self.stride < 1:
            raise ValueError(f"--stride {self.stride}: must be at least 1")
        if self.batch_size < 1:
            raise ValueError(f"--batch-size {self.batch_size}: must be at least 1")
        if self.max_docs is not None and self.max_docs < 1:
            raise ValueError(f"--max-docs {self.max_docs}: must be at least 1")
        if self.max_bytes is not None and self.max_bytes < 1:
            raise ValueError(f"--max-bytes {self.max_bytes}: must be at least 1")
        if self.quantize is not None and self.quantize not in QUANTIZE:
            raise ValueError(f"--quantize {self.quantize!r}: choose {', '.join(QUANTIZE)} (or leave it out: the "
                             "weights as trained)")
        if self.dtype not in DTYPES:
            raise ValueError(f"--dtype {self.dtype!r}: choose one of {', '.join(DTYPES)}")
        if self.device != "auto" and not re.fullmatch(r"cpu|cuda(:\d+)?", self.device):
            raise ValueError(f"--device {self.device!r}: cpu, cuda, cuda:N or auto")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"--threads {self.threads}: must be at least 1")


def resolve_device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: no CUDA device here (torch.cuda.is_available() is False)")
    return name


def resolve_dtype(name: str, device: str) -> Any:
    """The forward pass's dtype. "auto" is bf16 on a GPU that has it and float32 everywhere else:
    a measurement, unlike training, is not worth the rounding of bf16 on a CPU."""
    import torch

    if name == "auto":
        cuda = device.startswith("cuda") and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if cuda else torch.float32
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[name]


# ------------------------------------------------------------------------------ windows


def windows(n_tokens: int, context: int, stride: int) -> list[tuple[int, int, int]]:
    """The sliding windows over a sequence of `n_tokens` tokens (BOS first, never a target):
    (start, stop, skip) each, the window holding tokens[start:stop] (at most context + 1: its
    inputs tokens[start:stop - 1] predict tokens[start + 1:stop]), of which the first `skip`
    targets were scored by an earlier window. Every target 1 .. n_tokens - 1 is scored once."""
    if not 1 <= stride <= context:
        raise ValueError(f"--stride {stride}: must be between 1 and the context, {context} tokens")
    out = []
    start, scored_to = 0, 0  # targets up to index scored_to are done
    while scored_to < n_tokens - 1:
        stop = min(start + context + 1, n_tokens)
        out.append((start, stop, scored_to - start))
        scored_to = stop - 1
        start += stride
    return out


# ------------------------------------------------------------------------------ metrics


@dataclass
class Sums:
    """What one source adds up to."""

    docs: int = 0
    bytes: int = 0
    tokens: int = 0  # targets scored
    nll: float = 0.0  # nats, summed
    top1: int = 0
    top5: int = 0

    def add(self, other: Sums) -> None:
        for name in ("docs", "bytes", "tokens", "nll", "top1", "top5"):
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def metrics(self) -> dict:
        loss = self.nll / self.tokens if self.tokens else None
        return {
            "docs": self.docs, "tokens": self.tokens, "bytes": self.bytes,
            "loss": loss,
            "perplexity": math.exp(min(loss, 700.0)) if loss is not None else None,
            "bits_per_byte": self.nll / LOG2 / self.bytes if self.bytes else None,
            "nll_bits": self.nll / LOG2,
            "top1": self.top1 / self.tokens if self.tokens else None,
            "top5": self.top5 / self.tokens if self.tokens else None,
        }


class Scorer:
    """Documents in (source, text token ids), sums per source out (`finish`).

    Windows are gathered for POOL_BATCHES batches, sorted longest first (ties in arrival order:
    the same batches on every run) and run `batch_size` at a time; a document's windows may lie
    in several pools, which is why sums are kept per source and never per document."""

    def __init__(self, model: Any, *, stride: int, batch_size: int, device: str, dtype: Any, eos: bool):
        self.model = model
        self.context = model.config.max_seq_len
        self.stride = stride
        self.batch_size = batch_size
        self.device = device
        self.dtype = dtype
        self.eos = eos
        self.sums: dict[str, Sums] = {}
        self._sources: list[str] = []
        self._index: dict[str, int] = {}
        self._pool: list[tuple[int, np.ndarray, int]] = []  # (source index, window tokens, skip)
        vocab = model.config.vocab_size
        self._slice = max(1, LOGITS_BYTES // (4 * vocab))  # scored positions whose logits are made at once

    def add(self, source: str, ids: np.ndarray, nbytes: int) -> None:
        """Score one document: `ids` its text tokens, `nbytes` its text's UTF-8 bytes."""
        if source not in self._index:
            self.sums[source] = Sums()
            self._index[source] = len(self._sources)
            self._sources.append(source)
        s = self.sums[source]
        s.docs += 1
        s.bytes += nbytes
        parts = [np.array([BOS_ID], np.int64), np.asarray(ids, np.int64)]
        if self.eos:
            parts.append(np.array([EOS_ID], np.int64))
        tokens = np.concatenate(parts)
        index = self._index[source]
        for start, stop, skip in windows(len(tokens), self.context, self.stride):
            self._pool.append((index, tokens[start:stop], skip))
            if len(self._pool) >= self.batch_size * POOL_BATCHES:
                self._run_pool()

    def finish(self) -> dict[str, Sums]:
        self._run_pool()
        return self.sums

    def _run_pool(self) -> None:
        pool, self._pool = self._pool, []
        order = sorted(range(len(pool)), key=lambda i: (-len(pool[i][1]), i))
        for i in range(0, len(order), self.batch_size):
            self._run_batch([pool[j] for j in order[i:i + self.batch_size]])

    def _run_batch(self, batch: list[tuple[int, np.ndarray, int]]) -> None:
        import torch
        import torch.nn.functional as F

        width = max(len(w) for _, w, _ in batch)
        grid = np.full((len(batch), width), PAD_ID, np.int64)
        mask = np.zeros((len(batch), width - 1), bool)
        for r, (_, window, skip) in enumerate(batch):
            grid[r, :len(window)] = window
            mask[r, skip:len(window) - 1] = True
        counts = mask.sum(axis=1)  # scored targets per row: the positions below are row-major
        tokens = torch.from_numpy(grid).to(self.device)
        where = torch.from_numpy(mask).to(self.device)
        model = self.model
        with torch.inference_mode():
            with _autocast(self.device, self.dtype):
                # right padding: causal attention never lets a real position see a pad
                features = model.features(tokens[:, :-1])
            features = features[where].float()
            targets = tokens[:, 1:][where]
            head = model.output.weight.float()
            nll, top1, top5 = [], [], []
            for a in range(0, len(targets), self._slice):
                logits = features[a:a + self._slice] @ head.t()
                y = targets[a:a + self._slice]
                nll.append(F.cross_entropy(logits, y, reduction="none"))
                best = logits.topk(min(5, logits.size(-1)), dim=-1).indices
                top1.append(best[:, 0] == y)
                top5.append((best == y.unsqueeze(-1)).any(-1))
            # summed on the CPU in float64, row by row in a fixed order: the same sums every run
            # (scored positions are row-major; every window scores at least one target)
            starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
            nll_rows = np.add.reduceat(torch.cat(nll).double().cpu().numpy(), starts)
            top1_rows = np.add.reduceat(torch.cat(top1).cpu().numpy().astype(np.int64), starts)
            top5_rows = np.add.reduceat(torch.cat(top5).cpu().numpy().astype(np.int64), starts)
        for r, (index, _, _) in enumerate(batch):
            s = self.sums[self._sources[index]]
            s.tokens += int(counts[r])
            s.nll += float(nll_rows[r])
            s.top1 += int(top1_rows[r])
            s.top5 += int(top5_rows[r])


def _autocast(device: str, dtype: Any):
    import contextlib

    import torch

    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.split(":")[0], dtype=dtype)


# ------------------------------------------------------------------------------ data


@dataclass
class Doc:
    source: str
    ids: np.ndarray  # text tokens
    nbytes: int  # the text's UTF-8 bytes


class Limits:
    """--max-docs / --max-bytes, per source."""

    def __init__(self, max_docs: int | None, max_bytes: int | None):
        self.max_docs, self.max_bytes = max_docs, max_bytes
        self.docs: dict[str, int] = {}
        self.bytes: dict[str, int] = {}

    def full(self, source: str) -> bool:
        return ((self.max_docs is not None and self.docs.get(source, 0) >= self.max_docs)
                or (self.max_bytes is not None and self.bytes.get(source, 0) >= self.max_bytes))

    def take(self, source: str, nbytes: int) -> bool:
        """Whether to take a document of `source` (counted when taken): taken whole while the
        source is under its limits, so the last one taken may carry it past --max-bytes."""
        if self.full(source):
            return False
        self.docs[source] = self.docs.get(source, 0) + 1
        self.bytes[source] = self.bytes.get(source, 0) + nbytes
        return True

    def all_full(self, sources: Sequence[str]) -> bool:
        return bool(sources) and all(self.full(s) for s in sources)

    @property
    def active(self) -> bool:
        return self.max_docs is not None or self.max_bytes is not None


@dataclass
class DataInput:
    """One DATA argument, resolved (every file found, every manifest checked) before any scoring."""

    spec: str  # as given ("" for the run's own packed data)
    kind: str  # "packed", "stage" or "files"
    name: str  # what the output file is named after
    identity: dict  # what the data is: digests, the files, the split
    path: Path | None = None
    manifest: dict | None = None
    tasks: list = field(default_factory=list)  # "files": download's tasks

    def describe(self) -> dict:
        return {"spec": self.spec, "kind": self.kind, "name": self.name, **self.identity}


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+=-]+", "_", text).strip("._") or "data"


def classify(spec: str) -> str:
    """"packed", "stage" or "files": what a DATA argument is."""
    path = Path(spec)
    if not path.is_dir():
        return "files"
    manifest = read_manifest(path)
    if manifest is None:
        if (path / "_lock.json").exists():
            raise StageError(f"DATA {spec}: an unfinished run of a stage (no {MANIFEST_NAME}): run it again to finish it")
        return "files"  # a directory of files, read as download reads one
    if "shards" in manifest:
        return "packed"
    from nonllama.pipeline.stages import DOCUMENT_STAGES

    if manifest.get("stage") in DOCUMENT_STAGES:
        return "stage"
    what = f"the output of `nonllama {manifest['stage']}`" if isinstance(manifest.get("stage"), str) else "not a stage's output"
    raise StageError(f"DATA {spec}: {what}; eval reads a packed/ directory, a document stage's directory "
                     "(raw, normalized, filtered, deduped), files or hf:OWNER/NAME")


def resolve_packed(spec: str, path: Path) -> DataInput:
    from nonllama.train.data import PackedData

    try:
        data = PackedData(path)
    except StageError as e:
        raise StageError(f"DATA {spec}: {e}") from None
    if len(data.val) == 0:
        raise StageError(f"DATA {spec}: its val split is empty (nothing to evaluate)")
    identity = {"split": "val", "digest": data.digest, "val_tokens": len(data.val),
                "tokenizer_sha256": data.tokenizer_digest, "vocab_size": data.vocab_size}
    return DataInput(spec, "packed", f"{path.resolve().name}-val", identity, path, data.manifest)


def resolve_stage(spec: str, path: Path) -> DataInput:
    from nonllama.pipeline.dirs import open_input

    try:
        inp = open_input(path, stage="pack")  # pack reads any document stage
    except StageError as e:
        raise StageError(f"DATA {spec}: {e}") from None
    identity = {"stage": inp.stage, "digest": inp.digest, "docs": inp.rows}
    return DataInput(spec, "stage", path.resolve().name, identity, path, inp.manifest)


def resolve_files(specs: list[str], settings: EvalSettings, cache_parent: Path) -> DataInput:
    """Files, directories, globs, hf: datasets, URLs and `sample`, planned by download's own code."""
    from nonllama.pipeline.download import DownloadConfig, plan_tasks

    config = DownloadConfig(sources=list(specs), names=list(settings.names), text_field=settings.text_field,
                            split_on=settings.split_on, split=settings.split)
    skipped: list[str] = []
    try:
        tasks = plan_tasks(config, cache_parent, skipped)
    except SourceError as e:
        raise SourceError(f"DATA {e}") from None
    files = [f for t in tasks for f in t.files]
    if not files:
        raise SourceError(f"DATA {' '.join(specs)}: no file to read" + (f" ({'; '.join(skipped[:3])})" if skipped else ""))
    labels = list(dict.fromkeys(t.source or "sample" for t in tasks))
    name = "+".join(labels) + (f"-{settings.split}" if settings.split and any(s.startswith("hf:") for s in specs) else "")
    identity = {"sources": specs, "files": len(files), "digest": json_digest([f.fingerprint for f in files]),
                "skipped_files": skipped, **({"split": settings.split} if settings.split else {})}
    for option, value in (("text_field", settings.text_field), ("split_on", settings.split_on)):
        if value not in (None, "text"):
            identity[option] = value
    return DataInput(" ".join(specs), "files", name, identity, None, None, tasks)


def resolve_data(specs: Sequence[str], settings: EvalSettings, cache_parent: Path) -> list[DataInput]:
    """DATA arguments in the order given, file-like ones gathered into one input (download's
    labels are unique across them)."""
    inputs: list[DataInput] = []
    files: list[str] = []
    for spec in specs:
        kind = classify(spec)
        if kind == "packed":
            inputs.append(resolve_packed(spec, Path(spec)))
        elif kind == "stage":
            inputs.append(resolve_stage(spec, Path(spec)))
        else:
            files.append(spec)
    if files:
        inputs.append(resolve_files(files, settings, cache_parent))
    elif settings.names:
        raise ValueError("--name labels file and hf: sources; a packed or stage directory keeps its own sources")
    return inputs


def run_data(run: Path) -> Path:
    """The packed data a run was trained on: its config.toml's `data`, else `<workdir>/packed`
    beside its runs/ directory."""
    import tomllib

    config_path = run / "config.toml"
    named = None
    if config_path.is_file():
        named = tomllib.loads(config_path.read_text(encoding="utf-8")).get("train", {}).get("data")
    candidates = [Path(named)] if named else []
    candidates.append(run.parent.parent / "packed")
    for path in candidates:
        manifest = read_manifest(path) if path.is_dir() else None
        if manifest is not None and manifest.get("stage") == "sft-data":
            raise ValueError(f"--run {run}: trained on chat windows ({path}), not on packed text: give the text "
                             "to evaluate (DATA)")
        if manifest is not None and "shards" in manifest:
            return path
    where = f"its config.toml names data = {named!r}, which is not" if named else "no config.toml data, and"
    raise FileNotFoundError(f"--run {run}: {where} a packed/ directory here; give the data to evaluate (DATA)")


def data_name(inputs: Sequence[DataInput], settings: EvalSettings) -> str:
    """The JSON's file name (without .json) in <run>/eval/."""
    name = "+".join(i.name for i in inputs)
    if len(name) > 80:
        name = name[:60] + "-" + json_digest([i.describe() for i in inputs])[:10]
    if settings.quantize:
        name += f".{settings.quantize}"
    return _safe_name(name)


def _text_docs(inp: DataInput, settings: EvalSettings, limits: Limits,
               bad: dict[str, int]) -> Iterator[tuple[str, str]]:
    """(source, text) of every document of a stage or file input, limits applied; bad records
    counted per source in `bad` (download would quarantine them)."""
    if inp.kind == "stage":
        import pyarrow.parquet as pq

        from nonllama.pipeline.dirs import check_document_manifest

        known = list((inp.manifest or {}).get("per_source", {}))
        for part in check_document_manifest(inp.manifest or {}, (inp.path or Path()) / MANIFEST_NAME):
            for batch in pq.ParquetFile(part.path).iter_batches(columns=["text", "source"], batch_size=1024):
                for text, source in zip(batch.column("text").to_pylist(), batch.column("source").to_pylist(), strict=True):
                    yield str(source), text or ""
                if limits.active and limits.all_full(known):
                    return
        return
    from nonllama.pipeline.download import local_copy

    for task in inp.tasks:
        for file in task.files:
            if task.source is not None and limits.full(task.source):
                break
            if file.kind == "sample":
                from nonllama.pipeline.sample import sample_documents

                records: Iterator = sample_documents(seed=0)
            else:
                from nonllama.pipeline.readers import iter_file

                try:
                    path, shown = local_copy(file, task.cache_dir)
                except OSError as e:
                    raise SourceError(f"DATA {file.location}: cannot be read ({e})") from None
                records = iter_file(path, text_field=settings.text_field, split_on=settings.split_on, display_name=shown)
            for record in records:
                label = task.source or f"sample-{getattr(record, 'meta', {}).get('lang', 'xx')}"
                if isinstance(record, BadRecord):
                    bad[task.source or "sample"] = bad.get(task.source or "sample", 0) + 1
                    continue
                yield label, record.text
                if task.source is not None and limits.full(task.source):
                    break


def text_documents(inp: DataInput, processor: Any, settings: EvalSettings, limits: Limits,
                   bad: dict[str, int], empty: dict[str, int]) -> Iterator[Doc]:
    """The documents of a stage or file input, tokenized a batch at a time."""
    from nonllama.pipeline.tokenizer import encode_texts

    batch: list[tuple[str, str, int]] = []
    size = 0

    def flush() -> Iterator[Doc]:
        ids = encode_texts(processor, [t for _, t, _ in batch], as_arrays=True)
        for (source, _, nbytes), doc_ids in zip(batch, ids, strict=True):
            yield Doc(source, doc_ids, nbytes)
        batch.clear()

    for source, text in _text_docs(inp, settings, limits, bad):
        if not text:
            empty[source] = empty.get(source, 0) + 1
            continue
        nbytes = len(text.encode("utf-8", "surrogatepass"))
        if not limits.take(source, nbytes):
            continue
        batch.append((source, text, nbytes))
        size += nbytes
        if len(batch) >= ENCODE_DOCS or size >= ENCODE_BYTES:
            yield from flush()
            size = 0
    if batch:
        yield from flush()


def _packed_spans(inp: DataInput) -> Iterator[tuple[str, np.ndarray]]:
    """(source, text tokens) of every document of a packed val split, in order."""
    from nonllama.train.data import PackedData

    data = PackedData(inp.path or Path())
    index = (inp.manifest or {}).get("index")
    if index:
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        shard_files = {entry["name"]: data.dir / entry["name"] for entry in data.manifest["shards"]["val"]}
        maps: dict[str, np.ndarray] = {}
        for entry in index:
            path = data.dir / entry["name"]
            try:
                table = pq.read_table(path, columns=["source", "split", "shard", "offset", "length"])
            except Exception as e:  # noqa: BLE001 - pyarrow raises several types for a broken file
                raise StageError(f"DATA {inp.spec}: {path} is not a readable index ({e}); rerun `nonllama pack --force`") from None
            table = table.filter(pc.equal(table["split"], "val"))
            for source, shard, offset, length in zip(*(table[c].to_pylist() for c in ("source", "shard", "offset", "length")), strict=True):
                name = f"val-{shard:05d}.bin"
                if name not in shard_files:
                    raise StageError(f"DATA {inp.spec}: {path} places a val document in {name}, which its manifest "
                                     "does not list; rerun `nonllama pack --force`")
                if name not in maps:
                    maps.clear()  # one shard open at a time: val rows come shard by shard
                    maps[name] = np.memmap(shard_files[name], dtype=data.val.dtype, mode="r")
                tokens = maps[name]
                if offset < 1 or offset + length > len(tokens):
                    raise StageError(f"DATA {inp.spec}: {path} places a document past the end of {name}; "
                                     "rerun `nonllama pack --force`")
                yield str(source), np.asarray(tokens[offset:offset + length])
        return
    # no index: the stream cut at BOS, each piece without its closing EOS
    source = inp.path.resolve().name if inp.path else "packed"
    stream = data.val
    previous = None if len(stream) and stream[0] == BOS_ID else -1  # a stream that does not start with BOS
    for position in range(0, len(stream), SCAN_TOKENS):
        block = stream.read(position, SCAN_TOKENS)
        for p in (np.flatnonzero(block == BOS_ID) + position).tolist():
            if previous is not None:
                yield source, _without_eos(stream.read(previous + 1, p - previous - 1))
            previous = p
    if previous is not None:
        yield source, _without_eos(stream.read(previous + 1, len(stream) - previous - 1))


def _without_eos(ids: np.ndarray) -> np.ndarray:
    return ids[:-1] if len(ids) and ids[-1] == EOS_ID else ids


def packed_documents(inp: DataInput, processor: Any, limits: Limits, empty: dict[str, int]) -> Iterator[Doc]:
    """The val documents of a packed directory, their bytes those of their decoded text."""
    known = list((inp.manifest or {}).get("per_source", {}))
    batch: list[tuple[str, np.ndarray]] = []

    def flush() -> Iterator[Doc]:
        texts = processor.decode([ids.astype(np.int64).tolist() for _, ids in batch])
        for (source, ids), text in zip(batch, texts, strict=True):
            nbytes = len(text.encode("utf-8"))
            if limits.take(source, nbytes):
                yield Doc(source, ids, nbytes)
        batch.clear()

    for source, ids in _packed_spans(inp):
        if not len(ids):
            empty[source] = empty.get(source, 0) + 1
            continue
        if limits.full(source):
            if limits.all_full(known):
                break
            continue
        batch.append((source, ids))
        if len(batch) >= ENCODE_DOCS:
            yield from flush()
    if batch:
        yield from flush()


# ------------------------------------------------------------------------------ a run


@dataclass
class RunModel:
    """A run's model on its device, ready to score, and what identifies it."""

    loaded: Any  # nonllama.generate.LoadedRun
    tokenizer_sha256: str
    checkpoint_sha256: str
    trained_tokenizer: str | None  # the digest the checkpoint recorded


def load_for_eval(run: Path, checkpoint: str | None, device: str, quantize: str | None) -> RunModel:
    """The run's model (quantized when asked) and its tokenizer, checked against each other."""
    from nonllama.generate import find_checkpoint, load_run
    from nonllama.train.checkpoint import load_checkpoint

    run_dir, path = find_checkpoint(run, checkpoint)
    state = load_checkpoint(path)  # memory-mapped: cheap to read the few fields below
    trained = state.get("tokenizer_digest") if isinstance(state, dict) else None
    loaded = load_run(run_dir, path, None, device)
    tokenizer_sha = file_sha256(loaded.tokenizer)
    if trained and trained != tokenizer_sha:
        raise StageError(f"--run {run}: {loaded.tokenizer} (sha256 {tokenizer_sha[:12]}) is not the tokenizer "
                         f"{path.name} was trained with (sha256 {trained[:12]})")
    if quantize == "int8":
        from nonllama.quantize import fake_quantize_

        fake_quantize_(loaded.model)
    return RunModel(loaded, tokenizer_sha, file_sha256(path), trained)


def check_tokenizer(inp: DataInput, model: RunModel, run: Path) -> None:
    """A packed input must hold tokens of the run's tokenizer."""
    if inp.kind != "packed":
        return
    vocab = inp.identity.get("vocab_size")
    if vocab is not None and vocab != model.loaded.config.vocab_size:
        raise StageError(f"DATA {inp.spec or inp.path}: packed with a vocabulary of {vocab:,} pieces, the model of --run "
                         f"{run} has {model.loaded.config.vocab_size:,}: another tokenizer (evaluate its text instead: "
                         "the document stage it was packed from)")
    packed_with = inp.identity.get("tokenizer_sha256")
    if packed_with and packed_with != model.tokenizer_sha256:
        raise StageError(f"DATA {inp.spec or inp.path}: packed with another tokenizer (sha256 {packed_with[:12]}) than "
                         f"--run {run}'s {model.loaded.tokenizer.name} (sha256 {model.tokenizer_sha256[:12]}); evaluate "
                         "its text instead (the document stage it was packed from)")


OnDoc = Callable[[int, int], None]  # (documents, bytes) done since the last call


def evaluate_run(run: Path, data: Sequence[str], settings: EvalSettings, *, checkpoint: str | None = None,
                 cache_parent: Path | None = None, on_start: Callable[[str, int | None], None] | None = None,
                 on_doc: OnDoc | None = None) -> dict:
    """Evaluate one run on `data` (the run's own packed val split when empty); the result as
    written to JSON. `on_start(description, documents or None)` and `on_doc` report progress."""
    import torch

    settings.check()
    run = Path(run)
    started = time.time()
    device = resolve_device(settings.device)
    model = load_for_eval(run, checkpoint, device, settings.quantize)
    loaded = model.loaded
    context = loaded.config.max_seq_len
    stride = settings.stride if settings.stride is not None else max(1, context // 2)
    if stride > context:
        raise ValueError(f"--stride {stride}: at most the model's context, {context} tokens (max_seq_len, the "
                         "--seq-len it was trained with)")
    specs = list(data) or [str(run_data(run))]
    inputs = resolve_data(specs, settings, cache_parent or run / EVAL_DIR)
    if not data:
        inputs[0].spec = ""
    for inp in inputs:
        check_tokenizer(inp, model, run)
    dtype = resolve_dtype(settings.dtype, device)
    scorer = Scorer(loaded.model, stride=stride, batch_size=settings.batch_size, device=device, dtype=dtype,
                    eos=settings.eos)
    limits = Limits(settings.max_docs, settings.max_bytes)
    bad: dict[str, int] = {}
    empty: dict[str, int] = {}
    threads_before = torch.get_num_threads()
    if settings.threads:
        torch.set_num_threads(settings.threads)
    try:
        for inp in inputs:
            known = _known_docs(inp, settings)
            if on_start is not None:
                on_start(f"{run.name}: {inp.name}", known)
            docs = (packed_documents(inp, loaded.processor, limits, empty) if inp.kind == "packed"
                    else text_documents(inp, loaded.processor, settings, limits, bad, empty))
            for doc in docs:
                scorer.add(doc.source, doc.ids, doc.nbytes)
                if on_doc is not None:
                    on_doc(1, doc.nbytes)
        sums = scorer.finish()
    finally:
        torch.set_num_threads(threads_before)
    if not sums:
        raise StageError(f"DATA {' '.join(specs)}: no document to score" + (f" ({sum(empty.values()):,} empty)" if empty else ""))
    total = Sums()
    for s in sums.values():
        total.add(s)
    return {
        "nonllama_version": __version__,
        "run": str(run.resolve()),
        "checkpoint": str(loaded.checkpoint.resolve()),
        "checkpoint_sha256": model.checkpoint_sha256,
        "step": loaded.step,
        "model": {"params": loaded.model.num_params(), "vocab_size": loaded.config.vocab_size,
                  "max_seq_len": context, "dim": loaded.config.dim, "n_layers": loaded.config.n_layers},
        "tokenizer": {"path": str(loaded.tokenizer.resolve()), "sha256": model.tokenizer_sha256},
        "data": [inp.describe() for inp in inputs],
        # a checkpoint asked for by name is not the run's latest: its result goes beside the latest's
        "data_name": data_name(inputs, settings) + (f".step-{loaded.step}" if checkpoint is not None else ""),
        "settings": {"context": context, "stride": stride, "batch_size": settings.batch_size, "eos": settings.eos,
                     "max_docs": settings.max_docs, "max_bytes": settings.max_bytes, "quantize": settings.quantize,
                     "dtype": str(dtype).removeprefix("torch."), "device": device,
                     "counted": "every text token and " + ("the EOS" if settings.eos else "no EOS") +
                                " of each document; BOS never; bytes: the UTF-8 bytes of the text"},
        "sources": {name: s.metrics() for name, s in sums.items()},
        "total": total.metrics(),
        "bad_records": bad,
        "empty_docs": empty,
        "wall_time_s": round(time.time() - started, 3),
    }


def _known_docs(inp: DataInput, settings: EvalSettings) -> int | None:
    """Documents the progress bar can expect, when the manifest says (and no limit cuts it)."""
    if settings.max_docs is not None or settings.max_bytes is not None or inp.manifest is None:
        return None
    if inp.kind == "stage":
        return int(inp.manifest.get("rows_out", 0)) or None
    if inp.kind == "packed" and isinstance(inp.manifest.get("docs"), dict):
        return int(inp.manifest["docs"].get("val", 0)) or None
    return None


def default_output(run: Path, result: dict) -> Path:
    return Path(run) / EVAL_DIR / f"{result['data_name']}.json"


def write_result(result: dict, path: Path) -> Path:
    path = Path(path)
    if path.exists() and path.is_dir():
        raise IsADirectoryError(f"-o {path}: a directory; give the JSON file to write")
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    return path


def evaluate(runs: Sequence[Path], data: Sequence[str], settings: EvalSettings, *, checkpoint: str | None = None,
             output: Path | None = None,
             on_start: Callable[[str, int | None], None] | None = None,
             on_doc: OnDoc | None = None) -> list[tuple[dict, Path]]:
    """Evaluate every run on `data`, write each one's JSON; [(result, its path)] in run order."""
    runs = list(runs)
    if not runs:
        raise ValueError("--run: which run? Give the run directory `nonllama train` wrote (repeat for several)")
    if len({Path(r).resolve() for r in runs}) != len(runs):
        raise ValueError("--run: a run is given twice")
    if len(runs) > 1 and checkpoint is not None:
        raise ValueError("--checkpoint picks a checkpoint of one run: give one --run with it")
    if len(runs) > 1 and output is not None:
        raise ValueError("-o names one file: with several --run each run's JSON goes to <run>/eval/<data>.json")
    settings.check()
    done = []
    for run in runs:
        # hf: and URL files are fetched once, into the first run's eval/.cache
        result = evaluate_run(Path(run), data, settings, checkpoint=checkpoint, cache_parent=Path(runs[0]) / EVAL_DIR,
                              on_start=on_start, on_doc=on_doc)
        path = write_result(result, output if output is not None else default_output(Path(run), result))
        done.append((result, path))
    return done


# ------------------------------------------------------------------------------ tables


def metric_rows(result: dict) -> list[list[str]]:
    """One row per source and the total: docs, tokens, bytes, loss, perplexity, bits per byte, top-1, top-5."""
    def row(name: str, m: dict) -> list[str]:
        def f(key: str, fmt: str) -> str:
            return "" if m.get(key) is None else format(m[key], fmt)

        return [name, f"{m['docs']:,}", f"{m['tokens']:,}", f"{m['bytes']:,}", f("loss", ".4f"),
                f("perplexity", ",.2f"), f("bits_per_byte", ".4f"), f("top1", ".2%"), f("top5", ".2%")]

    rows = [row(name, m) for name, m in result["sources"].items()]
    if len(result["sources"]) > 1:
        rows.append(row("total", result["total"]))
    return rows


METRIC_HEADER = ["source", "docs", "tokens", "bytes", "loss", "perplexity", "bits/byte", "top-1", "top-5"]


def compare_rows(results: Sequence[dict]) -> list[list[str]]:
    """Bits per byte per source (rows) for each run (columns), and the total."""
    sources: list[str] = []
    for r in results:
        sources += [s for s in r["sources"] if s not in sources]

    def cell(r: dict, m: dict | None) -> str:
        return "" if m is None or m.get("bits_per_byte") is None else f"{m['bits_per_byte']:.4f}"

    rows = [[s, *(cell(r, r["sources"].get(s)) for r in results)] for s in sources]
    rows.append(["total", *(cell(r, r["total"]) for r in results)])
    return rows


def checkpoint_state(result: dict) -> str:
    """Whether an eval result still describes its run: "latest" (its checkpoint is the run's
    latest, unchanged), "older" (an earlier checkpoint, still there) or "stale" (the checkpoint
    is gone or changed: the run was trained again since)."""
    from nonllama.pipeline.io import file_digest
    from nonllama.train.checkpoint import latest_checkpoint

    path = Path(str(result.get("checkpoint", "")))
    try:
        same = path.is_file() and file_digest(path) == result.get("checkpoint_sha256")
    except OSError:
        same = False
    if not same:
        return "stale"
    latest = latest_checkpoint(Path(str(result.get("run", ""))))
    return "latest" if latest is not None and latest.resolve() == path.resolve() else "older"


def find_results(run: Path) -> list[tuple[Path, dict]]:
    """The eval JSON files of a run (<run>/eval/*.json), oldest name first; unreadable ones skipped."""
    directory = Path(run) / EVAL_DIR
    found = []
    for path in sorted(directory.glob("*.json")) if directory.is_dir() else []:
        try:
            result = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(result, dict) and isinstance(result.get("sources"), dict) and "total" in result:
            found.append((path, result))
    return found

