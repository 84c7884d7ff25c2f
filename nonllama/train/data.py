"""Training data: windows of `seq_len + 1` tokens cut from the memory-mapped `packed/*.bin`.

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
from pathlib import Path

import numpy as np
import torch

from nonllama.pipeline.io import MANIFEST_NAME, StageError, file_sha256, read_manifest

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


def read_packed_manifest(packed_dir: Path) -> dict:
    """The manifest of a packed/ directory: pack's own (with the files' checksums), or one written
    by other means that says at least the dtype and vocabulary size of its token files."""
    manifest = read_manifest(Path(packed_dir))
    path = Path(packed_dir) / MANIFEST_NAME
    if manifest is None:
        raise StageError(f"{path} not found: run `nonllama pack` first (or point --data at a packed/ directory)")
    if "stage" in manifest and manifest["stage"] != "pack":
        raise StageError(f"{path}: the output of `nonllama {manifest['stage']}`, not of `nonllama pack` "
                         "(point --data at a packed/ directory)")
    required = ("dtype", "vocab_size", "files") if manifest.get("stage") == "pack" else ("dtype", "vocab_size")
    for key in required:
        if key not in manifest:
            raise StageError(f"{path} has no {key!r}; rerun `nonllama pack --force`")
    if manifest["dtype"] not in ("uint16", "uint32"):
        raise StageError(f"{path}: dtype {manifest['dtype']!r} is neither uint16 nor uint32")
    vocab, tokens, files = manifest["vocab_size"], manifest.get("tokens", {}), manifest.get("files", {})
    if not isinstance(vocab, int) or isinstance(vocab, bool) or vocab < 1:
        raise StageError(f"{path}: vocab_size {vocab!r} is not a positive integer; rerun `nonllama pack --force`")
    if not isinstance(tokens, dict) or not all(isinstance(n, int) and n >= 0 for n in tokens.values()):
        raise StageError(f"{path}: tokens {tokens!r} are not counts per split; rerun `nonllama pack --force`")
    if not isinstance(files, dict) or not all(isinstance(v, str) for v in files.values()):
        raise StageError(f"{path}: files {files!r} are not checksums per file; rerun `nonllama pack --force`")
    return manifest


class PackedData:
    """train.bin and val.bin of a packed/ directory, memory-mapped (nothing is read up front)."""

    def __init__(self, packed_dir: Path):
        self.dir = Path(packed_dir)
        self.manifest = read_packed_manifest(self.dir)
        self.vocab_size = int(self.manifest["vocab_size"])
        # pack records its tokenizer as {"sha256": ...}; hand-made manifests may give the digest directly
        self.tokenizer_digest = (self.manifest.get("tokenizer") or {}).get("sha256") or self.manifest.get("tokenizer_digest")
        # what the tokens are: pack's digest of its outputs; for a manifest written by other
        # means, the manifest and when its token files were written
        self.digest = self.manifest.get("output_digest") or hashlib.sha256(
            (self.dir / MANIFEST_NAME).read_bytes()
            + repr([(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(self.dir.glob("*.bin"))]).encode()
        ).hexdigest()
        dtype = np.dtype(self.manifest["dtype"])
        self.train = self._open("train", dtype)
        self.val = self._open("val", dtype)

    def verify(self) -> None:
        """Compare the token files with the checksums the manifest recorded (a second per GB or
        so): a file changed or cut after packing would otherwise train on silently."""
        for name, expected in self.manifest.get("files", {}).items():
            path = self.dir / name
            if name in ("train.bin", "val.bin") or path.exists():
                if not path.is_file():
                    raise StageError(f"{path} not found: rerun `nonllama pack --force`")
                if file_sha256(path) != expected:
                    raise StageError(f"{path}: its sha256 differs from {self.dir / MANIFEST_NAME}: it changed "
                                     "after packing; rerun `nonllama pack --force`")

    def _open(self, split: str, dtype: np.dtype) -> np.ndarray:
        path = self.dir / f"{split}.bin"
        if not path.exists():
            raise StageError(f"{path} not found: rerun `nonllama pack --force`")
        if path.stat().st_size % dtype.itemsize:
            raise StageError(f"{path}: {path.stat().st_size} bytes is not a whole number of {dtype} tokens")
        tokens = np.memmap(path, dtype=dtype, mode="r") if path.stat().st_size else np.zeros(0, dtype)
        expected = self.manifest.get("tokens", {}).get(split)
        if expected is not None and expected != len(tokens):
            raise StageError(f"{path} holds {len(tokens)} tokens, its manifest says {expected}: rerun `nonllama pack --force`")
        return tokens


def get_batch(tokens: np.ndarray, starts: list[int], seq_len: int,
              device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and next-token targets, each (len(starts), seq_len) int64, on `device`."""
    windows = np.stack([tokens[s:s + seq_len + 1] for s in starts]).astype(np.int64)
    batch = torch.from_numpy(windows)
    if device.type == "cuda":  # pinned memory lets the copy overlap the previous step's compute
        batch = batch.pin_memory().to(device, non_blocking=True)
    return batch[:, :-1], batch[:, 1:]
