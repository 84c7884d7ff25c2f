"""Chat windows: what `nonllama sft` trains on, as `train`'s loop reads it.

A directory (`<run>/sft-data/`) holding, per split (train, val), `<split>.tokens.npy`
(windows x (seq_len + 1) token ids: the inputs are [:-1], the targets [1:], as in packed data)
and `<split>.mask.npy` (the same shape, bool: True where the token is a target that counts,
i.e. an assistant's reply or its end token), and `_manifest.json` (stage "sft-data": the seq
len, the vocabulary, the tokenizer and base checkpoint with their checksums, the counts, and the
digest of the windows). Windows do not overlap and are independent: each holds whole
conversations (or whole turns of one, see nonllama.sft.data), padded after the last.

`ChatWindows` answers the calls the loop makes of `PackedData` (sampler, batch, eval_starts,
can_eval, initial_weights...); its `masked` is True, so targets outside the mask become
IGNORE_INDEX and the loss counts the others only.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from nonllama.pipeline.io import MANIFEST_NAME, StageError, file_sha256, read_manifest
from nonllama.train.data import IGNORE_INDEX, SPLITS, WindowSampler, eval_starts

if TYPE_CHECKING:
    import torch

STAGE = "sft-data"
REPREPARE = "rerun `nonllama sft`, which prepares them again"


def window_files(split: str) -> tuple[str, str]:
    return f"{split}.tokens.npy", f"{split}.mask.npy"


class ChatWindows:
    """The train and val chat windows of a directory `nonllama sft` prepared (memory-mapped)."""

    masked = True

    def __init__(self, directory: Path):
        self.dir = Path(directory)
        manifest = read_manifest(self.dir)
        path = self.dir / MANIFEST_NAME
        if manifest is None or manifest.get("stage") != STAGE:
            raise StageError(f"{path}: not the chat windows of `nonllama sft`")
        self.manifest = manifest
        try:
            self.seq_len = int(manifest["seq_len"])
            self.vocab_size = int(manifest["vocab_size"])
            self.tokenizer_digest = manifest["tokenizer"]["sha256"]
            self.digest = manifest["output_digest"]
            self.files = manifest["files"]
        except (KeyError, TypeError, ValueError) as e:
            raise StageError(f"{path}: incomplete ({type(e).__name__}: {e}); {REPREPARE}") from None
        self.tokens: dict[str, np.ndarray] = {}
        self.mask: dict[str, np.ndarray] = {}
        for split in SPLITS:
            tokens_name, mask_name = window_files(split)
            try:
                tokens = np.load(self.dir / tokens_name, mmap_mode="r")
                mask = np.load(self.dir / mask_name, mmap_mode="r")
            except (OSError, ValueError) as e:
                raise StageError(f"{self.dir / tokens_name}: unreadable ({e}); {REPREPARE}") from None
            if tokens.ndim != 2 or tokens.shape[1] != self.seq_len + 1 or mask.shape != tokens.shape:
                raise StageError(f"{self.dir}: the {split} windows have shape {tokens.shape} and mask {mask.shape}, "
                                 f"not (n, {self.seq_len + 1}); {REPREPARE}")
            self.tokens[split], self.mask[split] = tokens, mask
        self.train, self.val = self.tokens["train"], self.tokens["val"]

    def verify(self) -> None:
        """Compare the window files and the base checkpoint with the checksums of the manifest."""
        for name, expected in self.files.items():
            if file_sha256(self.dir / name) != expected:
                raise StageError(f"{self.dir / name}: its sha256 differs from {self.dir / MANIFEST_NAME}: it changed "
                                 f"after it was written; {REPREPARE}")
        base = Path(self.manifest["base"]["checkpoint"])
        if not base.is_file():
            raise StageError(f"{base} (the base checkpoint these windows start from) not found")

    def describe(self) -> str:
        counted = int(self.manifest.get("counts", {}).get("train_counted_tokens", 0))
        return f"{len(self.train):,} train windows of chat ({counted:,} assistant tokens)"

    def _check_seq_len(self, seq_len: int) -> None:
        if seq_len != self.seq_len:
            raise StageError(f"--seq-len {seq_len}: the chat windows in {self.dir} hold {self.seq_len} tokens; {REPREPARE}")

    def sampler(self, seq_len: int, seed: int) -> WindowSampler:
        """Windows are whole rows: a sampler over a stream of one 'token' per window hands out row numbers."""
        self._check_seq_len(seq_len)
        if len(self.train) < 1:
            raise StageError(f"{self.dir} holds no training window: no conversation was kept")
        return WindowSampler(len(self.train) + 1, 1, seed)

    def batch(self, split: str, starts: list[int], seq_len: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and targets, each (len(starts), seq_len) int64; targets outside the mask are IGNORE_INDEX."""
        import torch

        rows = np.asarray(starts, dtype=np.int64)
        tokens = np.asarray(self.tokens[split][rows], dtype=np.int64)
        counted = np.asarray(self.mask[split][rows][:, 1:], dtype=bool)
        batch = torch.from_numpy(np.stack([tokens[:, :-1], np.where(counted, tokens[:, 1:], IGNORE_INDEX)]))
        if device.type == "cuda":
            batch = batch.pin_memory().to(device, non_blocking=True)
        return batch[0], batch[1]

    def can_eval(self, seq_len: int) -> bool:
        return len(self.val) > 0

    def no_eval_warning(self, seq_len: int) -> str:
        return f"{self.dir} holds no held-out conversation (see --val-fraction): no evaluation"

    def eval_starts(self, seq_len: int, count: int) -> list[int]:
        return eval_starts(len(self.val) + 1, 1, count)

    def initial_weights(self) -> dict:
        """The base run's weights, from the checkpoint the windows were prepared for."""
        from nonllama.train.checkpoint import load_checkpoint

        base = Path(self.manifest["base"]["checkpoint"])
        if not base.is_file():
            raise StageError(f"{base} (the base checkpoint this run starts from) not found")
        return load_checkpoint(base)["model"]

    @property
    def tokenizer_dir(self) -> Path | None:
        return Path(self.manifest["tokenizer"]["path"]).parent

    def tokenizer_model(self) -> tuple[Path | None, str]:
        model = Path(os.path.normpath(self.manifest["tokenizer"]["path"]))
        if not model.is_file():
            return None, f"{model} (the tokenizer of the base run) not found"
        if file_sha256(model) != self.tokenizer_digest:
            return None, f"{model} changed since the chat windows were prepared (its sha256 differs)"
        return model, ""
