"""`train-tokenizer`: a SentencePiece tokenizer trained on a deterministic sample of the corpus.

`run_train_tokenizer(input_dir, output_dir, config)` is the stage. It writes
``tokenizer.model`` (what `pack`, `train` and `generate` load), ``tokenizer.vocab`` (piece and
score per line, for people) and ``_manifest.json`` (config, input digest, the model's sha256,
the special ids, what the sample held, and the compression measured on held-out documents).

Special ids are fixed, as llama2.c's run.c expects: unk=0, bos=1, eos=2, pad=3, then ``\\n``
(one piece, always) at 4, the chat tokens ``<|system|>``, ``<|user|>``, ``<|assistant|>``,
``<|end|>`` at 5..8, the `--user-symbols` from 9 in the order given, then the 256 byte pieces
``<0x00>``..``<0xFF>`` (9..264 without user symbols), then the learned pieces.

The chat tokens are control pieces, like BOS and EOS: SentencePiece never produces them from
text, so a document (or a chat message) that spells ``<|user|>`` is encoded as those characters,
and only code that means a role token puts its id in (`nonllama.chat`). SentencePiece numbers
control symbols before user-defined ones, which would move the newline off id 4; so the trainer
gets them as user-defined symbols right after the newline (that fixes their ids) and the trained
model is then rewritten with their type set to control (`_mark_control`). Tokenizers trained
before the chat tokens existed (and llama2.c's) have none: everything but chat works with them.

Lossless by construction:
- ``normalization_rule_name="identity"``: the default nmt_nfkc would turn the full-width Chinese
  punctuation that `normalize` deliberately keeps into ASCII;
- ``remove_extra_whitespaces=False`` and ``add_dummy_prefix=False``: runs of spaces, leading and
  trailing spaces survive, and a document does not gain a leading space;
- ``byte_fallback=True``: a character outside the vocabulary (emoji, rare CJK) becomes its UTF-8
  bytes, never ``<unk>``;
- ``\\n`` is a user-defined symbol: SentencePiece trains on lines (see below), so a newline
  would otherwise only be reachable through the byte piece ``<0x0A>``.
The stage checks decode(encode(text)) == text on every held-out document before it finishes.

The sample. Every document gets a number u in [0, 1) from a hash of its id (xxh64, seeded), so
the sample is the same on every run and does not depend on part sizes or order. Two passes of
one task per input part (run by the driver's executor: local processes or Ray):

1. each task returns, per source, a histogram over u of its documents and their UTF-8 bytes
   (`HASH_BINS` bins, sparse); the driver sums them and decides, without holding any text,
   (a) the held-out documents of each source (the top of the u range, about `HOLDOUT_FRACTION`
   of the source, at most `HOLDOUT_MAX_BYTES`, at least one document when the source has two)
   and (b) the threshold below which the rest add up to at most `sample_bytes`;
2. each task streams its part's chosen documents, one line per SentencePiece sentence, into a
   file of its own in the run's scratch directory (lines longer than `MAX_SENTENCE_BYTES` are
   cut, since SentencePiece skips such sentences) and returns its held-out documents (few, by
   the cap above) and counts.

SentencePiece then reads the part files one after the other, in part order: the same sentences
in the same order whatever ran the tasks, so 1 worker, N workers and Ray train the same model.
It reads them in C++ through an iterator, so the Python side never holds the sample.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import xxhash
from rich.console import Console

from nonllama.pipeline.dirs import StageInput, open_input
from nonllama.pipeline.driver import StageContext, StageJob, drive
from nonllama.pipeline.executors import Executor
from nonllama.pipeline.io import (
    MANIFEST_NAME,
    Reporter,
    StageError,
    StageRun,
    atomic_path,
    file_sha256,
    iter_part_batches,
    json_digest,
    require_finished,
)
from nonllama.protobuf import fields, message_field, varint

STAGE = "train-tokenizer"
MODEL_NAME = "tokenizer.model"
VOCAB_NAME = "tokenizer.vocab"

UNK_ID, BOS_ID, EOS_ID, PAD_ID = 0, 1, 2, 3
SPECIAL_IDS = {"unk": UNK_ID, "bos": BOS_ID, "eos": EOS_ID, "pad": PAD_ID}
NEWLINE_PIECE = "\n"
# the roles of a conversation and the end of a message: control pieces at ids 5..8 (see above)
CHAT_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>", "<|end|>")
SPACE_MARK = "\u2581"  # how SentencePiece writes a space inside pieces

MODEL_TYPES = ("bpe", "unigram")
HASH_BINS = 1 << 14  # resolution of the u histograms: the sample misses its budget by < 1/16384
HOLDOUT_FRACTION = 0.01
HOLDOUT_MAX_BYTES = 4_000_000  # per source: enough for a stable chars/token figure
MAX_SENTENCE_BYTES = 8192
_CHUNK_CHARS = MAX_SENTENCE_BYTES // 4  # a UTF-8 character is at most 4 bytes
_SIZE_UNITS = {"": 1, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}


@dataclass
class TokenizerConfig:
    vocab_size: int = 16_000
    model_type: str = "bpe"
    character_coverage: float = 0.9995
    user_symbols: list[str] = field(default_factory=list)
    sample_bytes: int = 1_000_000_000
    seed: int = 0
    # SentencePiece's model depends on its thread count (same threads, same bytes), so it is
    # part of the config; fixed by default so that two machines train the same model.
    threads: int = 8

    def validate(self) -> None:
        if self.model_type not in MODEL_TYPES:
            raise StageError(f"--model-type {self.model_type!r}: choose one of {', '.join(MODEL_TYPES)}")
        if not 0 < self.character_coverage <= 1:
            raise StageError(f"--character-coverage {self.character_coverage}: must be in (0, 1]")
        fixed = meta_pieces(self)
        if self.vocab_size <= fixed:
            # the floor for any text: the fixed pieces and one character; the text's characters
            # set the real minimum, which training reports exactly
            raise StageError(
                f"--vocab-size {self.vocab_size}: must be more than the {fixed} fixed pieces (4 special, the "
                f"newline, {len(CHAT_TOKENS)} chat tokens, 256 bytes{f', {len(self.user_symbols)} user symbols' if self.user_symbols else ''}) "
                "plus the text's characters; train-tokenizer names the exact minimum once it has read the text")
        if self.sample_bytes < 1:
            raise StageError(f"--sample-bytes {self.sample_bytes}: must be positive")
        if self.threads < 1:
            raise StageError(f"--threads {self.threads}: must be at least 1")
        for symbol in self.user_symbols:
            if not symbol or symbol == NEWLINE_PIECE or symbol in ("<unk>", "<s>", "</s>", "<pad>", *CHAT_TOKENS):
                raise StageError(f"--user-symbols {symbol!r}: empty, or already a reserved piece (the specials, "
                                 f"the newline and the chat tokens {', '.join(CHAT_TOKENS)} are always there)")
        if len(set(self.user_symbols)) != len(self.user_symbols):
            raise StageError(f"--user-symbols {self.user_symbols}: a symbol is given twice")


def parse_size(text: str) -> int:
    """'1G', '500M', '250000' -> bytes (decimal units)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)B?\s*", str(text), re.IGNORECASE)
    if not m:
        raise StageError(f"--sample-bytes {text!r}: expected a size like 500M, 1G or 250000")
    return int(float(m.group(1)) * _SIZE_UNITS[m.group(2).upper()])


def doc_unit_hash(ids: Sequence[str | None] | pa.Array | pa.ChunkedArray, seed: int) -> np.ndarray:
    """A number in [0, 1) per document id, stable across runs, machines and library versions."""
    keys = pa.array(ids, pa.string()) if not isinstance(ids, pa.Array | pa.ChunkedArray) else ids
    utf8 = pc.fill_null(keys.cast(pa.string()), "").cast(pa.binary()).to_pylist()
    digests = np.fromiter((xxhash.xxh64_intdigest(k, seed) for k in utf8), dtype=np.uint64, count=len(utf8))
    return (digests >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def meta_pieces(config: TokenizerConfig) -> int:
    """Pieces that exist whatever the text: specials, newline, chat tokens, 256 bytes, user symbols."""
    return len(SPECIAL_IDS) + 1 + len(CHAT_TOKENS) + 256 + len(config.user_symbols)


# --------------------------------------------------------------------------- sampling


@dataclass
class _SourceHistogram:
    bytes: np.ndarray = field(default_factory=lambda: np.zeros(HASH_BINS, np.int64))
    docs: np.ndarray = field(default_factory=lambda: np.zeros(HASH_BINS, np.int64))


@dataclass
class SamplePlan:
    """Which documents train the tokenizer and which measure it, as thresholds on hash bins."""

    train_below: int  # documents with bin < train_below (and below their source's holdout) train
    holdout_from: dict[str, int]  # per source: documents with bin >= this are held out
    docs_in: int
    bytes_in: int

    def masks(self, bins: np.ndarray, sources: list[str]) -> tuple[np.ndarray, np.ndarray]:
        holdout_from = np.array([self.holdout_from.get(s, HASH_BINS) for s in sources], np.int64)
        held = bins >= holdout_from
        train = (bins < self.train_below) & ~held
        return train, held


def _bins(ids: Sequence[str | None], seed: int) -> np.ndarray:
    return np.minimum((doc_unit_hash(ids, seed) * HASH_BINS).astype(np.int64), HASH_BINS - 1)


@dataclass
class PartHistogram:
    """Pass 1's result for one part: per source, its documents and bytes per hash bin.

    Sparse (only the bins holding a document), so a result is at most a few hundred KB per
    source however large the part, and a few bytes per document for a small one.
    """

    docs: int
    bytes: int
    # source -> (bins holding a document, ascending; their documents; their UTF-8 bytes)
    sources: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]


def histogram_part(part: Path, seed: int, report: Reporter | None = None) -> PartHistogram:
    """Pass 1 on one part: per-source histograms over the hash bins (no text is kept)."""
    hists: dict[str, _SourceHistogram] = {}
    docs_in = bytes_in = 0
    for batch in iter_part_batches(part):
        nbytes = batch["text"].str.len_bytes().fill_null(0).to_numpy().astype(np.int64)
        bins = _bins(batch["id"].to_list(), seed)
        sources = batch["source"].fill_null("").to_numpy()
        for source in np.unique(sources):
            mask = sources == source
            h = hists.setdefault(str(source), _SourceHistogram())
            h.bytes += np.bincount(bins[mask], weights=nbytes[mask], minlength=HASH_BINS).astype(np.int64)
            h.docs += np.bincount(bins[mask], minlength=HASH_BINS)
        docs_in += batch.height
        bytes_in += int(nbytes.sum())
        if report is not None:
            report(batch.height, int(nbytes.sum()))
    sparse = {}
    for source, h in sorted(hists.items()):
        used = np.flatnonzero(h.docs).astype(np.uint16 if HASH_BINS <= 1 << 16 else np.uint32)
        sparse[source] = (used, h.docs[used], h.bytes[used])
    return PartHistogram(docs_in, bytes_in, sparse)


def merge_histograms(results: Sequence[PartHistogram]) -> tuple[dict[str, _SourceHistogram], int, int]:
    """The per-part histograms summed: per source over the whole input (integers: any order
    of summing gives the same counts)."""
    hists: dict[str, _SourceHistogram] = {}
    docs_in = bytes_in = 0
    for r in results:
        docs_in += r.docs
        bytes_in += r.bytes
        for source, (used, docs, nbytes) in r.sources.items():
            h = hists.setdefault(source, _SourceHistogram())
            h.docs[used] += docs
            h.bytes[used] += nbytes
    return hists, docs_in, bytes_in


def plan_from_histograms(hists: dict[str, _SourceHistogram], docs_in: int, bytes_in: int,
                         sample_bytes: int) -> SamplePlan:
    """The plan from the merged histograms: each source's held-out range, then the threshold
    below which the rest add up to at most `sample_bytes`."""
    holdout_from: dict[str, int] = {}
    train_hist = np.zeros(HASH_BINS, np.int64)
    for source, h in sorted(hists.items()):
        top_bytes = np.cumsum(h.bytes[::-1])  # [k-1]: bytes in the top k bins
        top_docs = np.cumsum(h.docs[::-1])
        total_docs = int(top_docs[-1])
        budget = min(HOLDOUT_FRACTION * top_bytes[-1], HOLDOUT_MAX_BYTES)
        fits = (top_bytes <= budget) & (top_docs < total_docs)
        k = int(np.nonzero(fits)[0].max()) + 1 if fits.any() else 0
        if (k == 0 or top_docs[k - 1] == 0) and total_docs >= 2:
            # a small source: hold out its top document unless that bin holds them all
            first = int(np.argmax(top_docs >= 1)) + 1
            k = first if top_docs[first - 1] < total_docs else 0
        holdout_from[source] = HASH_BINS - k
        train_hist[: HASH_BINS - k] += h.bytes[: HASH_BINS - k]

    cumulative = np.cumsum(train_hist)
    # the largest threshold whose documents fit the budget (at least one bin, however large)
    train_below = max(int(np.searchsorted(cumulative, sample_bytes, side="right")), 1)
    return SamplePlan(train_below, holdout_from, docs_in, bytes_in)


def _sentences(texts: pl.Series) -> list[str]:
    """Documents -> SentencePiece sentences: their non-empty lines, long lines cut in chunks."""
    lines = texts.fill_null("").str.split("\n").explode()
    lines = lines.filter(lines.str.len_bytes() > 0)
    too_long = lines.str.len_bytes() > MAX_SENTENCE_BYTES
    if not too_long.any():
        return lines.to_list()
    out: list[str] = []
    for line, long in zip(lines.to_list(), too_long.to_list(), strict=True):
        if long:
            out.extend(line[i : i + _CHUNK_CHARS] for i in range(0, len(line), _CHUNK_CHARS))
        else:
            out.append(line)
    return out


@dataclass
class HeldOut:
    texts: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    langs: list[str | None] = field(default_factory=list)

    def extend(self, other: HeldOut) -> None:
        self.texts.extend(other.texts)
        self.sources.extend(other.sources)
        self.langs.extend(other.langs)


def _langs(batch: pl.DataFrame) -> list[str | None]:
    """A `lang` column if a stage added one, else `lang` in the meta JSON, else unknown."""
    if "lang" in batch.columns:
        return batch["lang"].cast(pl.String).to_list()
    if "meta" in batch.columns and batch.schema["meta"] == pl.String:
        return batch["meta"].str.json_path_match("$.lang").to_list()
    return [None] * batch.height


def sample_part(part: Path, plan: SamplePlan, seed: int, sentence_file: Path, held_out_file: Path,
                report: Reporter | None = None) -> dict:
    """Pass 2 on one part: its training documents' lines to `sentence_file`, its held-out
    documents (source, lang, text) to `held_out_file` (each written whole or not at all: through
    a temporary name); returns the counts.

    The held-out documents are few by construction: the top of each source's hash range, at
    most `HOLDOUT_MAX_BYTES` of a source over all parts together (or its one top document).
    """
    held_out = HeldOut()
    docs = nbytes = sentences = 0
    with atomic_path(sentence_file) as tmp, open(tmp, "w", encoding="utf-8", newline="\n") as f:
        for batch in iter_part_batches(part):
            sources = batch["source"].fill_null("").to_list()
            train, held = plan.masks(_bins(batch["id"].to_list(), seed), sources)
            chosen = batch["text"].filter(pl.Series(train))
            lines = _sentences(chosen)
            if lines:
                f.write("\n".join(lines))
                f.write("\n")
            docs += chosen.len()
            nbytes += int(chosen.str.len_bytes().sum() or 0)
            sentences += len(lines)
            if held.any():
                kept = batch.filter(pl.Series(held))
                held_out.texts.extend(kept["text"].fill_null("").to_list())
                held_out.sources.extend(kept["source"].fill_null("").to_list())
                held_out.langs.extend(_langs(kept))
            if report is not None:
                report(batch.height, int(batch["text"].str.len_bytes().sum() or 0))
    with atomic_path(held_out_file) as tmp:
        pl.DataFrame({"source": held_out.sources, "lang": held_out.langs, "text": held_out.texts},
                     schema={"source": pl.String, "lang": pl.String, "text": pl.String}).write_parquet(tmp)
    return {"docs": docs, "bytes": nbytes, "sentences": sentences, "held_out_docs": len(held_out.texts),
            "held_out_bytes": sum(len(t.encode("utf-8", "surrogatepass")) for t in held_out.texts)}


def _sentence_name(index: int) -> str:
    return f"sentences-{index:05d}.txt"


def _held_out_name(index: int) -> str:
    return f"held-out-{index:05d}.parquet"


def _merge_samples(results: Sequence[dict]) -> tuple[dict, dict]:
    """(the sample's counts, the held-out documents' counts), summed over the parts."""
    counts = {"docs": 0, "bytes": 0, "sentences": 0}
    held = {"docs": 0, "bytes": 0}
    for part in results:
        for key in counts:
            counts[key] += part[key]
        held["docs"] += part["held_out_docs"]
        held["bytes"] += part["held_out_bytes"]
    return counts, held


# The stage's tasks (module-level: they run in worker processes and on Ray nodes).


@dataclass(frozen=True)
class _HistogramTask:
    part: Path
    seed: int


def _histogram_task(task: _HistogramTask, report: Reporter) -> PartHistogram:
    return histogram_part(task.part, task.seed, report)


@dataclass(frozen=True)
class _SampleTask:
    part: Path
    plan: SamplePlan
    seed: int
    sentence_file: Path
    held_out_file: Path


def _sample_task(task: _SampleTask, report: Reporter) -> dict:
    return sample_part(task.part, task.plan, task.seed, task.sentence_file, task.held_out_file, report)


@dataclass(frozen=True)
class _MeasureTask:
    held_out_file: Path
    model: Path


def _measure_task(task: _MeasureTask, report: Reporter) -> list[tuple]:
    """Pass 3 on one part's held-out documents: (source, lang, docs, chars, bytes, tokens) per
    source and language, after checking that every document round-trips."""
    held = pl.read_parquet(task.held_out_file)
    if held.height == 0:
        return []
    processor = load_processor(task.model)
    texts = held["text"].to_list()
    ids = encode_texts(processor, texts, 1)
    bad = next((t for t, i in zip(texts, ids, strict=True) if processor.decode(i) != t), None)
    if bad is not None:
        raise StageError(f"the trained tokenizer does not round-trip this document: {bad[:200]!r}")
    report(held.height, int(held["text"].str.len_bytes().sum() or 0))
    return (
        held.with_columns(chars=pl.col("text").str.len_chars(), bytes=pl.col("text").str.len_bytes(),
                          tokens=pl.Series([len(i) for i in ids], dtype=pl.Int64))
        .group_by("source", "lang").agg(pl.len().alias("docs"), pl.col("chars", "bytes", "tokens").sum())
        .sort("source", "lang", nulls_last=True)
        .rows()
    )


# --------------------------------------------------------------------------- training


_TOO_HIGH = re.compile(r"Vocabulary size too high \((\d+)\)\. Please set it to a value <= (\d+)")
_TOO_SMALL = re.compile(r"Vocabulary size is smaller than required_chars\. (\d+) vs (\d+)")


def _lines(paths: Sequence[Path]) -> Iterator[str]:
    """The sentences of the files, one a line, the files one after the other."""
    for path in paths:
        with open(path, encoding="utf-8", newline="\n") as f:
            for line in f:
                yield line[:-1]


def train_sentencepiece(sentence_files: Path | Sequence[Path], model_file: Path, config: TokenizerConfig,
                        sample_bytes: int) -> None:
    """Train on the sentences of `sentence_files` (one a line; several files are read in order,
    as if concatenated) and write the model to `model_file`."""
    import sentencepiece as spm

    files = [sentence_files] if isinstance(sentence_files, str | os.PathLike) else list(sentence_files)
    try:
        # an iterator and a writer, not file names: SentencePiece stores the input path and the
        # model prefix in the model, and the model must not depend on where it was trained
        with open(model_file, "wb") as model_writer:
            spm.SentencePieceTrainer.train(
                sentence_iterator=_lines(files),
                model_writer=model_writer,
                model_type=config.model_type,
                vocab_size=config.vocab_size,
                character_coverage=config.character_coverage,
                normalization_rule_name="identity",
                remove_extra_whitespaces=False,
                add_dummy_prefix=False,
                byte_fallback=True,
                split_digits=True,
                allow_whitespace_only_pieces=True,
                # the chat tokens here only to fix their ids (5..8): made control below
                user_defined_symbols=[NEWLINE_PIECE, *CHAT_TOKENS, *config.user_symbols],
                unk_id=UNK_ID,
                bos_id=BOS_ID,
                eos_id=EOS_ID,
                pad_id=PAD_ID,
                max_sentence_length=MAX_SENTENCE_BYTES,
                input_sentence_size=0,  # the sample is already the size we want: use all of it
                num_threads=config.threads,
                minloglevel=2,
            )
    except RuntimeError as e:
        raise StageError(_explain_training_error(str(e), config, sample_bytes)) from None
    model = Path(model_file)
    model.write_bytes(_mark_control(model.read_bytes(), CHAT_TOKENS))


# ---- the chat tokens from user-defined to control, in the serialized model
#
# A ModelProto is a protobuf message: field 1 the pieces (SentencePiece {piece = 1; score = 2;
# type = 3}), field 2 the TrainerSpec (control_symbols = 30, user_defined_symbols = 31). The few
# fields touched are rewritten by hand (sentencepiece does not depend on the protobuf package);
# every other byte is kept as it is, so the model stays what the trainer wrote (nonllama.protobuf).

_CONTROL = 3  # ModelProto.SentencePiece.Type.CONTROL


def _mark_control(model: bytes, symbols: Sequence[str]) -> bytes:
    """The serialized model with the pieces `symbols` typed CONTROL, and the trainer spec listing
    them as control symbols instead of user-defined ones."""
    wanted = {s.encode() for s in symbols}
    out = bytearray()
    for number, value, raw in fields(model):
        if number == 1 and isinstance(value, bytes):
            subfields = list(fields(value))
            if any(n == 1 and v in wanted for n, v, _ in subfields):
                kept = b"".join(r for n, _, r in subfields if n != 3)
                raw = message_field(1, kept + varint(3 << 3 | 0) + varint(_CONTROL))
        elif number == 2 and isinstance(value, bytes):
            kept = b"".join(r for n, v, r in fields(value) if not (n == 31 and v in wanted))
            controls = b"".join(message_field(30, s.encode()) for s in symbols)
            raw = message_field(2, kept + controls)
        out += raw
    return bytes(out)


def _explain_training_error(message: str, config: TokenizerConfig, sample_bytes: int) -> str:
    size = f"{sample_bytes / 1e6:.1f} MB" if sample_bytes >= 100_000 else f"{sample_bytes:,} bytes"
    what = f"{config.model_type}, {size} of sampled text"
    if m := _TOO_HIGH.search(message):
        return (
            f"--vocab-size {config.vocab_size} is more than this text supports ({what}): "
            f"use --vocab-size {m.group(2)} or less, or train on more text"
        )
    if m := _TOO_SMALL.search(message):
        # SentencePiece's figure already counts the fixed pieces (its check is required_chars +
        # meta_pieces <= vocab_size), and it is the exact minimum: training at it succeeds
        needed = int(m.group(2))
        fixed = meta_pieces(config)
        return (
            f"--vocab-size {config.vocab_size} is too small for this text ({what}): its "
            f"{needed - fixed:,} characters at --character-coverage {config.character_coverage:g} plus "
            f"the {fixed} fixed pieces take {needed}; use --vocab-size {needed} or more, or lower "
            "--character-coverage"
        )
    if "Nothing to train" in message or "No valid" in message or "size() > 0" in message:
        return f"no text to train on ({what}): is the input empty?"
    return f"SentencePiece failed: {message.split('] ')[-1]}"


def load_processor(model_path: Path) -> Any:
    import sentencepiece as spm

    try:
        return spm.SentencePieceProcessor(model_file=str(model_path))
    except (OSError, RuntimeError) as e:
        raise StageError(f"{model_path}: not a SentencePiece model ({e})") from None


def write_vocab(processor: Any, path: Path) -> None:
    """`piece<TAB>score` per id, as SentencePiece writes it, but with the newline piece written
    as `\\n` (SentencePiece writes it raw, which breaks the one-line-per-id layout)."""
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for i in range(processor.vocab_size()):
            piece = processor.id_to_piece(i).replace("\\", "\\\\").replace("\n", "\\n").replace("\t", "\\t")
            f.write(f"{piece}\t{processor.get_score(i):g}\n")


def encode_texts(processor: Any, texts: Sequence[str] | Sequence[bytes], num_threads: int = 1,
                 add_bos: bool = False, add_eos: bool = False, as_arrays: bool = False) -> list[Any]:
    """`processor.encode`, made lossless for the one character SentencePiece cannot keep.

    `texts` are str, or their UTF-8 bytes (what pack hands over, straight from Arrow). The ids
    of each text come back as a list of ints, or with `as_arrays` as an int32 numpy array.
    SentencePiece writes spaces as U+2581 (▁) and decodes every ▁ back to a space, so a literal
    ▁ in the text would come back as ' '. Documents containing one (rare: block drawings) are
    encoded around it, with the ▁ itself as its three byte pieces, which decode to ▁.
    `add_bos` / `add_eos` start / end every document's ids with the model's BOS / EOS id.
    """
    ids = processor.encode(texts, num_threads=num_threads, add_bos=add_bos, add_eos=add_eos,
                           out_type="numpy" if as_arrays else int)
    mark = SPACE_MARK if not texts or isinstance(texts[0], str) else SPACE_MARK.encode()
    if mark not in mark[:0].join(texts):  # one search over the batch: the ▁ is rare
        return ids
    for i, text in enumerate(texts):
        if mark in text:
            marker = [processor.piece_to_id(f"<0x{b:02X}>") for b in SPACE_MARK.encode()]
            pieces = processor.encode(text.split(mark))
            exact = [t for piece in pieces[:-1] for t in (*piece, *marker)] + pieces[-1]
            exact = [processor.bos_id()] * add_bos + exact + [processor.eos_id()] * add_eos
            ids[i] = np.array(exact, np.int32) if as_arrays else exact
    return ids


def measure_compression(processor: Any, held_out: HeldOut, threads: int) -> dict:
    """Characters and bytes per token on the held-out documents, per source and per language."""
    ids = encode_texts(processor, held_out.texts, threads) if held_out.texts else []
    bad = next((t for t, i in zip(held_out.texts, ids, strict=True) if processor.decode(i) != t), None)
    if bad is not None:
        raise StageError(f"the trained tokenizer does not round-trip this document: {bad[:200]!r}")
    texts = pl.Series(held_out.texts, dtype=pl.String)
    frame = pl.DataFrame({"source": held_out.sources, "lang": held_out.langs, "chars": texts.str.len_chars(),
                          "bytes": texts.str.len_bytes(), "tokens": [len(i) for i in ids]},
                         schema_overrides={"lang": pl.String, "tokens": pl.Int64})
    groups = frame.group_by("source", "lang").agg(pl.len().alias("docs"), pl.col("chars", "bytes", "tokens").sum())
    return compression_tables(groups.rows())


def compression_tables(groups: Sequence[tuple]) -> dict:
    """Per source, per language and in total, from (source, lang, docs, chars, bytes, tokens) rows
    (sums per part add up: the tables do not depend on how the documents were split)."""
    frame = pl.DataFrame(list(groups), schema={"source": pl.String, "lang": pl.String, "docs": pl.Int64,
                                               "chars": pl.Int64, "bytes": pl.Int64, "tokens": pl.Int64},
                         orient="row")

    def table(key: str | None) -> dict:
        keyed = frame.with_columns(pl.lit("all").alias("k")) if key is None else frame.rename({key: "k"})
        rows = keyed.group_by("k").agg(pl.col("docs", "chars", "bytes", "tokens").sum()).sort("k")
        out = {}
        for name, docs, chars, nbytes, tokens in rows.select("k", "docs", "chars", "bytes", "tokens").iter_rows():
            if name is None:
                continue
            out[name] = {
                "docs": docs,
                "chars": chars,
                "bytes": nbytes,
                "tokens": tokens,
                "chars_per_token": round(chars / max(tokens, 1), 3),
                "bytes_per_token": round(nbytes / max(tokens, 1), 3),
            }
        return out

    if frame.height == 0:
        return {"by_source": {}, "by_lang": {}, "total": None}
    return {"by_source": table("source"), "by_lang": table("lang"), "total": table(None).get("all")}


# --------------------------------------------------------------------------- the stage


# the pieces at fixed ids 0-8, in order (see the module docstring)
FIXED_PIECES = " ".join(["<unk>", "<s>", "</s>", "<pad>", "newline", *CHAT_TOKENS])


def config_to_dict(config: TokenizerConfig) -> dict:
    return asdict(config)


def run_train_tokenizer(
    input_dir: Path,
    output_dir: Path,
    config: TokenizerConfig,
    *,
    workers: int = 1,
    executor: Executor | None = None,
    force: bool = False,
    verify_input: bool = False,
    console: Console | None = None,
) -> StageRun:
    """Train `tokenizer.model` on a sample of `input_dir` (a finished document stage)."""
    config.validate()
    input_dir, output_dir = Path(input_dir), Path(output_dir)
    inp = open_input(input_dir, stage=STAGE, verify=verify_input)
    job = StageJob(STAGE, config_to_dict(config), output_dir, [input_dir],
                   {"dir": str(input_dir), "stage": inp.stage, "digest": inp.digest},
                   lambda ctx: _train(inp, output_dir, config, ctx, console),
                   # the fixed pieces are part of what a tokenizer is: one trained before the chat
                   # tokens existed is not up to date, so `make sft` after an upgrade retrains it
                   dependencies={"fixed_pieces": FIXED_PIECES},
                   complete=lambda: (output_dir / MODEL_NAME).exists())
    return drive(job, executor=executor, workers=workers, force=force, console=console)


def _train(inp: StageInput, output_dir: Path, config: TokenizerConfig, ctx: StageContext,
           console: Console | None) -> dict:
    """Sample (two passes of one task per part), train and measure in a claimed `output_dir`;
    returns the manifest section."""
    parts, input_dir = inp.paths, inp.dir
    # pass 1: per part, per source, documents and bytes per hash bin (sparse: at most 18 bytes a
    # document); summed here into one histogram per source (256 KB each)
    histograms: list[PartHistogram] = ctx.map(
        _histogram_task, [_HistogramTask(p, config.seed) for p in parts],
        label="train-tokenizer histograms", total_docs=inp.rows)
    plan = plan_from_histograms(*merge_histograms(histograms), config.sample_bytes)
    del histograms
    if plan.docs_in == 0:
        raise StageError(f"{input_dir}: no documents to train a tokenizer on")
    # pass 2: per part, its sampled sentences and its held-out documents to files of the scratch
    # directory (the driver never holds text)
    sentence_files = [ctx.work_dir / "sentences" / _sentence_name(i) for i in range(len(parts))]
    held_out_files = [ctx.work_dir / "held-out" / _held_out_name(i) for i in range(len(parts))]
    sampled = ctx.map(
        _sample_task, [_SampleTask(p, plan, config.seed, f, h)
                       for p, f, h in zip(parts, sentence_files, held_out_files, strict=True)],
        label="train-tokenizer sample", total_docs=inp.rows)
    sample, held_out = _merge_samples(sampled)
    del sampled
    if sample["sentences"] == 0:
        raise StageError(f"{input_dir}: the sample has no text to train a tokenizer on")

    quiet = console is None or os.environ.get("NONLLAMA_NO_PROGRESS") == "1"
    status = _NoStatus() if quiet else console.status(
        f"train-tokenizer: SentencePiece {config.model_type} on {sample['bytes'] / 1e6:.1f} MB")
    model_dir = ctx.work_dir / "model"  # where the tasks of pass 3 read it: every node sees it
    with status:
        # SentencePiece reads the part files in part order: the same sentences, in the same
        # order, as one file written by one process, whatever ran the passes
        model_dir.mkdir(exist_ok=True)
        with atomic_path(model_dir / MODEL_NAME) as tmp:
            train_sentencepiece(sentence_files, tmp, config, sample["bytes"])
        processor = load_processor(model_dir / MODEL_NAME)
        write_vocab(processor, model_dir / VOCAB_NAME)
    # pass 3: characters and bytes per token on each part's held-out documents, summed here
    measured = ctx.map(_measure_task, [_MeasureTask(h, model_dir / MODEL_NAME) for h in held_out_files],
                       label="train-tokenizer measure", total_docs=held_out["docs"])
    compression = compression_tables([row for rows in measured for row in rows])
    for name in (MODEL_NAME, VOCAB_NAME):  # same filesystem: a rename is atomic
        os.replace(model_dir / name, output_dir / name)

    model_sha = file_sha256(output_dir / MODEL_NAME)
    return {
        "rows_in": plan.docs_in,
        "bytes_in": plan.bytes_in,
        "model": MODEL_NAME,
        "vocab": VOCAB_NAME,
        "tokenizer_sha256": model_sha,
        "vocab_size": processor.vocab_size(),
        "special_ids": {**SPECIAL_IDS, "newline": processor.piece_to_id(NEWLINE_PIECE)},
        "chat_ids": {token: processor.piece_to_id(token) for token in CHAT_TOKENS},
        "byte_fallback": True,
        "sample": {**sample, "sentence_max_bytes": MAX_SENTENCE_BYTES},
        "held_out": held_out,
        "compression": compression,
        "output_digest": json_digest({"tokenizer_sha256": model_sha}),
    }


def require_tokenizer(tokenizer_dir: Path) -> tuple[Path, dict]:
    """The model file of a finished `train-tokenizer` directory, checked against its manifest."""
    tokenizer_dir = Path(tokenizer_dir)
    manifest = require_finished(tokenizer_dir, STAGE)
    model = tokenizer_dir / MODEL_NAME
    if manifest.get("stage") != STAGE or "tokenizer_sha256" not in manifest:
        raise StageError(f"{tokenizer_dir} is not a train-tokenizer output (its manifest says stage {manifest.get('stage')!r})")
    if not model.exists():
        raise StageError(f"{model} is missing: run `nonllama train-tokenizer --force`")
    actual = file_sha256(model)
    if actual != manifest["tokenizer_sha256"]:
        raise StageError(
            f"{model} does not match {tokenizer_dir / MANIFEST_NAME} (sha256 {actual[:12]} there, "
            f"{manifest['tokenizer_sha256'][:12]} recorded): it was changed after training; "
            "rerun `nonllama train-tokenizer --force`"
        )
    return model, manifest


class _NoStatus:
    def __enter__(self) -> _NoStatus:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def update(self, *args: object, **kwargs: object) -> None:
        return None
