"""Chat data for `nonllama sft`: records in, checked conversations, packed windows with a loss mask out.

Sources (`--data`, one or more): local .jsonl, .json or .parquet files, directories or globs of
them, `hf:OWNER/NAME[:CONFIG][@REVISION]` (a Hugging Face dataset's Parquet files, `--split`),
http(s) URLs, read with `download`'s machinery (nonllama.pipeline.download.resolve_source and
local_copy, readers.iter_file reading whole records); or `sample`, the built-in chat sample
(nonllama.sft.sample). A record is one conversation, in any of three shapes:

- `messages`: a list of `{"role", "content"}` (Hugging Face's chat format); roles system (first
  only), user, assistant;
- `prompt` and `response` (and an optional `system`): one exchange;
- Alpaca's `instruction`, optional `input` (appended to the instruction after a blank line)
  and `output`.

A conversation must alternate user and assistant after its optional system message, start
with the user and end with an assistant reply, every content a string, no assistant reply
empty. A record that is not one (malformed JSON, missing fields, a wrong role, a non-string
content, an empty reply, turns out of order) goes to the quarantine file with its file, record
number and reason, counted per reason; nothing is dropped silently.

Formatting is the one chat template (nonllama.chat.encode_conversation): the loss mask holds
the assistant's content tokens and the `<|end|>` closing each reply. Conversations are split
between a train and a held-out (val) split by a hash of their file and position (stable
whatever the order or number of sources), shuffled (seeded), and packed first-fit into windows
of `seq_len + 1` tokens, padded at the end with masked padding: a window holds whole
conversations, never part of one.

A conversation longer than a window is split at turn boundaries (before a user message): each
piece is the system message (if any) and as many whole exchanges as fit, encoded as a
conversation of its own. An exchange (a user message and its reply) that does not fit in a
window on its own is not cut: it and the rest of its conversation are dropped (the turns after
it answer a context that would be missing), counted as `exchanges_too_long`; a conversation
whose first exchange does not fit is quarantined ("too long"). So an answer is never trained on
cut: every reply in a window is whole, with its end token.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import xxhash

from nonllama.chat import ROLES
from nonllama.pipeline.io import (
    MANIFEST_NAME,
    StageError,
    atomic_path,
    atomic_write_text,
    file_sha256,
    read_manifest,
)
from nonllama.pipeline.records import BadRecord, SourceError
from nonllama.pipeline.tokenizer import (
    PAD_ID,  # after a window's last conversation; never a counted target
)
from nonllama.sft.windows import STAGE, window_files
from nonllama.train.data import SPLITS

SAMPLE_SOURCE = "sample"
QUARANTINE_NAME = "quarantine.jsonl"
DATA_DIR = "sft-data"
OPEN_WINDOWS = 64  # first-fit packing looks for room in this many of the latest windows
_RAW_LIMIT = 1000


class BadChat(ValueError):
    """A record that is no conversation; its message is "<category>: <detail>"."""


@dataclass
class PrepareCounts:
    records: int = 0
    conversations: int = 0
    quarantined: Counter = field(default_factory=Counter)  # reason category -> records
    split_conversations: int = 0  # conversations split at turn boundaries (longer than a window)
    exchanges_too_long: int = 0  # exchanges dropped: one does not fit in a window on its own
    per_split: dict = field(default_factory=dict)


# --------------------------------------------------------------------------- reading


def _jsonable_raw(obj: Any) -> str:
    text = json.dumps(obj, ensure_ascii=False, default=str)
    return text if len(text) <= _RAW_LIMIT else text[:_RAW_LIMIT]


def iter_chat_records(sources: Sequence[str], *, split: str | None, cache_dir: Path,
                      seed: int = 0) -> Iterator[tuple[str, int, Any] | BadRecord]:
    """(file, position, the record as read) for every record of the sources, or a BadRecord for
    one the reader could not read (malformed JSON, undecodable bytes, a broken file)."""
    from nonllama.pipeline.download import DownloadConfig, local_copy, resolve_source
    from nonllama.pipeline.readers import iter_file

    if not sources:
        raise SourceError("--data: give a chat file, directory, glob, hf:OWNER/NAME, URL or 'sample'")
    for spec in sources:
        if spec == SAMPLE_SOURCE and not Path(spec).exists():
            from nonllama.sft.sample import chat_sample

            for position, record in enumerate(chat_sample(seed)):
                yield "sample", position, record
            continue
        try:
            files = resolve_source(spec, DownloadConfig(sources=[spec], split=split))
        except SourceError as e:
            raise SourceError(f"--data {e}") from None
        for file in files:
            path, shown = local_copy(file, cache_dir)
            for record in iter_file(path, text_field=None, display_name=shown):
                if isinstance(record, BadRecord):
                    yield record
                else:
                    yield shown, record.position, record.meta


def _type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def to_messages(record: Any) -> list[dict]:
    """The conversation a record holds, checked; BadChat saying what is wrong otherwise."""
    if not isinstance(record, dict):
        raise BadChat(f"not a JSON object: got {_type(record)}")
    if "messages" in record:
        messages = record["messages"]
        if not isinstance(messages, list):
            raise BadChat(f"wrong type: field 'messages' is {_type(messages)}, expected a list of messages")
        out = []
        for n, message in enumerate(messages, 1):
            if not isinstance(message, dict):
                raise BadChat(f"wrong type: message {n} is {_type(message)}, expected an object with role and content")
            for key in ("role", "content"):
                if key not in message:
                    raise BadChat(f"missing field: message {n} has no {key!r}")
            out.append({"role": message["role"], "content": message["content"]})
    elif "prompt" in record or "response" in record:
        for key in ("prompt", "response"):
            if key not in record:
                raise BadChat(f"missing field: {key!r} (a record with 'prompt' or 'response' needs both)")
        system = record.get("system")
        out = [*([{"role": "system", "content": system}] if system is not None else []),
               {"role": "user", "content": record["prompt"]}, {"role": "assistant", "content": record["response"]}]
    elif "instruction" in record or "output" in record:
        for key in ("instruction", "output"):
            if key not in record:
                raise BadChat(f"missing field: {key!r} (an Alpaca record needs 'instruction' and 'output')")
        instruction, extra = record["instruction"], record.get("input")
        if extra is not None and not isinstance(extra, str):
            raise BadChat(f"non-string content: field 'input' is {_type(extra)}")
        if isinstance(instruction, str) and extra and extra.strip():
            instruction = f"{instruction}\n\n{extra}"
        out = [{"role": "user", "content": instruction}, {"role": "assistant", "content": record["output"]}]
    else:
        fields = ", ".join(sorted(map(str, record))) or "none"
        raise BadChat(f"missing field: no 'messages', 'prompt'/'response' or 'instruction'/'output' (fields: {fields})")
    check_conversation(out)
    return out


def check_conversation(messages: list[dict]) -> None:
    """BadChat unless `messages` is a conversation sft can learn from (see the module docstring)."""
    if not messages:
        raise BadChat("empty conversation: no messages")
    for n, message in enumerate(messages, 1):
        role, content = message["role"], message["content"]
        if role not in ROLES:
            raise BadChat(f"wrong role: message {n} has role {role!r}, expected one of {', '.join(ROLES)}")
        if not isinstance(content, str):
            raise BadChat(f"non-string content: message {n} ({role}) is {_type(content)}")
    first = 1 if messages[0]["role"] == "system" else 0
    for n, message in enumerate(messages[first:], first + 1):
        expected = "user" if (n - first) % 2 == 1 else "assistant"
        if message["role"] != expected:
            where = "a system message after the first" if message["role"] == "system" else \
                f"a {message['role']} message where the {expected} was expected"
            raise BadChat(f"turns out of order: message {n} is {where} (user and assistant alternate, "
                          "the user first)")
        if expected == "assistant" and not message["content"].strip():
            raise BadChat(f"empty assistant reply: message {n}")
    if len(messages) == first:
        raise BadChat("no assistant reply: only a system message")
    if messages[-1]["role"] != "assistant":
        raise BadChat(f"no assistant reply: the last message ({len(messages)}) is the user's, which nothing answers")


# --------------------------------------------------------------------------- formatting


def conversation_pieces(messages: list[dict], encode, capacity: int) -> tuple[list[tuple[np.ndarray, np.ndarray]], int]:
    """(the pieces of a conversation, each (ids, mask) of at most `capacity` tokens; the exchanges
    dropped because one of them alone exceeds the capacity). One piece when it fits whole."""
    whole = encode(messages)
    if len(whole[0]) <= capacity:
        return [whole], 0
    system = messages[:1] if messages[0]["role"] == "system" else []
    rest = messages[len(system):]
    exchanges = [rest[i:i + 2] for i in range(0, len(rest), 2)]
    pieces, i = [], 0
    while i < len(exchanges):
        best = encode([*system, *exchanges[i]])
        if len(best[0]) > capacity:
            break  # this exchange does not fit alone: it and what follows are dropped
        j = i + 1
        while j < len(exchanges):
            more = encode([*system, *(m for e in exchanges[i:j + 1] for m in e)])
            if len(more[0]) > capacity:
                break
            best, j = more, j + 1
        pieces.append(best)
        i = j
    return pieces, len(exchanges) - i


def held_out(file: str, position: int, fraction: float, seed: int) -> bool:
    """Whether a conversation goes to the val split: a hash of the name of the file it came from
    (not its directory: a moved or copied dataset keeps its split) and its position there, so the
    split stays put whatever the order or number of sources."""
    name = file.rstrip("/").rsplit("/", 1)[-1]
    u = xxhash.xxh64_intdigest(f"{name}#{position}".encode("utf-8", "surrogatepass"), seed) / 2.0**64
    return u < fraction


def pack_windows(pieces: Sequence[tuple[np.ndarray, np.ndarray]], capacity: int,
                 dtype: str) -> tuple[np.ndarray, np.ndarray]:
    """(tokens, mask), each (windows, capacity): the pieces placed first-fit (in the latest
    OPEN_WINDOWS windows), in the order given, each whole in one window; PAD_ID after the last."""
    placed: list[list[int]] = []
    used: list[int] = []
    open_windows: list[int] = []
    for p, (ids, _) in enumerate(pieces):
        n = len(ids)
        if n > capacity:
            raise AssertionError(f"a piece of {n} tokens in windows of {capacity}")
        for w in open_windows:
            if used[w] + n <= capacity:
                placed[w].append(p)
                used[w] += n
                break
        else:
            placed.append([p])
            used.append(n)
            open_windows.append(len(placed) - 1)
            if len(open_windows) > OPEN_WINDOWS:
                open_windows.pop(0)
    tokens = np.full((len(placed), capacity), PAD_ID, dtype=dtype)
    mask = np.zeros((len(placed), capacity), dtype=bool)
    for w, members in enumerate(placed):
        at = 0
        for p in members:
            ids, piece_mask = pieces[p]
            tokens[w, at:at + len(ids)] = ids
            mask[w, at:at + len(ids)] = piece_mask
            at += len(ids)
    return tokens, mask


# --------------------------------------------------------------------------- the whole preparation


def prepare(sources: Sequence[str], *, processor: Any, ids: Any, seq_len: int, vocab_size: int,
            data_dir: Path, quarantine_path: Path, val_fraction: float, seed: int, split: str | None,
            cache_dir: Path, base: dict, tokenizer: Path) -> dict:
    """Read, check, format and pack the chat `sources` into `data_dir` (nonllama.sft.windows's
    layout); bad records to `quarantine_path`. Returns the manifest written. Deterministic: the
    same sources, tokenizer and options write the same windows (and digest); a directory already
    holding them is left as it is."""
    from nonllama.chat import encode_conversation

    if not 0 <= val_fraction < 1:
        raise ValueError(f"--val-fraction must lie in [0, 1), got {val_fraction}")
    capacity = seq_len + 1
    counts = PrepareCounts()
    pieces: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {s: [] for s in SPLITS}
    quarantine_path.parent.mkdir(parents=True, exist_ok=True)

    def encode(messages: list[dict]) -> tuple[np.ndarray, np.ndarray]:
        return encode_conversation(processor, messages, ids)

    with atomic_path(quarantine_path) as tmp, open(tmp, "w", encoding="utf-8") as quarantine:
        def bad(file: str, line: int | None, record: int | None, reason: str, raw: str) -> None:
            counts.quarantined[reason.split(":")[0].strip()] += 1
            entry = {"file": file, "line": line, "record": record, "reason": reason, "raw": raw}
            quarantine.write(json.dumps(entry, ensure_ascii=False) + "\n")

        conversations: dict[str, list[tuple[str, int, list[dict]]]] = {s: [] for s in SPLITS}
        for item in iter_chat_records(sources, split=split, cache_dir=cache_dir, seed=seed):
            counts.records += 1
            if isinstance(item, BadRecord):
                bad(item.file, item.line, None, item.reason, item.raw)
                continue
            file, position, record = item
            try:
                messages = to_messages(record)
            except BadChat as e:
                bad(file, None, position + 1, str(e), _jsonable_raw(record))
                continue
            which = "val" if held_out(file, position, val_fraction, seed) else "train"
            conversations[which].append((file, position, messages))
        for which in SPLITS:
            random.Random(f"{seed}:{which}").shuffle(conversations[which])
            for file, position, messages in conversations[which]:
                try:
                    found, dropped = conversation_pieces(messages, encode, capacity)
                except ValueError as e:  # the template's own checks: ours should have caught it first
                    bad(file, None, position + 1, f"not a conversation: {e}", _jsonable_raw({"messages": messages}))
                    continue
                if not found:
                    n = len(encode(messages[:3] if messages[0]["role"] == "system" else messages[:2])[0])
                    bad(file, None, position + 1, f"too long: its first exchange takes {n} tokens, a window of "
                        f"--seq-len {seq_len} holds {capacity}", _jsonable_raw({"messages": messages}))
                    continue
                counts.conversations += 1
                counts.split_conversations += len(found) > 1 or dropped > 0
                counts.exchanges_too_long += dropped
                pieces[which].extend(found)
    dtype = "uint16" if vocab_size <= 1 << 16 else "uint32"
    windows = {which: pack_windows(pieces[which], capacity, dtype) for which in SPLITS}
    for which in SPLITS:
        tokens, mask = windows[which]
        counts.per_split[which] = {
            "conversations": len(conversations[which]), "pieces": len(pieces[which]), "windows": len(tokens),
            "tokens": int(sum(len(p[0]) for p in pieces[which])), "counted_tokens": int(mask[:, 1:].sum()),
        }
    if not len(windows["train"][0]):
        raise StageError(f"--data {' '.join(sources)}: no conversation to train on ({counts.records} records read, "
                         f"{sum(counts.quarantined.values())} quarantined: see {quarantine_path})")
    digest = hashlib.sha256()
    for which in SPLITS:
        for array in windows[which]:
            digest.update(f"{which}:{array.dtype}:{array.shape}".encode())
            digest.update(np.ascontiguousarray(array).tobytes())
    digest.update(json.dumps({"base": base["sha256"], "tokenizer": file_sha256(tokenizer)}).encode())
    output_digest = digest.hexdigest()
    manifest = {
        "stage": STAGE,
        "seq_len": seq_len,
        "vocab_size": vocab_size,
        "dtype": dtype,
        "sources": list(sources),
        "options": {"val_fraction": val_fraction, "seed": seed, "split": split},
        "base": base,
        "tokenizer": {"path": str(Path(tokenizer).resolve()), "sha256": file_sha256(tokenizer)},
        "counts": {
            "records": counts.records,
            "conversations": counts.conversations,
            "quarantined": sum(counts.quarantined.values()),
            "quarantine_reasons": dict(sorted(counts.quarantined.items())),
            "split_conversations": counts.split_conversations,
            "exchanges_too_long": counts.exchanges_too_long,
            **{f"{which}_{k}": v for which in SPLITS for k, v in counts.per_split[which].items()},
        },
        "quarantine": str(quarantine_path),
        "output_digest": output_digest,
    }
    existing = read_manifest(data_dir)
    if existing is not None and existing.get("output_digest") == output_digest and \
            all((data_dir / n).is_file() for which in SPLITS for n in window_files(which)):
        return existing  # the same windows: left as they are (a resumed run reads them on)
    data_dir.mkdir(parents=True, exist_ok=True)
    files = {}
    for which in SPLITS:
        for name, array in zip(window_files(which), windows[which], strict=True):
            with atomic_path(data_dir / name) as tmp:
                with open(tmp, "wb") as f:
                    np.save(f, array)
            files[name] = file_sha256(data_dir / name)
    manifest["files"] = files
    atomic_write_text(data_dir / MANIFEST_NAME, json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    return manifest
