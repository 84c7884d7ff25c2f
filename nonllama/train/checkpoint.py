"""Checkpoints: the whole training state in one file, written atomically, the last K kept.

`<out>/checkpoints/step-00001000.pt` holds the model, optimizer, scheduler and grad-scaler
states, the step, the random states (python, numpy, torch, cuda), the sampler position,
the config and the tokenizer digest. Everything in it is a tensor or a plain Python value,
so it loads with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import random
import re
from pathlib import Path

import numpy as np
import torch

from nonllama.pipeline.io import StageError, atomic_path

CHECKPOINT_DIR = "checkpoints"
_NAME = re.compile(r"step-(\d+)\.pt")


def checkpoint_path(out: Path, step: int) -> Path:
    return Path(out) / CHECKPOINT_DIR / f"step-{step:08d}.pt"


def list_checkpoints(out: Path) -> list[Path]:
    """Finished checkpoints of a run, oldest first."""
    directory = Path(out) / CHECKPOINT_DIR
    found = [p for p in directory.glob("step-*.pt") if _NAME.fullmatch(p.name)] if directory.is_dir() else []
    return sorted(found, key=lambda p: int(_NAME.fullmatch(p.name).group(1)))  # type: ignore[union-attr]


def latest_checkpoint(out: Path) -> Path | None:
    found = list_checkpoints(out)
    return found[-1] if found else None


def save_checkpoint(out: Path, step: int, state: dict, keep: int) -> Path:
    """Write `state` under its step's name (temporary file, then rename); drop all but the last `keep`."""
    path = checkpoint_path(out, step)
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    for old in list_checkpoints(out)[:-keep]:
        old.unlink(missing_ok=True)
    return path


def load_checkpoint(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # a truncated or foreign file: say which, not a pickle traceback
        raise StageError(f"{path}: not a readable nonllama checkpoint ({type(e).__name__}: {e})") from None


def rng_state() -> dict:
    """Every random state a step may draw from, as tensors and plain values."""
    kind, key, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"kind": kind, "key": torch.from_numpy(key.astype(np.int64)), "pos": pos,
                  "has_gauss": has_gauss, "gauss": gauss},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(_tuples(state["python"]))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _tuples(value):
    """random.setstate wants the tuples that saving may have turned into lists."""
    return tuple(_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value
