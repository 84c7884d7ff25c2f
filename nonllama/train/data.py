"""Training data: windows of `seq_len + 1` tokens cut from the memory-mapped token shards of packed/.

A split is the list of its shards in the order the manifest gives (`train-00000.bin`,
`train-00001.bin`, ...: one per input part of `nonllama pack`), read as one stream of tokens
(:class:`ShardedTokens`). Position p of the stream lies in the shard whose cumulative offsets
bracket it (a binary search over one integer per shard), and windows may cross a shard
boundary: a window that starts near the end of one shard continues into the next. So the
windows, batches and losses are those of one flat file of the same tokens, whatever the number
of shards (how many parts pack read, how many workers wrote them). Each shard is memory-mapped
when first read, at most `ShardedTokens.MAX_OPEN` at a time (each mapping holds a file
descriptor); nothing is read up front.

The windows of a split start at 0, seq_len, 2*seq_len, ... (neighbours share one token:
the last target of one is the first input of the next). The sampler walks them in an order
that is a fresh pseudo-random permutation every epoch, computed one index at a time by a
Feistel network: O(1) memory whatever the number of windows, and its whole state is one
integer, the number of windows handed out so far.

Ranks share one global sequence of windows. In micro-step m the process of rank r takes the
`batch_size` windows at positions (m * world + r) * batch_size onwards, so the windows of a
step are disjoint across ranks, and N processes with --grad-accum k read exactly the
windows of one process with --grad-accum N*k.
"""

from __future__ import annotations

import hashlib
import json
import operator
import os
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from nonllama.pipeline.io import MANIFEST_NAME, StageError, file_sha256, read_manifest

if TYPE_CHECKING:  # torch is imported where batches are made: `pack --inspect` reads shards without it
    import torch

_MASK64 = (1 << 64) - 1


def _mix64(x: int) -> int:
    """splitmix64's finalizer: a cheap 64-bit hash with good avalanche."""
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9 & _MASK64
    x = (x ^ (x >> 27)) * 0x94D049BB133111EB & _MASK64
    return x ^ (x >> 31)


class FeistelPermutation:
    """A seeded bijection of range(n), evaluated one index at a time.

    A balanced Feistel network permutes the 2^(2h) integers of 2h bits, 2^(2h) >= n; an
    output >= n is encrypted again (cycle-walking) until it lands below n, which keeps the
    map a bijection of range(n). 2^(2h) < 4n, so that takes under four rounds on average.
    """

    ROUNDS = 6

    def __init__(self, n: int, key: int):
        if n < 1:
            raise ValueError(f"a permutation of {n} elements")
        self.n = n
        self.half_bits = max(1, ((n - 1).bit_length() + 1) // 2)
        self.half_mask = (1 << self.half_bits) - 1
        self.round_keys = [_mix64((key * self.ROUNDS + r) & _MASK64) for r in range(self.ROUNDS)]

    def _encrypt(self, x: int) -> int:
        left, right = x >> self.half_bits, x & self.half_mask
        for round_key in self.round_keys:
            left, right = right, left ^ (_mix64(right ^ round_key) & self.half_mask)
        return (left << self.half_bits) | right

    def __call__(self, i: int) -> int:
        if not 0 <= i < self.n:
            raise IndexError(i)
        x = self._encrypt(i)
        while x >= self.n:
            x = self._encrypt(x)
        return x


class WindowSampler:
    """Window start offsets, shuffled per epoch; `state_dict` is all a checkpoint needs."""

    def __init__(self, n_tokens: int, seq_len: int, seed: int):
        self.seq_len = seq_len
        self.seed = seed
        self.n_windows = (n_tokens - 1) // seq_len
        if self.n_windows < 1:
            raise StageError(f"{n_tokens} tokens hold no window of --seq-len {seq_len} + 1 tokens")
        self.consumed = 0  # windows handed out so far, over all ranks and epochs
        self._epoch_permutation: tuple[int, FeistelPermutation] | None = None

    @property
    def epoch(self) -> int:
        return self.consumed // self.n_windows

    def window(self, position: int) -> int:
        """Start offset of the window at global position `position` of the sequence."""
        epoch, index = divmod(position, self.n_windows)
        if self._epoch_permutation is None or self._epoch_permutation[0] != epoch:
            key = _mix64((self.seed << 32) ^ epoch)  # a new order every epoch
            self._epoch_permutation = (epoch, FeistelPermutation(self.n_windows, key))
        return self._epoch_permutation[1](index) * self.seq_len

    def next_starts(self, batch_size: int, rank: int = 0, world_size: int = 1) -> list[int]:
        """This rank's windows for the next micro-step; every rank advances past all of them."""
        first = self.consumed + rank * batch_size
        starts = [self.window(first + j) for j in range(batch_size)]
        self.consumed += batch_size * world_size
        return starts

    def state_dict(self) -> dict:
        return {"consumed": self.consumed, "n_windows": self.n_windows, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        if state["n_windows"] != self.n_windows or state["seed"] != self.seed:
            raise StageError(
                f"the checkpoint's sampler walked {state['n_windows']} windows with seed {state['seed']}, "
                f"this run has {self.n_windows} with seed {self.seed}: the packed data or --seed changed"
            )
        self.consumed = int(state["consumed"])


def eval_starts(n_tokens: int, seq_len: int, count: int) -> list[int]:
    """A fixed spread of `count` validation windows (all of them when there are fewer):
    the same windows at every evaluation and whatever the number of processes."""
    sampler = WindowSampler(n_tokens, seq_len, seed=0)
    return [sampler.window(i) for i in range(min(count, sampler.n_windows))]


SPLITS = ("train", "val")
_SHA256_CHARS = frozenset("0123456789abcdef")
REPACK = "rerun `nonllama pack --force`"


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def read_packed_manifest(packed_dir: Path) -> dict:
    """The manifest of a packed/ directory: pack's own, or one written by other means
    (:func:`write_packed`) that says at least the dtype, the vocabulary size and the shards.

    A directory packed before shards (one `train.bin` and `val.bin`) is refused: rerun pack."""
    packed_dir = Path(packed_dir)
    manifest = read_manifest(packed_dir)
    path = packed_dir / MANIFEST_NAME
    if manifest is None:
        raise StageError(f"{path} not found: run `nonllama pack` first (or point --data at a packed/ directory)")
    if "stage" in manifest and manifest["stage"] != "pack":
        raise StageError(f"{path}: the output of `nonllama {manifest['stage']}`, not of `nonllama pack` "
                         "(point --data at a packed/ directory)")
    if "shards" not in manifest:
        if manifest.get("stage") == "pack" or (packed_dir / "train.bin").exists():
            raise StageError(f"{packed_dir} holds tokens in the layout before shards (one train.bin and val.bin): "
                             "rerun `nonllama pack` to write them as shards")
        raise StageError(f"{path} lists no 'shards'; {REPACK}")
    for key in ("dtype", "vocab_size"):
        if key not in manifest:
            raise StageError(f"{path} has no {key!r}; {REPACK}")
    if manifest["dtype"] not in ("uint16", "uint32"):
        raise StageError(f"{path}: dtype {manifest['dtype']!r} is neither uint16 nor uint32")
    vocab, tokens, shards = manifest["vocab_size"], manifest.get("tokens", {}), manifest["shards"]
    if not isinstance(vocab, int) or isinstance(vocab, bool) or vocab < 1:
        raise StageError(f"{path}: vocab_size {vocab!r} is not a positive integer; {REPACK}")
    if not isinstance(tokens, dict) or not all(_is_count(n) for n in tokens.values()):
        raise StageError(f"{path}: tokens {tokens!r} are not counts per split; {REPACK}")
    if not isinstance(shards, dict) or not all(isinstance(shards.get(split), list) for split in SPLITS):
        raise StageError(f"{path}: 'shards' is not a list of shards per split (train, val); {REPACK}")
    names: set[str] = set()
    for split in SPLITS:
        for i, entry in enumerate(shards[split]):
            name = entry.get("name") if isinstance(entry, dict) else None
            # a bare file name: a manifest must not point outside its directory
            if not isinstance(name, str) or not name or "/" in name or "\\" in name or name.startswith("."):
                raise StageError(f"{path}: {split} shard {i} is named {name!r}; {REPACK}")
            if name in names:
                raise StageError(f"{path}: {name} is listed twice; {REPACK}")
            names.add(name)
            if not _is_count(entry.get("tokens")):
                raise StageError(f"{path}: {name}: tokens {entry.get('tokens')!r} is not a count; {REPACK}")
            sha = entry.get("sha256")  # pack always records it; a hand-made manifest may leave it out
            well_formed = isinstance(sha, str) and len(sha) == 64 and set(sha) <= _SHA256_CHARS
            if not well_formed and (sha is not None or manifest.get("stage") == "pack"):
                raise StageError(f"{path}: {name}: sha256 {sha!r} is not a checksum; {REPACK}")
        listed = sum(entry["tokens"] for entry in shards[split])
        if split in tokens and tokens[split] != listed:
            raise StageError(f"{path}: its {split} shards hold {listed:,} tokens, its tokens say {tokens[split]:,}; {REPACK}")
    return manifest


class ShardedTokens:
    """The shards of one split read as one stream of tokens (see the module docstring).

    `tokens[a:b]` is positions a..b-1 of the stream as a numpy array (a view of one shard's
    memory map, or, across a boundary, the pieces joined); `len(tokens)` the tokens of all shards.
    """

    MAX_OPEN = 64  # memory maps kept open at once, the least recently read closed first

    def __init__(self, paths: Sequence[Path], counts: Sequence[int], dtype: np.dtype | str):
        kept = [(Path(p), int(n)) for p, n in zip(paths, counts, strict=True) if n > 0]  # an empty file maps nothing
        self.paths = [p for p, _ in kept]
        self.dtype = np.dtype(dtype)
        self.offsets = np.zeros(len(kept) + 1, np.int64)  # shard i holds positions offsets[i] .. offsets[i+1] - 1
        self.offsets[1:] = np.cumsum([n for _, n in kept], dtype=np.int64)
        self._maps: OrderedDict[int, np.ndarray] = OrderedDict()

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def locate(self, position: int) -> tuple[int, int]:
        """(shard, offset in that shard) of a position of the stream."""
        if not 0 <= position < len(self):
            raise IndexError(position)
        shard = int(np.searchsorted(self.offsets, position, side="right")) - 1
        return shard, position - int(self.offsets[shard])

    def _shard(self, i: int) -> np.ndarray:
        tokens = self._maps.get(i)
        if tokens is None:
            tokens = self._maps[i] = np.memmap(self.paths[i], dtype=self.dtype, mode="r")
            if len(self._maps) > self.MAX_OPEN:
                self._maps.popitem(last=False)  # a window still holding a view keeps its map alive
        else:
            self._maps.move_to_end(i)
        return tokens

    def read(self, start: int, count: int) -> np.ndarray:
        """Positions start .. start + count - 1 (fewer at the end of the stream)."""
        end = min(start + count, len(self))
        if start >= end:
            return np.zeros(0, self.dtype)
        shard, local = self.locate(start)
        pieces = []
        while start < end:
            take = min(end, int(self.offsets[shard + 1])) - start
            pieces.append(self._shard(shard)[local:local + take])
            start, shard, local = start + take, shard + 1, 0
        return pieces[0] if len(pieces) == 1 else np.concatenate(pieces)

    def __getitem__(self, key: slice | int) -> np.ndarray:
        if isinstance(key, slice):
            start, stop, step = key.indices(len(self))
            if step != 1:
                raise IndexError("a token stream is read in contiguous slices")
            return self.read(start, stop - start)
        position = operator.index(key)
        position += len(self) if position < 0 else 0
        shard, local = self.locate(position)
        return self._shard(shard)[local]


class PackedData:
    """The train and val shards of a packed/ directory, memory-mapped (nothing is read up front).

    What the training loop reads through (`nonllama sft`'s chat windows offer the same:
    nonllama.sft.windows.ChatWindows): `sampler`, `batch`, `can_eval`, `eval_starts`,
    `initial_weights`, and `masked` (False: every target counts)."""

    masked = False

    def __init__(self, packed_dir: Path):
        self.dir = Path(packed_dir)
        self.manifest = read_packed_manifest(self.dir)
        self.vocab_size = int(self.manifest["vocab_size"])
        tokenizer = self.manifest.get("tokenizer")
        # pack records its tokenizer as {"dir": ..., "sha256": ...}; hand-made manifests may give the digest directly
        self.tokenizer_digest = (tokenizer if isinstance(tokenizer, dict) else {}).get("sha256") or self.manifest.get("tokenizer_digest")
        dtype = np.dtype(self.manifest["dtype"])
        self.shards = {split: [(self.dir / e["name"], e["tokens"], e.get("sha256")) for e in self.manifest["shards"][split]]
                       for split in SPLITS}
        for split in SPLITS:
            for path, tokens, _ in self.shards[split]:
                self._check_size(path, tokens, dtype)
        self.train = ShardedTokens([p for p, _, _ in self.shards["train"]], [n for _, n, _ in self.shards["train"]], dtype)
        self.val = ShardedTokens([p for p, _, _ in self.shards["val"]], [n for _, n, _ in self.shards["val"]], dtype)
        # what the tokens are: pack's digest of its outputs; for a manifest written by other
        # means, its shards (with checksums when it has them) and when they were written
        self.digest = self.manifest.get("output_digest") or hashlib.sha256(json.dumps(
            [[(p.name, n, sha, p.stat().st_mtime_ns) for p, n, sha in self.shards[split]] for split in SPLITS]
        ).encode() + (self.dir / MANIFEST_NAME).read_bytes()).hexdigest()

    @staticmethod
    def _check_size(path: Path, tokens: int, dtype: np.dtype) -> None:
        if not path.is_file():
            raise StageError(f"{path} not found: {REPACK}")
        size = path.stat().st_size
        if size % dtype.itemsize:
            raise StageError(f"{path}: {size} bytes is not a whole number of {dtype} tokens; {REPACK}")
        if size // dtype.itemsize != tokens:
            raise StageError(f"{path} holds {size // dtype.itemsize} tokens, its manifest says {tokens}: {REPACK}")

    def verify(self) -> None:
        """Compare every shard with the checksum the manifest recorded (a second per GB or so):
        a shard changed after packing would otherwise train on silently."""
        for split in SPLITS:
            for path, _, expected in self.shards[split]:
                if expected is not None and file_sha256(path) != expected:
                    raise StageError(f"{path}: its sha256 differs from {self.dir / MANIFEST_NAME}: it changed "
                                     f"after packing; {REPACK}")

    def describe(self) -> str:
        return f"{len(self.train):,} train tokens"

    def sampler(self, seq_len: int, seed: int) -> WindowSampler:
        return WindowSampler(len(self.train), seq_len, seed)

    def batch(self, split: str, starts: list[int], seq_len: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        return get_batch(self.train if split == "train" else self.val, starts, seq_len, device)

    def can_eval(self, seq_len: int) -> bool:
        return len(self.val) > seq_len

    def no_eval_warning(self, seq_len: int) -> str:
        return f"the val shards of {self.dir} hold {len(self.val)} tokens, fewer than --seq-len + 1: no evaluation"

    def eval_starts(self, seq_len: int, count: int) -> list[int]:
        return eval_starts(len(self.val), seq_len, count)

    def initial_weights(self) -> dict | None:
        """Pretraining starts from the model's own initialisation."""
        return None

    @property
    def tokenizer_dir(self) -> Path | None:
        """The tokenizer directory the manifest names (pack records it relative to packed/), or None."""
        tokenizer = self.manifest.get("tokenizer")
        directory = tokenizer.get("dir") if isinstance(tokenizer, dict) else None
        if not isinstance(directory, str) or not directory:
            return None
        return Path(os.path.normpath(self.dir / directory))  # an absolute dir stays as it is

    def tokenizer_model(self) -> tuple[Path | None, str]:
        """(the tokenizer.model these tokens were encoded with, "") when the manifest names one and
        it is there unchanged; else (None, why not: "" when the manifest names none)."""
        directory = self.tokenizer_dir
        if directory is None:
            return None, ""
        model = directory / str(self.manifest["tokenizer"].get("model") or "tokenizer.model")
        if not model.is_file():
            return None, f"{model} (the tokenizer {self.dir} was packed with) not found"
        if self.tokenizer_digest and file_sha256(model) != self.tokenizer_digest:
            return None, f"{model} changed since {self.dir} was packed (its sha256 differs)"
        return model, ""


IGNORE_INDEX = -100  # a target that does not count (F.cross_entropy's default ignore_index)


def open_data(directory: Path) -> PackedData:
    """What `train` reads from `directory`: a packed/ directory, or the chat windows `nonllama sft`
    prepared (nonllama.sft.windows.ChatWindows, which answers the same calls)."""
    manifest = read_manifest(Path(directory))
    if manifest is not None and manifest.get("stage") == "sft-data":
        from nonllama.sft.windows import ChatWindows

        return ChatWindows(Path(directory))  # type: ignore[return-value]
    return PackedData(Path(directory))


def write_packed(directory: Path, splits: dict[str, Sequence[np.ndarray]], vocab_size: int, *,
                 dtype: str | None = None, tokenizer: Path | None = None) -> dict:
    """Write token arrays as a packed/ directory in pack's layout, for `train` to read: each array a
    shard (`train-00000.bin`, ...), and a manifest listing them with their counts and checksums.
    For tokens made by other means (tests, benchmarks). `tokenizer`: the tokenizer.model they
    were encoded with, recorded as pack records it. Returns the manifest."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    dtype = dtype or ("uint16" if vocab_size <= 1 << 16 else "uint32")
    shards: dict[str, list[dict]] = {}
    for split in SPLITS:
        shards[split] = []
        for i, tokens in enumerate(splits.get(split, [])):
            data = np.asarray(tokens).astype(dtype).tobytes()
            name = f"{split}-{i:05d}.bin"
            (directory / name).write_bytes(data)
            shards[split].append({"name": name, "tokens": len(data) // np.dtype(dtype).itemsize,
                                  "sha256": hashlib.sha256(data).hexdigest()})
    manifest: dict = {"dtype": dtype, "vocab_size": vocab_size,
                      "tokens": {split: sum(s["tokens"] for s in shards[split]) for split in SPLITS}, "shards": shards}
    if tokenizer is not None:
        tokenizer = Path(tokenizer)
        manifest["tokenizer"] = {"dir": os.path.relpath(tokenizer.parent.resolve(), directory.resolve()),
                                 "model": tokenizer.name, "sha256": file_sha256(tokenizer)}
    (directory / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest


def get_batch(tokens: ShardedTokens | np.ndarray, starts: list[int], seq_len: int,
              device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and next-token targets, each (len(starts), seq_len) int64, on `device`."""
    import torch

    windows = np.stack([tokens[s:s + seq_len + 1] for s in starts]).astype(np.int64)
    batch = torch.from_numpy(windows)
    if device.type == "cuda":  # pinned memory lets the copy overlap the previous step's compute
        batch = batch.pin_memory().to(device, non_blocking=True)
    return batch[:, :-1], batch[:, 1:]
